//! Issue 18: libvirt domains. A private `libvirtd` (run as `nobody` with its own config, run and
//! state directories under a temporary directory, reached as `qemu+unix:///session?socket=…`)
//! runs a TCG guest (`<domain type='qemu'>`, sitting in SeaBIOS) with a qcow2 disk; writes reach
//! the disk through QEMU (`qemu-io` on the guest's own block device, via the monitor). The server
//! is granted the connection (`--allow-libvirt URI=/subscriptions/S/resourceGroups/rg`); a
//! container refresh lists the domain as a protectable VM; protection, a backup while the domain
//! runs (libvirt's pull-mode backup: writes made during it are not in the point), an incremental
//! reading only the changed chunks (the job's property bag says how much), RestoreDisks equal to the
//! disk at each snapshot instant, and the domain definition the restore offers accepted by
//! `virsh define`. Skipped, with the reason printed, only where libvirtd or qemu-system-x86_64 is
//! not installed.

use crate::harness::*;
use crate::recovery::{accept, account, send, wait_job, Fixture, BK};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 128 * MIB;
const CHUNK: u64 = 2 * MIB;
const BLOCK: u64 = 64 * 1024;
const DOMAIN: &str = "lvguest";

/// Why the libvirt tests cannot run here, if they cannot.
fn missing_tools() -> Option<String> {
    let which = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing: Vec<&str> = ["libvirtd", "virsh", "qemu-system-x86_64", "qemu-img", "setpriv"]
        .into_iter()
        .filter(|t| !which(t))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not installed (Debian: libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils; scripts/setup-test-env)",
            missing.join(", ")
        )
    })
}

/// A private libvirtd and the domains it runs; destroyed and stopped on drop.
pub(crate) struct Libvirtd {
    child: Child,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) uri: String,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Libvirtd {
    /// Starts libvirtd; as root it runs as `nobody` (a session daemon: its own config and state
    /// under the temporary directory, QEMU as `nobody` too).
    pub(crate) fn start() -> Libvirtd {
        let dir = tempfile::Builder::new()
            .prefix("rsvault-libvirtd-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path();
        for d in ["home", "cfg/libvirt", "run", "cache"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("cfg/libvirt/qemu.conf"), "").unwrap();
        let mut cmd = if is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
            let st = Command::new("chown")
                .args(["-R", "nobody:"])
                .arg(root)
                .status()
                .unwrap();
            assert!(st.success());
            let mut c = Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "libvirtd"]);
            c
        } else {
            Command::new("libvirtd")
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", root.join("home"))
            .env("XDG_CONFIG_HOME", root.join("cfg"))
            .env("XDG_RUNTIME_DIR", root.join("run"))
            .env("XDG_CACHE_HOME", root.join("cache"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("libvirtd.log")).unwrap());
        let child = cmd.spawn().expect("libvirtd starts");
        let socket = root.join("run/libvirt/libvirt-sock");
        let uri = format!("qemu+unix:///session?socket={}", socket.display());
        let d = Libvirtd { child, dir, uri };
        let end = Instant::now() + Duration::from_secs(30);
        while d.virsh_try(&["list", "--all"]).is_err() {
            assert!(Instant::now() < end, "libvirtd did not answer on {}", d.uri);
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    pub(crate) fn virsh_try(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub(crate) fn virsh(&self, args: &[&str]) -> String {
        self.virsh_try(args).unwrap_or_else(|e| panic!("virsh {args:?}: {e}"))
    }

    /// A file QEMU (running as `nobody`) may use.
    fn give(&self, p: &Path) {
        if is_root() {
            let st = Command::new("chown").arg("nobody:").arg(p).status().unwrap();
            assert!(st.success());
        }
    }

    /// Defines and starts a TCG domain `name` over a qcow2 image of `content`; its XML file.
    pub(crate) fn run_domain(&self, name: &str, content: &[u8]) -> PathBuf {
        let raw = self.dir.path().join(format!("{name}.raw"));
        std::fs::write(&raw, content).unwrap();
        let img = self.dir.path().join(format!("{name}.qcow2"));
        let st = Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::remove_file(&raw).unwrap();
        self.give(&img);
        let xml = format!(
            "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\n  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n",
            img.display()
        );
        let file = self.dir.path().join(format!("{name}.xml"));
        std::fs::write(&file, xml).unwrap();
        self.virsh(&["define", &file.display().to_string()]);
        self.virsh(&["start", name]);
        file
    }

    /// Writes `len` bytes of `byte` at `off` of the running domain's `vda`, through QEMU.
    pub(crate) fn write(&self, dom: &str, off: u64, len: u64, byte: u8) {
        let cmd = format!("qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P {byte} {off} {len}\"");
        let out = self.virsh(&["qemu-monitor-command", dom, "--hmp", &cmd]);
        assert!(out.trim().is_empty() || out.contains("wrote"), "qemu-io: {out}");
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if let Ok(list) = self.virsh_try(&["list", "--name"]) {
            for d in list.lines().filter(|l| !l.trim().is_empty()) {
                let _ = self.virsh_try(&["destroy", d.trim()]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Applies a write to the model of the disk.
fn apply(model: &mut [u8], off: u64, len: u64, byte: u8) {
    model[off as usize..(off + len) as usize].fill(byte);
}

/// The restored image `p` as raw bytes.
fn raw_of(p: &Path) -> Vec<u8> {
    let out = p.with_extension("cmp.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-O", "raw"])
        .arg(p)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    b
}

/// A server granted `lv`'s connection for group `rg`, with the group and vault `v1`.
pub(crate) async fn granted_fixture(lv: &Libvirtd) -> Fixture {
    // The subscription is made at first start: start once to learn it, then again with the grant.
    let data = tempfile::tempdir().unwrap();
    let s = start_with(test_config(data.path().join("data")), Some(data)).await;
    let sub = s.sub().to_string();
    let (dir, tmp) = s.stop().await;
    let mut config = test_config(dir);
    let grant =
        rsvault_control::hostaccess::LibvirtGrant::parse(&format!("{}=/subscriptions/{sub}/resourceGroups/rg", lv.uri))
            .unwrap();
    config.host_grants = config.host_grants.clone().with_libvirt(vec![grant]);
    let s = start_with(config, tmp).await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let tmp = s.tempdir();
    let dir = tmp.path().to_path_buf();
    Fixture { s, _tmp: tmp, dir }
}

/// Triggers a backup of the item and waits for its job; the finished job.
async fn backup(f: &Fixture) -> Value {
    let expiry = (chrono::Utc::now() + chrono::Duration::days(5))
        .format("%Y-%m-%dT00:00:00.000Z")
        .to_string();
    let id = accept(
        f,
        &f.s.url(&format!("{}/backup?{BK}", f.item(DOMAIN))),
        &json!({"properties": {"objectType": "IaasVMBackupRequest", "recoveryPointExpiryTimeInUTC": expiry}}),
    )
    .await;
    wait_job(f, &id).await.pop().unwrap()
}

/// RestoreDisks of `rp` into account `acct`; the finished job and the restored `vda`.
async fn restore(f: &Fixture, rp: &str, acct: &str) -> (Value, PathBuf) {
    let acct_dir = account(f, acct).await;
    let vm_id = format!(
        "{}/providers/Microsoft.Compute/virtualMachines/{DOMAIN}",
        f.s.rg_path("rg")
    );
    let id = accept(
        f,
        &f.s.url(&format!("{}/recoveryPoints/{rp}/restore?{BK}", f.item(DOMAIN))),
        &json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp, "recoveryType": "RestoreDisks",
            "sourceResourceId": vm_id, "storageAccountId": f.account_id(acct), "region": "westus",
            "createNewCloudService": false, "originalStorageAccountOption": false}}),
    )
    .await;
    let job = wait_job(f, &id).await.pop().unwrap();
    assert_eq!(job["properties"]["status"], "Completed", "{job}");
    let imgs = restored_images(&acct_dir);
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0].file_name().unwrap(), "vda");
    (job, imgs[0].clone())
}

async fn recovery_points(f: &Fixture) -> Vec<Value> {
    let (st, _, b) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item(DOMAIN)), None).await;
    assert_eq!(st, 200, "{b}");
    b["value"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_libvirt_domain_is_discovered_backed_up_incrementally_and_restored() {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED a_running_libvirt_domain_…: {why}");
        return;
    }
    let lv = Libvirtd::start();
    let mut model = crate::recovery::random_bytes(SIZE as usize, 18);
    lv.run_domain(DOMAIN, &model);
    // Known data written through the running guest's QEMU.
    for (i, off) in [0, 5 * MIB, 77 * MIB + 4096].into_iter().enumerate() {
        lv.write(DOMAIN, off, BLOCK, 0x41 + i as u8);
        apply(&mut model, off, BLOCK, 0x41 + i as u8);
    }
    let f = granted_fixture(&lv).await;

    // Not yet refreshed: the domain is not a VM. A refresh declares it, a protectable item.
    let items_url = format!(
        "{}/backupProtectableItems?{BK}&$filter=backupManagementType%20eq%20'AzureIaasVM'",
        f.vault()
    );
    let (st, _, b) = send(&f.s, "GET", &items_url, None).await;
    assert_eq!(st, 200, "{b}");
    assert!(!b.to_string().contains(DOMAIN), "{b}");
    let (st, _, b) = send(
        &f.s,
        "POST",
        &format!("{}/backupFabrics/Azure/refreshContainers?{BK}", f.vault()),
        None,
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let (_, _, b) = send(&f.s, "GET", &items_url, None).await;
    let item = b["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["properties"]["friendlyName"] == DOMAIN)
        .unwrap_or_else(|| panic!("the domain is a protectable item after a refresh: {b}"))
        .clone();
    let vm_id = item["properties"]["virtualMachineId"].as_str().unwrap().to_string();
    let (st, _, vm) = send(&f.s, "GET", &format!("{vm_id}?api-version=2024-07-01"), None).await;
    assert_eq!(st, 200, "{vm}");
    let os = &vm["properties"]["storageProfile"]["osDisk"];
    assert_eq!(os["name"], "vda", "{vm}");
    assert_eq!(os["diskSizeGB"], 1, "{vm}");
    let uuid = lv.virsh(&["domuuid", DOMAIN]).trim().to_string();
    assert_eq!(vm["tags"]["rsvault-libvirt-domain"], uuid.as_str(), "{vm}");

    // Through ARM, a VM may name only a granted connection, and a domain by its UUID.
    let put = |tags: Value| json!({"location": "westus", "tags": tags});
    let other_vm = format!(
        "{}/providers/Microsoft.Compute/virtualMachines/other?api-version=2024-07-01",
        f.s.rg_path("rg")
    );
    for (tags, code) in [
        (
            json!({"rsvault-libvirt": "qemu:///system", "rsvault-libvirt-domain": uuid}),
            "UserErrorHostPathNotAvailable",
        ),
        (
            json!({"rsvault-libvirt": lv.uri, "rsvault-libvirt-domain": "lvguest"}),
            "InvalidParameter",
        ),
        (
            json!({"rsvault-libvirt": lv.uri, "rsvault-libvirt-domain": uuid::Uuid::new_v4().to_string()}),
            "UserErrorHostPathNotAvailable",
        ),
    ] {
        let (st, _, b) = send(&f.s, "PUT", &other_vm, Some(&put(tags.clone()))).await;
        assert_arm_error(st, &b, 400, code);
    }

    // Protect; the first backup runs while a writer changes the disk once libvirt's backup job
    // exists: those writes come after the snapshot instant, so not in the recovery point.
    let pol = format!("{}/backupPolicies/DefaultPolicy", f.vault());
    let (st, _, b) = send(
        &f.s,
        "PUT",
        &format!("{}?{BK}", f.item(DOMAIN)),
        Some(&json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": pol, "sourceResourceId": vm_id}})),
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let at_first = model.clone();
    let late = [(20 * MIB, 0x61u8), (90 * MIB + 512, 0x62)];
    let writer = {
        let uri = lv.uri.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end {
                let out = Command::new("virsh")
                    .args(["-q", "-c", &uri, "domjobinfo", DOMAIN])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&out.stdout).contains("Backup") {
                    for (off, b) in late {
                        let cmd = format!(
                            "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P {b} {off} {BLOCK}\""
                        );
                        let st = Command::new("virsh")
                            .args(["-q", "-c", &uri, "qemu-monitor-command", DOMAIN, "--hmp", &cmd])
                            .status()
                            .unwrap();
                        assert!(st.success());
                    }
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        })
    };
    let job1 = backup(&f).await;
    let p1 = &job1["properties"];
    assert_eq!(p1["status"], "Completed", "{job1}");
    assert!(writer.join().unwrap(), "the writer saw libvirt's backup job");
    for (off, b) in late {
        apply(&mut model, off, BLOCK, b);
    }
    let tasks = p1["extendedInfo"]["tasksList"].as_array().unwrap();
    let snap = tasks[0]["taskExecutionDetails"].as_str().unwrap_or_default();
    assert!(snap.contains("libvirt pull-mode backup"), "{job1}");
    assert!(snap.contains("Crash consistent"), "no guest agent: {job1}");
    let bag = &p1["extendedInfo"]["propertyBag"];
    assert_eq!(
        bag["Data Read From Source (in bytes)"],
        SIZE.to_string(),
        "the first backup reads the whole disk: {job1}"
    );
    let cps = lv.virsh(&["checkpoint-list", "--name", DOMAIN]);
    assert_eq!(cps.lines().filter(|l| l.starts_with("rsvault-")).count(), 1, "{cps}");
    assert!(
        lv.virsh(&["domjobinfo", DOMAIN]).contains("None"),
        "the backup job ended"
    );

    // 1 % of the disk changes (plus the writes made during the first backup): the incremental
    // reads only the chunks the checkpoint's bitmap marks.
    let more = [(40 * MIB + 100, 0x71u8), (41 * MIB, 0x72)];
    for (off, b) in more {
        lv.write(DOMAIN, off, BLOCK, b);
        apply(&mut model, off, BLOCK, b);
    }
    let mut chunks: Vec<u64> = late
        .iter()
        .chain(&more)
        .flat_map(|(off, _)| [off / CHUNK, (off + BLOCK - 1) / CHUNK])
        .collect();
    chunks.sort();
    chunks.dedup();
    let job2 = backup(&f).await;
    let p2 = &job2["properties"];
    assert_eq!(p2["status"], "Completed", "{job2}");
    let bag = &p2["extendedInfo"]["propertyBag"];
    assert_eq!(
        bag["Data Read From Source (in bytes)"],
        (chunks.len() as u64 * CHUNK).to_string(),
        "only the changed chunks {chunks:?} are read: {job2}"
    );
    let transfer = p2["extendedInfo"]["tasksList"][1]["taskExecutionDetails"]
        .as_str()
        .unwrap_or_default();
    assert!(
        transfer.contains(&format!("{} of 64 chunks changed", chunks.len())),
        "{job2}"
    );

    // Each point restores to the disk at its instant, byte for byte; the restore offers a
    // domain definition over the restored disk that libvirt accepts.
    let rps = recovery_points(&f).await;
    assert_eq!(rps.len(), 2);
    let by_time = |i: usize| {
        let mut v = rps.clone();
        v.sort_by_key(|r| r["properties"]["recoveryPointTime"].as_str().unwrap().to_string());
        v[i]["name"].as_str().unwrap().to_string()
    };
    for r in &rps {
        assert_eq!(r["properties"]["recoveryPointType"], "CrashConsistent", "{r}");
    }
    let (_, img1) = restore(&f, &by_time(0), "restore1").await;
    assert!(raw_of(&img1) == at_first, "the first point is the disk at its instant");
    let (rjob, img2) = restore(&f, &by_time(1), "restore2").await;
    assert!(
        raw_of(&img2) == model,
        "the incremental point is the disk at its instant"
    );
    let bag = &rjob["properties"]["extendedInfo"]["propertyBag"];
    let def = bag["Domain Definition Blob Uri"]
        .as_str()
        .unwrap_or_else(|| panic!("a domain definition: {rjob}"))
        .strip_prefix("file://")
        .unwrap()
        .to_string();
    assert_eq!(
        Path::new(&def).file_name().unwrap().to_string_lossy(),
        bag["Domain Definition Blob Name"].as_str().unwrap()
    );
    let xml = std::fs::read_to_string(&def).unwrap();
    assert!(xml.contains(&img2.display().to_string()), "{xml}");
    assert!(!xml.contains(&uuid), "a fresh UUID: {xml}");
    lv.virsh(&["define", &def]);
    let (name, _, disks) = rsvault_engine::libvirt::parse_domain(&xml).unwrap();
    assert!(name.starts_with(&format!("{DOMAIN}-restored-")), "{name}");
    assert_eq!(disks[0].source, img2);
    let defined = lv.virsh(&["dumpxml", &name]);
    assert!(defined.contains(&img2.display().to_string()), "{defined}");

    // OriginalLocation is refused while the domain runs.
    let (st, _, b) = send(
        &f.s,
        "POST",
        &format!("{}/recoveryPoints/{}/restore?{BK}", f.item(DOMAIN), by_time(1)),
        Some(&json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": by_time(1), "recoveryType": "OriginalLocation", "sourceResourceId": vm_id}})),
    )
    .await;
    assert_arm_error(st, &b, 400, "UserErrorVmNotInDesirableState");

    // Shut off, the domain is backed up from its image file; that point is the disk as QEMU left it.
    lv.virsh(&["destroy", DOMAIN]);
    let job3 = backup(&f).await;
    let p3 = &job3["properties"];
    assert_eq!(p3["status"], "Completed", "{job3}");
    let snap = p3["extendedInfo"]["tasksList"][0]["taskExecutionDetails"]
        .as_str()
        .unwrap_or_default();
    assert!(snap.contains("is shut off: its image files were read"), "{job3}");
    let rps = recovery_points(&f).await;
    assert_eq!(rps.len(), 3);
    let mut names: Vec<(String, String)> = rps
        .iter()
        .map(|r| {
            (
                r["properties"]["recoveryPointTime"].as_str().unwrap().to_string(),
                r["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    names.sort();
    let (_, img3) = restore(&f, &names[2].1, "restore3").await;
    assert!(raw_of(&img3) == model, "the shut-off point is the disk");
    f.s.stop().await;
}
