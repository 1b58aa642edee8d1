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

/// An unchanged share reuses the parent's trees without rustic_core's archiver (the snapshot
/// says so in its summary); any change deep in the share (content with size and mtime kept,
/// mode, a new, removed or renamed file, a symlink's target) sends the backup through the
/// archiver again, and what the fast path commits restores to the same tree (engine and stock
/// restic), with a clean `restic check`.
#[test]
fn unchanged_share_reuses_parent_trees_and_changes_are_seen() {
    let v = Vault::new();
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
        (rp, tree, sum.command.starts_with("rsvault: unchanged"), sum)
    };
    let (_, t1, fast, _) = backup(&v);
    assert!(!fast, "no parent: the archiver");
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
        assert!(!fast, "{what}: the archiver");
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
