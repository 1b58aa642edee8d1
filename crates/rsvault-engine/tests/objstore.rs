//! Vaults in object storage: the engine's round trips against the real S3 server and Azurite
//! that the test command starts (see `scripts/object-test-servers`), and stock `restic` reading
//! the S3 vault.

mod common;

use std::fs;
use std::sync::Arc;

use common::*;
use rsvault_engine::objstore::{ObjectRepo, ObjectStore, ObjectStoreOptions, ObjectTarget};
use rsvault_engine::*;

fn object_vault(kind: &str, target: ObjectTarget) -> (RepoSpec, Arc<ObjectStore>) {
    let store = ObjectStore::connect(&format!("test-{kind}"), target).unwrap();
    let repo = ObjectRepo {
        store: store.clone(),
        path: format!("vaults/{}", uuid_like()),
    };
    (RepoSpec::in_object_store(repo, VaultKeys::generate_password()), store)
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{n:x}-{}", std::process::id())
}

fn disk_req(disks: Vec<DiskSource>, rp: &str, n: i64) -> DiskBackupRequest {
    DiskBackupRequest {
        disks,
        tags: tags("VM;iaasvmcontainerv2;rg;vm1", rp),
        time: t0() + chrono::Duration::seconds(n),
        expiry: None,
        parent: None,
    }
}

fn tree_of(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn disks_and_trees_round_trip_through_object_storage_and_restic_reads_the_s3_vault() {
    for (kind, target) in object_targets() {
        let engine = ResticEngine::new();
        let (spec, store) = object_vault(kind, target);
        engine.init(&spec).unwrap();
        // A second init finds the repository and keeps it.
        engine.init(&spec).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("os.raw");
        let mut bytes = make_raw(&raw, 7);
        let q = dir.path().join("data.qcow2");
        to_qcow2(&raw, &q);
        let disks = vec![
            DiskSource {
                name: "os".into(),
                path: raw.clone(),
            },
            DiskSource {
                name: "data".into(),
                path: q.clone(),
            },
        ];
        let first = engine
            .backup_disks(&spec, &disk_req(disks.clone(), "a", 1), &NoProgress, &Cancel::new())
            .unwrap();
        // 1 % of the image changes: the second backup stores only the changed chunks.
        let at = bytes.len() / 3;
        bytes[at..at + 4096].fill(0xab);
        fs::write(&raw, &bytes).unwrap();
        let second = engine
            .backup_disks(
                &spec,
                &disk_req(disks[..1].to_vec(), "b", 2),
                &NoProgress,
                &Cancel::new(),
            )
            .unwrap();
        assert!(
            second.bytes_added < first.bytes_added / 4,
            "{kind}: the changed backup stored {} bytes after {}",
            second.bytes_added,
            first.bytes_added
        );
        let share = dir.path().join("share");
        fs::create_dir_all(share.join("sub")).unwrap();
        fs::write(share.join("a.txt"), b"hello object storage").unwrap();
        fs::write(share.join("sub/big.bin"), noise(9, 3 << 20)).unwrap();
        engine
            .backup_tree(
                &spec,
                &TreeBackupRequest {
                    root: share.clone(),
                    tags: tags("AzureFileShare;share1", "t"),
                    time: t0() + chrono::Duration::seconds(3),
                    expiry: None,
                    parent: None,
                },
                &NoProgress,
                &Cancel::new(),
            )
            .unwrap();
        let points = engine.recovery_points(&spec, &RecoveryPointFilter::default()).unwrap();
        assert_eq!(points.len(), 3, "{kind}: {points:?}");

        // Restores read the packs back with ranged GETs.
        assert_restores_disk(&engine, &spec, &dir.path().join("out"), "b", &bytes, kind);
        let tree_out = dir.path().join("tree-out");
        fs::create_dir(&tree_out).unwrap();
        engine
            .restore_tree(
                &spec,
                &TreeRestoreRequest {
                    recovery_point: "t".into(),
                    paths: None,
                    target: Some(tree_out.clone()),
                    conflict: ConflictPolicy::FailOnConflict,
                },
                &NoProgress,
                &Cancel::new(),
            )
            .unwrap();
        assert_eq!(tree_of(&tree_out), tree_of(&share), "{kind}: restored share differs");
        let check = engine.verify(&spec, ReadData::All).unwrap();
        assert!(check.ok, "{kind}: {:?}", check.problems);

        // Stock restic reads the S3 vault (it reaches Azure only at Azure's public endpoints).
        if kind == "s3" {
            let out = restic(&spec, &["check", "--read-data"]);
            assert!(
                out.status.success(),
                "restic check: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let out = restic(&spec, &["snapshots", "--json"]);
            let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(snaps.len(), 3, "restic sees every recovery point");
        }

        // Deleting a point and pruning marks its packs first (two-phase on an object store):
        // the vault stays whole and readable.
        assert_eq!(engine.delete_recovery_points(&spec, &["a".into()]).unwrap(), 1);
        engine.prune(&spec, t0()).unwrap();
        let check = engine.verify(&spec, ReadData::All).unwrap();
        assert!(check.ok, "{kind} after prune: {:?}", check.problems);
        assert_eq!(
            engine
                .recovery_points(&spec, &RecoveryPointFilter::default())
                .unwrap()
                .len(),
            2
        );

        // Removing the vault's prefix removes the repository.
        let RepoLocation::Object(o) = &spec.location else {
            unreachable!()
        };
        assert!(store.remove_all(&o.path).unwrap() > 0);
        assert_eq!(
            store.remove_all(&o.path).unwrap(),
            0,
            "{kind}: objects left after removal"
        );
        assert!(engine.recovery_points(&spec, &RecoveryPointFilter::default()).is_err());
    }
}

#[test]
fn an_object_store_that_does_not_answer_fails_with_a_storage_error_naming_it() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for target in [
        ObjectTarget::S3 {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "b".into(),
            region: "us-east-1".into(),
            prefix: String::new(),
            access_key_id: "id".into(),
            secret_access_key: "SECRET-NEVER-SHOWN".into(),
        },
        ObjectTarget::Azblob {
            endpoint: format!("http://127.0.0.1:{port}/acct"),
            account: "acct".into(),
            container: "c".into(),
            prefix: String::new(),
            account_key: Some("U0VDUkVULU5FVkVSLVNIT1dO".into()),
            sas_token: None,
        },
    ] {
        let (spec, _) = object_vault("down", target);
        let t = std::time::Instant::now();
        match ResticEngine::new().init(&spec) {
            Err(EngineError::Storage { target, reason }) => {
                assert_eq!(target, "test-down");
                assert!(!reason.contains("SECRET-NEVER-SHOWN"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "retries are bounded");
    }
}

#[test]
fn two_nodes_on_one_vault_prefix_never_hold_conflicting_locks() {
    for (kind, target) in object_targets() {
        // Two nodes: two stores (each with its own in-process lock table) on one prefix.
        let (spec, _) = object_vault(kind, target.clone());
        let RepoLocation::Object(a) = &spec.location else {
            unreachable!()
        };
        let b = ObjectRepo {
            store: ObjectStore::connect("other-node", target).unwrap(),
            path: a.path.clone(),
        };
        let (r1, r2) = (a.lock(false).unwrap(), b.lock(false).unwrap());
        drop((r1, r2)); // shared locks of two nodes coexist
        let held = a.lock(true).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _shared = b.lock(false).unwrap();
            tx.send(std::time::Instant::now()).unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(800));
        assert!(
            rx.try_recv().is_err(),
            "{kind}: another node got a shared lock beside an exclusive one"
        );
        let released = std::time::Instant::now();
        drop(held);
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the lock is taken after release");
        assert!(got >= released, "{kind}");
        t.join().unwrap();
    }
}

/// Short timeouts and pauses, so that a refusing or silent store fails a call in seconds.
fn fast_retries() -> ObjectStoreOptions {
    ObjectStoreOptions {
        request_timeout: std::time::Duration::from_secs(8),
        io_timeout: std::time::Duration::from_secs(5),
        retries: 3,
        min_backoff: std::time::Duration::from_millis(20),
        max_backoff: std::time::Duration::from_millis(200),
    }
}

/// Restores recovery point `rp`'s disks into `out` (made here) and checks the `os` disk is `bytes`.
fn assert_restores_disk(
    engine: &ResticEngine,
    spec: &RepoSpec,
    out: &std::path::Path,
    rp: &str,
    bytes: &[u8],
    kind: &str,
) {
    fs::create_dir(out).unwrap();
    engine
        .restore_disks(
            spec,
            &DiskRestoreRequest {
                recovery_point: rp.into(),
                disks: None,
                target: DiskRestoreTarget::Directory(out.to_path_buf()),
                format: None,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert!(
        fs::read(out.join("os")).unwrap() == bytes,
        "{kind}: restored disk differs"
    );
}

fn point_ids(engine: &ResticEngine, spec: &RepoSpec) -> Vec<String> {
    let mut ids: Vec<String> = engine
        .recovery_points(spec, &RecoveryPointFilter::default())
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_store_answering_503_or_stalling_fails_the_backup_with_nothing_partial_and_a_burst_is_absorbed() {
    use common::faultproxy::{Fault, FaultProxy, Rule};
    for (kind, target) in object_targets() {
        let (proxy, through) = FaultProxy::start(&target);
        let name = format!("faulty-{kind}");
        let store = ObjectStore::connect_with(&name, through, fast_retries()).unwrap();
        let spec = RepoSpec::in_object_store(
            ObjectRepo {
                store,
                path: format!("vaults/{}", uuid_like()),
            },
            VaultKeys::generate_password(),
        );
        let engine = ResticEngine::new();
        engine.init(&spec).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("os.raw");
        let mut bytes = make_raw(&raw, 21);
        let disks = vec![DiskSource {
            name: "os".into(),
            path: raw.clone(),
        }];
        let mut n = 0;
        let mut change = |bytes: &mut Vec<u8>| {
            // New data each time, so every backup uploads packs.
            n += 1;
            let at = n * 8192;
            bytes[at..at + 4096].copy_from_slice(&noise(100 + n as u64, 4096));
            fs::write(&raw, &*bytes).unwrap();
        };
        engine
            .backup_disks(&spec, &disk_req(disks.clone(), "a", 1), &NoProgress, &Cancel::new())
            .unwrap();

        let expect_storage_error = |r: Result<BackupOutcome>, what: &str| match r {
            Err(EngineError::Storage { target, reason }) => {
                assert_eq!(target, name, "{kind} {what}: {reason}");
            }
            Err(other) => panic!("{kind} {what}: not a storage error: {other:?}"),
            Ok(_) => panic!("{kind} {what}: the backup succeeded"),
        };

        // Every pack upload refused, beyond the retry budget.
        change(&mut bytes);
        proxy.arm(Rule::all(Fault::Unavailable).method("PUT").path("/data/"));
        let before = proxy.injected();
        let r = engine.backup_disks(&spec, &disk_req(disks.clone(), "b", 2), &NoProgress, &Cancel::new());
        expect_storage_error(r, "packs refused");
        assert!(
            proxy.injected() > before + fast_retries().retries,
            "{kind}: every attempt met the fault"
        );
        assert_eq!(
            point_ids(&engine, &spec),
            ["a"],
            "{kind}: no point from a failed backup"
        );

        // The commit refused: packs and index are in, the snapshot is not.
        change(&mut bytes);
        proxy.arm(Rule::all(Fault::Unavailable).method("PUT").path("/snapshots/"));
        let r = engine.backup_disks(&spec, &disk_req(disks.clone(), "c", 3), &NoProgress, &Cancel::new());
        expect_storage_error(r, "snapshot refused");
        assert_eq!(
            point_ids(&engine, &spec),
            ["a"],
            "{kind}: no point without its snapshot"
        );

        // A store that stops answering: every pack upload hangs past the client's timeout.
        change(&mut bytes);
        proxy.arm(Rule::all(Fault::Stall).method("PUT").path("/data/"));
        let r = engine.backup_disks(&spec, &disk_req(disks.clone(), "d", 4), &NoProgress, &Cancel::new());
        proxy.disarm();
        expect_storage_error(r, "stalled uploads");
        assert_eq!(
            point_ids(&engine, &spec),
            ["a"],
            "{kind}: no point from a stalled backup"
        );

        // A burst shorter than the retry budget is absorbed.
        change(&mut bytes);
        let before = proxy.injected();
        proxy.arm(Rule::all(Fault::Unavailable).method("PUT").times(2));
        engine
            .backup_disks(&spec, &disk_req(disks.clone(), "e", 5), &NoProgress, &Cancel::new())
            .unwrap_or_else(|e| panic!("{kind}: a burst of two 503s failed the backup: {e}"));
        assert_eq!(proxy.injected(), before + 2, "{kind}: the burst met the client");
        proxy.disarm();

        // The store is back: the next backup completes and the vault is whole.
        change(&mut bytes);
        engine
            .backup_disks(&spec, &disk_req(disks.clone(), "f", 6), &NoProgress, &Cancel::new())
            .unwrap();
        assert_eq!(point_ids(&engine, &spec), ["a", "e", "f"], "{kind}");
        let check = engine.verify(&spec, ReadData::All).unwrap();
        assert!(check.ok, "{kind}: {:?}", check.problems);
        assert_restores_disk(&engine, &spec, &dir.path().join("out"), "f", &bytes, kind);
        if kind == "s3" {
            // Stock restic, straight to the store (not through the proxy).
            let direct = RepoSpec::in_object_store(
                ObjectRepo {
                    store: ObjectStore::connect("direct", target.clone()).unwrap(),
                    path: match &spec.location {
                        RepoLocation::Object(o) => o.path.clone(),
                        _ => unreachable!(),
                    },
                },
                spec.password.clone(),
            );
            let out = restic(&direct, &["check", "--read-data"]);
            assert!(
                out.status.success(),
                "restic check: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let out = restic(&direct, &["snapshots", "--json"]);
            let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(snaps.len(), 3, "restic sees exactly the three recovery points");
        }
    }
}
