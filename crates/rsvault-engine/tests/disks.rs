//! VM disk backups and restores against a real repository on disk.

mod common;

use std::fs;

use common::*;
use rsvault_engine::*;

fn disk_req(disks: Vec<DiskSource>, rp: &str) -> DiskBackupRequest {
    // Later ids get later times ("a" < "b" < "c").
    let offset = rp.bytes().map(i64::from).sum::<i64>();
    DiskBackupRequest {
        disks,
        tags: tags("VM;iaasvmcontainerv2;rg;vm1", rp),
        time: t0() + chrono::Duration::seconds(offset),
        expiry: None,
        parent: None,
    }
}

#[test]
fn raw_and_qcow2_round_trip_and_dedupe() {
    let v = Vault::new();
    let raw = v.path("os.raw");
    let bytes = make_raw(&raw, 1);
    let q = v.path("data.qcow2");
    to_qcow2(&raw, &q);
    assert_eq!(
        probe(&q).unwrap(),
        DiskInfo {
            format: ImageFormat::Qcow2,
            virtual_size: bytes.len() as u64
        }
    );
    assert_eq!(probe(&raw).unwrap().format, ImageFormat::Raw);

    let rec = Recorder::default();
    let out = v
        .engine
        .backup_disks(
            &v.spec,
            &disk_req(
                vec![
                    DiskSource {
                        name: "os.raw".into(),
                        path: raw.clone(),
                    },
                    DiskSource {
                        name: "data".into(),
                        path: q.clone(),
                    },
                ],
                "rp1",
            ),
            &rec,
            &Cancel::new(),
        )
        .unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(out.consistency, Consistency::CrashConsistent);
    assert_eq!(out.bytes_scanned, 2 * bytes.len() as u64);
    // qcow2 unallocated clusters (the zero region) are not read.
    assert!(
        out.bytes_skipped_unallocated >= 4 * 1024 * 1024,
        "{}",
        out.bytes_skipped_unallocated
    );
    // The qcow2's virtual content equals the raw image, so it dedupes completely; repeated
    // and zero regions are stored once; text compresses.
    assert!(
        out.bytes_added < bytes.len() as u64 * 6 / 10,
        "added {}",
        out.bytes_added
    );
    let rp = &out.recovery_point;
    assert_eq!(rp.id, "rp1");
    assert_eq!(rp.kind, RecoveryPointKind::Disks);
    assert_eq!(rp.disks.len(), 2);
    assert_eq!(rp.total_size, 2 * bytes.len() as u64);
    let log = rec.0.lock().unwrap();
    let last = log.iter().rev().find(|(t, _, _)| *t == Task::Transfer).unwrap();
    assert_eq!((last.1, last.2), (2 * bytes.len() as u64, 2 * bytes.len() as u64));
    assert!(log.iter().any(|(t, _, _)| *t == Task::Snapshot));
    drop(log);

    // Restore both as raw into a directory: byte-identical to the raw source.
    let target = v.path("restored");
    fs::create_dir(&target).unwrap();
    let r = v
        .engine
        .restore_disks(
            &v.spec,
            &DiskRestoreRequest {
                recovery_point: "rp1".into(),
                disks: None,
                target: DiskRestoreTarget::Directory(target.clone()),
                format: None,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(r.files_restored, 2);
    assert_eq!(fs::read(target.join("os.raw")).unwrap(), bytes);
    assert_eq!(fs::read(target.join("data")).unwrap(), bytes);
    // Zero chunks are holes in the restored file.
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(target.join("os.raw")).unwrap();
    assert!(m.blocks() * 512 < m.len(), "restored image should be sparse");

    // Restoring again into the same directory is a conflict, never an overwrite.
    let again = v.engine.restore_disks(
        &v.spec,
        &DiskRestoreRequest {
            recovery_point: "rp1".into(),
            disks: Some(vec!["data".into()]),
            target: DiskRestoreTarget::Directory(target.clone()),
            format: None,
        },
        &NoProgress,
        &Cancel::new(),
    );
    assert!(matches!(again, Err(EngineError::Conflict { .. })), "{again:?}");

    // As qcow2: a real qcow2 whose content equals the raw image.
    let qt = v.path("restored-q");
    fs::create_dir(&qt).unwrap();
    v.engine
        .restore_disks(
            &v.spec,
            &DiskRestoreRequest {
                recovery_point: "rp1".into(),
                disks: Some(vec!["os.raw".into()]),
                target: DiskRestoreTarget::Directory(qt.clone()),
                format: Some(ImageFormat::Qcow2),
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    let restored_q = qt.join("os.raw");
    assert_eq!(probe(&restored_q).unwrap().format, ImageFormat::Qcow2);
    qemu_img(&["check", restored_q.to_str().unwrap()]);
    qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        restored_q.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert!(v.engine.verify(&v.spec, ReadData::All).unwrap().ok);
}

#[test]
fn changed_image_second_backup_and_original_location_restore() {
    let v = Vault::new();
    let raw = v.path("disk0.raw");
    let mut bytes = make_raw(&raw, 7);
    let d = vec![DiskSource {
        name: "disk0".into(),
        path: raw.clone(),
    }];
    let first = v
        .engine
        .backup_disks(&v.spec, &disk_req(d.clone(), "a"), &NoProgress, &Cancel::new())
        .unwrap();
    // Change 100 KiB in one place: only the touched chunk is new.
    bytes[5_000_000..5_102_400].copy_from_slice(&noise(99, 102_400));
    fs::write(&raw, &bytes).unwrap();
    let second = v
        .engine
        .backup_disks(&v.spec, &disk_req(d.clone(), "b"), &NoProgress, &Cancel::new())
        .unwrap();
    assert!(
        second.bytes_added < first.bytes_added / 2,
        "{} vs {}",
        second.bytes_added,
        first.bytes_added
    );
    assert!(second.bytes_added > 50_000);
    let rps = v
        .engine
        .recovery_points(&v.spec, &RecoveryPointFilter::default())
        .unwrap();
    assert_eq!(rps.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);

    // Unchanged image: the parent snapshot lets the engine skip reading it.
    let third = v
        .engine
        .backup_disks(&v.spec, &disk_req(d, "c"), &NoProgress, &Cancel::new())
        .unwrap();
    assert_eq!(third.bytes_scanned, 0);

    // Replace the original with recovery point "a" (atomically, verified).
    fs::write(&raw, b"garbage").unwrap();
    v.engine
        .restore_disks(
            &v.spec,
            &DiskRestoreRequest {
                recovery_point: "a".into(),
                disks: None,
                target: DiskRestoreTarget::Original,
                format: None,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(fs::read(&raw).unwrap(), make_raw(&v.path("ref.raw"), 7));
    // No temporary files are left next to the disk.
    let names: Vec<_> = fs::read_dir(v.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().contains("rsvault")),
        "{names:?}"
    );
}

#[test]
fn original_qcow2_is_replaced_by_a_qcow2() {
    let v = Vault::new();
    let raw = v.path("src.raw");
    let bytes = make_raw(&raw, 3);
    let q = v.path("vm.qcow2");
    to_qcow2(&raw, &q);
    let d = vec![DiskSource {
        name: "vm".into(),
        path: q.clone(),
    }];
    v.engine
        .backup_disks(&v.spec, &disk_req(d, "p"), &NoProgress, &Cancel::new())
        .unwrap();
    qemu_img(&["resize", q.to_str().unwrap(), "+1M"]);
    v.engine
        .restore_disks(
            &v.spec,
            &DiskRestoreRequest {
                recovery_point: "p".into(),
                disks: None,
                target: DiskRestoreTarget::Original,
                format: None,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    let info = probe(&q).unwrap();
    assert_eq!(
        info,
        DiskInfo {
            format: ImageFormat::Qcow2,
            virtual_size: bytes.len() as u64
        }
    );
    qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        q.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
}

/// Changes the source right after "Take Snapshot": a guarded read must notice.
struct Meddler(std::path::PathBuf);
impl Progress for Meddler {
    fn update(&self, task: Task, done: u64, total: u64) {
        if task == Task::Snapshot && done == total {
            let mut f = fs::OpenOptions::new().append(true).open(&self.0).unwrap();
            std::io::Write::write_all(&mut f, &[1u8; 512]).unwrap();
        }
    }
}

#[test]
fn source_changing_during_read_is_reported() {
    let v = Vault::new();
    let raw = v.path("busy.raw");
    make_raw(&raw, 5);
    let out = v
        .engine
        .backup_disks(
            &v.spec,
            &disk_req(
                vec![DiskSource {
                    name: "busy".into(),
                    path: raw.clone(),
                }],
                "w",
            ),
            &Meddler(raw.clone()),
            &Cancel::new(),
        )
        .unwrap();
    if out.reflinked_disks.is_empty() {
        assert_eq!(out.consistency, Consistency::Inconsistent);
        assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
        let rp = v.engine.recovery_point(&v.spec, "w").unwrap();
        assert_eq!(rp.consistency, Consistency::Inconsistent);
        assert_eq!(rp.warnings, 1);
        // Exactly one snapshot holds it (the corrected one).
        assert_eq!(
            v.engine
                .recovery_points(&v.spec, &RecoveryPointFilter::default())
                .unwrap()
                .len(),
            1
        );
    } else {
        // A reflink clone is immune to the change.
        assert_eq!(out.consistency, Consistency::CrashConsistent);
    }
}

#[test]
fn bad_requests_are_refused() {
    let v = Vault::new();
    let raw = v.path("x.raw");
    fs::write(&raw, noise(1, 1000)).unwrap();
    let e = v
        .engine
        .backup_disks(&v.spec, &disk_req(vec![], "e"), &NoProgress, &Cancel::new());
    assert!(matches!(e, Err(EngineError::InvalidRequest(_))));
    let two = vec![
        DiskSource {
            name: "a".into(),
            path: raw.clone(),
        },
        DiskSource {
            name: "a".into(),
            path: raw.clone(),
        },
    ];
    assert!(matches!(
        v.engine
            .backup_disks(&v.spec, &disk_req(two, "e"), &NoProgress, &Cancel::new()),
        Err(EngineError::InvalidRequest(_))
    ));
    let missing = vec![DiskSource {
        name: "m".into(),
        path: v.path("nope.raw"),
    }];
    assert!(matches!(
        v.engine
            .backup_disks(&v.spec, &disk_req(missing, "e"), &NoProgress, &Cancel::new()),
        Err(EngineError::Source { .. })
    ));
    assert!(matches!(
        v.engine.recovery_point(&v.spec, "e"),
        Err(EngineError::RecoveryPointNotFound(_))
    ));
    // A wrong password does not open the vault.
    let wrong = RepoSpec::new(
        v.spec.local_path().unwrap().to_path_buf(),
        VaultKeys::generate_password(),
    );
    assert!(v.engine.init(&wrong).is_err());
    v.engine.init(&v.spec).unwrap();
}

/// A disk spanning several packs, with an odd size (its last chunk is not a multiple of the
/// direct-I/O block), incompressible (stored uncompressed) and compressible parts: round trip,
/// rustic_core's and stock restic's full data checks; with direct I/O and without.
fn multi_pack_odd_size_round_trip(direct: bool) {
    let dir = tempfile::tempdir().unwrap();
    // restic's own scrypt parameters here (the other tests' vaults use the light ones).
    let spec = RepoSpec::new(dir.path().join("repo"), VaultKeys::generate_password());
    let engine = ResticEngine::new().with_direct_io(direct);
    engine.init(&spec).unwrap();
    let raw = dir.path().join("big.raw");
    let mut bytes = noise(31, 37 * 1024 * 1024 + 1001);
    bytes[20 * 1024 * 1024..24 * 1024 * 1024].fill(b'x');
    fs::write(&raw, &bytes).unwrap();
    let d = vec![DiskSource {
        name: "big".into(),
        path: raw.clone(),
    }];
    let out = engine
        .backup_disks(&spec, &disk_req(d, "m"), &NoProgress, &Cancel::new())
        .unwrap();
    assert_eq!(out.bytes_scanned, bytes.len() as u64);
    let packs = walk(&spec.local_path().unwrap().join("data"));
    assert!(packs.len() >= 3, "{} packs", packs.len());
    let target = dir.path().join("out");
    fs::create_dir(&target).unwrap();
    let r = engine
        .restore_disks(
            &spec,
            &DiskRestoreRequest {
                recovery_point: "m".into(),
                disks: None,
                target: DiskRestoreTarget::Directory(target.clone()),
                format: None,
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(r.bytes_restored, bytes.len() as u64);
    assert!(fs::read(target.join("big")).unwrap() == bytes, "restored bytes differ");
    let check = engine.verify(&spec, ReadData::All).unwrap();
    assert!(check.ok, "{:?}", check.problems);
    if restic_available() {
        let out = restic(&spec, &["check", "--read-data"]);
        assert!(
            out.status.success(),
            "restic check: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(d).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn multi_pack_odd_size_disk_round_trips() {
    multi_pack_odd_size_round_trip(true);
}

#[test]
fn multi_pack_odd_size_disk_round_trips_without_direct_io() {
    multi_pack_odd_size_round_trip(false);
}

fn restore_req(rp: &str, target: DiskRestoreTarget) -> DiskRestoreRequest {
    DiskRestoreRequest {
        recovery_point: rp.into(),
        disks: None,
        target,
        format: None,
    }
}

#[test]
fn a_source_reached_through_a_symlink_is_refused() {
    let v = Vault::new();
    let real = v.path("real");
    fs::create_dir(&real).unwrap();
    make_raw(&real.join("d.raw"), 3);
    std::os::unix::fs::symlink("/etc/hostname", v.path("to-etc")).unwrap();
    std::os::unix::fs::symlink(real.join("d.raw"), v.path("to-disk")).unwrap();
    std::os::unix::fs::symlink(&real, v.path("linked-dir")).unwrap();
    for p in [v.path("to-etc"), v.path("to-disk"), v.path("linked-dir/d.raw")] {
        assert!(matches!(probe(&p), Err(EngineError::Source { .. })), "{}", p.display());
        let d = vec![DiskSource {
            name: "d".into(),
            path: p.clone(),
        }];
        let r = v
            .engine
            .backup_disks(&v.spec, &disk_req(d, "x"), &NoProgress, &Cancel::new());
        assert!(matches!(r, Err(EngineError::Source { .. })), "{}: {r:?}", p.display());
    }
    // A FIFO or a directory is not an image either (and opening a FIFO does not hang).
    let fifo = v.path("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(matches!(probe(&fifo), Err(EngineError::Source { .. })));
    assert!(matches!(probe(&real), Err(EngineError::Source { .. })));
    assert!(probe(&real.join("d.raw")).is_ok());
    assert!(v
        .engine
        .recovery_points(&v.spec, &RecoveryPointFilter::default())
        .unwrap()
        .is_empty());
}

#[test]
fn a_qcow2_naming_a_backing_file_is_refused_and_its_backing_never_read() {
    let v = Vault::new();
    let q = v.path("x.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "/etc/hostname",
        "-F",
        "raw",
        q.to_str().unwrap(),
    ]);
    let e = probe(&q).unwrap_err();
    assert!(e.to_string().contains("backing file"), "{e}");
    let d = vec![DiskSource {
        name: "x".into(),
        path: q,
    }];
    let r = v
        .engine
        .backup_disks(&v.spec, &disk_req(d, "x"), &NoProgress, &Cancel::new());
    assert!(matches!(r, Err(EngineError::Source { .. })), "{r:?}");
    assert!(v
        .engine
        .recovery_points(&v.spec, &RecoveryPointFilter::default())
        .unwrap()
        .is_empty());
}

#[test]
fn restored_images_are_0600_and_an_original_keeps_its_owner_and_mode() {
    use std::os::unix::fs::PermissionsExt;
    let v = Vault::new();
    let raw = v.path("d.raw");
    let bytes = make_raw(&raw, 5);
    fs::set_permissions(&raw, fs::Permissions::from_mode(0o640)).unwrap();
    let d = vec![DiskSource {
        name: "d".into(),
        path: raw.clone(),
    }];
    v.engine
        .backup_disks(&v.spec, &disk_req(d, "a"), &NoProgress, &Cancel::new())
        .unwrap();
    let out = v.path("out");
    fs::create_dir(&out).unwrap();
    v.engine
        .restore_disks(
            &v.spec,
            &restore_req("a", DiskRestoreTarget::Directory(out.clone())),
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&out.join("d")), 0o600);
    assert_eq!(fs::read(out.join("d")).unwrap(), bytes);
    fs::write(&raw, b"changed").unwrap();
    v.engine
        .restore_disks(
            &v.spec,
            &restore_req("a", DiskRestoreTarget::Original),
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(fs::read(&raw).unwrap(), bytes);
    assert_eq!(mode(&raw), 0o640);
}

#[test]
fn a_disk_restore_never_writes_through_a_symlinked_directory() {
    let v = Vault::new();
    let src = v.path("src");
    fs::create_dir(&src).unwrap();
    let raw = src.join("d.raw");
    make_raw(&raw, 9);
    let d = vec![DiskSource {
        name: "d".into(),
        path: raw.clone(),
    }];
    v.engine
        .backup_disks(&v.spec, &disk_req(d, "a"), &NoProgress, &Cancel::new())
        .unwrap();
    // A target directory that is a symlink: refused, nothing written where it points.
    let elsewhere = v.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, v.path("link")).unwrap();
    let r = v.engine.restore_disks(
        &v.spec,
        &restore_req("a", DiskRestoreTarget::Directory(v.path("link"))),
        &NoProgress,
        &Cancel::new(),
    );
    assert!(r.is_err(), "{r:?}");
    // The original's directory swapped for a symlink after the backup: refused the same way.
    fs::rename(&src, v.path("src-moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &src).unwrap();
    let r = v.engine.restore_disks(
        &v.spec,
        &restore_req("a", DiskRestoreTarget::Original),
        &NoProgress,
        &Cancel::new(),
    );
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written through the symlink"
    );
}
