//! Helpers shared by the engine's integration tests.
#![allow(dead_code, clippy::new_without_default)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use chrono::{DateTime, TimeZone, Utc};
use rsvault_engine::*;

pub mod faultproxy;

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
}

pub struct Vault {
    pub dir: tempfile::TempDir,
    pub spec: RepoSpec,
    pub engine: ResticEngine,
}

#[allow(clippy::new_without_default)]
impl Vault {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // As the control plane makes vaults: a generated password, light key derivation.
        let spec = RepoSpec::with_random_secret(dir.path().join("repo"), VaultKeys::generate_password());
        let engine = ResticEngine::new();
        engine.init(&spec).unwrap();
        Self { dir, spec, engine }
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

pub fn tags(item: &str, rp: &str) -> RecoveryPointTags {
    RecoveryPointTags {
        vault: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v".into(),
        item: item.into(),
        job: format!("job-{rp}"),
        recovery_point: rp.into(),
    }
}

/// Deterministic pseudo-random bytes (xorshift), cheap in debug builds.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
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

/// A small VM-like raw image: random, repeated, text and zero regions, odd tail.
pub fn make_raw(path: &Path, seed: u64) -> Vec<u8> {
    const M: usize = 1024 * 1024;
    let mut img = noise(seed, 3 * M);
    let rep = noise(seed + 1, M);
    img.extend_from_slice(&rep);
    img.extend_from_slice(&rep);
    let text: Vec<u8> = (0..)
        .flat_map(|i: u32| format!("2026-01-01 log line {i} service=ok\n").into_bytes())
        .take(2 * M)
        .collect();
    img.extend_from_slice(&text);
    img.extend(std::iter::repeat_n(0u8, 5 * M));
    img.extend_from_slice(&noise(seed + 2, 12288)); // a 512-byte multiple, as qemu-img sizes
    fs::write(path, &img).unwrap();
    img
}

pub fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn to_qcow2(raw: &Path, qcow2: &Path) {
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
}

/// Records every progress update.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<(Task, u64, u64)>>);

impl Progress for Recorder {
    fn update(&self, task: Task, done: u64, total: u64) {
        self.0.lock().unwrap().push((task, done, total));
    }
}

pub fn restic_available() -> bool {
    Command::new("restic")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn restic(spec: &RepoSpec, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("restic");
    match &spec.location {
        RepoLocation::Local(p) => {
            cmd.arg("-r")
                .arg(p)
                .env("RESTIC_CACHE_DIR", p.parent().unwrap().join("restic-cache"));
        }
        RepoLocation::Object(_) => {
            cmd.arg("--no-cache").envs(spec.location.restic_env());
        }
    }
    cmd.args(args)
        .env("RESTIC_PASSWORD", spec.password.expose())
        .output()
        .expect("run restic")
}

/// The object stores the test command started (scripts/object-test-servers), from the
/// environment. A kind that is missing fails the test under `RSVAULT_REQUIRE_OBJECT_STORES=1`
/// (the test command sets it) and is skipped, with a note, otherwise.
pub fn object_targets() -> Vec<(&'static str, objstore::ObjectTarget)> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut out = vec![];
    match (var("RSVAULT_TEST_S3_ENDPOINT"), var("RSVAULT_TEST_S3_BUCKET")) {
        (Some(endpoint), Some(bucket)) => out.push((
            "s3",
            objstore::ObjectTarget::S3 {
                endpoint,
                bucket,
                region: var("RSVAULT_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                prefix: "engine-tests".into(),
                access_key_id: var("RSVAULT_TEST_S3_ACCESS_KEY_ID").unwrap_or_default(),
                secret_access_key: var("RSVAULT_TEST_S3_SECRET_ACCESS_KEY").unwrap_or_default(),
            },
        )),
        _ => missing("S3 (RSVAULT_TEST_S3_*)"),
    }
    match (
        var("RSVAULT_TEST_AZBLOB_ENDPOINT"),
        var("RSVAULT_TEST_AZBLOB_CONTAINER"),
    ) {
        (Some(endpoint), Some(container)) => out.push((
            "azblob",
            objstore::ObjectTarget::Azblob {
                endpoint,
                account: var("RSVAULT_TEST_AZBLOB_ACCOUNT").unwrap_or_default(),
                container,
                prefix: "engine-tests".into(),
                account_key: var("RSVAULT_TEST_AZBLOB_KEY"),
                sas_token: None,
            },
        )),
        _ => missing("Azure Blob (RSVAULT_TEST_AZBLOB_*)"),
    }
    out
}

fn missing(what: &str) {
    if std::env::var("RSVAULT_REQUIRE_OBJECT_STORES").as_deref() == Ok("1") {
        panic!("no {what} object store to test against: run the tests through scripts/test");
    }
    eprintln!("note: no {what} object store in the environment; its tests are skipped (scripts/test starts one)");
}

/// Sum of file sizes under `dir`.
pub fn du(dir: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    n
}
