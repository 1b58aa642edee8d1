//! Recovery point lifecycle: delete, expiry, prune, verify, cancellation, crash, restic interop.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rsvault_engine::*;

fn disk_req(path: &Path, rp: &str, n: i64) -> DiskBackupRequest {
    DiskBackupRequest {
        disks: vec![DiskSource {
            name: "disk0".into(),
            path: path.to_path_buf(),
        }],
        tags: tags("VM;iaasvmcontainerv2;rg;vm1", rp),
        time: t0() + chrono::Duration::seconds(n),
        expiry: None,
        parent: None,
    }
}

fn pack_count(repo: &Path) -> usize {
    (0..=255u8)
        .map(|b| {
            fs::read_dir(repo.join("data").join(format!("{b:02x}")))
                .map(|r| r.count())
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn delete_expiry_prune_and_verify() {
    let v = Vault::new();
    let a = v.path("a.raw");
    make_raw(&a, 11);
    let b = v.path("b.raw");
    make_raw(&b, 12);
    let mut r1 = disk_req(&a, "keep", 0);
    r1.expiry = Some(t0() + chrono::Duration::days(30));
    v.engine
        .backup_disks(&v.spec, &r1, &NoProgress, &Cancel::new())
        .unwrap();
    let mut r2 = disk_req(&b, "old", 1);
    r2.tags.item = "VM;iaasvmcontainerv2;rg;vm2".into();
    r2.expiry = Some(t0() + chrono::Duration::days(1));
    v.engine
        .backup_disks(&v.spec, &r2, &NoProgress, &Cancel::new())
        .unwrap();
    let rp = v.engine.recovery_point(&v.spec, "old").unwrap();
    assert_eq!(rp.expiry, r2.expiry);
    let size_before = du(&v.spec.local_path().unwrap().join("data"));

    // Nothing expired yet.
    let rep = v.engine.prune(&v.spec, t0() + chrono::Duration::hours(1)).unwrap();
    assert!(rep.expired.is_empty());
    assert_eq!(v.engine.recovery_points(&v.spec, &Default::default()).unwrap().len(), 2);

    // "old" expires; its unique data goes.
    let rep = v.engine.prune(&v.spec, t0() + chrono::Duration::days(2)).unwrap();
    assert_eq!(rep.expired, ["old"]);
    assert!(rep.bytes_removed > 0, "{rep:?}");
    let size_after = du(&v.spec.local_path().unwrap().join("data"));
    assert!(size_after < size_before * 7 / 10, "{size_after} vs {size_before}");
    assert!(matches!(
        v.engine.recovery_point(&v.spec, "old"),
        Err(EngineError::RecoveryPointNotFound(_))
    ));
    let report = v.engine.verify(&v.spec, ReadData::All).unwrap();
    assert!(report.ok, "{:?}", report.problems);

    // The survivor still restores.
    let t = v.path("t");
    fs::create_dir(&t).unwrap();
    v.engine
        .restore_disks(
            &v.spec,
            &DiskRestoreRequest {
                recovery_point: "keep".into(),
                disks: None,
                target: DiskRestoreTarget::Directory(t.clone()),
                format: None,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(fs::read(t.join("disk0")).unwrap(), fs::read(&a).unwrap());

    // Explicit delete, then prune empties the data.
    assert_eq!(
        v.engine
            .delete_recovery_points(&v.spec, &["keep".into(), "unknown".into()])
            .unwrap(),
        1
    );
    v.engine.prune(&v.spec, t0()).unwrap();
    assert_eq!(pack_count(v.spec.local_path().unwrap()), 0);
    assert!(v.engine.verify(&v.spec, ReadData::None).unwrap().ok);
}

#[test]
fn verify_finds_a_damaged_pack() {
    let v = Vault::new();
    let a = v.path("a.raw");
    make_raw(&a, 21);
    v.engine
        .backup_disks(&v.spec, &disk_req(&a, "x", 0), &NoProgress, &Cancel::new())
        .unwrap();
    assert!(v.engine.verify(&v.spec, ReadData::All).unwrap().ok);
    // Flip a byte in the middle of the largest pack.
    let mut packs: Vec<_> = walk_files(&v.spec.local_path().unwrap().join("data"));
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let victim = packs.last().unwrap();
    let mut bytes = fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let mut perm = fs::metadata(victim).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(victim, perm).unwrap();
    fs::write(victim, bytes).unwrap();
    assert!(
        v.engine.verify(&v.spec, ReadData::None).unwrap().ok,
        "structure alone is intact"
    );
    let r = v.engine.verify(&v.spec, ReadData::All).unwrap();
    assert!(!r.ok);
    assert!(!r.problems.is_empty());
    // A restore never hands out damaged bytes.
    let t = v.path("t");
    fs::create_dir(&t).unwrap();
    let e = v.engine.restore_disks(
        &v.spec,
        &DiskRestoreRequest {
            recovery_point: "x".into(),
            disks: None,
            target: DiskRestoreTarget::Directory(t.clone()),
            format: None,
        },
        &NoProgress,
        &Cancel::new(),
    );
    assert!(e.is_err());
    assert!(!t.join("disk0").exists());
    assert_eq!(fs::read_dir(&t).unwrap().count(), 0, "no temporary file left");
}

fn walk_files(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(d).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// A large incompressible image so that the transfer is still running when we act.
fn big_image(path: &Path, mib: usize) {
    fs::write(path, noise(77, mib * 1024 * 1024)).unwrap();
}

fn wait_for_pack(repo: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if pack_count(repo) > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn cancellation_mid_transfer_commits_nothing() {
    let v = Vault::new();
    let img = v.path("big.raw");
    big_image(&img, 160);
    let cancel = Cancel::new();
    let repo = v.spec.local_path().unwrap().to_path_buf();
    let c2 = cancel.clone();
    let watcher = std::thread::spawn(move || {
        let seen = wait_for_pack(&repo, Duration::from_secs(60));
        c2.cancel();
        seen
    });
    let rec = Recorder::default();
    let r = v.engine.backup_disks(&v.spec, &disk_req(&img, "c", 0), &rec, &cancel);
    assert!(watcher.join().unwrap(), "a pack was written before the cancel");
    assert!(matches!(r, Err(EngineError::Cancelled)), "{r:?}");
    let transferred = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| *t == Task::Transfer)
        .map(|(_, d, _)| *d)
        .max()
        .unwrap_or(0);
    assert!(
        transferred < 160 * 1024 * 1024,
        "cancelled before the end ({transferred})"
    );
    assert!(v
        .engine
        .recovery_points(&v.spec, &Default::default())
        .unwrap()
        .is_empty());
    assert!(fs::read_dir(v.spec.local_path().unwrap().join("snapshots"))
        .unwrap()
        .next()
        .is_none());
    assert!(v.engine.verify(&v.spec, ReadData::None).unwrap().ok);
    // The orphan packs go with the next prune.
    v.engine.prune(&v.spec, t0()).unwrap();
    assert_eq!(pack_count(v.spec.local_path().unwrap()), 0);
    // And the vault works normally afterwards.
    let small = v.path("small.raw");
    make_raw(&small, 2);
    v.engine
        .backup_disks(&v.spec, &disk_req(&small, "after", 1), &NoProgress, &Cancel::new())
        .unwrap();
}

/// The child half of `killed_backup_leaves_a_valid_vault` (runs only when invoked by it).
#[test]
#[ignore = "helper process for killed_backup_leaves_a_valid_vault"]
fn crash_child() {
    let Ok(args) = std::env::var("RSVAULT_CRASH_CHILD") else {
        return;
    };
    let mut it = args.split('\n');
    let (repo, pw, img) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let spec = RepoSpec::new(repo, Secret::new(pw));
    let _ = ResticEngine::new().backup_disks(
        &spec,
        &disk_req(Path::new(img), "crash", 0),
        &NoProgress,
        &Cancel::new(),
    );
    // Reaching this point means the kill came too late; the parent will notice.
}

#[test]
fn killed_backup_leaves_a_valid_vault() {
    let v = Vault::new();
    let img = v.path("big.raw");
    big_image(&img, 160);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(
            "RSVAULT_CRASH_CHILD",
            format!(
                "{}\n{}\n{}",
                v.spec.local_path().unwrap().display(),
                v.spec.password.expose(),
                img.display()
            ),
        )
        .spawn()
        .unwrap();
    assert!(
        wait_for_pack(v.spec.local_path().unwrap(), Duration::from_secs(60)),
        "child wrote no pack"
    );
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must have been killed mid-backup");
    assert!(v
        .engine
        .recovery_points(&v.spec, &Default::default())
        .unwrap()
        .is_empty());
    let r = v.engine.verify(&v.spec, ReadData::All).unwrap();
    assert!(r.ok, "{:?}", r.problems);
    v.engine.prune(&v.spec, t0()).unwrap();
    assert_eq!(pack_count(v.spec.local_path().unwrap()), 0);
    assert_eq!(
        fs::read_dir(v.spec.local_path().unwrap().join("tmp")).unwrap().count(),
        0
    );
    let small = v.path("small.raw");
    make_raw(&small, 9);
    v.engine
        .backup_disks(&v.spec, &disk_req(&small, "after", 1), &NoProgress, &Cancel::new())
        .unwrap();
}

#[test]
fn stock_restic_restores_the_same_bytes() {
    if !restic_available() {
        eprintln!("SKIPPED: the `restic` binary is not installed (apt-get install -y restic)");
        return;
    }
    let v = Vault::new();
    let raw = v.path("os.raw");
    let bytes = make_raw(&raw, 31);
    let q = v.path("data.qcow2");
    to_qcow2(&raw, &q);
    let mut req = disk_req(&raw, "vm-rp", 0);
    req.disks.push(DiskSource {
        name: "data".into(),
        path: q,
    });
    let disk_rp = v
        .engine
        .backup_disks(&v.spec, &req, &NoProgress, &Cancel::new())
        .unwrap()
        .recovery_point;
    let share = v.path("share");
    fs::create_dir_all(share.join("sub dir")).unwrap();
    fs::write(share.join("sub dir/f.txt"), b"hello restic").unwrap();
    fs::write(share.join("big"), noise(3, 2_000_000)).unwrap();
    std::os::unix::fs::symlink("big", share.join("ln")).unwrap();
    let tree_rp = v
        .engine
        .backup_tree(
            &v.spec,
            &TreeBackupRequest {
                root: share.clone(),
                tags: tags("AzureFileShare;s", "share-rp"),
                time: t0(),
                expiry: None,
                parent: None,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap()
        .recovery_point;

    let out = restic(&v.spec, &["snapshots", "--json", "--tag", "rp=vm-rp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], disk_rp.snapshot_id);

    // Disk images are stored in fixed-size chunks (restic's own chunker would vary them).
    let out = restic(&v.spec, &["cat", "snapshot", &disk_rp.snapshot_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = restic(&v.spec, &["cat", "blob", snap["tree"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let disk0 = tree["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "disk0")
        .unwrap();
    let chunks = disk0["content"].as_array().unwrap().len();
    assert_eq!(
        chunks,
        bytes.len().div_ceil(backend::DISK_CHUNK_SIZE),
        "fixed-size chunks"
    );

    let t = v.path("restic-out");
    let out = restic(
        &v.spec,
        &["restore", &disk_rp.snapshot_id, "--target", t.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(t.join("disk0")).unwrap(), bytes);
    assert_eq!(
        fs::read(t.join("data")).unwrap(),
        bytes,
        "qcow2 stored as its virtual content"
    );

    let t2 = v.path("restic-share");
    let out = restic(
        &v.spec,
        &["restore", &tree_rp.snapshot_id, "--target", t2.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = t2.join(fs::canonicalize(&share).unwrap().strip_prefix("/").unwrap());
    assert_eq!(fs::read(root.join("sub dir/f.txt")).unwrap(), b"hello restic");
    assert_eq!(fs::read(root.join("big")).unwrap(), noise(3, 2_000_000));
    assert_eq!(fs::read_link(root.join("ln")).unwrap(), Path::new("big"));

    let out = restic(&v.spec, &["check", "--read-data"]);
    assert!(
        out.status.success(),
        "restic check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The scrypt parameters in a new repository's key file: light for a generated 256-bit
/// password (`KeyDerivation::RandomSecret`), restic's otherwise; stock restic opens both, and
/// only with the right password.
#[test]
fn key_derivation_parameters_and_stock_restic() {
    fn key_params(repo: &Path) -> (u64, u64, u64) {
        let keys: Vec<_> = fs::read_dir(repo.join("keys")).unwrap().flatten().collect();
        assert_eq!(keys.len(), 1, "one key file");
        let k: serde_json::Value = serde_json::from_slice(&fs::read(keys[0].path()).unwrap()).unwrap();
        let n = |f: &str| k[f].as_u64().unwrap();
        (n("N"), n("r"), n("p"))
    }
    let dir = tempfile::tempdir().unwrap();
    let light = RepoSpec::with_random_secret(dir.path().join("light"), VaultKeys::generate_password());
    let standard = RepoSpec::new(dir.path().join("standard"), VaultKeys::generate_password());
    let e = ResticEngine::new();
    e.init(&light).unwrap();
    e.init(&standard).unwrap();
    assert_eq!(key_params(light.local_path().unwrap()), (1024, 8, 1));
    assert_eq!(key_params(standard.local_path().unwrap()), (131_072, 8, 1));
    // A fresh engine (no cached master key) opens both through the key file; init is idempotent.
    for s in [&light, &standard] {
        let e = ResticEngine::new();
        e.init(s).unwrap();
        assert!(e
            .recovery_points(s, &RecoveryPointFilter::default())
            .unwrap()
            .is_empty());
        let wrong = RepoSpec::new(s.local_path().unwrap().to_path_buf(), VaultKeys::generate_password());
        assert!(ResticEngine::new().init(&wrong).is_err());
    }
    // A short (possibly human) password is refused the light parameters.
    let short = RepoSpec::with_random_secret(dir.path().join("short"), Secret::new("correct horse battery"));
    assert!(matches!(e.init(&short), Err(EngineError::InvalidRequest(_))));
    assert!(!short.local_path().unwrap().join("config").exists());

    if !restic_available() {
        eprintln!("SKIPPED (restic part): the `restic` binary is not installed");
        return;
    }
    for s in [&light, &standard] {
        let out = restic(s, &["cat", "config"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let wrong = RepoSpec::new(s.local_path().unwrap().to_path_buf(), VaultKeys::generate_password());
        assert!(!restic(&wrong, &["cat", "config"]).status.success());
    }
    // A key stock restic adds (restic's own parameters) opens the light repository for both.
    let pw2 = v2_password();
    let out = Command::new("restic")
        .arg("-r")
        .arg(light.local_path().unwrap())
        .args(["key", "add", "--new-password-file"])
        .arg(pw2.0.path())
        .env("RESTIC_PASSWORD", light.password.expose())
        .env("RESTIC_CACHE_DIR", dir.path().join("restic-cache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = RepoSpec::new(light.local_path().unwrap().to_path_buf(), pw2.1);
    ResticEngine::new().init(&second).unwrap();

    fn v2_password() -> (tempfile::NamedTempFile, Secret) {
        let pw = VaultKeys::generate_password();
        let f = tempfile::NamedTempFile::new().unwrap();
        fs::write(f.path(), pw.expose()).unwrap();
        (f, pw)
    }
}

/// A key file left by an init that stopped before writing the config does not keep the next
/// init from making a working repository.
#[test]
fn init_after_a_crash_between_key_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let spec = RepoSpec::with_random_secret(dir.path().join("repo"), VaultKeys::generate_password());
    let e = ResticEngine::new();
    e.init(&spec).unwrap();
    let key = fs::read_dir(spec.local_path().unwrap().join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let stale = fs::read(&key).unwrap();
    // Simulate the crash: a repository with a key (same password, another master key) and no config.
    fs::remove_dir_all(spec.local_path().unwrap()).unwrap();
    fs::create_dir_all(spec.local_path().unwrap().join("keys")).unwrap();
    fs::write(
        spec.local_path().unwrap().join("keys").join(key.file_name().unwrap()),
        stale,
    )
    .unwrap();
    let e = ResticEngine::new();
    e.init(&spec).unwrap();
    assert!(ResticEngine::new()
        .recovery_points(&spec, &RecoveryPointFilter::default())
        .is_ok());
}
