//! Security regressions (issue 13, host paths): each test replays an attack as a real client would
//! (HTTPS, a real token of the role named) and checks that it is refused with the one generic error,
//! or made harmless, and that nothing was stored.

use crate::harness::*;
use rsvault_control::hostaccess::{Grant, HostGrants};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BK: &str = "api-version=2026-10-01";
const VM_API: &str = "api-version=2024-07-01";
const ST_API: &str = "api-version=2023-05-01";
const UNAVAILABLE: &str = "UserErrorHostPathNotAvailable";

fn vm_url(s: &Server, rg: &str, vm: &str) -> String {
    format!("{}/providers/Microsoft.Compute/virtualMachines/{vm}", s.rg_path(rg))
}

fn acct_url(s: &Server, rg: &str, acct: &str) -> String {
    format!("{}/providers/Microsoft.Storage/storageAccounts/{acct}", s.rg_path(rg))
}

fn vm_body(uri: &str) -> Value {
    json!({"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux", "vhd": {"uri": uri}}}}})
}

fn acct_body(dir: &str) -> Value {
    json!({"location": "westus", "kind": "StorageV2", "sku": {"name": "Standard_LRS"}, "tags": {"rsvault-path": dir}})
}

fn file_uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// A call with `token`; the status and the body's exact bytes.
async fn raw(s: &Server, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let path = path.strip_prefix(&s.base).unwrap_or(path);
    let r = s.call_as(Some(token), method, path, body).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn json_call(s: &Server, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (st, t) = raw(s, token, method, path, body).await;
    (
        st,
        if t.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&t).unwrap()
        },
    )
}

/// Asserts the generic refusal naming `shown`, and that `get` (the resource) was not stored.
async fn assert_refused(s: &Server, token: &str, what: &str, st: u16, body: &str, shown: &str, get: &str) {
    let b: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(st, 400, "{what}: {body}");
    assert_eq!(b["error"]["code"], UNAVAILABLE, "{what}: {body}");
    assert_eq!(
        b["error"]["message"],
        format!(
            "The path '{shown}' is not available to rsvault: the operator has not granted it, or it cannot be used."
        ),
        "{what}"
    );
    let (st, _) = raw(s, token, "GET", get, None).await;
    assert_eq!(st, 404, "{what}: nothing was stored");
}

/// A server granting its host dir, a group `g` with a Contributor's token (scoped to `g`).
async fn contributor_setup() -> (Server, String) {
    let s = start().await;
    s.make_group("g").await;
    let token = s.principal(Some("Contributor"), &s.rg_path("g")).await;
    (s, token)
}

#[tokio::test]
async fn a_contributor_cannot_declare_host_files_outside_the_grants_as_disks() {
    let (s, token) = contributor_setup().await;
    let host = s.host_dir();
    let inside = host.join("in");
    std::fs::create_dir(&inside).unwrap();
    std::fs::write(inside.join("ok.raw"), vec![1u8; 65536]).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", inside.join("shadow-link")).unwrap();
    std::os::unix::fs::symlink("/etc", inside.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x.raw", inside.join("dangling")).unwrap();
    let data_dir_file = s.dir.join("store.db");
    let cases: Vec<(&str, String)> = vec![
        ("/etc/shadow", "file:///etc/shadow".into()),
        ("outside the grants", "file:///etc/hostname".into()),
        (
            "escaping with '..'",
            format!("file://{}/in/../../../../../etc/hostname", host.display()),
        ),
        (
            "escaping with an encoded '..'",
            format!("file://{}/in/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/hostname", host.display()),
        ),
        (
            "a symlink inside the grant to a file outside",
            file_uri(&inside.join("shadow-link")),
        ),
        (
            "a symlinked directory inside the grant",
            file_uri(&inside.join("etc-link/hostname")),
        ),
        ("a dangling symlink", file_uri(&inside.join("dangling"))),
        ("rsvault's own data dir", file_uri(&data_dir_file)),
        ("a directory", file_uri(&inside)),
        ("missing", file_uri(&inside.join("nope.raw"))),
    ];
    for (i, (what, uri)) in cases.iter().enumerate() {
        let vm = vm_url(&s, "g", &format!("evil{i}"));
        let (st, body) = raw(&s, &token, "PUT", &format!("{vm}?{VM_API}"), Some(&vm_body(uri))).await;
        assert_refused(&s, &token, what, st, &body, uri, &format!("{vm}?{VM_API}")).await;
    }
    // A data disk is checked like the OS disk.
    let mut b = vm_body(&file_uri(&inside.join("ok.raw")));
    b["properties"]["storageProfile"]["dataDisks"] = json!([{"lun": 0, "vhd": {"uri": "file:///etc/shadow"}}]);
    let vm = vm_url(&s, "g", "evildata");
    let (st, body) = raw(&s, &token, "PUT", &format!("{vm}?{VM_API}"), Some(&b)).await;
    assert_refused(
        &s,
        &token,
        "a data disk",
        st,
        &body,
        "file:///etc/shadow",
        &format!("{vm}?{VM_API}"),
    )
    .await;
    // The same image, granted, is accepted.
    let vm = vm_url(&s, "g", "good");
    let (st, body) = raw(
        &s,
        &token,
        "PUT",
        &format!("{vm}?{VM_API}"),
        Some(&vm_body(&file_uri(&inside.join("ok.raw")))),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn a_storage_account_or_share_outside_the_grants_is_refused() {
    let (s, token) = contributor_setup().await;
    let host = s.host_dir();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), host.join("out-link")).unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("the root", "/".into()),
        ("/etc", "/etc".into()),
        ("a relative path", "etc".into()),
        ("escaping with '..'", format!("{}/../..", host.display())),
        (
            "a symlink inside the grant to a directory outside",
            host.join("out-link").display().to_string(),
        ),
        ("rsvault's own data dir", s.dir.display().to_string()),
        ("a missing directory", host.join("nope").display().to_string()),
        ("a file", "/etc/hostname".into()),
    ];
    for (i, (what, dir)) in cases.iter().enumerate() {
        let a = acct_url(&s, "g", &format!("evil{i}"));
        let (st, body) = raw(&s, &token, "PUT", &format!("{a}?{ST_API}"), Some(&acct_body(dir))).await;
        assert_refused(&s, &token, what, st, &body, dir, &format!("{a}?{ST_API}")).await;
    }
    // A granted account whose share directory is a symlink leading out: the share is refused and
    // nothing is created where it points.
    let acct_dir = host.join("acct");
    std::fs::create_dir(&acct_dir).unwrap();
    let a = acct_url(&s, "g", "files1");
    let (st, body) = raw(
        &s,
        &token,
        "PUT",
        &format!("{a}?{ST_API}"),
        Some(&acct_body(&acct_dir.display().to_string())),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    std::os::unix::fs::symlink(outside.path(), acct_dir.join("etc")).unwrap();
    let share = format!("{a}/fileServices/default/shares/etc");
    let (st, body) = raw(&s, &token, "PUT", &format!("{share}?{ST_API}"), Some(&json!({}))).await;
    let b: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((st, &b["error"]["code"]), (400, &json!(UNAVAILABLE)), "{body}");
    let (st, _) = raw(&s, &token, "GET", &format!("{share}?{ST_API}"), None).await;
    assert_eq!(st, 404);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    s.stop().await;
}

#[tokio::test]
async fn a_missing_path_and_an_outside_path_answer_byte_identical_errors() {
    let (s, token) = contributor_setup().await;
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.raw");
    let vm = format!("{}?{VM_API}", vm_url(&s, "g", "probe"));
    let body = vm_body(&file_uri(&secret));
    // The same path outside the grants, before and after it exists: the same bytes.
    let missing = raw(&s, &token, "PUT", &vm, Some(&body)).await;
    std::fs::write(&secret, vec![7u8; 65536]).unwrap();
    let present = raw(&s, &token, "PUT", &vm, Some(&body)).await;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let unreadable = raw(&s, &token, "PUT", &vm, Some(&body)).await;
    assert_eq!(missing, present, "existence must not change the answer");
    assert_eq!(missing, unreadable);
    // A missing path inside the grant, a file outside, a directory outside: the same answer but
    // for the path it names.
    let inside = s.host_dir().join("nope.raw");
    let forms = [inside.clone(), PathBuf::from("/etc/hostname"), PathBuf::from("/etc")];
    let mut answers = Vec::new();
    for p in &forms {
        let (st, t) = raw(&s, &token, "PUT", &vm, Some(&vm_body(&file_uri(p)))).await;
        answers.push((st, t.replace(&file_uri(p), "PATH")));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:#?}");
    // Storage accounts likewise.
    let a = format!("{}?{ST_API}", acct_url(&s, "g", "probe"));
    let dir = outside.path().join("d");
    let missing = raw(&s, &token, "PUT", &a, Some(&acct_body(&dir.display().to_string()))).await;
    std::fs::create_dir(&dir).unwrap();
    let present = raw(&s, &token, "PUT", &a, Some(&acct_body(&dir.display().to_string()))).await;
    assert_eq!(missing, present);
    assert_eq!(missing.0, 400);
    s.stop().await;
}

#[tokio::test]
async fn a_grant_scoped_to_one_group_does_not_serve_another() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let g_root = tmp.path().join("g-root");
    std::fs::create_dir(&g_root).unwrap();
    std::fs::write(g_root.join("d.raw"), vec![3u8; 65536]).unwrap();
    // The scope needs the subscription, known once the server has bootstrapped: start once.
    let s = start_with(test_config(data.clone()), None).await;
    let sub = s.sub().to_string();
    s.stop().await;
    let mut config = test_config(data);
    config.host_grants = HostGrants::new(vec![Grant::parse(&format!(
        "{}=/subscriptions/{sub}/resourceGroups/G",
        g_root.display()
    ))
    .unwrap()]);
    let s = start_with(config, Some(tmp)).await;
    s.make_group("G").await;
    s.make_group("H").await;
    let h_token = s.principal(Some("Contributor"), &s.rg_path("H")).await;
    let uri = file_uri(&g_root.join("d.raw"));
    // Group H, with its own Contributor: refused, for a VM and for a storage account.
    let vm_h = format!("{}?{VM_API}", vm_url(&s, "H", "borrow"));
    let (st, body) = raw(&s, &h_token, "PUT", &vm_h, Some(&vm_body(&uri))).await;
    assert_refused(&s, &h_token, "a VM in H", st, &body, &uri, &vm_h).await;
    let acct_h = format!("{}?{ST_API}", acct_url(&s, "H", "borrow"));
    let dir = g_root.display().to_string();
    let (st, body) = raw(&s, &h_token, "PUT", &acct_h, Some(&acct_body(&dir))).await;
    assert_refused(&s, &h_token, "an account in H", st, &body, &dir, &acct_h).await;
    // Group G (any casing): served.
    let (st, body) = raw(
        &s,
        &s.token,
        "PUT",
        &format!("{}?{VM_API}", vm_url(&s, "g", "own")),
        Some(&vm_body(&uri)),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let (st, body) = raw(
        &s,
        &s.token,
        "PUT",
        &format!("{}?{ST_API}", acct_url(&s, "G", "own1")),
        Some(&acct_body(&dir)),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn a_server_without_grants_accepts_no_host_path() {
    let s = start_ungranted().await;
    s.make_group("g").await;
    let img = tempfile::tempdir().unwrap();
    let disk = img.path().join("d.raw");
    std::fs::write(&disk, vec![1u8; 65536]).unwrap();
    let vm = format!("{}?{VM_API}", vm_url(&s, "g", "vm1"));
    let (st, body) = raw(&s, &s.token, "PUT", &vm, Some(&vm_body(&file_uri(&disk)))).await;
    assert_refused(
        &s,
        &s.token,
        "no grant (even for the Owner)",
        st,
        &body,
        &file_uri(&disk),
        &vm,
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn a_qcow2_whose_backing_file_is_outside_is_refused() {
    let (s, token) = contributor_setup().await;
    let host = s.host_dir();
    let inside_raw = host.join("base.raw");
    std::fs::write(&inside_raw, vec![0u8; 1 << 20]).unwrap();
    for (name, backing) in [
        ("out.qcow2", Path::new("/etc/hostname")),
        ("in.qcow2", inside_raw.as_path()),
    ] {
        let q = host.join(name);
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b"])
            .arg(backing)
            .args(["-F", "raw"])
            .arg(&q)
            .arg("1M")
            .status()
            .expect("qemu-img (qemu-utils) builds the fixture");
        assert!(ok.success());
        let vm = format!("{}?{VM_API}", vm_url(&s, "g", name.replace('.', "-").as_str()));
        let (st, body) = raw(&s, &token, "PUT", &vm, Some(&vm_body(&file_uri(&q)))).await;
        assert_refused(&s, &token, name, st, &body, &file_uri(&q), &vm).await;
    }
    s.stop().await;
}

// ---- backups and restores: the same checks when the job runs ----------------------------------

struct Flow {
    s: Server,
    token: String,
}

impl Flow {
    fn vault(&self) -> String {
        self.s.vault_path("g", "v1")
    }
    fn item(&self, vm: &str) -> String {
        format!(
            "{}/backupFabrics/Azure/protectionContainers/IaasVMContainer%3Biaasvmcontainerv2%3Bg%3B{vm}/protectedItems/VM%3Biaasvmcontainerv2%3Bg%3B{vm}",
            self.vault()
        )
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        json_call(&self.s, &self.token, method, path, body).await
    }

    /// Declares a VM over `disk` and protects it with DefaultPolicy.
    async fn protect(&self, vm: &str, disk: &Path) {
        let (st, b) = self
            .call(
                "PUT",
                &format!("{}?{VM_API}", vm_url(&self.s, "g", vm)),
                Some(&vm_body(&file_uri(disk))),
            )
            .await;
        assert_eq!(st, 201, "{b}");
        let pol = format!("{}/backupPolicies/DefaultPolicy", self.vault());
        let (st, b) = self
            .call(
                "PUT",
                &format!("{}?{BK}", self.item(vm)),
                Some(
                    &json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": pol}}),
                ),
            )
            .await;
        assert_eq!(st, 202, "{b}");
    }

    /// POSTs a backup or restore; the job id.
    async fn start_job(&self, url: &str, body: &Value) -> String {
        let r = self.s.call_as(Some(&self.token), "POST", url, Some(body)).await;
        let st = r.status().as_u16();
        let status_url = r
            .headers()
            .get("azure-asyncoperation")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(st, 202, "{}", r.text().await.unwrap());
        let (_, op) = self.call("GET", &status_url.unwrap(), None).await;
        op["properties"]["jobId"].as_str().unwrap().to_string()
    }

    async fn job(&self, id: &str) -> Value {
        self.call("GET", &format!("{}/backupJobs/{id}?{BK}", self.vault()), None)
            .await
            .1
    }

    async fn wait(&self, id: &str) -> Value {
        for _ in 0..2400 {
            let j = self.job(id).await;
            if !matches!(j["properties"]["status"].as_str(), Some("InProgress" | "Cancelling")) {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not finish");
    }

    async fn backup(&self, vm: &str) -> String {
        self.start_job(
            &format!("{}/backup?{BK}", self.item(vm)),
            &json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
        )
        .await
    }

    async fn recovery_points(&self, vm: &str) -> Vec<Value> {
        let (st, b) = self
            .call("GET", &format!("{}/recoveryPoints?{BK}", self.item(vm)), None)
            .await;
        assert_eq!(st, 200, "{b}");
        b["value"].as_array().unwrap().clone()
    }
}

async fn flow() -> Flow {
    let (s, token) = contributor_setup().await;
    let f = Flow { s, token };
    let (st, b) = f
        .call(
            "PUT",
            &format!("{}?{BK}", f.vault()),
            Some(&json!({"location": "westus", "sku": {"name": "Standard"}})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    f
}

fn write_bytes(p: &Path, len: usize, seed: u8) {
    let v: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(p, v).unwrap();
}

#[tokio::test]
async fn restored_disk_images_are_mode_0600_and_an_original_location_restore_does_not_follow_a_swapped_parent() {
    let f = flow().await;
    let host = f.s.host_dir();
    let vmdir = host.join("vm1");
    std::fs::create_dir(&vmdir).unwrap();
    let disk = vmdir.join("os.raw");
    write_bytes(&disk, 4 << 20, 1);
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o644)).unwrap();
    f.protect("vm1", &disk).await;
    let job = f.backup("vm1").await;
    assert_eq!(f.wait(&job).await["properties"]["status"], "Completed");
    let rp = f.recovery_points("vm1").await[0]["name"].as_str().unwrap().to_string();
    let restore_url = format!("{}/recoveryPoints/{rp}/restore?{BK}", f.item("vm1"));

    // RestoreDisks into a granted storage account: the image is root's, 0600, not world-readable.
    let restores = host.join("restores");
    std::fs::create_dir(&restores).unwrap();
    let acct = acct_url(&f.s, "g", "restores1");
    let (st, b) = f
        .call(
            "PUT",
            &format!("{acct}?{ST_API}"),
            Some(&acct_body(&restores.display().to_string())),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let job = f
        .start_job(
            &restore_url,
            &json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp, "recoveryType": "RestoreDisks", "storageAccountId": acct, "region": "westus"}}),
        )
        .await;
    let j = f.wait(&job).await;
    assert_eq!(j["properties"]["status"], "Completed", "{j}");
    let (restored, configs): (Vec<PathBuf>, Vec<PathBuf>) = walk(&restores)
        .into_iter()
        .partition(|p| p.extension().is_none_or(|e| e != "json"));
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(configs.len(), 2, "the VM's config and template: {configs:?}");
    for p in restored.iter().chain(&configs) {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{} is not private", p.display());
    }
    assert_eq!(std::fs::read(&restored[0]).unwrap(), std::fs::read(&disk).unwrap());

    // The VM's directory swapped for a symlink to a directory outside the grants: an
    // OriginalLocation restore is refused, and nothing is written where the symlink points.
    let outside = tempfile::tempdir().unwrap();
    std::fs::rename(&vmdir, host.join("vm1-moved")).unwrap();
    std::os::unix::fs::symlink(outside.path(), &vmdir).unwrap();
    let (st, b) = f
        .call(
            "POST",
            &restore_url,
            Some(&json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp, "recoveryType": "OriginalLocation", "region": "westus"}})),
        )
        .await;
    assert_eq!((st, &b["error"]["code"]), (400, &json!(UNAVAILABLE)), "{b}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    f.s.stop().await;
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_disk_swapped_for_a_symlink_after_the_backup_was_accepted_is_not_read() {
    let f = flow().await;
    let host = f.s.host_dir();
    // A big disk keeps the vault's one job slot busy while the second backup waits in the queue.
    let big = host.join("big.raw");
    write_bytes(&big, 192 << 20, 2);
    let small = host.join("small.raw");
    write_bytes(&small, 1 << 20, 3);
    f.protect("big", &big).await;
    f.protect("small", &small).await;
    let first = f.backup("big").await;
    for _ in 0..600 {
        if f.job(&first).await["properties"]["extendedInfo"]["tasksList"][1]["status"] == "InProgress" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = f.backup("small").await;
    // Accepted with a granted image; now the image becomes a symlink to a file outside.
    std::fs::remove_file(&small).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &small).unwrap();
    assert_eq!(
        f.job(&second).await["properties"]["status"],
        "InProgress",
        "still queued"
    );
    let j = f.wait(&second).await;
    assert_eq!(j["properties"]["status"], "Failed", "{j}");
    let said = j["properties"]["errorDetails"][0]["errorString"]
        .as_str()
        .unwrap_or_default();
    assert!(
        said.starts_with(&format!(
            "The path '{}' is not available to rsvault: the operator has not granted it, or it cannot be used.",
            small.display()
        )) && said.contains("(on rsvault node 'node-"),
        "the one refusal, naming the node that ran the job: {j}"
    );
    assert!(
        f.recovery_points("small").await.is_empty(),
        "no recovery point of /etc/hostname"
    );
    assert_eq!(f.wait(&first).await["properties"]["status"], "Completed");
    f.s.stop().await;
}

#[tokio::test]
async fn after_a_restart_without_the_grant_backups_and_restores_of_its_paths_are_refused() {
    let f = flow().await;
    let host = f.s.host_dir();
    let disk = host.join("vm1.raw");
    write_bytes(&disk, 1 << 20, 4);
    f.protect("vm1", &disk).await;
    let job = f.backup("vm1").await;
    assert_eq!(f.wait(&job).await["properties"]["status"], "Completed");
    let rp = f.recovery_points("vm1").await[0]["name"].as_str().unwrap().to_string();
    let restores = host.join("restores");
    std::fs::create_dir(&restores).unwrap();
    let acct = acct_url(&f.s, "g", "restores1");
    let (st, b) = f
        .call(
            "PUT",
            &format!("{acct}?{ST_API}"),
            Some(&acct_body(&restores.display().to_string())),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    // The operator withdraws the grant.
    let (dir, tmp) = f.s.stop().await;
    let mut config = test_config(dir);
    config.host_grants = HostGrants::default();
    let s = start_with(config, tmp).await;
    // Tokens name the issuer's URL (a new port): a fresh Contributor of the group.
    let token = s.principal(Some("Contributor"), &s.rg_path("g")).await;
    let f = Flow { s, token };
    let (st, b) = f
        .call(
            "POST",
            &format!("{}/backup?{BK}", f.item("vm1")),
            Some(&json!({"properties": {"objectType": "IaasVMBackupRequest"}})),
        )
        .await;
    assert_eq!((st, &b["error"]["code"]), (400, &json!(UNAVAILABLE)), "{b}");
    for body in [
        json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp, "recoveryType": "RestoreDisks", "storageAccountId": acct, "region": "westus"}}),
        json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp, "recoveryType": "OriginalLocation", "region": "westus"}}),
    ] {
        let (st, b) = f
            .call(
                "POST",
                &format!("{}/recoveryPoints/{rp}/restore?{BK}", f.item("vm1")),
                Some(&body),
            )
            .await;
        assert_eq!((st, &b["error"]["code"]), (400, &json!(UNAVAILABLE)), "{b}");
    }
    assert_eq!(std::fs::read_dir(&restores).unwrap().count(), 0, "nothing restored");
    let (_, jobs) = f.call("GET", &format!("{}/backupJobs?{BK}", f.vault()), None).await;
    assert!(
        jobs["value"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["properties"]["operation"] != "Restore"),
        "no restore job was queued: {jobs}"
    );
    f.s.stop().await;
}

#[tokio::test]
async fn a_share_restore_into_a_folder_that_leads_out_of_the_grants_is_refused() {
    let f = flow().await;
    let host = f.s.host_dir();
    let acct_dir = host.join("files");
    std::fs::create_dir(&acct_dir).unwrap();
    let acct = acct_url(&f.s, "g", "files1");
    let (st, b) = f
        .call(
            "PUT",
            &format!("{acct}?{ST_API}"),
            Some(&acct_body(&acct_dir.display().to_string())),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let (st, b) = f
        .call(
            "PUT",
            &format!("{acct}/fileServices/default/shares/docs?{ST_API}"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    std::fs::write(acct_dir.join("docs/a.txt"), "alpha").unwrap();
    let container = format!(
        "{}/backupFabrics/Azure/protectionContainers/StorageContainer%3BStorage%3Bg%3Bfiles1",
        f.vault()
    );
    let (st, b) = f
        .call(
            "PUT",
            &format!("{container}?{BK}"),
            Some(&json!({"properties": {"backupManagementType": "AzureStorage", "containerType": "StorageContainer", "sourceResourceId": acct}})),
        )
        .await;
    assert!(st == 200 || st == 202, "{b}");
    let pol = json!({"properties": {"backupManagementType": "AzureStorage", "workLoadType": "AzureFileShare",
        "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": ["2026-01-01T03:00:00Z"]},
        "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": ["2026-01-01T03:00:00Z"], "retentionDuration": {"count": 30, "durationType": "Days"}}},
        "timeZone": "UTC"}});
    let (st, b) = f
        .call("PUT", &format!("{}/backupPolicies/afs?{BK}", f.vault()), Some(&pol))
        .await;
    assert_eq!(st, 200, "{b}");
    let item = format!("{container}/protectedItems/AzureFileShare%3Bdocs");
    let (st, b) = f
        .call(
            "PUT",
            &format!("{item}?{BK}"),
            Some(&json!({"properties": {"protectedItemType": "AzureFileShareProtectedItem", "policyId": format!("{}/backupPolicies/afs", f.vault()), "sourceResourceId": acct}})),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let job = f
        .start_job(
            &format!("{item}/backup?{BK}"),
            &json!({"properties": {"objectType": "AzureFileShareBackupRequest"}}),
        )
        .await;
    assert_eq!(f.wait(&job).await["properties"]["status"], "Completed");
    let (_, rps) = f.call("GET", &format!("{item}/recoveryPoints?{BK}"), None).await;
    let rp = rps["value"][0]["name"].as_str().unwrap().to_string();
    // A local user plants a symlink inside the share, to a directory outside every grant, and the
    // caller restores "into" it, in place and to an alternate share.
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), acct_dir.join("docs/out")).unwrap();
    for recovery_type in ["OriginalLocation", "AlternateLocation"] {
        let body = json!({"properties": {"objectType": "AzureFileShareRestoreRequest", "recoveryType": recovery_type,
            "sourceResourceId": acct, "copyOptions": "Overwrite", "restoreRequestType": "FullShareRestore",
            "restoreFileSpecs": [{"targetFolderPath": "out/etc"}],
            "targetDetails": {"name": "docs", "targetResourceId": acct}}});
        let (st, b) = f
            .call("POST", &format!("{item}/recoveryPoints/{rp}/restore?{BK}"), Some(&body))
            .await;
        assert_eq!(
            (st, &b["error"]["code"]),
            (400, &json!(UNAVAILABLE)),
            "{recovery_type}: {b}"
        );
    }
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
    f.s.stop().await;
}
