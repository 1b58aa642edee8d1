//! Issue 4 over HTTPS: inventory, discovery, policies, protection, soft delete, backup status and vault
//! backup configuration, each with the errors Azure answers.

use crate::harness::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const BK: &str = "api-version=2026-10-01";
const VM_API: &str = "api-version=2024-07-01";

/// A raw image of `mib` MiB, and a qcow2 image made by qemu-img.
fn images(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("os.raw");
    std::fs::write(&raw, vec![1u8; 2 << 20]).unwrap();
    let q = dir.join("data.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&q)
        .arg("3G")
        .status()
        .expect("qemu-img (qemu-utils) builds qcow2 fixtures");
    assert!(st.success());
    (raw, q)
}

fn vm_body(os: &Path, data: &[&Path]) -> Value {
    let disks: Vec<Value> = data
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"lun": i, "vhd": {"uri": format!("file://{}", d.display())}}))
        .collect();
    json!({"location": "westus", "properties": {"storageProfile": {
        "osDisk": {"osType": "Linux", "vhd": {"uri": format!("file://{}", os.display())}},
        "dataDisks": disks}}})
}

fn vm_path(s: &Server, rg: &str, vm: &str) -> String {
    format!("{}/providers/Microsoft.Compute/virtualMachines/{vm}", s.rg_path(rg))
}

fn item_path(s: &Server, rg: &str, vault: &str, vm_rg: &str, vm: &str) -> String {
    format!(
        "{}/backupFabrics/Azure/protectionContainers/IaasVMContainer%3Biaasvmcontainerv2%3B{vm_rg}%3B{vm}/protectedItems/VM%3Biaasvmcontainerv2%3B{vm_rg}%3B{vm}",
        s.vault_path(rg, vault)
    )
}

fn policy_ref(s: &Server, rg: &str, vault: &str, policy: &str) -> String {
    format!("{}/backupPolicies/{policy}", s.vault_path(rg, vault))
}

/// Sends a request and returns status, the headers clients follow, and the body.
async fn send(s: &Server, method: &str, path: &str, body: Option<&Value>) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = s.call_as(Some(&s.token), method, path, body).await;
    let st = r.status().as_u16();
    let h = r.headers().clone();
    let t = r.text().await.unwrap();
    (
        st,
        h,
        if t.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&t).unwrap()
        },
    )
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// Enables protection, follows `Azure-AsyncOperation` to `Succeeded`, returns the job id.
async fn protect(s: &Server, item: &str, body: &Value) -> String {
    let (st, h, b) = send(s, "PUT", &format!("{item}?{BK}"), Some(body)).await;
    assert_eq!(st, 202, "{b}");
    let status_url = header(&h, "azure-asyncoperation").to_string();
    assert!(
        status_url.contains("/operationsStatus/") && status_url.ends_with(BK),
        "{status_url}"
    );
    assert!(!status_url.contains("%3B"), "URLs carry a literal ';': {status_url}");
    assert!(header(&h, "location").contains("/operationResults/"));
    assert!(header(&h, "retry-after").parse::<u64>().is_ok());
    let r = s.http.get(&status_url).bearer_auth(&s.token).send().await.unwrap();
    let op: Value = r.json().await.unwrap();
    assert_eq!(op["status"], "Succeeded", "{op}");
    assert_eq!(op["properties"]["objectType"], "OperationStatusJobExtendedInfo");
    let loc = s
        .http
        .get(header(&h, "location"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        loc.status().as_u16(),
        200,
        "operationResults answers the item when done"
    );
    op["properties"]["jobId"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn vms_are_declared_with_probed_disk_images() {
    let s = start().await;
    s.make_group("rg").await;
    let tmp = s.tempdir();
    let (raw, q) = images(tmp.path());
    let p = format!("{}?{VM_API}", vm_path(&s, "rg", "web1"));
    let (st, b) = s.call("PUT", &p, Some(&vm_body(&raw, &[&q]))).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["type"], "Microsoft.Compute/virtualMachines");
    assert_eq!(b["location"], "westus");
    assert_eq!(b["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        b["properties"]["storageProfile"]["dataDisks"][0]["diskSizeGB"], 3,
        "qcow2 virtual size"
    );
    assert_eq!(b["properties"]["storageProfile"]["osDisk"]["diskSizeGB"], 1);
    let vm_id = b["properties"]["vmId"].clone();
    let (st, again) = s.call("PUT", &p, Some(&vm_body(&raw, &[]))).await;
    assert_eq!(st, 200);
    assert_eq!(again["properties"]["vmId"], vm_id, "vmId is stable across updates");
    let (_, list) = s
        .call(
            "GET",
            &format!(
                "/subscriptions/{}/providers/Microsoft.Compute/virtualMachines?{VM_API}",
                s.sub()
            ),
            None,
        )
        .await;
    assert_eq!(list["value"].as_array().unwrap().len(), 1);

    let gone = tmp.path().join("missing.qcow2");
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "missing image",
            vm_body(&gone, &[]),
            400,
            "UserErrorHostPathNotAvailable",
        ),
        (
            "not a file URI",
            json!({"location": "westus", "properties": {"storageProfile": {"osDisk": {"vhd": {"uri": "https://x.blob.core.windows.net/v/os.vhd"}}}}}),
            400,
            "InvalidParameter",
        ),
        (
            "no os disk",
            json!({"location": "westus", "properties": {"storageProfile": {}}}),
            400,
            "InvalidParameter",
        ),
        (
            "no location",
            json!({"properties": {"storageProfile": {"osDisk": {"vhd": {"uri": format!("file://{}", raw.display())}}}}}),
            400,
            "LocationRequired",
        ),
        (
            "a directory",
            vm_body(tmp.path(), &[]),
            400,
            "UserErrorHostPathNotAvailable",
        ),
    ];
    for (what, body, want, code) in cases {
        let (st, b) = s
            .call("PUT", &format!("{}?{VM_API}", vm_path(&s, "rg", "bad1")), Some(&body))
            .await;
        assert_arm_error(st, &b, want, code);
        let _ = what;
    }
    let (st, _) = s
        .call("GET", &format!("{}?{VM_API}", vm_path(&s, "rg", "bad1")), None)
        .await;
    assert_eq!(st, 404, "a rejected VM is not stored");
    let (st, _) = s.call("DELETE", &p, None).await;
    assert_eq!(st, 200);
    let (st, _) = s.call("DELETE", &p, None).await;
    assert_eq!(st, 204);
}

#[tokio::test]
async fn new_vaults_have_azures_default_policies_and_policy_crud_validates() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let base = s.vault_path("rg", "v1");
    let (_, list) = s.call("GET", &format!("{base}/backupPolicies?{BK}"), None).await;
    let mut names: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["DefaultPolicy", "EnhancedPolicy", "HourlyLogBackup"]);
    let (_, vmonly) = s
        .call(
            "GET",
            &format!("{base}/backupPolicies?{BK}&$filter=backupManagementType%20eq%20'AzureIaasVM'"),
            None,
        )
        .await;
    assert_eq!(vmonly["value"].as_array().unwrap().len(), 2);
    let (_, d) = s
        .call("GET", &format!("{base}/backupPolicies/defaultpolicy?{BK}"), None)
        .await;
    assert_eq!(d["properties"]["schedulePolicy"]["scheduleRunFrequency"], "Daily");
    assert_eq!(
        d["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"],
        30
    );
    assert_eq!(d["properties"]["protectedItemsCount"], 0);

    let t = "2026-01-01T02:00:00Z";
    let weekly = json!({"properties": {"backupManagementType": "AzureIaasVM", "timeZone": "UTC",
        "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Weekly", "scheduleRunDays": ["Sunday", "Wednesday"], "scheduleRunTimes": [t]},
        "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy",
            "weeklySchedule": {"daysOfTheWeek": ["Sunday"], "retentionTimes": [t], "retentionDuration": {"count": 4, "durationType": "Weeks"}},
            "yearlySchedule": {"retentionScheduleFormatType": "Weekly", "monthsOfYear": ["January"], "retentionScheduleWeekly": {"daysOfTheWeek": ["Sunday"], "weeksOfTheMonth": ["First"]}, "retentionTimes": [t], "retentionDuration": {"count": 2, "durationType": "Years"}}}}});
    let (st, b) = s
        .call("PUT", &format!("{base}/backupPolicies/weekly1?{BK}"), Some(&weekly))
        .await;
    assert_eq!(st, 200, "a policy no item uses is written at once: {b}");
    assert_eq!(b["properties"]["instantRpRetentionRangeInDays"], 5);
    let hourly = json!({"properties": {"backupManagementType": "AzureIaasVM", "policyType": "V2",
        "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Hourly", "hourlySchedule": {"interval": 6, "scheduleWindowStartTime": t, "scheduleWindowDuration": 12}},
        "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [t], "retentionDuration": {"count": 7, "durationType": "Days"}}}}});
    let (st, b) = s
        .call("PUT", &format!("{base}/backupPolicies/hourly1?{BK}"), Some(&hourly))
        .await;
    assert_eq!(st, 200, "{b}");
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"properties": {"backupManagementType": "AzureIaasVM", "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": []},
            "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy"}}}),
            "BMSUserErrorInvalidPolicyInput",
        ),
        (
            json!({"properties": {"backupManagementType": "AzureIaasVM", "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [t]},
            "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [t], "retentionDuration": {"count": 3, "durationType": "Days"}}}}}),
            "BMSUserErrorInvalidPolicyInput",
        ),
        (
            json!({"properties": {"backupManagementType": "Nonsense"}}),
            "BMSUserErrorInvalidPolicyInput",
        ),
        (json!([1, 2]), "InvalidRequestContent"),
    ];
    for (body, code) in bad {
        let (st, b) = s
            .call("PUT", &format!("{base}/backupPolicies/bad1?{BK}"), Some(&body))
            .await;
        assert_arm_error(st, &b, 400, code);
    }
    let (st, b) = s
        .call("PUT", &format!("{base}/backupPolicies/1bad?{BK}"), Some(&weekly))
        .await;
    assert_arm_error(st, &b, 400, "BMSUserErrorInvalidPolicyName");
    let (st, b) = s.call("GET", &format!("{base}/backupPolicies/bad1?{BK}"), None).await;
    assert_arm_error(st, &b, 404, "BMSUserErrorPolicyNotFound");
    let (st, _) = s
        .call("DELETE", &format!("{base}/backupPolicies/weekly1?{BK}"), None)
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .call("DELETE", &format!("{base}/backupPolicies/weekly1?{BK}"), None)
        .await;
    assert_eq!(st, 204);
}

#[tokio::test]
async fn vm_protection_lifecycle_with_soft_delete_and_backup_status() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_group("apps").await;
    s.make_vault("rg", "v1").await;
    let tmp = s.tempdir();
    let (raw, q) = images(tmp.path());
    let (st, vm) = s
        .call(
            "PUT",
            &format!("{}?{VM_API}", vm_path(&s, "apps", "Web1")),
            Some(&vm_body(&raw, &[&q])),
        )
        .await;
    assert_eq!(st, 201);
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let base = s.vault_path("rg", "v1");
    let status_path = format!(
        "/subscriptions/{}/providers/Microsoft.RecoveryServices/locations/westus/backupStatus?{BK}",
        s.sub()
    );
    let (st, before) = s
        .call(
            "POST",
            &status_path,
            Some(&json!({"resourceId": vm_id, "resourceType": "VM"})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(before["protectionStatus"], "NotProtected");

    // Discovery: refresh (202, then the fabric result answers 204) and the protectable VM.
    let (st, h, _) = send(
        &s,
        "POST",
        &format!("{base}/backupFabrics/Azure/refreshContainers?{BK}"),
        None,
    )
    .await;
    assert_eq!(st, 202);
    assert!(header(&h, "azure-asyncoperation").ends_with("api-version=2019-05-13-preview"));
    let r = s
        .http
        .get(header(&h, "location"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (_, items) = s
        .call(
            "GET",
            &format!("{base}/backupProtectableItems?{BK}&$filter=backupManagementType%20eq%20'AzureIaasVM'"),
            None,
        )
        .await;
    let found = &items["value"][0];
    assert_eq!(found["properties"]["virtualMachineId"], vm_id);
    assert!(found["id"].as_str().unwrap().contains("/protectionContainers/IaasVMContainer;iaasvmcontainerv2;apps;web1/protectableItems/vm;iaasvmcontainerv2;apps;web1"));

    // Enable protection with the default policy, using the name form the az CLI sends.
    let item = item_path(&s, "rg", "v1", "apps", "web1");
    let enable = json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "sourceResourceId": vm_id,
        "policyId": policy_ref(&s, "rg", "v1", "DefaultPolicy")}});
    let job = protect(&s, &item, &enable).await;
    let (st, j) = s.call("GET", &format!("{base}/backupJobs/{job}?{BK}"), None).await;
    assert_eq!(st, 200, "{j}");
    assert_eq!(j["properties"]["operation"], "ConfigureBackup");
    assert_eq!(j["properties"]["status"], "Completed");
    assert_eq!(j["properties"]["jobType"], "AzureIaaSVMJob");
    assert_eq!(
        j["properties"]["extendedInfo"]["propertyBag"]["Policy Name"],
        "DefaultPolicy"
    );
    let (_, it) = s.call("GET", &format!("{item}?{BK}"), None).await;
    let p = &it["properties"];
    assert_eq!(it["name"], "VM;iaasvmcontainerv2;apps;web1");
    assert_eq!(
        (
            p["protectionState"].as_str(),
            p["protectionStatus"].as_str(),
            p["healthStatus"].as_str()
        ),
        (Some("IRPending"), Some("Healthy"), Some("Passed"))
    );
    assert_eq!(p["virtualMachineId"], vm_id);
    assert_eq!(p["containerName"], "iaasvmcontainerv2;apps;web1");
    let (_, d) = s
        .call("GET", &format!("{base}/backupPolicies/DefaultPolicy?{BK}"), None)
        .await;
    assert_eq!(d["properties"]["protectedItemsCount"], 1, "the count is exact");
    let (st, b) = s
        .call("DELETE", &format!("{base}/backupPolicies/DefaultPolicy?{BK}"), None)
        .await;
    assert_arm_error(st, &b, 400, "BMSUserErrorPolicyInUse");
    let (_, containers) = s
        .call("GET", &format!("{base}/backupProtectionContainers?{BK}&$filter=backupManagementType%20eq%20'AzureIaasVM'%20and%20friendlyName%20eq%20'web1'%20and%20status%20eq%20'Registered'"), None)
        .await;
    assert_eq!(containers["value"].as_array().unwrap().len(), 1, "{containers}");

    // Lists with every filter Azure clients use.
    for (filter, n) in [
        ("backupManagementType eq 'AzureIaasVM' and itemType eq 'VM'", 1),
        ("policyName eq 'DefaultPolicy'", 1),
        ("policyName eq 'EnhancedPolicy'", 0),
        ("friendlyName eq 'WEB1'", 1),
        ("containerName eq 'iaasvmcontainerv2;apps;web1'", 1),
        ("backupManagementType eq 'AzureStorage'", 0),
    ] {
        let (st, l) = s
            .call(
                "GET",
                &format!(
                    "{base}/backupProtectedItems?{BK}&$filter={}",
                    filter.replace(' ', "%20")
                ),
                None,
            )
            .await;
        assert_eq!(st, 200, "{l}");
        assert_eq!(l["value"].as_array().unwrap().len(), n, "{filter}");
    }
    let (st, b) = s
        .call(
            "GET",
            &format!("{base}/backupProtectedItems?{BK}&$filter=colour%20eq%20'red'"),
            None,
        )
        .await;
    assert_arm_error(st, &b, 400, "BMSUserErrorInvalidInput");

    // Backup status, as seed 000 shows it.
    let (_, after) = s
        .call(
            "POST",
            &status_path,
            Some(&json!({"resourceId": vm_id, "resourceType": "VM"})),
        )
        .await;
    let mut keys: Vec<&str> = after.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    for k in [
        "containerName",
        "errorCode",
        "errorMessage",
        "fabricName",
        "policyName",
        "protectedItemName",
        "protectionStatus",
        "vaultId",
    ] {
        assert!(keys.contains(&k), "{k} missing from {after}");
    }
    assert_eq!(after["protectionStatus"], "Protected");
    assert_eq!(after["containerName"], "iaasvmcontainer;iaasvmcontainerv2;apps;web1");
    assert_eq!(after["protectedItemName"], "vm;iaasvmcontainerv2;apps;web1");
    assert_eq!(after["policyName"], "DefaultPolicy");
    assert!(after["vaultId"].as_str().unwrap().ends_with("/vaults/v1"));

    // A second vault cannot protect the same VM.
    s.make_vault("rg", "v2").await;
    let (st, _, b) = send(&s, "PUT", &format!("{}?{BK}", item_path(&s, "rg", "v2", "apps", "web1")),
        Some(&json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": policy_ref(&s, "rg", "v2", "DefaultPolicy")}}))).await;
    assert_arm_error(st, &b, 400, "BMSUserErrorAlreadyProtected");

    // Change policy, then stop protection keeping data.
    protect(&s, &item, &json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": policy_ref(&s, "rg", "v1", "EnhancedPolicy")}})).await;
    let (_, it) = s.call("GET", &format!("{item}?{BK}"), None).await;
    assert_eq!(it["properties"]["policyName"], "EnhancedPolicy");
    let job = protect(&s, &item, &json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "sourceResourceId": vm_id, "policyId": "", "protectionState": "ProtectionStopped"}})).await;
    let (_, j) = s.call("GET", &format!("{base}/backupJobs/{job}?{BK}"), None).await;
    assert_eq!(j["properties"]["operation"], "DisableBackup");
    let (_, it) = s.call("GET", &format!("{item}?{BK}"), None).await;
    assert_eq!(it["properties"]["protectionState"], "ProtectionStopped");

    // Delete data: soft delete keeps the item 14 days; undelete brings it back.
    let (st, h, _) = send(&s, "DELETE", &format!("{item}?{BK}"), None).await;
    assert_eq!(st, 202);
    assert!(header(&h, "location").contains("/vaults/v1/backupOperationResults/"));
    let op_url = header(&h, "azure-asyncoperation").to_string();
    assert!(op_url.contains("/vaults/v1/backupOperations/"));
    let op: Value = s
        .http
        .get(&op_url)
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(op["status"], "Succeeded");
    let (_, j) = s
        .call(
            "GET",
            &format!("{base}/backupJobs/{}?{BK}", op["properties"]["jobId"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(j["properties"]["operation"], "DeleteBackupData");
    let (_, it) = s.call("GET", &format!("{item}?{BK}"), None).await;
    assert_eq!(it["properties"]["isScheduledForDeferredDelete"], true);
    assert!(
        it["properties"]["deferredDeleteTimeRemaining"]
            .as_str()
            .unwrap()
            .starts_with("13.23:")
            || it["properties"]["deferredDeleteTimeRemaining"]
                .as_str()
                .unwrap()
                .starts_with("14.")
    );
    let (st, b) = s
        .call("DELETE", &format!("{}?{API}", s.vault_path("rg", "v1")), None)
        .await;
    assert_arm_error(st, &b, 400, "ServiceResourceNotEmptyWithBackendMessage");
    let (st, _, b) = send(&s, "PUT", &format!("{item}?{BK}"), Some(&json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": policy_ref(&s, "rg", "v1", "DefaultPolicy")}}))).await;
    assert_arm_error(st, &b, 400, "BMSUserErrorItemSoftDeleted");
    let job = protect(
        &s,
        &item,
        &json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "isRehydrate": true}}),
    )
    .await;
    let (_, j) = s.call("GET", &format!("{base}/backupJobs/{job}?{BK}"), None).await;
    assert_eq!(j["properties"]["operation"], "Undelete");
    let (_, it) = s.call("GET", &format!("{item}?{BK}"), None).await;
    assert_eq!(it["properties"]["isScheduledForDeferredDelete"], false);
    assert_eq!(it["properties"]["protectionState"], "ProtectionStopped");

    // With soft delete off, deleting removes the item (and the VM's container).
    let (st, cfg) = s
        .call(
            "PATCH",
            &format!("{base}/backupconfig/vaultconfig?{BK}"),
            Some(&json!({"properties": {"softDeleteFeatureState": "Disabled"}})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(cfg["properties"]["softDeleteFeatureState"], "Disabled");
    let (_, v) = s
        .call("GET", &format!("{}?{API}", s.vault_path("rg", "v1")), None)
        .await;
    assert_eq!(
        v["properties"]["securitySettings"]["softDeleteSettings"]["softDeleteState"], "Disabled",
        "one source of truth"
    );
    let (st, _, _) = send(&s, "DELETE", &format!("{item}?{BK}"), None).await;
    assert_eq!(st, 202);
    let (st, b) = s.call("GET", &format!("{item}?{BK}"), None).await;
    assert_arm_error(st, &b, 404, "BMSUserErrorProtectedItemNotFound");
    let (_, containers) = s
        .call("GET", &format!("{base}/backupProtectionContainers?{BK}"), None)
        .await;
    assert_eq!(containers["value"].as_array().unwrap().len(), 0);
    let (st, _) = s.call("DELETE", &format!("{item}?{BK}"), None).await;
    assert_eq!(st, 204);
    let (_, gone) = s
        .call(
            "POST",
            &status_path,
            Some(&json!({"resourceId": vm_id, "resourceType": "VM"})),
        )
        .await;
    assert_eq!(gone["protectionStatus"], "NotProtected");
}

#[tokio::test]
async fn enabling_protection_rejects_what_azure_rejects() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let tmp = s.tempdir();
    let (raw, _) = images(tmp.path());
    let doomed = tmp.path().join("doomed.raw");
    std::fs::write(&doomed, [0u8; 4096]).unwrap();
    for (vm, disk) in [("vm1", &raw), ("vm2", &doomed)] {
        let (st, b) = s
            .call(
                "PUT",
                &format!("{}?{VM_API}", vm_path(&s, "rg", vm)),
                Some(&vm_body(disk, &[])),
            )
            .await;
        assert_eq!(st, 201, "{b}");
    }
    std::fs::remove_file(&doomed).unwrap();
    let vm_type = "Microsoft.Compute/virtualMachines";
    let cases: Vec<(&str, String, Value, &str)> = vec![
        ("unknown policy", item_path(&s, "rg", "v1", "rg", "vm1"), json!({"properties": {"protectedItemType": vm_type, "policyId": policy_ref(&s, "rg", "v1", "NoSuchPolicy")}}), "BMSUserErrorPolicyNotFound"),
        ("policy of another workload", item_path(&s, "rg", "v1", "rg", "vm1"), json!({"properties": {"protectedItemType": vm_type, "policyId": policy_ref(&s, "rg", "v1", "HourlyLogBackup")}}), "BMSUserErrorPolicyWorkloadMismatch"),
        ("missing VM", item_path(&s, "rg", "v1", "rg", "ghost"), json!({"properties": {"protectedItemType": vm_type, "policyId": policy_ref(&s, "rg", "v1", "DefaultPolicy")}}), "BMSUserErrorInvalidSourceResourceId"),
        ("image that vanished", item_path(&s, "rg", "v1", "rg", "vm2"), json!({"properties": {"protectedItemType": vm_type, "policyId": policy_ref(&s, "rg", "v1", "DefaultPolicy")}}), "UserErrorHostPathNotAvailable"),
        ("no policy", item_path(&s, "rg", "v1", "rg", "vm1"), json!({"properties": {"protectedItemType": vm_type}}), "BMSUserErrorInvalidConfigureProtectionRequest"),
        ("wrong item type", item_path(&s, "rg", "v1", "rg", "vm1"), json!({"properties": {"protectedItemType": "AzureFileShareProtectedItem", "policyId": policy_ref(&s, "rg", "v1", "DefaultPolicy")}}), "BMSUserErrorInvalidConfigureProtectionRequest"),
        ("item outside its container", format!("{}/backupFabrics/Azure/protectionContainers/iaasvmcontainerv2%3Brg%3Bvm1/protectedItems/vm%3Biaasvmcontainerv2%3Brg%3Bvm2", s.vault_path("rg", "v1")), json!({"properties": {"policyId": policy_ref(&s, "rg", "v1", "DefaultPolicy")}}), "BMSUserErrorInvalidConfigureProtectionRequest"),
        ("malformed container", format!("{}/backupFabrics/Azure/protectionContainers/vm1/protectedItems/vm1", s.vault_path("rg", "v1")), json!({"properties": {}}), "BMSUserErrorInvalidInput"),
    ];
    for (what, item, body, code) in cases {
        let (st, _, b) = send(&s, "PUT", &format!("{item}?{BK}"), Some(&body)).await;
        assert_eq!(b["error"]["code"], code, "{what}: {b}");
        assert_eq!(st, 400, "{what}");
    }
    let (st, b) = s
        .call(
            "GET",
            &format!(
                "{}/backupFabrics/Other/protectionContainers/iaasvmcontainerv2%3Brg%3Bvm1?{BK}",
                s.vault_path("rg", "v1")
            ),
            None,
        )
        .await;
    assert_arm_error(st, &b, 404, "BMSUserErrorFabricNotFound");
    let (_, l) = s
        .call(
            "GET",
            &format!("{}/backupProtectedItems?{BK}", s.vault_path("rg", "v1")),
            None,
        )
        .await;
    assert_eq!(l["value"].as_array().unwrap().len(), 0, "nothing was half-created");
    // The short container form the az CLI sends, for an item Terraform names itself.
    let short = format!("{}/backupFabrics/Azure/protectionContainers/iaasvmcontainerv2;rg;vm1/protectedItems/vm;iaasvmcontainerv2;rg;vm1", s.vault_path("rg", "v1"));
    protect(
        &s,
        &short,
        &json!({"properties": {"protectedItemType": vm_type, "policyId": policy_ref(&s, "rg", "v1", "DefaultPolicy")}}),
    )
    .await;
    let (st, _) = s
        .call("GET", &format!("{}?{BK}", item_path(&s, "rg", "v1", "rg", "vm1")), None)
        .await;
    assert_eq!(st, 200, "both name forms reach one item");
}

#[tokio::test]
async fn file_shares_are_registered_discovered_and_protected() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let tmp = s.tempdir();
    let acct = format!("{}/providers/Microsoft.Storage/storageAccounts/files1", s.rg_path("rg"));
    let (st, b) = s
        .call(
            "PUT",
            &format!("{acct}?api-version=2023-05-01"),
            Some(&json!({"location": "westus", "kind": "StorageV2", "sku": {"name": "Standard_LRS"}})),
        )
        .await;
    assert_arm_error(st, &b, 400, "InvalidParameter");
    let b = put_account(&s, "rg", "files1", tmp.path()).await;
    let (st, _) = s
        .call(
            "PUT",
            &format!("{acct}/fileServices/default/shares/docs?api-version=2023-05-01"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(st, 201);
    assert!(
        tmp.path().join("docs").is_dir(),
        "a share is a directory of the account"
    );
    let base = s.vault_path("rg", "v1");
    let (_, pc) = s
        .call("GET", &format!("{base}/backupFabrics/Azure/protectableContainers?{BK}&$filter=backupManagementType%20eq%20'AzureStorage'"), None)
        .await;
    assert_eq!(pc["value"][0]["name"], "StorageContainer;Storage;rg;files1");
    let container = format!("{base}/backupFabrics/Azure/protectionContainers/StorageContainer%3BStorage%3Brg%3Bfiles1");
    let share_item = format!("{container}/protectedItems/AzureFileShare%3Bdocs");
    let enable = json!({"properties": {"protectedItemType": "AzureFileShareProtectedItem", "policyId": "", "sourceResourceId": b["id"]}});
    let (st, _, e) = send(&s, "PUT", &format!("{share_item}?{BK}"), Some(&enable)).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("BMSUserErrorInvalidConfigureProtectionRequest")),
        "{e}"
    );
    let h = register_account(&s, &container, &b).await;
    let r = s
        .http
        .get(header(&h, "location"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["properties"]["registrationStatus"], "Registered");
    let (_, items) = s
        .call("GET", &format!("{base}/backupProtectableItems?{BK}&$filter=backupManagementType%20eq%20'AzureStorage'%20and%20workloadType%20eq%20'AzureFileShare'"), None)
        .await;
    assert_eq!(items["value"][0]["name"], "azurefileshare;docs", "{items}");
    // A file share policy, then protection.
    let t = "2026-01-01T02:00:00Z";
    let afs = json!({"properties": {"backupManagementType": "AzureStorage", "workLoadType": "AzureFileShare",
        "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [t]},
        "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [t], "retentionDuration": {"count": 5, "durationType": "Days"}}}}});
    let (st, _) = s
        .call("PUT", &format!("{base}/backupPolicies/afs1?{BK}"), Some(&afs))
        .await;
    assert_eq!(st, 200);
    let mut enable = enable;
    enable["properties"]["policyId"] = json!(policy_ref(&s, "rg", "v1", "DefaultPolicy"));
    let (st, _, e) = send(&s, "PUT", &format!("{share_item}?{BK}"), Some(&enable)).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("BMSUserErrorPolicyWorkloadMismatch"))
    );
    enable["properties"]["policyId"] = json!(policy_ref(&s, "rg", "v1", "afs1"));
    protect(&s, &share_item, &enable).await;
    let (_, it) = s.call("GET", &format!("{share_item}?{BK}"), None).await;
    assert_eq!(it["properties"]["workloadType"], "AzureFileShare");
    assert_eq!(it["properties"]["friendlyName"], "docs");
    let (_, st_cfg) = s
        .call(
            "GET",
            &format!("{base}/backupstorageconfig/vaultstorageconfig?{BK}"),
            None,
        )
        .await;
    assert_eq!(st_cfg["properties"]["storageTypeState"], "Locked");
    let (st, b) = s
        .call(
            "PUT",
            &format!("{base}/backupstorageconfig/vaultstorageconfig?{BK}"),
            Some(&json!({"properties": {"storageModelType": "LocallyRedundant"}})),
        )
        .await;
    assert_arm_error(st, &b, 400, "BMSUserErrorStorageTypeLocked");
    let (_, status) = s
        .call("POST", &format!("/subscriptions/{}/providers/Microsoft.RecoveryServices/locations/westus/backupStatus?{BK}", s.sub()),
            Some(&json!({"resourceId": b_id(&s, "rg", "files1"), "resourceType": "AzureFileShare", "poLogicalName": "docs"})))
        .await;
    assert_eq!(status["protectionStatus"], "Protected", "{status}");
    assert_eq!(status["registrationStatus"], "Registered");
    assert_eq!(status["protectedItemsCount"], 1);
    assert_eq!(status["acquireStorageAccountLock"], "Acquire");
    let (st, b) = s.call("DELETE", &format!("{container}?{BK}"), None).await;
    assert_arm_error(st, &b, 400, "BMSUserErrorContainerHasDatasources");
}

/// Issue 16: a vault with a registered storage-account container was deleted (202) and the
/// registration silently went with it. Azure refuses (`ServiceResourceNotEmptyWithBackendMessage`,
/// asking for every container to be unregistered) until the container is unregistered; the same
/// rule holds when the vault's group is deleted.
#[tokio::test]
async fn a_vault_with_a_registered_storage_container_refuses_deletion() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let tmp = s.tempdir();
    let b = put_account(&s, "rg", "files1", tmp.path()).await;
    let base = s.vault_path("rg", "v1");
    let container = format!("{base}/backupFabrics/Azure/protectionContainers/StorageContainer%3BStorage%3Brg%3Bfiles1");
    register_account(&s, &container, &b).await;
    let vault = format!("{base}?{API}");
    for url in [vault.clone(), format!("{}?api-version=2021-04-01", s.rg_path("rg"))] {
        let (st, e) = s.call("DELETE", &url, None).await;
        assert_arm_error(st, &e, 400, "ServiceResourceNotEmptyWithBackendMessage");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains("files1") && msg.contains("unregistered"), "{msg}");
    }
    assert_eq!(s.call("GET", &vault, None).await.0, 200, "the vault is still there");
    let (st, _) = s.call("GET", &format!("{container}?{BK}"), None).await;
    assert_eq!(st, 200, "and so is the registration");
    let (st, _) = s.call("DELETE", &format!("{container}?{BK}"), None).await;
    assert!([200, 202, 204].contains(&st), "unregister: {st}");
    assert!([202, 204].contains(&s.call("DELETE", &vault, None).await.0));
    assert_eq!(s.call("GET", &vault, None).await.0, 404);
}

/// A storage account over `dir` (201); its body.
async fn put_account(s: &Server, rg: &str, acct: &str, dir: &Path) -> Value {
    let (st, b) = s
        .call(
            "PUT",
            &format!("{}?api-version=2023-05-01", b_id(s, rg, acct)),
            Some(&json!({"location": "westus", "tags": {"rsvault-path": dir}})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    b
}

/// Registers the storage account `account` (its body) as the vault's `container` (202); the
/// answer's headers.
async fn register_account(s: &Server, container: &str, account: &Value) -> reqwest::header::HeaderMap {
    let body = json!({"properties": {"containerType": "StorageContainer", "sourceResourceId": account["id"], "backupManagementType": "AzureStorage"}});
    let (st, h, _) = send(s, "PUT", &format!("{container}?{BK}"), Some(&body)).await;
    assert_eq!(st, 202);
    h
}

fn b_id(s: &Server, rg: &str, acct: &str) -> String {
    format!("{}/providers/Microsoft.Storage/storageAccounts/{acct}", s.rg_path(rg))
}

#[tokio::test]
async fn changing_a_policy_in_use_is_a_long_running_operation() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let tmp = s.tempdir();
    let (raw, _) = images(tmp.path());
    s.call(
        "PUT",
        &format!("{}?{VM_API}", vm_path(&s, "rg", "vm1")),
        Some(&vm_body(&raw, &[])),
    )
    .await;
    let item = item_path(&s, "rg", "v1", "rg", "vm1");
    protect(&s, &item, &json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": policy_ref(&s, "rg", "v1", "DefaultPolicy")}})).await;
    let base = s.vault_path("rg", "v1");
    let (_, mut d) = s
        .call("GET", &format!("{base}/backupPolicies/DefaultPolicy?{BK}"), None)
        .await;
    d["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"] = json!(60);
    let (st, h, _) = send(
        &s,
        "PUT",
        &format!("{base}/backupPolicies/DefaultPolicy?{BK}"),
        Some(&d),
    )
    .await;
    assert_eq!(st, 202);
    let status_url = header(&h, "azure-asyncoperation");
    assert!(
        status_url.contains("/backupPolicies/DefaultPolicy/operations/"),
        "{status_url}"
    );
    let op: Value = s
        .http
        .get(status_url)
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(op["status"], "Succeeded");
    assert_eq!(op["properties"]["objectType"], "OperationStatusJobsExtendedInfo");
    assert_eq!(
        op["properties"]["jobIds"].as_array().unwrap().len(),
        1,
        "one job per item"
    );
    let p: Value = s
        .http
        .get(header(&h, "location"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        p["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"],
        60
    );
    assert_eq!(p["properties"]["protectedItemsCount"], 1);
}

#[tokio::test]
async fn vault_backup_configuration_reads_and_writes() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let base = s.vault_path("rg", "v1").replace("/subscriptions/", "/Subscriptions/");
    let (st, c) = s
        .call("GET", &format!("{base}/backupconfig/vaultconfig?{BK}"), None)
        .await;
    assert_eq!(st, 200);
    assert!(
        c["id"].as_str().unwrap().starts_with("/subscriptions/"),
        "singletons answer /subscriptions/ as Azure does"
    );
    assert_eq!(c["properties"]["softDeleteFeatureState"], "Enabled");
    let (st, b) = s
        .call(
            "PATCH",
            &format!("{base}/backupconfig/vaultconfig?{BK}"),
            Some(&json!({"properties": {"softDeleteFeatureState": "Sometimes"}})),
        )
        .await;
    assert_arm_error(st, &b, 400, "BadRequest");
    let (st, b) = s
        .call(
            "PATCH",
            &format!("{base}/backupconfig/vaultconfig?{BK}"),
            Some(&json!({"properties": {"softDeleteRetentionPeriodInDays": 7}})),
        )
        .await;
    assert_arm_error(st, &b, 400, "BMSUserErrorInvalidSoftDeleteRetentionPeriod");
    let (st, sc) = s
        .call(
            "PUT",
            &format!("{base}/backupstorageconfig/vaultstorageconfig?{BK}"),
            Some(&json!({"properties": {"storageModelType": "LocallyRedundant", "crossRegionRestoreFlag": false}})),
        )
        .await;
    assert_eq!(st, 200, "{sc}");
    assert_eq!(sc["properties"]["storageType"], "LocallyRedundant");
    assert_eq!(sc["properties"]["storageTypeState"], "Unlocked");
    let (st, _) = s
        .call(
            "PATCH",
            &format!("{base}/backupstorageconfig/vaultstorageconfig?{BK}"),
            Some(&json!({"properties": {"storageType": "GeoRedundant"}})),
        )
        .await;
    assert_eq!(st, 204);
    let (_, e) = s
        .call(
            "GET",
            &format!("{base}/backupEncryptionConfigs/backupResourceEncryptionConfig?{BK}"),
            None,
        )
        .await;
    assert_eq!(e["properties"]["encryptionAtRestType"], "MicrosoftManaged");
    let (st, b) = s
        .call(
            "PUT",
            &format!("{base}/backupEncryptionConfigs/backupResourceEncryptionConfig?{BK}"),
            Some(&json!({"properties": {"encryptionAtRestType": "CustomerManaged"}})),
        )
        .await;
    assert_arm_error(st, &b, 400, "BMSUserErrorCustomerManagedKeyNotSupported");
    let (_, u) = s.call("GET", &format!("{base}/backupUsageSummaries?{BK}"), None).await;
    let policies = u["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"]["value"] == "PolicyCount")
        .unwrap();
    assert_eq!(policies["currentValue"], 3);
    let (st, g) = s
        .call("GET", &format!("{base}/backupResourceGuardProxies?{BK}"), None)
        .await;
    assert_eq!((st, g["value"].as_array().map(Vec::len)), (200, Some(0)));
}

/// Issue 16: `backupValidateFeatures` answered Supported for any `vmSize`. A VM size Azure has is
/// Supported (rsvault backs up disk images whatever the VM's size); a `vmSize` that is no Azure size
/// name is one Azure does not know: NotSupported.
#[tokio::test]
async fn validate_features_answers_not_supported_for_an_unknown_vm_size() {
    let s = start().await;
    let url = format!(
        "/subscriptions/{}/providers/Microsoft.RecoveryServices/locations/westus/backupValidateFeatures?{BK}",
        s.sub()
    );
    for (body, want) in [
        (
            json!({"objectType": "AzureVMResourceBackup", "featureType": "AzureVMResourceBackup", "vmSize": "Standard_A1"}),
            "Supported",
        ),
        (
            json!({"featureType": "AzureVMResourceBackup", "vmSize": "Basic_A0", "vmSku": "Premium"}),
            "Supported",
        ),
        (
            json!({"featureType": "AzureVMResourceBackup", "vmSize": "Standard_D2s_v3"}),
            "Supported",
        ),
        (json!({"featureType": "AzureVMResourceBackup"}), "Supported"),
        (
            json!({"featureType": "AzureVMResourceBackup", "vmSize": "Gigantic"}),
            "NotSupported",
        ),
        (
            json!({"featureType": "AzureVMResourceBackup", "vmSize": "Standard_Potato"}),
            "NotSupported",
        ),
    ] {
        let (st, f) = s.call("POST", &url, Some(&body)).await;
        assert_eq!((st, f["supportStatus"].as_str()), (200, Some(want)), "{body}");
    }
}

#[tokio::test]
async fn pre_validation_answers_for_protectable_missing_and_taken_vms() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    s.make_vault("rg", "v2").await;
    let tmp = s.tempdir();
    let (raw, _) = images(tmp.path());
    let (_, vm) = s
        .call(
            "PUT",
            &format!("{}?{VM_API}", vm_path(&s, "rg", "vm1")),
            Some(&vm_body(&raw, &[])),
        )
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let url = format!(
        "/subscriptions/{}/providers/Microsoft.RecoveryServices/locations/westus/backupPreValidateProtection?{BK}",
        s.sub()
    );
    let ask = |id: &str, vault: &str| json!({"resourceType": "VM", "resourceId": id, "vaultId": vault});
    let v1 = s.vault_path("rg", "v1");
    let v2 = s.vault_path("rg", "v2");
    let (st, ok) = s.call("POST", &url, Some(&ask(&vm_id, &v1))).await;
    assert_eq!((st, ok["status"].as_str()), (200, Some("Supported")), "{ok}");
    assert_eq!(ok["protectedItemName"], "vm;iaasvmcontainerv2;rg;vm1");
    let (_, missing) = s
        .call("POST", &url, Some(&ask(&vm_id.replace("vm1", "ghost"), &v1)))
        .await;
    assert_eq!(missing["status"], "Failed");
    protect(
        &s,
        &item_path(&s, "rg", "v1", "rg", "vm1"),
        &json!({"properties": {"policyId": policy_ref(&s, "rg", "v1", "DefaultPolicy")}}),
    )
    .await;
    let (_, same) = s.call("POST", &url, Some(&ask(&vm_id, &v1))).await;
    assert_eq!(same["status"], "Supported", "its own vault may configure it again");
    let (_, taken) = s.call("POST", &url, Some(&ask(&vm_id, &v2))).await;
    assert_eq!(
        (taken["status"].as_str(), taken["errorCode"].as_str()),
        (Some("Failed"), Some("BMSUserErrorAlreadyProtected"))
    );
    let (st, b) = s.call("POST", &url, Some(&json!({"resourceType": "VM"}))).await;
    assert_arm_error(st, &b, 400, "BMSUserErrorInvalidInput");
}

/// A finished job row (3 minutes long) of vault `vault_id` (written behind the server's back by the jobs list tests).
fn finished_job(
    vault_id: &str,
    name: String,
    i: i64,
    op: &str,
    status: &str,
    bmt: &str,
    start: chrono::DateTime<chrono::Utc>,
) -> rsvault_store::JobRow {
    let job_type = if bmt == "AzureIaasVM" {
        "AzureIaaSVMJob"
    } else {
        "AzureStorageJob"
    };
    rsvault_store::JobRow {
        id: format!("{vault_id}/backupJobs/{name}"),
        vault_key: vault_id.to_ascii_lowercase(),
        name,
        operation: op.into(),
        status: status.into(),
        backup_management_type: bmt.into(),
        entity: format!("vm{i}"),
        start,
        end: Some(start + chrono::Duration::minutes(3)),
        body: json!({"jobType": job_type, "operation": op, "status": status,
                     "entityFriendlyName": format!("vm{i}"), "backupManagementType": bmt}),
        phase: None,
        work: None,
    }
}

/// Vault `rg/v1` for the jobs list tests: its id, and the time their jobs start from.
async fn jobs_vault(s: &Server) -> (String, chrono::DateTime<chrono::Utc>) {
    s.make_group("rg").await;
    let v = s.make_vault("rg", "v1").await;
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    (v["id"].as_str().unwrap().to_string(), t0.with_timezone(&chrono::Utc))
}

/// Writes job rows into a test server's store in one transaction.
fn put_jobs(s: &Server, rows: &[rsvault_store::JobRow]) {
    s.offline(|c| {
        c.store().write(|db| {
            for r in rows {
                db.put_job(r)?;
            }
            Ok::<_, rsvault_store::StoreError>(())
        })
    })
    .unwrap();
}

#[tokio::test]
async fn jobs_list_newest_first_with_azures_filters_and_paging() {
    let s = start().await;
    let (vault_id, t0) = jobs_vault(&s).await;
    let statuses = [
        "Completed",
        "Failed",
        "InProgress",
        "CompletedWithWarnings",
        "Cancelled",
    ];
    let operations = ["Backup", "Restore", "ConfigureBackup", "DeleteBackupData"];
    let rows: Vec<rsvault_store::JobRow> = (0..500)
        .map(|i| {
            let name = format!("00000000-0000-0000-0000-{i:012}");
            let start = t0 + chrono::Duration::hours(i);
            let bmt = if i % 2 == 0 { "AzureIaasVM" } else { "AzureStorage" };
            finished_job(
                &vault_id,
                name,
                i,
                operations[i as usize % 4],
                statuses[i as usize % 5],
                bmt,
                start,
            )
        })
        .collect();
    put_jobs(&s, &rows);
    let base = format!("{}/backupJobs?{BK}", s.vault_path("rg", "v1"));
    // Every page, following nextLink, newest first, each job once.
    let mut seen = Vec::new();
    let mut url = s.url(&base);
    loop {
        let page: Value = s
            .http
            .get(&url)
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(
            page["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["name"].as_str().unwrap().to_string()),
        );
        match page["nextLink"].as_str() {
            Some(n) => url = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 500);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first");
    let count = |f: &str| {
        let url = s.url(&format!(
            "{base}&$filter={}",
            f.replace(' ', "%20").replace('\'', "%27")
        ));
        let http = s.http.clone();
        let token = s.token.clone();
        async move {
            let mut n = 0;
            let mut url = url;
            loop {
                let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let page: Value = r.json().await.unwrap();
                n += page["value"].as_array().unwrap().len();
                match page["nextLink"].as_str() {
                    Some(next) => url = next.to_string(),
                    None => return n,
                }
            }
        }
    };
    assert_eq!(count("status eq 'Failed'").await, 100);
    assert_eq!(
        count("operation eq 'Backup' and backupManagementType eq 'AzureIaasVM'").await,
        125
    );
    assert_eq!(count("status eq 'Completed' and operation eq 'Backup'").await, 25);
    assert_eq!(count("jobId eq '00000000-0000-0000-0000-000000000007'").await, 1);
    // The first day: hours 0..=23, in Azure's date form (midnight as Azure's examples write it,
    // `00:00:00 AM`, and as `12:00:00 AM`) and in ISO-8601.
    assert_eq!(
        count("startTime eq '2026-01-01 00:00:00 AM' and endTime eq '2026-01-01 11:00:00 PM'").await,
        24
    );
    assert_eq!(
        count("startTime eq '2026-01-01 12:00:00 AM' and endTime eq '2026-01-01 11:00:00 PM'").await,
        24
    );
    assert_eq!(
        count("startTime ge '2026-01-01T00:00:00Z' and endTime lt '2026-01-02T00:00:00Z'").await,
        24
    );
    for bad in [
        "status eq 'Done'",
        "startTime eq 'tomorrow'",
        "colour eq 'red'",
        "status eq 'Failed' or status eq 'Completed'",
    ] {
        let (st, b) = s
            .call("GET", &format!("{base}&$filter={}", bad.replace(' ', "%20")), None)
            .await;
        assert_arm_error(st, &b, 400, "BMSUserErrorInvalidInput");
    }
}

/// Issue 17: the jobs list is served page by page from the store's index (keyset paging on start time
/// and id) rather than by filtering every job; over 2 000 jobs, with start times shared by several jobs
/// (so pages break inside a tie) and a page size that does not divide them, every filter's walk through
/// `nextLink` is exactly the whole list filtered, newest first, ties by id descending.
#[tokio::test]
async fn jobs_pages_and_filters_agree_with_the_whole_list() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path().join("data"));
    config.page_size = 37;
    let s = start_with(config, Some(tmp)).await;
    let (vault_id, t0) = jobs_vault(&s).await;
    let statuses = ["Completed", "Failed", "Cancelled"];
    let operations = ["Backup", "Restore", "ConfigureBackup", "DeleteBackupData"];
    let rows: Vec<rsvault_store::JobRow> = (0..2000i64)
        .map(|i| {
            let name = uuid::Uuid::new_v4().to_string();
            let start = t0 + chrono::Duration::minutes(i / 3);
            let (op, status) = (operations[i as usize % 4], statuses[i as usize % 3]);
            finished_job(&vault_id, name, i, op, status, "AzureIaasVM", start)
        })
        .collect();
    put_jobs(&s, &rows);
    let mut newest_first: Vec<&rsvault_store::JobRow> = rows.iter().collect();
    newest_first.sort_by_key(|j| std::cmp::Reverse((j.start, j.id.to_ascii_lowercase())));
    let base = format!("{}/backupJobs?{BK}", s.vault_path("rg", "v1"));
    let walk = |filter: &str| {
        let mut url = s.url(&base);
        if !filter.is_empty() {
            url = format!("{url}&$filter={}", filter.replace(' ', "%20").replace('\'', "%27"));
        }
        let (http, token) = (s.http.clone(), s.token.clone());
        async move {
            let (mut names, mut pages) = (Vec::new(), 0);
            loop {
                let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let page: Value = r.json().await.unwrap();
                let items = page["value"].as_array().unwrap();
                assert!(items.len() <= 37);
                names.extend(items.iter().map(|j| j["name"].as_str().unwrap().to_string()));
                pages += 1;
                match page["nextLink"].as_str() {
                    Some(next) => url = next.to_string(),
                    None => return (names, pages),
                }
            }
        }
    };
    let at = |m: i64| (t0 + chrono::Duration::minutes(m)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cases: Vec<(String, Box<dyn Fn(&rsvault_store::JobRow) -> bool>)> = vec![
        (String::new(), Box::new(|_| true)),
        ("status eq 'Failed'".into(), Box::new(|j| j.status == "Failed")),
        (
            "status eq 'completed' and operation eq 'Backup'".into(),
            Box::new(|j| j.status == "Completed" && j.operation == "Backup"),
        ),
        (
            format!("status eq 'Cancelled' and startTime eq '{}'", at(500)),
            Box::new(move |j| j.status == "Cancelled" && j.start >= t0 + chrono::Duration::minutes(500)),
        ),
        (
            format!("startTime gt '{}' and endTime lt '{}'", at(100), at(200)),
            Box::new(move |j| {
                j.start > t0 + chrono::Duration::minutes(100) && j.start < t0 + chrono::Duration::minutes(200)
            }),
        ),
        (
            format!("jobId eq '{}'", rows[1234].name.to_uppercase()),
            Box::new(|j| j.entity == "vm1234"),
        ),
    ];
    for (filter, keep) in &cases {
        let want: Vec<String> = newest_first
            .iter()
            .filter(|j| keep(j))
            .map(|j| j.name.clone())
            .collect();
        let (got, pages) = walk(filter).await;
        assert!(!want.is_empty(), "{filter}");
        assert_eq!(got, want, "$filter={filter}");
        assert_eq!(pages, want.len().div_ceil(37).max(1), "$filter={filter}");
    }
}

/// Issue 17: `backupProtectedItems` is paged like Azure's (`nextLink` with `$skipToken`), read from the
/// store page by page; over 7 items at 3 a page, the walk through `nextLink` is every item once, in
/// order, with or without a `$filter` that drops items inside pages; a token from elsewhere is refused.
#[tokio::test]
async fn protected_items_are_paged_and_filtered_across_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path().join("data"));
    config.page_size = 3;
    let s = start_with(config, Some(tmp)).await;
    s.make_group("rg").await;
    s.make_group("apps").await;
    s.make_vault("rg", "v1").await;
    let dir = s.tempdir();
    let base = s.vault_path("rg", "v1");
    for i in 0..7 {
        let img = dir.path().join(format!("os{i}.raw"));
        std::fs::write(&img, vec![i as u8; 1 << 20]).unwrap();
        let (st, vm) = s
            .call(
                "PUT",
                &format!("{}?{VM_API}", vm_path(&s, "apps", &format!("vm{i}"))),
                Some(&vm_body(&img, &[])),
            )
            .await;
        assert_eq!(st, 201, "{vm}");
        let policy = if i % 2 == 0 { "DefaultPolicy" } else { "EnhancedPolicy" };
        let enable = json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines",
            "sourceResourceId": vm["id"], "policyId": policy_ref(&s, "rg", "v1", policy)}});
        protect(&s, &item_path(&s, "rg", "v1", "apps", &format!("vm{i}")), &enable).await;
    }
    let walk = |query: String| {
        let (http, token, mut url) = (
            s.http.clone(),
            s.token.clone(),
            s.url(&format!("{base}/backupProtectedItems?{BK}{query}")),
        );
        async move {
            let mut pages = Vec::new();
            loop {
                let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let page: Value = r.json().await.unwrap();
                let names: Vec<String> = page["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["properties"]["friendlyName"].as_str().unwrap().to_string())
                    .collect();
                pages.push(names);
                match page["nextLink"].as_str() {
                    Some(next) => {
                        assert!(next.contains("$skipToken="), "{next}");
                        url = next.to_string();
                    }
                    None => return pages,
                }
            }
        }
    };
    let all = walk(String::new()).await;
    assert_eq!(
        all,
        [vec!["vm0", "vm1", "vm2"], vec!["vm3", "vm4", "vm5"], vec!["vm6"]],
        "pages of 3, key order, no empty last page"
    );
    let default = walk("&$filter=policyName%20eq%20'DefaultPolicy'".into()).await;
    assert_eq!(default, [vec!["vm0", "vm2", "vm4"], vec!["vm6"]]);
    let enhanced = walk("&$filter=policyName%20eq%20'EnhancedPolicy'".into()).await;
    assert_eq!(
        enhanced,
        [vec!["vm1", "vm3", "vm5"]],
        "exactly one full page: no nextLink"
    );
    let (st, b) = s
        .call("GET", &format!("{base}/backupProtectedItems?{BK}&$skipToken=%%%"), None)
        .await;
    assert_arm_error(st, &b, 400, "InvalidSkipToken");
    // A soft-deleted item is listed with the time it has left, which the stored body does not hold.
    let (st, _, b) = send(
        &s,
        "DELETE",
        &format!("{}?{BK}", item_path(&s, "rg", "v1", "apps", "vm3")),
        None,
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let (_, list) = s
        .call(
            "GET",
            &format!("{base}/backupProtectedItems?{BK}&$filter=friendlyName%20eq%20'vm3'"),
            None,
        )
        .await;
    let p = &list["value"][0]["properties"];
    assert_eq!(p["isScheduledForDeferredDelete"], true, "{list}");
    assert!(
        p["deferredDeleteTimeRemaining"]
            .as_str()
            .is_some_and(|t| t.starts_with("13.23:") || t.starts_with("14.")),
        "{list}"
    );
}

/// Issue 17: the jobs list and `GET job` reuse what they rendered for a settled job only while its row
/// reads the same: a row another control plane rewrites (status, end, body) answers as rewritten, in
/// the list and alone.
#[tokio::test]
async fn a_job_rewritten_elsewhere_answers_as_rewritten() {
    let s = start().await;
    let (vault_id, t0) = jobs_vault(&s).await;
    let name = uuid::Uuid::new_v4().to_string();
    let job = finished_job(&vault_id, name.clone(), 1, "Backup", "Completed", "AzureIaasVM", t0);
    put_jobs(&s, std::slice::from_ref(&job));
    let base = s.vault_path("rg", "v1");
    let read = || async {
        let (st, one) = s.call("GET", &format!("{base}/backupJobs/{name}?{BK}"), None).await;
        assert_eq!(st, 200, "{one}");
        let (st, list) = s.call("GET", &format!("{base}/backupJobs?{BK}"), None).await;
        assert_eq!(st, 200, "{list}");
        let mut listed = list["value"][0].clone();
        if one["properties"]["status"] == "InProgress" {
            // A running job's duration follows the clock between the two reads.
            listed["properties"]["duration"] = one["properties"]["duration"].clone();
        }
        assert_eq!(listed, one, "the list and GET answer the same body");
        one
    };
    for _ in 0..2 {
        let j = read().await;
        assert_eq!(j["properties"]["status"], "Completed");
        assert_eq!(j["properties"]["duration"], "PT3M");
    }
    // Another node ends it differently: a new status, end and body.
    let mut again = job.clone();
    again.status = "Failed".into();
    again.end = Some(t0 + chrono::Duration::minutes(7));
    again.body["status"] = json!("Failed");
    again.body["errorDetails"] = json!([{"errorCode": 1, "errorString": "x"}]);
    put_jobs(&s, std::slice::from_ref(&again));
    let j = read().await;
    assert_eq!(j["properties"]["status"], "Failed");
    assert_eq!(j["properties"]["duration"], "PT7M");
    assert_eq!(j["properties"]["errorDetails"][0]["errorString"], "x");
    // Only the end moves: the body text is the same, the duration is not.
    again.end = Some(t0 + chrono::Duration::minutes(9));
    put_jobs(&s, std::slice::from_ref(&again));
    assert_eq!(read().await["properties"]["duration"], "PT9M");
    // A job still running is never kept: its duration follows the clock.
    let mut running = again.clone();
    running.status = "InProgress".into();
    running.end = None;
    running.body["status"] = json!("InProgress");
    put_jobs(&s, std::slice::from_ref(&running));
    let j = read().await;
    assert_eq!(j["properties"]["status"], "InProgress");
    assert_ne!(j["properties"]["duration"], "PT9M");
}
