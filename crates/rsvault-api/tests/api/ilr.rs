//! Item level recovery (issue 16): a VM whose disk holds an ext4 file system is backed up, its
//! recovery point provisioned, the answer's client script followed to copy the disk over NBD with
//! TLS-PSK, and one file read back with `debugfs`; a wrong key reads nothing, a second provision
//! renews, revoke ends the export, the session expires on its own, and a restart serves it again.

use crate::harness::*;
use crate::recovery::{accept, get_url, header, protect_vm, send, wait_job, Fixture, BK};
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// An ext4 image of 16 MiB holding `dir/file.bin` (300 KiB of noise) and `hello.txt`.
fn ext4_image(work: &Path) -> (PathBuf, Vec<u8>) {
    let src = work.join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    let content = crate::recovery::random_bytes(300 << 10, 42);
    std::fs::write(src.join("dir/file.bin"), &content).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello from the recovery point\n").unwrap();
    let img = work.join("os.raw");
    let st = Command::new("/usr/sbin/mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    (img, content)
}

/// A VM `vm1` over that image, backed up once; returns the recovery point's name and the file.
async fn backed_up_vm(f: &Fixture) -> (String, Vec<u8>) {
    let (img, content) = ext4_image(&f.dir);
    protect_vm(f, "vm1", &img, &[]).await;
    let job = accept(
        f,
        &f.s.url(&format!("{}/backup?{BK}", f.item("vm1"))),
        &json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
    )
    .await;
    let seen = wait_job(f, &job).await;
    assert_eq!(seen.last().unwrap()["properties"]["status"], "Completed");
    let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
    (rps["value"][0]["name"].as_str().unwrap().to_string(), content)
}

fn rp_url(f: &Fixture, rp: &str, action: &str) -> String {
    f.s.url(&format!("{}/recoveryPoints/{rp}/{action}?{BK}", f.item("vm1")))
}

/// Polls the vault-level operation (as the az CLI does) until it is not InProgress.
async fn wait_op(f: &Fixture, op: &str) -> Value {
    for _ in 0..1200 {
        let (st, b) = get_url(&f.s, &f.s.url(&format!("{}/backupOperations/{op}?{BK}", f.vault()))).await;
        assert_eq!(st, 200, "{b}");
        if b["status"] != "InProgress" {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("operation {op} did not end");
}

/// POSTs a provision or revoke; checks the 202's headers; returns the operation id.
async fn post_202(f: &Fixture, url: &str, body: Option<&Value>) -> String {
    let (st, h, b) = send(&f.s, "POST", url, body).await;
    assert_eq!(st, 202, "{b}");
    let status = header(&h, "azure-asyncoperation");
    let location = header(&h, "location");
    assert!(status.contains("/operationsStatus/"), "{status}");
    assert!(
        location.contains("/operationResults/") && location.ends_with(BK),
        "{location}"
    );
    status
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string()
}

fn provision_body(f: &Fixture, rp: &str) -> Value {
    json!({"properties": {"objectType": "IaasVMILRRegistrationRequest", "recoveryPointId": rp,
        "virtualMachineId": format!("/subscriptions/{}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1", f.s.sub()),
        "initiatorName": "iqn.2016-01.com.microsoft.iscsi:test", "renewExistingRegistration": false}})
}

/// Provisions and waits; returns the operation id.
async fn provision(f: &Fixture, rp: &str) -> String {
    let op = post_202(
        f,
        &rp_url(f, rp, "provisionInstantItemRecovery"),
        Some(&provision_body(f, rp)),
    )
    .await;
    let done = wait_op(f, &op).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    op
}

/// The client script the answer carries for operation `op`.
async fn script(f: &Fixture, rp: &str, op: &str) -> String {
    let (st, _, b) = send(
        &f.s,
        "POST",
        &rp_url(f, rp, "listInstantItemRecoveryOperationResult"),
        Some(&json!({"provisionInstantItemRecoveryOperationId": op})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let s = &b["clientScripts"][0];
    assert_eq!(
        (s["osType"].as_str(), s["scriptExtension"].as_str()),
        (Some("Linux"), Some(".sh")),
        "{b}"
    );
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(s["scriptContent"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// Runs the script's `copy` into a fresh directory; returns the copied images (or the error).
fn run_copy(work: &Path, text: &str, tag: &str) -> Result<Vec<PathBuf>, String> {
    let dir = work.join(format!("copy-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = work.join(format!("ilr-{tag}.sh"));
    std::fs::write(&path, text).unwrap();
    let out = Command::new("bash").arg(&path).arg("copy").arg(&dir).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect())
}

/// `debugfs -R 'dump PATH'` from an image.
fn dump(img: &Path, inside: &str, out: &Path) -> Option<Vec<u8>> {
    let _ = std::fs::remove_file(out);
    Command::new("/usr/sbin/debugfs")
        .arg("-R")
        .arg(format!("dump {inside} {}", out.display()))
        .arg(img)
        .output()
        .ok()?;
    std::fs::read(out).ok()
}

fn read_file_through(work: &Path, text: &str, tag: &str) -> Result<Vec<u8>, String> {
    let imgs = run_copy(work, text, tag)?;
    assert_eq!(imgs.len(), 1, "one disk, one copy: {imgs:?}");
    dump(&imgs[0], "/dir/file.bin", &work.join(format!("out-{tag}"))).ok_or_else(|| "no file in the copy".into())
}

fn staging_dirs(s: &Server) -> Vec<PathBuf> {
    std::fs::read_dir(s.dir.join("ilr"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_file_comes_back_from_a_vm_recovery_point_through_the_provisioned_export() {
    let f = crate::recovery::fixture().await;
    let (rp, content) = backed_up_vm(&f).await;
    let rp_get = f.s.url(&format!("{}/recoveryPoints/{rp}?{BK}", f.item("vm1")));
    assert_eq!(
        get_url(&f.s, &rp_get).await.1["properties"]["isInstantIlrSessionActive"],
        false
    );

    let op = provision(&f, &rp).await;
    assert_eq!(
        get_url(&f.s, &rp_get).await.1["properties"]["isInstantIlrSessionActive"],
        true
    );
    // The item's operationResults URL of a finished provision: 204, as a restore's.
    let (st, _) = get_url(&f.s, &f.s.url(&format!("{}/operationResults/{op}?{BK}", f.item("vm1")))).await;
    assert_eq!(st, 204);
    // Staged under the data dir, private.
    let staged = staging_dirs(&f.s);
    assert_eq!(staged.len(), 1, "{staged:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&staged[0]).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(staged[0].join("psk/keys.psk"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    // The answer's script copies the disk; the file in it is the one backed up.
    let text = script(&f, &rp, &op).await;
    assert_eq!(read_file_through(&f.dir, &text, "a").unwrap(), content);

    // Another key reads nothing (the TLS handshake fails).
    let key_line = text
        .lines()
        .find(|l| l.starts_with("TargetPassword="))
        .unwrap()
        .to_string();
    let wrong = text.replace(&key_line, &format!("TargetPassword=\"{}\"", "ab".repeat(32)));
    assert_ne!(wrong, text);
    let e = read_file_through(&f.dir, &wrong, "wrong").unwrap_err();
    assert!(e.to_lowercase().contains("tls") || e.contains("handshake"), "{e}");
    // And a client without TLS is refused before any data.
    let port = text
        .lines()
        .find(|l| l.trim_start().starts_with("\"disk0 "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    let plain = Command::new("qemu-img")
        .args(["info", &format!("nbd://127.0.0.1:{port}/disk0")])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plain NBD must be refused");

    // A second provision renews the same session: answered at once, the same export.
    let op2 = provision(&f, &rp).await;
    assert_ne!(op2, op);
    let text2 = script(&f, &rp, &op2).await;
    assert!(
        text2.contains(&key_line) && text2.contains(&format!("\"disk0 {port} ")),
        "the same session"
    );
    assert_eq!(staging_dirs(&f.s).len(), 1);

    // An unknown operation id has no answer.
    let (st, _, b) = send(
        &f.s,
        "POST",
        &rp_url(&f, &rp, "listInstantItemRecoveryOperationResult"),
        Some(&json!({"provisionInstantItemRecoveryOperationId": "00000000-0000-0000-0000-000000000000"})),
    )
    .await;
    assert_arm_error(st, &b, 404, "UserErrorIlrOperationNotFound");

    // Revoke: the export ends, the staging goes, the point is no longer active.
    let rop = post_202(&f, &rp_url(&f, &rp, "revokeInstantItemRecovery"), None).await;
    assert_eq!(wait_op(&f, &rop).await["status"], "Succeeded");
    let e = read_file_through(&f.dir, &text, "revoked").unwrap_err();
    assert!(
        e.to_lowercase().contains("connection refused") || e.contains("Failed to connect"),
        "{e}"
    );
    assert!(staging_dirs(&f.s).is_empty());
    assert_eq!(
        get_url(&f.s, &rp_get).await.1["properties"]["isInstantIlrSessionActive"],
        false
    );
    let (st, _, b) = send(
        &f.s,
        "POST",
        &rp_url(&f, &rp, "listInstantItemRecoveryOperationResult"),
        Some(&json!({"provisionInstantItemRecoveryOperationId": op})),
    )
    .await;
    assert_arm_error(st, &b, 404, "UserErrorIlrSessionNotFound");
}

#[tokio::test]
async fn a_session_expires_by_itself_and_a_restart_serves_it_again() {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path().join("data"));
    config.policy_interval = Duration::from_secs(3600);
    let start: chrono::DateTime<chrono::Utc> = chrono::Utc::now();
    let clock = std::sync::Arc::new(rsvault_core::time::TestClock::new(start));
    let s = start_with_clock(config, Some(data), clock.clone()).await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let tmp = s.tempdir();
    let f = Fixture {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        s,
    };
    let (rp, content) = backed_up_vm(&f).await;
    let op = provision(&f, &rp).await;
    let text = script(&f, &rp, &op).await;
    assert_eq!(read_file_through(&f.dir, &text, "before").unwrap(), content);

    // A restart: the export stops with the node and is served again after it.
    let Fixture { s, _tmp, dir } = f;
    let (data_dir, tmpdir) = s.stop().await;
    assert_eq!(
        std::fs::read_dir(data_dir.join("ilr")).unwrap().count(),
        1,
        "the staged copy outlives the node"
    );
    let s = start_with_clock(test_config(data_dir), tmpdir, clock.clone()).await;
    let f = Fixture { s, _tmp, dir };
    let mut again = Err(String::new());
    for i in 0..100 {
        let t = script(&f, &rp, &op).await;
        again = read_file_through(&f.dir, &t, &format!("after{i}"));
        if again.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again.unwrap(), content);

    // 12 hours on, the session is gone by itself.
    let (st, b) =
        f.s.call(
            "POST",
            "/rsvault/admin/clock/advance",
            Some(&json!({"seconds": 12 * 3600 + 60})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let rp_get = f.s.url(&format!("{}/recoveryPoints/{rp}?{BK}", f.item("vm1")));
    let mut active = true;
    for _ in 0..100 {
        active = get_url(&f.s, &rp_get).await.1["properties"]["isInstantIlrSessionActive"] == true;
        if !active && staging_dirs(&f.s).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!active && staging_dirs(&f.s).is_empty(), "expired");
    assert!(read_file_through(&f.dir, &text, "expired").is_err());
}

#[tokio::test]
async fn provisioning_checks_its_request_and_the_linked_vm() {
    let f = crate::recovery::fixture().await;
    let (rp, _) = backed_up_vm(&f).await;
    let url = rp_url(&f, &rp, "provisionInstantItemRecovery");
    for (body, status, code) in [
        (
            json!({"properties": {"objectType": "AzureFileShareProvisionILRRequest"}}),
            400,
            "BMSUserErrorInvalidInput",
        ),
        (json!({}), 400, "BMSUserErrorInvalidInput"),
        (
            json!({"properties": {"objectType": "IaasVMILRRegistrationRequest", "recoveryPointId": "123"}}),
            400,
            "BMSUserErrorInvalidInput",
        ),
    ] {
        let (st, _, b) = send(&f.s, "POST", &url, Some(&body)).await;
        assert_arm_error(st, &b, status, code);
    }
    let (st, _, b) = send(
        &f.s,
        "POST",
        &rp_url(&f, "999999999999999", "provisionInstantItemRecovery"),
        Some(&provision_body(&f, "999999999999999")),
    )
    .await;
    assert_arm_error(st, &b, 404, "BMSUserErrorRecoveryPointNotFound");
    // Backup Operator on the vault alone may not read the VM's disks.
    let vault_scope = format!(
        "/subscriptions/{}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v1",
        f.s.sub()
    );
    let token = f.s.principal(Some("Backup Operator"), &vault_scope).await;
    let path = url.strip_prefix(&f.s.base).unwrap();
    let r =
        f.s.call_as(Some(&token), "POST", path, Some(&provision_body(&f, &rp)))
            .await;
    let st = r.status().as_u16();
    let b: Value = r.json().await.unwrap();
    assert_arm_error(st, &b, 403, "LinkedAuthorizationFailed");
    assert!(staging_dirs(&f.s).is_empty());
}

/// A soft-deleted item's recovery points are kept, not served: its soft delete ends its live file
/// recovery session (the export stops, the staged disks go) and a new provision is refused.
#[tokio::test]
async fn soft_deleting_an_item_ends_its_sessions_and_refuses_new_ones() {
    let f = crate::recovery::fixture().await;
    let (rp, content) = backed_up_vm(&f).await;
    let op = provision(&f, &rp).await;
    let text = script(&f, &rp, &op).await;
    assert_eq!(read_file_through(&f.dir, &text, "before").unwrap(), content);

    let (st, _, b) = send(&f.s, "DELETE", &format!("{}?{BK}", f.item("vm1")), None).await;
    assert_eq!(st, 202, "{b}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !staging_dirs(&f.s).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the staged disks stay after the soft delete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = read_file_through(&f.dir, &text, "after").unwrap_err();
    assert!(
        e.to_lowercase().contains("connection refused") || e.contains("Failed to connect"),
        "{e}"
    );
    let rp_get = f.s.url(&format!("{}/recoveryPoints/{rp}?{BK}", f.item("vm1")));
    assert_eq!(
        get_url(&f.s, &rp_get).await.1["properties"]["isInstantIlrSessionActive"],
        false
    );
    let (st, _, b) = send(
        &f.s,
        "POST",
        &rp_url(&f, &rp, "provisionInstantItemRecovery"),
        Some(&provision_body(&f, &rp)),
    )
    .await;
    assert_arm_error(st, &b, 400, "BMSUserErrorItemSoftDeleted");
}
