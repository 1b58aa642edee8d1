//! File share backups and restores: round trips (proptest), parents, conflicts.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use proptest::prelude::*;
use rsvault_engine::*;

fn tree_req(root: &Path, rp: &str, n: i64) -> TreeBackupRequest {
    TreeBackupRequest {
        root: root.to_path_buf(),
        tags: tags("AzureFileShare;share1", rp),
        time: t0() + chrono::Duration::seconds(n),
        expiry: None,
        parent: None,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Entry {
    File { data: Vec<u8>, mode: u32, mtime: i64 },
    Sparse { len: u64, at: u64, data: Vec<u8> },
    Link(String),
    Dir,
}

/// Everything observable about a tree (relative path -> description).
fn snapshot_of(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.insert(rel, format!("link {:?}", fs::read_link(&p).unwrap()));
            } else if m.is_dir() {
                out.insert(rel, format!("dir {:o}", m.mode() & 0o7777));
                walk(root, &p, out);
            } else if !m.is_file() {
                out.insert(rel, format!("special {:o}", m.mode()));
            } else {
                let data = fs::read(&p).unwrap();
                out.insert(
                    rel,
                    format!(
                        "file {:o} mtime={}.{} len={} sha={}",
                        m.mode() & 0o7777,
                        m.mtime(),
                        m.mtime_nsec(),
                        data.len(),
                        {
                            use sha2::Digest;
                            let d = sha2::Sha256::digest(&data);
                            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
                        }
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn write_tree(root: &Path, entries: &[(String, Entry)]) {
    fs::create_dir_all(root).unwrap();
    for (name, e) in entries {
        let p = root.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        if fs::symlink_metadata(&p).is_ok() {
            continue; // duplicate name from the generator
        }
        match e {
            Entry::File { data, mode, mtime } => {
                fs::write(&p, data).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(*mtime as u64);
                fs::File::options().write(true).open(&p).ok();
                let f = fs::File::open(&p).unwrap();
                f.set_modified(t).unwrap();
            }
            Entry::Sparse { len, at, data } => {
                let f = fs::File::create(&p).unwrap();
                f.set_len(*len).unwrap();
                use std::os::unix::fs::FileExt;
                f.write_all_at(data, (*at).min(*len)).unwrap();
            }
            Entry::Link(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
            Entry::Dir => fs::create_dir_all(&p).unwrap(),
        }
    }
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "[a-zA-Z0-9 ._-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != ".."),
        Just("ünïcødé ☃".to_string()),
        Just("-leading-dash".to_string()),
        Just("with\nnewline".to_string()),
        Just("back\\slash".to_string()),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        3 => (proptest::collection::vec(any::<u8>(), 0..3000), prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o400)], 1_000_000_000i64..1_900_000_000)
            .prop_map(|(data, mode, mtime)| Entry::File { data, mode, mtime }),
        1 => Just(Entry::File { data: vec![], mode: 0o644, mtime: 1_600_000_000 }),
        1 => (1u64..3_000_000, 0u64..3_000_000, proptest::collection::vec(any::<u8>(), 1..100))
            .prop_map(|(len, at, data)| Entry::Sparse { len, at, data }),
        1 => "[a-z/.]{1,20}".prop_map(Entry::Link),
        1 => Just(Entry::Dir),
    ]
}

fn tree() -> impl Strategy<Value = Vec<(String, Entry)>> {
    proptest::collection::vec(
        (proptest::collection::vec(name(), 1..3), entry()).prop_map(|(parts, e)| (parts.join("/"), e)),
        0..12,
    )
    .prop_map(|mut v| {
        // A path cannot be both a file and a directory prefix of another entry.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(String, Entry)> = Vec::new();
        for (n, e) in v {
            let clash = kept
                .iter()
                .any(|(k, ke)| (n.starts_with(&format!("{k}/")) && *ke != Entry::Dir) || k == &n);
            if !clash {
                kept.push((n, e));
            }
        }
        kept
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn tree_round_trip(entries in tree()) {
        let v = Vault::new();
        let src = v.path("share");
        write_tree(&src, &entries);
        let before = snapshot_of(&src);
        let out = v.engine.backup_tree(&v.spec, &tree_req(&src, "rp", 0), &NoProgress, &Cancel::new()).unwrap();
        prop_assert!(out.warnings.is_empty(), "{:?}", out.warnings);
        prop_assert_eq!(out.consistency, Consistency::FileSystemConsistent);
        let dst = v.path("restored");
        let r = v.engine.restore_tree(&v.spec, &TreeRestoreRequest {
            recovery_point: "rp".into(), paths: None, target: Some(dst.clone()), conflict: ConflictPolicy::FailOnConflict,
        }, &NoProgress, &Cancel::new()).unwrap();
        prop_assert_eq!(r.files_skipped, 0);
        let after = snapshot_of(&dst);
        // Directory mtimes are not compared (restoring into a directory changes it).
        prop_assert_eq!(before, after);
    }
}

fn sample_share(root: &Path) {
    write_tree(
        root,
        &[
            (
                "a.txt".into(),
                Entry::File {
                    data: b"alpha".to_vec(),
                    mode: 0o640,
                    mtime: 1_700_000_000,
                },
            ),
            (
                "docs/b.bin".into(),
                Entry::File {
                    data: noise(4, 300_000),
                    mode: 0o600,
                    mtime: 1_700_000_100,
                },
            ),
            (
                "docs/deep/c".into(),
                Entry::File {
                    data: b"gamma".to_vec(),
                    mode: 0o755,
                    mtime: 1_700_000_200,
                },
            ),
            ("link".into(), Entry::Link("docs/b.bin".into())),
            (
                "empty".into(),
                Entry::File {
                    data: vec![],
                    mode: 0o644,
                    mtime: 1_700_000_300,
                },
            ),
        ],
    );
}

#[test]
fn unchanged_files_are_skipped_with_parent() {
    let v = Vault::new();
    let src = v.path("share");
    sample_share(&src);
    let first = v
        .engine
        .backup_tree(&v.spec, &tree_req(&src, "one", 0), &NoProgress, &Cancel::new())
        .unwrap();
    assert_eq!(first.bytes_scanned, 300_000 + 10);
    let second = v
        .engine
        .backup_tree(&v.spec, &tree_req(&src, "two", 1), &NoProgress, &Cancel::new())
        .unwrap();
    assert_eq!(second.bytes_scanned, 0, "nothing changed, nothing read");
    assert_eq!(second.recovery_point.total_size, first.recovery_point.total_size);
    fs::write(src.join("a.txt"), b"ALPHA!").unwrap();
    let third = v
        .engine
        .backup_tree(&v.spec, &tree_req(&src, "three", 2), &NoProgress, &Cancel::new())
        .unwrap();
    assert_eq!(third.bytes_scanned, 6);
    let rps = v
        .engine
        .recovery_points(
            &v.spec,
            &RecoveryPointFilter {
                item: Some("AzureFileShare;share1".into()),
                kind: Some(RecoveryPointKind::Tree),
            },
        )
        .unwrap();
    assert_eq!(rps.len(), 3);
    assert_eq!(
        rps[2].source_root.as_deref(),
        Some(fs::canonicalize(&src).unwrap().as_path())
    );
    assert!(v
        .engine
        .recovery_points(
            &v.spec,
            &RecoveryPointFilter {
                item: Some("other".into()),
                kind: None
            }
        )
        .unwrap()
        .is_empty());
}

#[test]
fn item_level_restore_and_conflict_options() {
    let v = Vault::new();
    let src = v.path("share");
    sample_share(&src);
    v.engine
        .backup_tree(&v.spec, &tree_req(&src, "rp", 0), &NoProgress, &Cancel::new())
        .unwrap();
    let req = |paths: Option<Vec<&str>>, target: Option<PathBuf>, conflict| TreeRestoreRequest {
        recovery_point: "rp".into(),
        paths: paths.map(|p| p.into_iter().map(PathBuf::from).collect()),
        target,
        conflict,
    };

    // Only docs/deep/c, into another directory.
    let alt = v.path("alt");
    v.engine
        .restore_tree(
            &v.spec,
            &req(
                Some(vec!["docs/deep/c"]),
                Some(alt.clone()),
                ConflictPolicy::FailOnConflict,
            ),
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(fs::read(alt.join("docs/deep/c")).unwrap(), b"gamma");
    assert!(!alt.join("a.txt").exists() && !alt.join("docs/b.bin").exists());
    let m = fs::metadata(alt.join("docs/deep/c")).unwrap();
    assert_eq!((m.mode() & 0o777, m.mtime()), (0o755, 1_700_000_200));

    // Original location: a.txt changed locally.
    fs::write(src.join("a.txt"), b"local edit").unwrap();
    let e = v.engine.restore_tree(
        &v.spec,
        &req(None, None, ConflictPolicy::FailOnConflict),
        &NoProgress,
        &Cancel::new(),
    );
    assert!(matches!(e, Err(EngineError::Conflict { count: 5, .. })), "{e:?}");
    assert_eq!(
        fs::read(src.join("a.txt")).unwrap(),
        b"local edit",
        "nothing written on conflict"
    );

    fs::remove_file(src.join("empty")).unwrap();
    let r = v
        .engine
        .restore_tree(
            &v.spec,
            &req(None, None, ConflictPolicy::Skip),
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(r.files_skipped, 4);
    assert_eq!(fs::read(src.join("a.txt")).unwrap(), b"local edit");
    assert!(src.join("empty").exists());

    let r = v
        .engine
        .restore_tree(
            &v.spec,
            &req(Some(vec!["/a.txt", "link"]), None, ConflictPolicy::Overwrite),
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(r.files_restored, 2);
    assert_eq!(fs::read(src.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(fs::read_link(src.join("link")).unwrap(), PathBuf::from("docs/b.bin"));

    let bad = v.engine.restore_tree(
        &v.spec,
        &req(Some(vec!["../etc"]), Some(alt.clone()), ConflictPolicy::Overwrite),
        &NoProgress,
        &Cancel::new(),
    );
    assert!(matches!(bad, Err(EngineError::InvalidRequest(_))));
    let missing = v.engine.restore_tree(
        &v.spec,
        &req(Some(vec!["nope"]), Some(alt), ConflictPolicy::Overwrite),
        &NoProgress,
        &Cancel::new(),
    );
    assert!(matches!(missing, Err(EngineError::InvalidRequest(_))));
}

/// The summary of a recovery point's snapshot, read with rustic_core.
fn summary_of(v: &Vault, rp: &RecoveryPointInfo) -> (String, rustic_core::repofile::SnapshotSummary) {
    use rustic_core::{Credentials, Repository, RepositoryBackends, RepositoryOptions};
    let be = std::sync::Arc::new(backend::LocalBackend::new(v.spec.local_path().unwrap()));
    let repo = Repository::new(
        &RepositoryOptions::default().no_cache(true),
        &RepositoryBackends::new(be, None),
    )
    .unwrap()
    .open(&Credentials::password(v.spec.password.expose()))
    .unwrap();
    let snap = repo.get_snapshots(&[&rp.snapshot_id]).unwrap().pop().unwrap();
    (snap.tree.to_string(), snap.summary.unwrap())
}

/// An unchanged share reuses the parent's trees: nothing but the snapshot is written (through
/// rustic_core's archiver: its `unchanged` fast path, which the summary names; through the
/// engine's pipeline: no file read, no blob added, the same root tree); any change deep in the
/// share (content with size and mtime kept, mode, a new, removed or renamed file, a symlink's
/// target) is seen, and what an unchanged backup commits restores to the same tree (engine and
/// stock restic), with a clean `restic check`.
#[test]
fn unchanged_share_reuses_parent_trees_and_changes_are_seen() {
    unchanged_share_case(Vault::new());
    let mut v = Vault::new();
    v.engine = v.engine.with_rustic_tree_archiver(true);
    unchanged_share_case(v);
}

fn unchanged_share_case(v: Vault) {
    let src = v.path("share");
    sample_share(&src);
    let mut n = 0;
    let mut backup = |v: &Vault| {
        n += 1;
        let rp = v
            .engine
            .backup_tree(
                &v.spec,
                &tree_req(&src, &format!("rp{n}"), n),
                &NoProgress,
                &Cancel::new(),
            )
            .unwrap()
            .recovery_point;
        let (tree, sum) = summary_of(v, &rp);
        let fast = if sum.command == "rsvault share pipeline" {
            sum.data_added == 0 && sum.files_new + sum.files_changed == 0 && sum.data_blobs + sum.tree_blobs == 0
        } else {
            sum.command.starts_with("rsvault: unchanged")
        };
        (rp, tree, fast, sum)
    };
    let (_, t1, fast, _) = backup(&v);
    assert!(!fast, "no parent: everything new");
    let (rp, t2, fast, sum) = backup(&v);
    assert!(fast, "unchanged: the parent's trees");
    assert_eq!(t2, t1);
    assert_eq!(
        (sum.files_unmodified, sum.dirs_unmodified),
        (5, 2),
        "4 files and a link, 2 dirs"
    );
    assert_eq!(rp.total_size, 300_000 + 10);

    let deep = src.join("docs/deep/c");
    type Change<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let changes: Vec<Change> = vec![
        (
            "same size and mtime, new content (ctime moves)",
            Box::new(|| {
                fs::write(&deep, b"GAMMA").unwrap();
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_200);
                fs::File::open(&deep).unwrap().set_modified(t).unwrap();
            }),
        ),
        (
            "mode",
            Box::new(|| fs::set_permissions(src.join("docs/b.bin"), fs::Permissions::from_mode(0o644)).unwrap()),
        ),
        ("removed file", Box::new(|| fs::remove_file(src.join("empty")).unwrap())),
        (
            "new file",
            Box::new(|| fs::write(src.join("docs/deep/new"), b"new").unwrap()),
        ),
        (
            "renamed file",
            Box::new(|| fs::rename(src.join("docs/deep/new"), src.join("docs/deep/renamed")).unwrap()),
        ),
        (
            "symlink target",
            Box::new(|| {
                fs::remove_file(src.join("link")).unwrap();
                std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
            }),
        ),
    ];
    let mut prev = t2;
    let mut last = rp;
    for (what, change) in changes {
        change();
        let (_, t, fast, _) = backup(&v);
        assert!(!fast, "{what}: seen as a change");
        assert_ne!(t, prev, "{what}: a new tree");
        let (rp, t_again, fast, _) = backup(&v);
        assert!(fast, "{what}: unchanged again afterwards");
        assert_eq!(t_again, t);
        prev = t;
        last = rp;
    }

    // The last fast-path recovery point restores to the share as it is now.
    let dst = v.path("restored");
    v.engine
        .restore_tree(
            &v.spec,
            &TreeRestoreRequest {
                recovery_point: last.id.clone(),
                paths: None,
                target: Some(dst.clone()),
                conflict: ConflictPolicy::FailOnConflict,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(snapshot_of(&src), snapshot_of(&dst));
    assert_eq!(fs::read(dst.join("docs/deep/c")).unwrap(), b"GAMMA");

    if !restic_available() {
        eprintln!("SKIPPED (restic part): the `restic` binary is not installed");
        return;
    }
    let out = restic(&v.spec, &["check", "--read-data"]);
    assert!(
        out.status.success(),
        "restic check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t = v.path("restic-out");
    let out = restic(
        &v.spec,
        &["restore", &last.snapshot_id, "--target", t.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = t.join(fs::canonicalize(&src).unwrap().strip_prefix("/").unwrap());
    assert_eq!(snapshot_of(&src), snapshot_of(&root));
}

/// The summary of a recovery point's snapshot (engine's pipeline or rustic_core's archiver).
fn summary(v: &Vault, rp: &RecoveryPointInfo) -> rustic_core::repofile::SnapshotSummary {
    summary_of(v, rp).1
}

/// A share with every kind of entry a restore must bring back: hard links, a sparse file, an
/// empty file and directory, modes with set-id bits, names with spaces, newlines, non-UTF-8
/// bytes, a FIFO (backed up, not restored), symlinks (dangling too), files over a chunk.
fn special_share(root: &Path) {
    use std::os::unix::ffi::OsStrExt;
    fs::create_dir_all(root.join("sub/empty dir")).unwrap();
    fs::write(root.join("plain.txt"), b"plain").unwrap();
    fs::write(root.join("big.bin"), noise(11, 3_000_000)).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("sub/hard-a"), b"linked content").unwrap();
    fs::hard_link(root.join("sub/hard-a"), root.join("hard-b")).unwrap();
    fs::write(root.join("name with spaces & ünïcode"), b"u").unwrap();
    fs::write(root.join("new\nline"), b"n").unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"bytes-\xff\xfe")), b"latin1").unwrap();
    fs::write(root.join("-dash"), b"d").unwrap();
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(20 << 20).unwrap();
    {
        use std::os::unix::fs::FileExt;
        sparse.write_all_at(b"middle", 9 << 20).unwrap();
    }
    drop(sparse);
    std::os::unix::fs::symlink("plain.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    fs::set_permissions(root.join("plain.txt"), fs::Permissions::from_mode(0o4751)).unwrap();
    fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o2750)).unwrap();
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o400)).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123_456_789);
    fs::File::open(root.join("big.bin")).unwrap().set_modified(t).unwrap();
}

/// Content and metadata of a restored tree (what `snapshot_of` shows, plus hard links as
/// groups of one inode, and nothing but regular files, dirs and links).
fn links_of(root: &Path) -> Vec<Vec<PathBuf>> {
    let mut by_inode: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<u64, Vec<PathBuf>>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                walk(root, &e.path(), out);
            } else if m.is_file() && m.nlink() > 1 {
                out.entry(m.ino())
                    .or_default()
                    .push(e.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    walk(root, root, &mut by_inode);
    let mut v: Vec<Vec<PathBuf>> = by_inode
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    v.sort();
    v
}

fn without_fifo(mut m: BTreeMap<PathBuf, String>) -> BTreeMap<PathBuf, String> {
    m.remove(Path::new("fifo"));
    m
}

/// The engine's pipeline: `restic check --read-data` is clean, and stock `restic restore` and the
/// engine's restore give the share back (content, modes with set-id bits, mtimes, symlinks, hard
/// links, the sparse file's bytes and holes, special names, empty files and directories).
#[test]
fn pipeline_snapshots_pass_restic_check_and_restore_with_metadata() {
    let v = Vault::new();
    let src = v.path("share");
    special_share(&src);
    let out = v
        .engine
        .backup_tree(&v.spec, &tree_req(&src, "rp", 0), &NoProgress, &Cancel::new())
        .unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(summary(&v, &out.recovery_point).command, "rsvault share pipeline");
    let want = without_fifo(snapshot_of(&src));
    assert!(want.contains_key(Path::new("sub/empty dir")));

    let dst = v.path("restored");
    v.engine
        .restore_tree(
            &v.spec,
            &TreeRestoreRequest {
                recovery_point: "rp".into(),
                paths: None,
                target: Some(dst.clone()),
                conflict: ConflictPolicy::FailOnConflict,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(without_fifo(snapshot_of(&dst)), want);
    assert_eq!(
        links_of(&dst),
        vec![vec![PathBuf::from("hard-b"), PathBuf::from("sub/hard-a")]]
    );
    let sparse = fs::metadata(dst.join("sparse")).unwrap();
    assert!(
        sparse.blocks() * 512 < 4 << 20,
        "the restored sparse file has holes ({} blocks)",
        sparse.blocks()
    );

    if !restic_available() {
        eprintln!("SKIPPED (restic part): the `restic` binary is not installed");
        return;
    }
    let check = restic(&v.spec, &["check", "--read-data"]);
    assert!(
        check.status.success(),
        "restic check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let t = v.path("restic-out");
    let r = restic(
        &v.spec,
        &[
            "restore",
            &out.recovery_point.snapshot_id,
            "--target",
            t.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let root = t.join(fs::canonicalize(&src).unwrap().strip_prefix("/").unwrap());
    assert_eq!(without_fifo(snapshot_of(&root)), want);
    assert_eq!(links_of(&root), links_of(&dst));
}

/// A vault written by rustic_core's archiver (the path before the pipeline) keeps working: its
/// snapshot is the pipeline's parent (nothing read, the same trees: node metadata is recorded
/// alike), the same files elsewhere are cut into the same chunks (nothing added), and a snapshot
/// of the pipeline is a parent of the archiver's.
#[test]
fn archiver_snapshots_and_pipeline_snapshots_share_chunks_trees_and_parents() {
    let v = Vault::new();
    let old = v.engine.clone().with_rustic_tree_archiver(true);
    let src = v.path("share");
    special_share(&src);
    let a = old
        .backup_tree(&v.spec, &tree_req(&src, "old", 0), &NoProgress, &Cancel::new())
        .unwrap();
    let b = v
        .engine
        .backup_tree(&v.spec, &tree_req(&src, "new", 1), &NoProgress, &Cancel::new())
        .unwrap();
    assert_eq!(
        b.bytes_scanned, 0,
        "the archiver's snapshot is the parent: nothing read"
    );
    let (ta, _) = summary_of(&v, &a.recovery_point);
    let (tb, sb) = summary_of(&v, &b.recovery_point);
    assert_eq!(ta, tb, "the same trees");
    assert_eq!((sb.data_blobs, sb.tree_blobs), (0, 0));

    // The same files at another path: no parent, every file read, every chunk already there.
    let copy = v.path("copy");
    special_share(&copy);
    let c = v
        .engine
        .backup_tree(&v.spec, &tree_req(&copy, "copy", 2), &NoProgress, &Cancel::new())
        .unwrap();
    assert!(c.bytes_scanned > 3_000_000);
    let sc = summary(&v, &c.recovery_point);
    assert_eq!(sc.data_blobs, 0, "the same chunks as rustic_core's: nothing new");
    assert!(sc.files_new > 0 && sc.files_unmodified == 0);

    // A pipeline snapshot as the archiver's parent.
    fs::write(src.join("plain.txt"), b"changed").unwrap();
    let d = old
        .backup_tree(&v.spec, &tree_req(&src, "old2", 3), &NoProgress, &Cancel::new())
        .unwrap();
    assert_eq!(d.bytes_scanned, 7, "only the changed file read");
    let dst = v.path("restored");
    v.engine
        .restore_tree(
            &v.spec,
            &TreeRestoreRequest {
                recovery_point: "old2".into(),
                paths: None,
                target: Some(dst.clone()),
                conflict: ConflictPolicy::FailOnConflict,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(without_fifo(snapshot_of(&dst)), without_fifo(snapshot_of(&src)));
    let report = v.engine.verify(&v.spec, ReadData::All).unwrap();
    assert!(report.ok, "{:?}", report.problems);
}

/// One changed file in a share of many directories: only that file is read, only its blob, its
/// directory's tree and the trees above it are added; every other directory keeps the parent's
/// tree.
#[test]
fn a_partly_changed_share_reuses_the_parents_unchanged_subtrees() {
    let v = Vault::new();
    let src = v.path("share");
    for d in 0..20 {
        for f in 0..10 {
            let p = src.join(format!("d{d:02}/f{f}"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, noise(d * 100 + f, 1000 + (f as usize) * 37)).unwrap();
        }
    }
    let first = v
        .engine
        .backup_tree(&v.spec, &tree_req(&src, "one", 0), &NoProgress, &Cancel::new())
        .unwrap();
    let s1 = summary(&v, &first.recovery_point);
    assert_eq!((s1.files_new, s1.dirs_new, s1.data_blobs), (200, 20, 200));
    fs::write(src.join("d07/f3"), b"changed content").unwrap();
    let second = v
        .engine
        .backup_tree(&v.spec, &tree_req(&src, "two", 1), &NoProgress, &Cancel::new())
        .unwrap();
    let s2 = summary(&v, &second.recovery_point);
    assert_eq!(second.bytes_scanned, 15, "only the changed file is read");
    assert_eq!((s2.files_changed, s2.files_unmodified, s2.files_new), (1, 199, 0));
    assert_eq!((s2.dirs_changed, s2.dirs_unmodified), (1, 19));
    assert_eq!(s2.data_blobs, 1, "only the changed file's blob");
    let depth = fs::canonicalize(&src).unwrap().components().count() - 1;
    assert_eq!(
        s2.tree_blobs as usize,
        2 + depth,
        "the changed directory, the share root and the trees of the root's path"
    );
    assert_eq!(s2.data_added_files, 15);
    assert!(
        s2.data_added * 10 < s1.data_added,
        "{} of {}",
        s2.data_added,
        s1.data_added
    );
}

/// Cancelled before or during the walk: no recovery point, no pack left; progress ends at the
/// share's size.
#[test]
fn pipeline_cancel_commits_nothing_and_progress_reaches_the_total() {
    let v = Vault::new();
    let src = v.path("share");
    sample_share(&src);
    let cancel = Cancel::new();
    cancel.cancel();
    let e = v
        .engine
        .backup_tree(&v.spec, &tree_req(&src, "c", 0), &NoProgress, &cancel)
        .unwrap_err();
    assert!(matches!(e, EngineError::Cancelled), "{e:?}");
    /// Cancels once the transfer reports progress.
    struct CancelOnProgress(Cancel, Recorder);
    impl Progress for CancelOnProgress {
        fn update(&self, task: Task, done: u64, total: u64) {
            self.1.update(task, done, total);
            if task == Task::Transfer {
                self.0.cancel();
            }
        }
    }
    let big = v.path("big");
    for i in 0..40 {
        fs::create_dir_all(big.join(format!("d{i}"))).unwrap();
        fs::write(big.join(format!("d{i}/f")), noise(i, 2_000_000)).unwrap();
    }
    let p = CancelOnProgress(Cancel::new(), Recorder::default());
    let e = v
        .engine
        .backup_tree(&v.spec, &tree_req(&big, "c2", 1), &p, &p.0)
        .unwrap_err();
    assert!(matches!(e, EngineError::Cancelled), "{e:?}");
    assert!(v
        .engine
        .recovery_points(&v.spec, &RecoveryPointFilter::default())
        .unwrap()
        .is_empty());
    let packs = walk_packs(&v.spec.local_path().unwrap().join("data"));
    assert_eq!(packs, 0, "a cancelled backup leaves no pack");

    let rec = Recorder::default();
    let out = v
        .engine
        .backup_tree(&v.spec, &tree_req(&src, "ok", 2), &rec, &Cancel::new())
        .unwrap();
    let last = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .rfind(|(t, _, _)| *t == Task::Transfer)
        .copied()
        .unwrap();
    assert_eq!((last.1, last.2), (300_010, 300_010));
    assert_eq!(out.recovery_point.total_size, 300_010);
}

fn walk_packs(d: &Path) -> usize {
    fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| if e.path().is_dir() { walk_packs(&e.path()) } else { 1 })
                .sum()
        })
        .unwrap_or(0)
}

/// Every name below `root` that a restore uses while staged (`.NAME.rsvault-restore-PID-N`).
fn staged_names(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).unwrap().flatten() {
        if e.file_name().to_string_lossy().contains(".rsvault-restore-") {
            out.push(e.path());
        }
        if e.file_type().unwrap().is_dir() {
            out.extend(staged_names(&e.path()));
        }
    }
    out
}

/// A restore into a target that partly exists: files in existing directories go through
/// temporary names, directories that do not exist are staged whole under a temporary name and
/// renamed once; metadata (modes with set-id bits, directory times, hard links across the two
/// kinds, symlinks, sparse files) comes back all the same, nothing staged is left, and a
/// failure while staging (a file where the snapshot has a directory) removes the new subtrees it
/// had made and changes nothing else.
#[test]
fn restores_into_a_partly_existing_target_stage_new_directories_whole() {
    use std::os::unix::fs::symlink;
    let v = Vault::new();
    let src = v.path("share");
    special_share(&src);
    fs::create_dir_all(src.join("new/deeper/deepest")).unwrap();
    fs::write(src.join("new/deeper/deepest/f"), b"deep").unwrap();
    fs::hard_link(src.join("plain.txt"), src.join("new/deeper/plain-link")).unwrap();
    symlink("../../plain.txt", src.join("new/deeper/up")).unwrap();
    fs::set_permissions(src.join("new/deeper"), fs::Permissions::from_mode(0o750)).unwrap();
    let dir_time = std::time::UNIX_EPOCH + std::time::Duration::new(1_650_000_000, 0);
    fs::File::open(src.join("new/deeper"))
        .unwrap()
        .set_modified(dir_time)
        .unwrap();
    let out = v
        .engine
        .backup_tree(&v.spec, &tree_req(&src, "rp", 0), &NoProgress, &Cancel::new())
        .unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let want = without_fifo(snapshot_of(&src));
    let req = |target: &Path| TreeRestoreRequest {
        recovery_point: "rp".into(),
        paths: None,
        target: Some(target.to_path_buf()),
        conflict: ConflictPolicy::Overwrite,
    };

    // "sub" exists (with a file of its own); "new" does not.
    let dst = v.path("partly");
    fs::create_dir_all(dst.join("sub")).unwrap();
    fs::write(dst.join("sub/local-only"), b"kept").unwrap();
    fs::write(dst.join("plain.txt"), b"overwritten").unwrap();
    let r = v
        .engine
        .restore_tree(&v.spec, &req(&dst), &NoProgress, &Cancel::new())
        .unwrap();
    assert_eq!(
        r.files_restored as usize,
        want.values().filter(|d| !d.starts_with("dir")).count()
    );
    assert_eq!(staged_names(&dst), Vec::<PathBuf>::new());
    assert_eq!(fs::read(dst.join("sub/local-only")).unwrap(), b"kept");
    fs::remove_file(dst.join("sub/local-only")).unwrap();
    assert_eq!(without_fifo(snapshot_of(&dst)), want);
    assert_eq!(
        links_of(&dst),
        vec![
            vec![PathBuf::from("hard-b"), PathBuf::from("sub/hard-a")],
            vec![PathBuf::from("new/deeper/plain-link"), PathBuf::from("plain.txt")],
        ]
    );
    let deeper = fs::metadata(dst.join("new/deeper")).unwrap();
    assert_eq!((deeper.mode() & 0o7777, deeper.mtime()), (0o750, 1_650_000_000));
    assert!(fs::metadata(dst.join("sparse")).unwrap().blocks() * 512 < 4 << 20);

    // A regular file where the snapshot has the directory "sub": refused while staging, after
    // "new" (before it in tree order) was made under a temporary name.
    let bad = v.path("bad");
    fs::create_dir_all(&bad).unwrap();
    fs::write(bad.join("sub"), b"a file").unwrap();
    let e = v.engine.restore_tree(&v.spec, &req(&bad), &NoProgress, &Cancel::new());
    assert!(matches!(e, Err(EngineError::Target { .. })), "{e:?}");
    let left: Vec<_> = fs::read_dir(&bad).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("sub")], "nothing staged is left");
    assert_eq!(fs::read(bad.join("sub")).unwrap(), b"a file");
}
