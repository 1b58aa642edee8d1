//! Restore validation (issue 16): `backupValidateOperation` and `backupTriggerValidateOperation`
//! answer what would refuse a restore, with the restore's own checks, without running it.

use crate::harness::*;
use crate::recovery::{accept, account, get_url, header, protect_vm, send, wait_job, write_random, Fixture, BK};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

async fn backed_up(f: &Fixture) -> String {
    let os = f.dir.join("os.raw");
    write_random(&os, 4 << 20, 3);
    protect_vm(f, "vm1", &os, &[]).await;
    let job = accept(
        f,
        &f.s.url(&format!("{}/backup?{BK}", f.item("vm1"))),
        &json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
    )
    .await;
    assert_eq!(
        wait_job(f, &job).await.last().unwrap()["properties"]["status"],
        "Completed"
    );
    let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
    rps["value"][0]["name"].as_str().unwrap().to_string()
}

fn vm_id(f: &Fixture, vm: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{vm}",
        f.s.sub()
    )
}

fn restore_request(f: &Fixture, rp: &str, acct: &str) -> Value {
    json!({"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp, "recoveryType": "RestoreDisks",
        "sourceResourceId": vm_id(f, "vm1"), "storageAccountId": f.account_id(acct), "region": "westus"})
}

fn validation(rr: Value) -> Value {
    json!({"id": "", "properties": {"objectType": "ValidateIaasVMRestoreOperationRequest", "restoreRequest": rr}})
}

/// The codes of a `ValidateOperationsResponse`.
fn codes(b: &Value) -> Vec<String> {
    b["validateOperationResponse"]["validationResults"]
        .as_array()
        .unwrap_or_else(|| panic!("not a ValidateOperationsResponse: {b}"))
        .iter()
        .map(|r| {
            assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
            assert!(r["recommendations"].as_array().is_some_and(|a| !a.is_empty()), "{r}");
            r["code"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Mounts a 1 MiB tmpfs on `dir` (root only); false when this machine cannot.
fn small_fs(dir: &Path) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes `dir` refuse new files, for root too where `chattr` works.
fn read_only(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    !root
        || Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn validation_answers_what_would_refuse_a_restore() {
    let f = crate::recovery::fixture().await;
    let rp = backed_up(&f).await;
    let url = f.s.url(&format!("{}/backupValidateOperation?{BK}", f.vault()));
    for a in ["good", "gone", "moved", "locked", "full"] {
        account(&f, a).await;
    }
    // After the accounts were declared: one directory removed, one swapped for a link out of the
    // grants, one refusing writes, one too small for the point.
    std::fs::remove_dir(f.dir.join("gone")).unwrap();
    let outside = f.s.dir.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::remove_dir(f.dir.join("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, f.dir.join("moved")).unwrap();
    let locked = read_only(&f.dir.join("locked"));
    let full = small_fs(&f.dir.join("full"));
    let operator =
        f.s.principal(
            Some("Backup Operator"),
            &format!(
                "/subscriptions/{}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v1",
                f.s.sub()
            ),
        )
        .await;
    let alt = {
        let mut r = restore_request(&f, &rp, "good");
        r["recoveryType"] = json!("AlternateLocation");
        r["targetVirtualMachineId"] = json!(vm_id(&f, "vm1"));
        r
    };
    let cases: Vec<(&str, Value, Option<&str>, Vec<&str>)> = vec![
        ("good target", restore_request(&f, &rp, "good"), None, vec![]),
        (
            "missing directory",
            restore_request(&f, &rp, "gone"),
            None,
            vec!["UserErrorHostPathNotAvailable"],
        ),
        (
            "not granted",
            restore_request(&f, &rp, "moved"),
            None,
            vec!["UserErrorHostPathNotAvailable"],
        ),
        (
            "not writable",
            restore_request(&f, &rp, "locked"),
            None,
            vec!["UserErrorRestoreTargetNotWritable"],
        ),
        (
            "no space",
            restore_request(&f, &rp, "full"),
            None,
            vec!["UserErrorNotEnoughSpace"],
        ),
        (
            "bad point",
            restore_request(&f, "123456789012345", "good"),
            None,
            vec!["BMSUserErrorRecoveryPointNotFound"],
        ),
        ("taken VM name", alt, None, vec!["UserErrorVmNameAlreadyExists"]),
        (
            "no linked access",
            restore_request(&f, &rp, "good"),
            Some(operator.as_str()),
            vec!["LinkedAuthorizationFailed"],
        ),
    ];
    for (what, rr, token, want) in cases {
        if (what == "no space" && !full) || (what == "not writable" && !locked) {
            eprintln!("skipping '{what}': this machine cannot simulate it");
            continue;
        }
        let path = url.strip_prefix(&f.s.base).unwrap();
        let r =
            f.s.call_as(Some(token.unwrap_or(&f.s.token)), "POST", path, Some(&validation(rr)))
                .await;
        let st = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        assert_eq!(st, 200, "{what}: {b}");
        assert_eq!(codes(&b), want, "{what}: {b}");
    }
    if full {
        let _ = Command::new("umount").arg(f.dir.join("full")).status();
    }
    if locked {
        let _ = Command::new("chattr").arg("-i").arg(f.dir.join("locked")).status();
    }

    // The recovery point named by its id; the flat body of older api-versions.
    let rp_id = format!("{}/recoveryPoints/{rp}", f.item("vm1").replace("%3B", ";"));
    let mut by_id = validation(restore_request(&f, "", "gone"));
    by_id["id"] = json!(rp_id);
    let (st, _, b) = send(&f.s, "POST", &url, Some(&by_id)).await;
    assert_eq!(
        (st, codes(&b)),
        (200, vec!["UserErrorHostPathNotAvailable".to_string()]),
        "{b}"
    );
    let flat = json!({"objectType": "ValidateIaasVMRestoreOperationRequest", "restoreRequest": restore_request(&f, &rp, "good")});
    let (st, _, b) = send(&f.s, "POST", &url, Some(&flat)).await;
    assert_eq!((st, codes(&b)), (200, vec![]), "{b}");

    // Malformed requests are ARM errors, not findings.
    for body in [
        json!({"properties": {"objectType": "ValidateAzureWorkloadRestoreOperationRequest", "restoreRequest": {}}}),
        json!({"properties": {"objectType": "ValidateIaasVMRestoreOperationRequest"}}),
        json!([]),
    ] {
        let (st, _, b) = send(&f.s, "POST", &url, Some(&body)).await;
        assert_eq!(st, 400, "{body}: {b}");
        assert!(b["error"]["code"].is_string(), "{b}");
    }

    // What validated as good restores.
    let job = accept(
        &f,
        &f.s.url(&format!("{}/recoveryPoints/{rp}/restore?{BK}", f.item("vm1"))),
        &json!({"properties": restore_request(&f, &rp, "good")}),
    )
    .await;
    assert_eq!(
        wait_job(&f, &job).await.last().unwrap()["properties"]["status"],
        "Completed"
    );
    // And nothing was written by the validations: the one restore's directory only.
    assert_eq!(std::fs::read_dir(f.dir.join("good")).unwrap().count(), 1);
}

#[tokio::test]
async fn a_triggered_validation_answers_through_its_result_and_status() {
    let f = crate::recovery::fixture().await;
    let rp = backed_up(&f).await;
    account(&f, "good").await;
    let mut bad = restore_request(&f, &rp, "good");
    bad["recoveryPointId"] = json!("123456789012345");
    for (rr, want) in [
        (restore_request(&f, &rp, "good"), vec![]),
        (bad, vec!["BMSUserErrorRecoveryPointNotFound"]),
    ] {
        let (st, h, b) = send(
            &f.s,
            "POST",
            &format!("{}/backupTriggerValidateOperation?{BK}", f.vault()),
            Some(&validation(rr)),
        )
        .await;
        assert_eq!(st, 202, "{b}");
        let location = header(&h, "location");
        let status = header(&h, "azure-asyncoperation");
        assert!(
            location.contains("/backupValidateOperationResults/") && location.ends_with(BK),
            "{location}"
        );
        assert!(status.contains("/backupValidateOperationsStatuses/"), "{status}");
        let (st, s) = get_url(&f.s, &status).await;
        assert_eq!((st, s["status"].as_str()), (200, Some("Succeeded")), "{s}");
        assert!(s["id"].as_str().unwrap().ends_with(s["name"].as_str().unwrap()), "{s}");
        let (st, r) = get_url(&f.s, &location).await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(codes(&r), want);
    }
    // Another vault operation is no validation.
    let (st, b) = get_url(
        &f.s,
        &f.s.url(&format!(
            "{}/backupValidateOperationResults/00000000-0000-0000-0000-000000000000?{BK}",
            f.vault()
        )),
    )
    .await;
    assert_arm_error(st, &b, 404, "ResourceNotFound");
}
