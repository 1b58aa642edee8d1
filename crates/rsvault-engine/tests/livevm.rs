//! Running guests (issue 18): `qemu-storage-daemon` stands in for a running QEMU guest — a qcow2
//! disk, QMP, copy-before-write fleecing, dirty bitmaps, NBD — with a writer (`qemu-io` over an NBD
//! export of the live disk) changing the disk while rsvault backs it up. A guest agent double
//! (a Unix socket speaking the agent's JSON) freezes and thaws, or fails to.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rsvault_engine::*;

const MIB: u64 = 1 << 20;
/// The writer's blocks: 64 KiB each, one every 1 MiB.
const BLOCK: u64 = 64 * 1024;

/// A `qemu-storage-daemon` serving one qcow2 disk (`disk0`): QMP on `qmp.sock`; with `nbd`, the
/// live disk exported writable as `live` on `nbd.sock` (how the writer reaches it).
struct Guest {
    dir: PathBuf,
    child: Child,
    image: PathBuf,
}

impl Guest {
    fn start(dir: &Path, image: &Path, nbd: bool) -> Guest {
        let qmp = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp);
        let mut args = vec![
            "--blockdev".to_string(),
            format!("driver=file,node-name=disk0-file,filename={}", image.display()),
            "--blockdev".into(),
            "driver=qcow2,node-name=disk0,file=disk0-file".into(),
            "--chardev".into(),
            format!("socket,id=qmp,path={},server=on,wait=off", qmp.display()),
            "--monitor".into(),
            "chardev=qmp".into(),
        ];
        if nbd {
            args.extend([
                "--nbd-server".into(),
                format!("addr.type=unix,addr.path={}", dir.join("nbd.sock").display()),
                "--export".into(),
                "type=nbd,id=live,node-name=disk0,writable=on,name=live".into(),
            ]);
        }
        let child = Command::new("qemu-storage-daemon")
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (Debian's qemu-utils) is needed for the running-guest tests");
        let end = Instant::now() + Duration::from_secs(10);
        while !qmp.exists() || (nbd && !dir.join("nbd.sock").exists()) {
            assert!(Instant::now() < end, "qemu-storage-daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Guest {
            dir: dir.to_path_buf(),
            child,
            image: image.to_path_buf(),
        }
    }

    fn source(&self, agent: Option<PathBuf>, nbd: bool) -> LiveVmSource {
        LiveVmSource {
            qmp_socket: self.dir.join("qmp.sock"),
            agent_socket: agent,
            nbd_socket: nbd.then(|| self.dir.join("nbd.sock")),
        }
    }

    /// Stops the daemon as a guest shuts down (SIGTERM: images closed cleanly, persistent
    /// bitmaps written).
    fn stop(mut self) -> PathBuf {
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        self.image.clone()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `qemu-io` driven over its stdin: one write at a time, each waited for.
struct Io {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Io {
    fn open(nbd: &Path) -> Io {
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", &format!("nbd+unix:///live?socket={}", nbd.display())])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-io");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Io { child, stdin, out }
    }

    fn write(&mut self, byte: u8, off: u64, len: u64) {
        writeln!(self.stdin, "write -P {byte} {off} {len}").unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.out.read_line(&mut line).unwrap() > 0, "qemu-io stopped");
            if line.contains("wrote") {
                return;
            }
            assert!(!line.contains("error") && !line.contains("failed"), "{line}");
        }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// Write `k` (1, 2, …) of the generation pattern: which block, which byte.
fn gen_write(k: usize, blocks: usize) -> (u64, u8) {
    (((k * 37) % blocks) as u64 * MIB, (k % 255) as u8 + 1)
}

/// The disk after writes `1..=k` over `base`.
fn expected(base: &[u8], k: usize, blocks: usize) -> Vec<u8> {
    let mut img = base.to_vec();
    for i in 1..=k {
        let (off, b) = gen_write(i, blocks);
        img[off as usize..(off + BLOCK) as usize].fill(b);
    }
    img
}

/// A writer changing the disk through the guest until stopped; counts its completed writes.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(nbd: &Path, first: usize, blocks: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(first - 1));
        let mut io = Io::open(nbd);
        let (s, d) = (stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            let mut k = first;
            while !s.load(Ordering::SeqCst) {
                let (off, b) = gen_write(k, blocks);
                io.write(b, off, BLOCK);
                d.store(k, Ordering::SeqCst);
                k += 1;
            }
        });
        Writer {
            stop,
            done,
            handle: Some(handle),
        }
    }
    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap();
        self.done()
    }
}

/// A guest agent double: answers `guest-sync`, and freezes and thaws (counting them) or refuses
/// to freeze, as the real agent's JSON protocol does.
struct Agent {
    path: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn start(path: PathBuf, freeze_fails: bool) -> Agent {
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lg = log.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(c) = conn else { return };
                let mut w = c.try_clone().unwrap();
                for line in BufReader::new(c).lines() {
                    let Ok(line) = line else { break };
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let cmd = v["execute"].as_str().unwrap_or_default().to_string();
                    lg.lock().unwrap().push(cmd.clone());
                    let answer = match cmd.as_str() {
                        "guest-sync" => serde_json::json!({"return": v["arguments"]["id"]}),
                        "guest-fsfreeze-freeze" if freeze_fails => serde_json::json!({"error": {
                            "class": "GenericError", "desc": "failed to freeze /: Device or resource busy"}}),
                        "guest-fsfreeze-freeze" | "guest-fsfreeze-thaw" => serde_json::json!({"return": 2}),
                        _ => serde_json::json!({"error": {"class": "CommandNotFound", "desc": "unknown"}}),
                    };
                    writeln!(w, "{answer}").unwrap();
                }
            }
        });
        Agent { path, log }
    }
    fn commands(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// Records progress and the tasks' details.
#[derive(Default)]
struct Details(Mutex<Vec<(Task, String)>>);

impl Progress for Details {
    fn update(&self, _: Task, _: u64, _: u64) {}
    fn detail(&self, task: Task, text: &str) {
        self.0.lock().unwrap().push((task, text.to_string()));
    }
}

impl Details {
    fn of(&self, task: Task) -> String {
        let d = self.0.lock().unwrap();
        d.iter()
            .filter(|(t, _)| *t == task)
            .map(|(_, s)| s.clone())
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

const ITEM: &str = "VM;iaasvmcontainerv2;rg;live1";

fn live_req(v: &Vault, g: &Guest, rp: &str, agent: Option<PathBuf>, nbd: bool) -> LiveBackupRequest {
    LiveBackupRequest {
        vm: g.source(agent, nbd),
        work_dir: v.path("work"),
        tags: tags(ITEM, rp),
        time: t0() + chrono::Duration::seconds(rp.len() as i64 + rp.bytes().map(i64::from).sum::<i64>()),
        expiry: None,
    }
}

fn restore(v: &Vault, rp: &str, name: &str) -> Vec<u8> {
    let dir = v.path(&format!("restore-{rp}"));
    std::fs::create_dir_all(&dir).unwrap();
    v.engine
        .restore_disks(
            &v.spec,
            &DiskRestoreRequest {
                recovery_point: rp.into(),
                disks: None,
                target: DiskRestoreTarget::Directory(dir.clone()),
                format: Some(ImageFormat::Raw),
            },
            &NoProgress,
            &Cancel::new(),
        )
        .unwrap();
    std::fs::read(dir.join(name)).unwrap()
}

/// The base content of the disk: noise, then zeros in the upper half (a sparse region).
fn base_image(dir: &Path, size: u64) -> (PathBuf, Vec<u8>) {
    let mut base = noise(18, (size / 2) as usize);
    base.resize(size as usize, 0);
    let raw = dir.join("base.raw");
    std::fs::write(&raw, &base).unwrap();
    let q = dir.join("disk0.qcow2");
    to_qcow2(&raw, &q);
    std::fs::remove_file(&raw).unwrap();
    (q, base)
}

#[test]
fn a_running_guest_is_backed_up_as_of_one_instant_and_incrementally() {
    let v = Vault::new();
    let size = 64 * MIB;
    let blocks = (size / MIB) as usize;
    let (image, base) = base_image(v.dir.path(), size);
    let g = Guest::start(v.dir.path(), &image, true);

    // Discovery: the daemon has no devices; its disk is the format node.
    let disks = livevm::discover(&v.dir.path().join("qmp.sock")).unwrap();
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert_eq!(
        (disks[0].name.as_str(), disks[0].node.as_str(), disks[0].driver.as_str()),
        ("disk0", "disk0", "qcow2")
    );
    assert_eq!(
        (disks[0].virtual_size, disks[0].file.as_deref()),
        (size, Some(image.as_path()))
    );
    assert_eq!(livevm::guest_status(&v.dir.path().join("qmp.sock")).unwrap(), "running");

    // A full backup while the writer writes through the guest, with a freezing guest agent.
    let agent = Agent::start(v.path("qga.sock"), false);
    let w = Writer::start(&v.dir.path().join("nbd.sock"), 1, blocks);
    while w.done() < 5 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = w.done();
    let det = Details::default();
    let out = v
        .engine
        .backup_live_vm(
            &v.spec,
            &live_req(&v, &g, "rp1", Some(agent.path.clone()), true),
            &det,
            &Cancel::new(),
        )
        .unwrap();
    let after_backup = w.done();
    let last = w.stop();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(out.consistency, Consistency::ApplicationConsistent);
    assert_eq!(out.recovery_point.consistency, Consistency::ApplicationConsistent);
    assert_eq!(
        agent.commands(),
        ["guest-sync", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"],
        "frozen once, thawed once"
    );
    let snap_detail = det.of(Task::Snapshot);
    assert!(
        snap_detail.contains("froze 2 file system(s)") && snap_detail.contains("thawed 2"),
        "{snap_detail}"
    );
    assert!(
        det.of(Task::Transfer)
            .contains("read in full (no earlier recovery point"),
        "{}",
        det.of(Task::Transfer)
    );

    // The point equals the disk after exactly the writes made before the instant.
    let got = restore(&v, "rp1", "disk0");
    assert_eq!(got.len() as u64, size);
    let k = (before..=after_backup)
        .find(|&k| got == expected(&base, k, blocks))
        .unwrap_or_else(|| panic!("the recovery point is no instant between writes {before} and {after_backup}"));
    assert!(
        after_backup > k,
        "the writer kept writing after the snapshot instant, during the transfer ({k} vs {after_backup})"
    );
    // Chunks of the zero half the writer had not touched at the instant are not read (NBD
    // `base:allocation` says they are zeros); a chunk touched after it was copied out first.
    let zero_chunks = got
        .chunks(2 * MIB as usize)
        .filter(|c| c.iter().all(|b| *b == 0))
        .count() as u64;
    let touched_after = (k + 1..=after_backup)
        .map(|i| gen_write(i, blocks).0 / (2 * MIB))
        .collect::<std::collections::BTreeSet<_>>();
    assert!(out.bytes_skipped_unallocated <= zero_chunks * 2 * MIB);
    assert!(
        out.bytes_skipped_unallocated >= (zero_chunks.saturating_sub(touched_after.len() as u64)) * 2 * MIB,
        "{} of {zero_chunks} zero chunks skipped",
        out.bytes_skipped_unallocated / (2 * MIB)
    );

    // ≈1 % of the disk changes (one 64 KiB write in each of a few chunks, plus the writes the
    // writer made after rp1's instant); the incremental reads only the chunks they touch.
    let mut io = Io::open(&v.dir.path().join("nbd.sock"));
    io.write(0xee, 40 * MIB + 4096, BLOCK);
    drop(io);
    let changed_chunks: std::collections::BTreeSet<u64> = (k + 1..=last)
        .map(|i| gen_write(i, blocks).0 / (2 * MIB))
        .chain([20])
        .collect();
    let mut now = expected(&base, last, blocks);
    now[(40 * MIB + 4096) as usize..(40 * MIB + 4096 + BLOCK) as usize].fill(0xee);
    let det = Details::default();
    let out2 = v
        .engine
        .backup_live_vm(&v.spec, &live_req(&v, &g, "rp2", None, true), &det, &Cancel::new())
        .unwrap();
    assert_eq!(
        out2.consistency,
        Consistency::CrashConsistent,
        "no agent: crash consistent"
    );
    assert!(
        det.of(Task::Snapshot)
            .contains("Crash consistent: the VM has no guest agent"),
        "{}",
        det.of(Task::Snapshot)
    );
    let read = out2.bytes_scanned - out2.bytes_skipped_unallocated;
    assert_eq!(
        out2.bytes_scanned,
        changed_chunks.len() as u64 * 2 * MIB,
        "only the chunks the dirty bitmap marks are read: {}",
        det.of(Task::Transfer)
    );
    assert!(read <= changed_chunks.len() as u64 * 2 * MIB);
    assert!(
        det.of(Task::Transfer)
            .contains(&format!("{} of 32 chunks changed", changed_chunks.len())),
        "{}",
        det.of(Task::Transfer)
    );
    assert_eq!(
        restore(&v, "rp2", "disk0"),
        now,
        "clean chunks come from rp1, dirty ones were read"
    );

    // A guest restarted from its image keeps the persistent bitmap: still incremental.
    let image = g.stop();
    let g = Guest::start(v.dir.path(), &image, false);
    let det = Details::default();
    let out3 = v
        .engine
        .backup_live_vm(&v.spec, &live_req(&v, &g, "rp3", None, false), &det, &Cancel::new())
        .unwrap();
    assert_eq!(
        out3.bytes_scanned,
        0,
        "nothing changed since rp2: {}",
        det.of(Task::Transfer)
    );
    assert_eq!(restore(&v, "rp3", "disk0"), now);

    // The image replaced (a copy without the bitmap): full read, and the job says why.
    let image = g.stop();
    let copy = v.path("replaced.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "qcow2",
        image.to_str().unwrap(),
        copy.to_str().unwrap(),
    ]);
    std::fs::rename(&copy, &image).unwrap();
    let g = Guest::start(v.dir.path(), &image, false);
    let det = Details::default();
    let out4 = v
        .engine
        .backup_live_vm(&v.spec, &live_req(&v, &g, "rp4", None, false), &det, &Cancel::new())
        .unwrap();
    assert_eq!(out4.bytes_scanned, size, "a full read");
    assert!(
        det.of(Task::Transfer)
            .contains("has no dirty bitmap since recovery point rp3"),
        "{}",
        det.of(Task::Transfer)
    );
    assert_eq!(out4.bytes_added, out4.recovery_point.added_size);
    assert_eq!(restore(&v, "rp4", "disk0"), now);
    drop(g);
}

#[test]
fn a_failing_guest_agent_gives_a_crash_consistent_point_with_a_warning() {
    let v = Vault::new();
    let (image, base) = base_image(v.dir.path(), 8 * MIB);
    let g = Guest::start(v.dir.path(), &image, false);
    let agent = Agent::start(v.path("qga.sock"), true);
    let det = Details::default();
    let out = v
        .engine
        .backup_live_vm(
            &v.spec,
            &live_req(&v, &g, "rp1", Some(agent.path.clone()), false),
            &det,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(out.consistency, Consistency::CrashConsistent);
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(
        out.warnings[0].contains("did not freeze") && out.warnings[0].contains("Device or resource busy"),
        "{:?}",
        out.warnings
    );
    assert_eq!(out.recovery_point.warnings, 1);
    assert_eq!(
        agent.commands(),
        ["guest-sync", "guest-fsfreeze-freeze"],
        "nothing to thaw"
    );
    assert_eq!(restore(&v, "rp1", "disk0"), base);

    // An agent socket nobody answers on: the same.
    drop(agent);
    let out = v
        .engine
        .backup_live_vm(
            &v.spec,
            &live_req(&v, &g, "rp2", Some(v.path("nobody.sock")), false),
            &det,
            &Cancel::new(),
        )
        .unwrap();
    assert_eq!(out.consistency, Consistency::CrashConsistent);
    assert!(out.warnings[0].contains("did not freeze"), "{:?}", out.warnings);

    // Nothing of rsvault's is left in the guest: no job, export, fleecing node or stale bitmap.
    let mut q = qmp::Qmp::connect(&v.dir.path().join("qmp.sock")).unwrap();
    assert_eq!(
        q.execute("query-block-jobs", serde_json::json!({})).unwrap(),
        serde_json::json!([])
    );
    assert_eq!(
        q.execute("query-block-exports", serde_json::json!({})).unwrap(),
        serde_json::json!([])
    );
    let nodes = q
        .execute("query-named-block-nodes", serde_json::json!({"flat": true}))
        .unwrap();
    let mut names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node-name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["disk0", "disk0-file"]);
    let disk0 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "disk0")
        .unwrap();
    let bitmaps: Vec<&str> = disk0["dirty-bitmaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(bitmaps, ["rsvault-rp2"], "only the latest point's bitmap stays");
    assert!(
        std::fs::read_dir(v.path("work")).unwrap().next().is_none(),
        "the fleecing images are removed"
    );
}

#[test]
fn a_guest_that_does_not_answer_fails_the_backup_cleanly() {
    let v = Vault::new();
    let req = LiveBackupRequest {
        vm: LiveVmSource {
            qmp_socket: v.path("no-such.sock"),
            agent_socket: None,
            nbd_socket: None,
        },
        work_dir: v.path("work"),
        tags: tags(ITEM, "rp1"),
        time: t0(),
        expiry: None,
    };
    let err = v
        .engine
        .backup_live_vm(&v.spec, &req, &NoProgress, &Cancel::new())
        .unwrap_err();
    assert!(matches!(err, EngineError::Source { .. }), "{err}");
    assert!(v
        .engine
        .recovery_points(&v.spec, &Default::default())
        .unwrap()
        .is_empty());
}
