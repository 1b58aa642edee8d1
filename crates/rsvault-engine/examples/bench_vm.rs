//! Benchmark (issue 18): incremental backup of a 10 GiB running disk with 1 % changed, through a
//! dirty bitmap, beside today's incremental of the same image file (which reads every allocated
//! chunk again).
//!
//! Run with `scripts/bench-vm [WORK_DIR]`. Makes a 10 GiB qcow2 (2 GiB of random data at the start,
//! the rest unallocated), then for each path: a full backup, 1 % of the disk (102 writes of 1 MiB at
//! 1 MiB-aligned random offsets over the whole disk) written, and the incremental, timed. The
//! image-file path writes with `qemu-io` on the image; the running-guest path writes through a
//! `qemu-storage-daemon` serving the image (its NBD export), and rsvault backs up that daemon.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rsvault_engine::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const SIZE: u64 = 10 * GIB;
const DATA: u64 = 2 * GIB;

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("spawn");
    assert!(st.success(), "{cmd:?}");
}

/// The 1 % of changes: 1 MiB writes at distinct 1 MiB-aligned offsets.
fn changes() -> Vec<(u64, u8)> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut seen = std::collections::BTreeSet::new();
    let n = (SIZE / 100).div_ceil(MIB);
    while (seen.len() as u64) < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        seen.insert(x % (SIZE / MIB));
    }
    seen.into_iter().map(|m| (m * MIB, (m % 250) as u8 + 1)).collect()
}

fn qemu_io(target: &[&str], writes: &[(u64, u8)]) {
    let mut child = Command::new("qemu-io")
        .args(target)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-io");
    let mut stdin = child.stdin.take().unwrap();
    for (off, b) in writes {
        writeln!(stdin, "write -P {b} {off} {MIB}").unwrap();
    }
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

fn tags(rp: &str) -> RecoveryPointTags {
    RecoveryPointTags {
        vault: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/bench".into(),
        item: "VM;iaasvmcontainerv2;rg;bench".into(),
        job: format!("job-{rp}"),
        recovery_point: rp.into(),
    }
}

struct Row {
    what: &'static str,
    secs: f64,
    read: u64,
    added: u64,
}

fn vault(dir: &Path) -> (ResticEngine, RepoSpec) {
    let spec = RepoSpec::with_random_secret(dir, VaultKeys::generate_password());
    let e = ResticEngine::new();
    e.init(&spec).unwrap();
    (e, spec)
}

fn main() {
    let work = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/var/tmp/rsvault-bench-vm".into()),
    );
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let image = work.join("disk.qcow2");
    let raw = work.join("seed.raw");
    eprintln!("making a 10 GiB image with 2 GiB of data in {} ...", work.display());
    {
        let f = fs::File::create(&raw).unwrap();
        f.set_len(SIZE).unwrap();
        let mut w = std::io::BufWriter::new(f);
        let mut buf = vec![0u8; (64 * MIB) as usize];
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(18);
        for _ in 0..DATA / (64 * MIB) {
            rand::RngCore::fill_bytes(&mut rng, &mut buf);
            w.write_all(&buf).unwrap();
        }
    }
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&image));
    fs::remove_file(&raw).unwrap();
    let writes = changes();
    let changed = writes.len() as u64 * MIB;
    let mut rows = Vec::new();

    // Today's path: the image file, read in full (unallocated ranges skipped) at every backup.
    {
        let (e, spec) = vault(&work.join("vault-file"));
        let req = |rp: &str, secs: i64| DiskBackupRequest {
            disks: vec![DiskSource {
                name: "disk0".into(),
                path: image.clone(),
            }],
            tags: tags(rp),
            time: chrono::Utc::now() + chrono::Duration::seconds(secs),
            expiry: None,
            parent: None,
        };
        let t = Instant::now();
        let o = e
            .backup_disks(&spec, &req("f1", 0), &NoProgress, &Cancel::new())
            .unwrap();
        rows.push(Row {
            what: "image file: full backup",
            secs: t.elapsed().as_secs_f64(),
            read: o.bytes_scanned - o.bytes_skipped_unallocated,
            added: o.bytes_added,
        });
        qemu_io(&["-f", "qcow2", image.to_str().unwrap()], &writes);
        let t = Instant::now();
        let o = e
            .backup_disks(&spec, &req("f2", 1), &NoProgress, &Cancel::new())
            .unwrap();
        rows.push(Row {
            what: "image file: incremental, 1 % changed",
            secs: t.elapsed().as_secs_f64(),
            read: o.bytes_scanned - o.bytes_skipped_unallocated,
            added: o.bytes_added,
        });
    }

    // A running guest: the same image served by qemu-storage-daemon, backed up over QMP and NBD.
    {
        let (e, spec) = vault(&work.join("vault-live"));
        let (qmp, nbd) = (work.join("qmp.sock"), work.join("nbd.sock"));
        let mut qsd = Command::new("qemu-storage-daemon")
            .args([
                "--blockdev",
                &format!("driver=file,node-name=disk0-file,filename={}", image.display()),
            ])
            .args(["--blockdev", "driver=qcow2,node-name=disk0,file=disk0-file"])
            .args([
                "--chardev",
                &format!("socket,id=qmp,path={},server=on,wait=off", qmp.display()),
                "--monitor",
                "chardev=qmp",
            ])
            .args(["--nbd-server", &format!("addr.type=unix,addr.path={}", nbd.display())])
            .args(["--export", "type=nbd,id=live,node-name=disk0,writable=on,name=live"])
            .spawn()
            .expect("qemu-storage-daemon");
        while !(qmp.exists() && nbd.exists()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let req = |rp: &str, secs: i64| LiveBackupRequest {
            vm: LiveVmSource {
                qmp_socket: qmp.clone(),
                agent_socket: None,
                nbd_socket: Some(nbd.clone()),
            },
            work_dir: work.join("live"),
            tags: tags(rp),
            time: chrono::Utc::now() + chrono::Duration::seconds(secs),
            expiry: None,
        };
        let t = Instant::now();
        let o = e
            .backup_live_vm(&spec, &req("l1", 0), &NoProgress, &Cancel::new())
            .unwrap();
        rows.push(Row {
            what: "running guest: full backup (NBD)",
            secs: t.elapsed().as_secs_f64(),
            read: o.bytes_scanned - o.bytes_skipped_unallocated,
            added: o.bytes_added,
        });
        let other: Vec<(u64, u8)> = writes.iter().map(|(o, b)| (*o, b.wrapping_add(1).max(1))).collect();
        qemu_io(
            &["-f", "raw", &format!("nbd+unix:///live?socket={}", nbd.display())],
            &other,
        );
        let t = Instant::now();
        let o = e
            .backup_live_vm(&spec, &req("l2", 1), &NoProgress, &Cancel::new())
            .unwrap();
        rows.push(Row {
            what: "running guest: incremental, 1 % changed (dirty bitmap)",
            secs: t.elapsed().as_secs_f64(),
            read: o.bytes_scanned - o.bytes_skipped_unallocated,
            added: o.bytes_added,
        });
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(qsd.id() as i32, libc::SIGTERM) };
        let _ = qsd.wait();
    }

    println!(
        "10 GiB disk, 2 GiB allocated; {} MiB changed ({} writes of 1 MiB)\n",
        changed >> 20,
        writes.len()
    );
    println!("| backup | time | bytes read from the disk | added to the vault |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.2} s | {} MiB | {} MiB |",
            r.what,
            r.secs,
            r.read >> 20,
            r.added >> 20
        );
    }
    let (f, l) = (&rows[1], &rows[3]);
    println!(
        "\nincremental: {:.1}x less time, {:.1}x fewer bytes read",
        f.secs / l.secs,
        f.read as f64 / l.read.max(1) as f64
    );
    let _ = fs::remove_dir_all(&work);
}
