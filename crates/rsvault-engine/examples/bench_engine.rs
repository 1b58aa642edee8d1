//! Benchmark: rsvault's engine against Debian's `restic` on the same data, same machine, same run.
//!
//! Run with `scripts/bench-engine [WORK_DIR]`. Generates a 1 GiB VM image (384 MiB random,
//! 4 x 64 MiB repeated, 256 MiB log-like text, 128 MiB zeros; raw and qcow2) and a tree of ~50k
//! small files plus a few large ones, then times full backup, backup after 1 % of the image
//! changed (scattered 100 KiB writes), unchanged re-backup of the tree, and restore. Every
//! operation runs in its own child process; peak RSS is that process's `ru_maxrss`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rsvault_engine::*;

const MIB: usize = 1024 * 1024;
const PASSWORD: &str = "bench-password-not-secret";

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn log_text(len: usize) -> Vec<u8> {
    let levels = ["INFO", "DEBUG", "WARN", "INFO", "ERROR"];
    let mut out = Vec::with_capacity(len + 200);
    let mut i: u64 = 0;
    while out.len() < len {
        let x = i.wrapping_mul(2_654_435_761) % 100_000;
        writeln!(
            out,
            "2026-01-{:02}T{:02}:{:02}:{:02}.{:03}Z {} svc-{} request id={:016x} path=/api/v1/items/{} took={}ms",
            1 + i % 28,
            (i / 3600) % 24,
            (i / 60) % 60,
            i % 60,
            i % 1000,
            levels[(x % 5) as usize],
            x % 17,
            i.wrapping_mul(0x9E37_79B9),
            x,
            x % 977
        )
        .unwrap();
        i += 1;
    }
    out.truncate(len);
    out
}

fn make_image(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    for i in 0..6 {
        f.write_all(&noise(100 + i, 64 * MIB)).unwrap();
    }
    let rep = noise(7, 64 * MIB);
    for _ in 0..4 {
        f.write_all(&rep).unwrap();
    }
    f.write_all(&log_text(256 * MIB)).unwrap();
    f.set_len(1024 * MIB as u64).unwrap(); // the last 128 MiB: zeros (a hole)
    f.sync_all().unwrap();
}

/// 1 % of the image, as scattered 100 KiB writes.
fn change_image(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let n = (1024 * MIB / 100) / (100 * 1024);
    for i in 0..n as u64 {
        let off = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8) % (1024 * MIB as u64 - 102_400);
        f.write_all_at(&noise(1000 + i, 102_400), off).unwrap();
    }
    f.sync_all().unwrap();
}

fn make_tree(root: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0u64;
    for d in 0..500 {
        let dir = root.join(format!("dir{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..100 {
            let seed = (d * 100 + i) as u64;
            let len = (seed.wrapping_mul(2_654_435_761) % 8192) as usize;
            let data = if i % 2 == 0 { noise(seed, len) } else { log_text(len) };
            fs::write(dir.join(format!("file-{i:03}.dat")), &data).unwrap();
            files += 1;
            bytes += len as u64;
        }
    }
    let big = root.join("big");
    fs::create_dir_all(&big).unwrap();
    for i in 0..4 {
        let data = if i % 2 == 0 {
            noise(5000 + i, 48 * MIB)
        } else {
            log_text(48 * MIB)
        };
        fs::write(big.join(format!("large-{i}.bin")), &data).unwrap();
        files += 1;
        bytes += data.len() as u64;
    }
    (files, bytes)
}

fn du(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| {
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                du(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// Runs `cmd` as a child; returns (seconds, peak RSS bytes). Reaped with `wait4`, not `wait`.
#[allow(clippy::zombie_processes)]
fn measure(cmd: &mut Command) -> (f64, u64) {
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn");
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 on our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    let secs = start.elapsed().as_secs_f64();
    assert!(
        r > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    (secs, ru.ru_maxrss as u64 * 1024)
}

fn restic(repo: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("restic");
    c.arg("-r").arg(repo).args(args).arg("--quiet");
    c.env("RESTIC_PASSWORD", PASSWORD)
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"))
        .stdout(std::process::Stdio::null());
    c
}

fn me(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.arg("child").args(args);
    c
}

fn spec(repo: &str) -> RepoSpec {
    RepoSpec {
        path: repo.into(),
        password: Secret::new(PASSWORD),
    }
}

fn tags(rp: &str) -> RecoveryPointTags {
    RecoveryPointTags {
        vault: "bench".into(),
        item: "item".into(),
        job: rp.into(),
        recovery_point: rp.into(),
    }
}

/// One engine operation in this (child) process.
fn child(args: &[String]) {
    let e = ResticEngine::new();
    let now = chrono::Utc::now();
    match args[0].as_str() {
        "gen" => {
            let work = PathBuf::from(&args[1]);
            make_image(&work.join("image.raw"));
            let (n, b) = make_tree(&work.join("tree"));
            println!("{n} {b}");
        }
        "change" => change_image(Path::new(&args[1])),
        "init" => e.init(&spec(&args[1])).unwrap(),
        "disk" => {
            let out = e
                .backup_disks(
                    &spec(&args[1]),
                    &DiskBackupRequest {
                        disks: vec![DiskSource {
                            name: "disk0".into(),
                            path: args[2].clone().into(),
                        }],
                        tags: tags(&args[3]),
                        time: now,
                        expiry: None,
                        parent: None,
                    },
                    &NoProgress,
                    &Cancel::new(),
                )
                .unwrap();
            eprintln!(
                "    scanned {} MiB, unallocated not read {} MiB, added {} MiB, warnings {:?}",
                out.bytes_scanned / MIB as u64,
                out.bytes_skipped_unallocated / MIB as u64,
                out.bytes_added / MIB as u64,
                out.warnings
            );
        }
        "tree" => {
            let out = e
                .backup_tree(
                    &spec(&args[1]),
                    &TreeBackupRequest {
                        root: args[2].clone().into(),
                        tags: tags(&args[3]),
                        time: now,
                        expiry: None,
                        parent: None,
                    },
                    &NoProgress,
                    &Cancel::new(),
                )
                .unwrap();
            eprintln!(
                "    scanned {} MiB, added {} MiB",
                out.bytes_scanned / MIB as u64,
                out.bytes_added / MIB as u64
            );
        }
        "restore" => {
            e.restore_disks(
                &spec(&args[1]),
                &DiskRestoreRequest {
                    recovery_point: args[3].clone(),
                    disks: None,
                    target: DiskRestoreTarget::Directory(args[2].clone().into()),
                    format: None,
                },
                &NoProgress,
                &Cancel::new(),
            )
            .unwrap();
        }
        other => panic!("unknown child op {other}"),
    }
}

struct Row {
    op: &'static str,
    bytes: u64,
    ours: (f64, u64, u64),
    theirs: (f64, u64, u64),
}

fn sha(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return child(&args[1..]);
    }
    let work = PathBuf::from(args.first().cloned().unwrap_or_else(|| "/var/tmp/rsvault-bench".into()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let p = |s: &str| work.join(s);
    let ps = |s: &str| work.join(s).display().to_string();

    eprintln!("generating data in {} ...", work.display());
    // Data is generated in a child so this process stays small: a child's ru_maxrss starts from
    // the RSS of the process it was forked from.
    let out = me(&["gen", &ps("")]).output().unwrap();
    assert!(out.status.success());
    let gen = String::from_utf8_lossy(&out.stdout);
    let mut it = gen.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    let (nfiles, tree_bytes) = (it.next().unwrap(), it.next().unwrap());
    let q = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &ps("image.raw"),
            &ps("image.qcow2"),
        ])
        .status()
        .unwrap();
    assert!(q.success());
    // Written data out of the page cache's dirty list before anything is timed.
    assert!(Command::new("sync").status().unwrap().success());
    eprintln!("tree: {nfiles} files, {} MiB", tree_bytes / MIB as u64);
    let img = 1024 * MIB as u64;

    // Repositories.
    for r in ["ours-raw", "ours-qcow2", "ours-tree"] {
        measure(&mut me(&["init", &ps(r)]));
    }
    for r in ["restic-raw", "restic-raw2", "restic-tree"] {
        measure(restic(&p(r), &["init"]).arg("--repository-version").arg("2"));
    }
    let mut rows = Vec::new();
    let mut run =
        |op: &'static str, bytes: u64, ours: &mut Command, ours_repo: &str, theirs: &mut Command, theirs_repo: &str| {
            eprintln!("{op}: rsvault ...");
            let s0 = du(&p(ours_repo));
            let (t, rss) = measure(ours);
            let o = (t, rss, du(&p(ours_repo)).saturating_sub(s0));
            eprintln!("{op}: restic ...");
            let s0 = du(&p(theirs_repo));
            let (t, rss) = measure(theirs);
            let r = (t, rss, du(&p(theirs_repo)).saturating_sub(s0));
            rows.push(Row {
                op,
                bytes,
                ours: o,
                theirs: r,
            });
        };

    run(
        "full image backup (raw)",
        img,
        &mut me(&["disk", &ps("ours-raw"), &ps("image.raw"), "full"]),
        "ours-raw",
        &mut restic(&p("restic-raw"), &["backup", &ps("image.raw")]),
        "restic-raw",
    );
    // restic has no qcow2 reader: its baseline is a fresh backup of the same guest content (raw).
    run(
        "full image backup (qcow2)",
        img,
        &mut me(&["disk", &ps("ours-qcow2"), &ps("image.qcow2"), "full"]),
        "ours-qcow2",
        &mut restic(&p("restic-raw2"), &["backup", &ps("image.raw")]),
        "restic-raw2",
    );
    measure(&mut me(&["change", &ps("image.raw")]));
    run(
        "backup after 1% changed (raw)",
        img,
        &mut me(&["disk", &ps("ours-raw"), &ps("image.raw"), "changed"]),
        "ours-raw",
        &mut restic(&p("restic-raw"), &["backup", &ps("image.raw")]),
        "restic-raw",
    );
    run(
        "full tree backup",
        tree_bytes,
        &mut me(&["tree", &ps("ours-tree"), &ps("tree"), "t1"]),
        "ours-tree",
        &mut restic(&p("restic-tree"), &["backup", &ps("tree")]),
        "restic-tree",
    );
    run(
        "unchanged tree re-backup",
        tree_bytes,
        &mut me(&["tree", &ps("ours-tree"), &ps("tree"), "t2"]),
        "ours-tree",
        &mut restic(&p("restic-tree"), &["backup", &ps("tree")]),
        "restic-tree",
    );
    fs::create_dir_all(p("out-ours")).unwrap();
    run(
        "image restore (raw)",
        img,
        &mut me(&["restore", &ps("ours-raw"), &ps("out-ours"), "changed"]),
        "out-ours",
        &mut restic(&p("restic-raw"), &["restore", "latest", "--target", &ps("out-restic")]),
        "out-restic",
    );

    let want = sha(&p("image.raw"));
    assert_eq!(sha(&p("out-ours/disk0")), want, "rsvault restore differs");
    let restic_out = p("out-restic").join(p("image.raw").strip_prefix("/").unwrap());
    assert_eq!(sha(&restic_out), want, "restic restore differs");

    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let restic_v = String::from_utf8_lossy(&Command::new("restic").arg("version").output().unwrap().stdout)
        .trim()
        .to_string();
    println!(
        "Machine: {model}, {cores} cores, {}; {restic_v}; rustic_core 0.13.0",
        mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!("Data: 1 GiB image (384 MiB random, 4 x 64 MiB repeated, 256 MiB log text, 128 MiB zeros); tree of {nfiles} files, {} MiB. Page cache warm for both tools.", tree_bytes / MIB as u64);
    println!();
    println!("| operation | tool | seconds | MB/s | stored bytes | peak RSS | speed vs restic |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mb = |b: u64, t: f64| b as f64 / 1e6 / t;
    for r in &rows {
        let ratio = r.theirs.0 / r.ours.0;
        for (tool, m, ratio) in [
            ("rsvault", r.ours, format!("{ratio:.2}x")),
            ("restic", r.theirs, "1.00x".to_string()),
        ] {
            println!(
                "| {} | {tool} | {:.2} | {:.0} | {} | {} MiB | {ratio} |",
                r.op,
                m.0,
                mb(r.bytes, m.0),
                m.2,
                m.1 / MIB as u64
            );
        }
    }
}
