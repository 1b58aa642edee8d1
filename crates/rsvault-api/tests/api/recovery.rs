//! Issue 6 over HTTPS with real data: trigger backup, follow the operation to its job, recovery
//! points, restore (disks, new VM, original disks, share files), cancel, export, and a graceful
//! restart in the middle of a backup.

use crate::harness::*;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const BK: &str = "api-version=2026-10-01";
pub(crate) const VM_API: &str = "api-version=2024-07-01";
pub(crate) const ST_API: &str = "api-version=2023-05-01";

/// Pseudo-random bytes (xorshift), incompressible, reproducible from `seed`.
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn write_random(path: &Path, len: usize, seed: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = 8 << 20;
    let mut left = len;
    let mut s = seed;
    while left > 0 {
        let n = left.min(chunk);
        f.write_all(&random_bytes(n, s)).unwrap();
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
        left -= n;
    }
    f.sync_all().unwrap();
}

/// Sends to a path of the server (or a full URL, as headers give them).
pub(crate) async fn send(s: &Server, method: &str, path: &str, body: Option<&Value>) -> (u16, HeaderMap, Value) {
    let path = path.strip_prefix(&s.base).unwrap_or(path);
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

pub(crate) fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

pub(crate) async fn get_url(s: &Server, url: &str) -> (u16, Value) {
    let r = s.http.get(url).bearer_auth(&s.token).send().await.unwrap();
    let st = r.status().as_u16();
    let t = r.text().await.unwrap();
    (
        st,
        if t.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&t).unwrap()
        },
    )
}

pub(crate) struct Fixture {
    pub(crate) s: Server,
    pub(crate) _tmp: tempfile::TempDir,
    pub(crate) dir: PathBuf,
}

impl Fixture {
    pub(crate) fn vault(&self) -> String {
        self.s.vault_path("rg", "v1")
    }
    pub(crate) fn item(&self, vm: &str) -> String {
        format!(
            "{}/backupFabrics/Azure/protectionContainers/IaasVMContainer%3Biaasvmcontainerv2%3Brg%3B{vm}/protectedItems/VM%3Biaasvmcontainerv2%3Brg%3B{vm}",
            self.vault()
        )
    }
    pub(crate) fn share_item(&self, acct: &str, share: &str) -> String {
        format!(
            "{}/backupFabrics/Azure/protectionContainers/StorageContainer%3BStorage%3Brg%3B{acct}/protectedItems/AzureFileShare%3B{share}",
            self.vault()
        )
    }
    pub(crate) fn account_id(&self, acct: &str) -> String {
        format!(
            "{}/providers/Microsoft.Storage/storageAccounts/{acct}",
            self.s.rg_path("rg")
        )
    }
}

pub(crate) async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

/// A server started with a changed configuration, a group `rg`, a vault `v1`, and a work directory.
pub(crate) async fn fixture_with(change: impl FnOnce(&mut rsvault_api::Config)) -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path().join("data"));
    change(&mut config);
    let s = start_with(config, Some(data)).await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let tmp = s.tempdir();
    let dir = tmp.path().to_path_buf();
    Fixture { s, _tmp: tmp, dir }
}

/// Moves the vault's DefaultPolicy's daily run to 12 hours from now, so a test on the real clock
/// with a short `policy_interval` never meets a scheduled backup (a new vault's DefaultPolicy runs
/// at the next full hour, which a test started a minute before it would cross).
pub(crate) async fn quiet_default_policy(f: &Fixture) {
    let t = (chrono::Utc::now() + chrono::Duration::hours(12))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    let body = json!({"properties": {"backupManagementType": "AzureIaasVM",
        "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [t]},
        "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [t], "retentionDuration": {"count": 30, "durationType": "Days"}}},
        "timeZone": "UTC"}});
    let (st, _, b) = send(
        &f.s,
        "PUT",
        &format!("{}/backupPolicies/DefaultPolicy?{BK}", f.vault()),
        Some(&body),
    )
    .await;
    assert_eq!(st, 200, "{b}");
}

/// A storage account over `dir/{acct}`.
pub(crate) async fn account(f: &Fixture, acct: &str) -> PathBuf {
    let d = f.dir.join(acct);
    std::fs::create_dir_all(&d).unwrap();
    let (st, _, b) = send(
        &f.s,
        "PUT",
        &format!("{}?{ST_API}", f.account_id(acct)),
        Some(&json!({"location": "westus", "kind": "StorageV2", "sku": {"name": "Standard_LRS"}, "tags": {"rsvault-path": d}})),
    )
    .await;
    assert!(st == 200 || st == 201, "{b}");
    d
}

/// Declares a VM over the images and enables protection with DefaultPolicy.
pub(crate) async fn protect_vm(f: &Fixture, vm: &str, os: &Path, data: &[&Path]) {
    let disks: Vec<Value> = data
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"lun": i, "name": format!("data{i}"), "vhd": {"uri": format!("file://{}", d.display())}}))
        .collect();
    let body = json!({"location": "westus", "properties": {"storageProfile": {
        "osDisk": {"osType": "Linux", "vhd": {"uri": format!("file://{}", os.display())}}, "dataDisks": disks}}});
    let (st, _, b) = send(
        &f.s,
        "PUT",
        &format!(
            "{}/providers/Microsoft.Compute/virtualMachines/{vm}?{VM_API}",
            f.s.rg_path("rg")
        ),
        Some(&body),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let pol = format!("{}/backupPolicies/DefaultPolicy", f.vault());
    let (st, _, b) = send(
        &f.s,
        "PUT",
        &format!("{}?{BK}", f.item(vm)),
        Some(&json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": pol}})),
    )
    .await;
    assert_eq!(st, 202, "{b}");
}

/// A storage account `acct` with a share `share` whose directory `fill` fills, its container
/// registered and the share protected with a daily policy `afs`. Returns the share's directory.
pub(crate) async fn protect_share(f: &Fixture, acct: &str, share: &str, fill: impl FnOnce(&Path)) -> PathBuf {
    let acct_dir = account(f, acct).await;
    let (st, _, b) = send(
        &f.s,
        "PUT",
        &format!("{}/fileServices/default/shares/{share}?{ST_API}", f.account_id(acct)),
        Some(&json!({"properties": {}})),
    )
    .await;
    assert!(st == 200 || st == 201, "{b}");
    let dir = acct_dir.join(share);
    fill(&dir);
    let container = format!(
        "{}/backupFabrics/Azure/protectionContainers/StorageContainer%3BStorage%3Brg%3B{acct}",
        f.vault()
    );
    let (st, _, b) = send(&f.s, "PUT", &format!("{container}?{BK}"), Some(&json!({"properties": {"backupManagementType": "AzureStorage", "containerType": "StorageContainer", "sourceResourceId": f.account_id(acct)}}))).await;
    assert!(st == 200 || st == 202, "{b}");
    let pol = json!({"properties": {"backupManagementType": "AzureStorage", "workLoadType": "AzureFileShare",
        "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": ["2026-01-01T03:00:00Z"]},
        "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": ["2026-01-01T03:00:00Z"], "retentionDuration": {"count": 30, "durationType": "Days"}}},
        "timeZone": "UTC"}});
    let (st, _, b) = send(
        &f.s,
        "PUT",
        &format!("{}/backupPolicies/afs?{BK}", f.vault()),
        Some(&pol),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, _, b) = send(&f.s, "PUT", &format!("{}?{BK}", f.share_item(acct, share)), Some(&json!({"properties": {"protectedItemType": "AzureFileShareProtectedItem", "policyId": format!("{}/backupPolicies/afs", f.vault()), "sourceResourceId": f.account_id(acct)}}))).await;
    assert_eq!(st, 202, "{b}");
    dir
}

/// POSTs a backup or restore, checks the 202's headers, follows `Azure-AsyncOperation` to its job id.
pub(crate) async fn accept(f: &Fixture, url: &str, body: &Value) -> String {
    let (st, h, b) = send(&f.s, "POST", url, Some(body)).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(b, Value::Null, "a 202 has an empty body");
    let status_url = header(&h, "azure-asyncoperation");
    let location = header(&h, "location");
    assert!(
        status_url.starts_with("https://") && status_url.contains("/operationsStatus/"),
        "{status_url}"
    );
    assert!(
        location.contains("/operationResults/") && location.ends_with(BK),
        "{location}"
    );
    assert!(!status_url.contains("%3B"), "literal ';' in URLs: {status_url}");
    assert!(header(&h, "retry-after").parse::<u64>().is_ok());
    let (st, op) = get_url(&f.s, &status_url).await;
    assert_eq!(st, 200);
    assert_eq!(op["status"], "Succeeded", "{op}");
    assert_eq!(op["properties"]["objectType"], "OperationStatusJobExtendedInfo");
    let job = op["properties"]["jobId"].as_str().unwrap().to_string();
    // The same operation from the vault-level URL the az CLI polls, and the Location URL.
    let opid = status_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let (st, vop) = get_url(&f.s, &f.s.url(&format!("{}/backupOperations/{opid}?{BK}", f.vault()))).await;
    assert_eq!((st, &vop["properties"]["jobId"]), (200, &json!(job)));
    let (st, _) = get_url(&f.s, &location).await;
    assert_eq!(st, 204, "the operation's result is its job");
    job
}

pub(crate) async fn job(f: &Fixture, id: &str) -> Value {
    let (st, _, b) = send(&f.s, "GET", &format!("{}/backupJobs/{id}?{BK}", f.vault()), None).await;
    assert_eq!(st, 200, "{b}");
    b
}

/// Polls a job until it leaves InProgress/Cancelling; returns every body seen.
pub(crate) async fn wait_job(f: &Fixture, id: &str) -> Vec<Value> {
    let mut seen = vec![];
    for _ in 0..2400 {
        let b = job(f, id).await;
        let st = b["properties"]["status"].as_str().unwrap().to_string();
        seen.push(b);
        if st != "InProgress" && st != "Cancelling" {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish: {}", seen.last().unwrap());
}

fn iso_duration_ok(d: &str) -> bool {
    d.starts_with("PT") && d.ends_with('S') || d == "PT0S"
}

#[tokio::test]
async fn vm_backup_recovery_points_and_every_restore_kind() {
    let f = fixture().await;
    let os = f.dir.join("os.raw");
    write_random(&os, 24 << 20, 7);
    let data_raw = f.dir.join("data-src.raw");
    write_random(&data_raw, 16 << 20, 8);
    let data = f.dir.join("data.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&data_raw)
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success());
    protect_vm(&f, "vm1", &os, &[&data]).await;
    let os_then = std::fs::read(&os).unwrap();

    // Trigger: 202, operation Succeeded with the job id at once, job InProgress then Completed.
    let expiry = (chrono::Utc::now() + chrono::Duration::days(5))
        .format("%Y-%m-%dT00:00:00.000Z")
        .to_string();
    let job_id = accept(
        &f,
        &f.s.url(&format!("{}/backup?{BK}", f.item("vm1"))),
        &json!({"properties": {"objectType": "IaasVMBackupRequest", "recoveryPointExpiryTimeInUTC": expiry}}),
    )
    .await;
    let seen = wait_job(&f, &job_id).await;
    let first = &seen[0]["properties"];
    assert_eq!(first["jobType"], "AzureIaaSVMJob");
    assert_eq!(first["operation"], "Backup");
    assert_eq!(first["isUserTriggered"], true);
    if first["status"] == "InProgress" {
        assert_eq!(first["actionsInfo"], json!(["Cancellable"]), "{first}");
    }
    let done = &seen.last().unwrap()["properties"];
    assert_eq!(done["status"], "Completed", "{done}");
    assert!(done.get("actionsInfo").is_none(), "a finished job is not cancellable");
    assert!(iso_duration_ok(done["duration"].as_str().unwrap()), "{done}");
    assert!(done["endTime"].as_str().unwrap().ends_with('Z'));
    let tasks = done["extendedInfo"]["tasksList"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["taskId"].as_str().unwrap()).collect();
    assert_eq!(names, ["Take Snapshot", "Transfer data to vault"]);
    for t in tasks {
        assert_eq!(t["status"], "Completed", "{t}");
        assert!(t["startTime"].is_string() && t["endTime"].is_string(), "{t}");
        assert!(iso_duration_ok(t["duration"].as_str().unwrap()), "{t}");
    }
    assert_eq!(done["extendedInfo"]["progressPercentage"], 100.0);
    let bag = &done["extendedInfo"]["propertyBag"];
    assert_eq!(bag["VM Name"], "vm1");
    assert_eq!(bag["Backup Size"], "40 MB", "24 MiB + 16 MiB of guest data");
    assert!(bag["Recovery Point Expiry Time in UTC"]
        .as_str()
        .unwrap()
        .ends_with("12:00:00 AM"));

    // The item is now Protected with its last backup; one recovery point with what Azure reports.
    let (_, _, item) = send(&f.s, "GET", &format!("{}?{BK}", f.item("vm1")), None).await;
    let ip = &item["properties"];
    assert_eq!(ip["protectionState"], "Protected");
    assert_eq!(ip["lastBackupStatus"], "Completed");
    assert_eq!(ip["extendedInfo"]["recoveryPointCount"], 1);
    let (st, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("vm1")), None).await;
    assert_eq!(st, 200, "{rps}");
    let rps = rps["value"].as_array().unwrap().clone();
    assert_eq!(rps.len(), 1);
    let rp = &rps[0];
    let rp_name = rp["name"].as_str().unwrap().to_string();
    assert!(
        rp_name.len() >= 14 && rp_name.chars().all(|c| c.is_ascii_digit()),
        "{rp_name}"
    );
    assert_eq!(
        rp["type"],
        "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems/recoveryPoints"
    );
    assert_eq!(rp["properties"]["objectType"], "IaasVMRecoveryPoint");
    assert_eq!(rp["properties"]["recoveryPointType"], "CrashConsistent");
    assert_eq!(rp["properties"]["recoveryPointTime"], ip["lastRecoveryPoint"]);
    assert_eq!(
        rp["properties"]["recoveryPointDiskConfiguration"]["numberOfDisksIncludedInBackup"],
        2
    );
    assert_eq!(
        rp["properties"]["recoveryPointProperties"]["expiryTime"],
        json!(format!("{}Z", &expiry[..19]))
    );
    let (st, _, one) = send(
        &f.s,
        "GET",
        &format!("{}/recoveryPoints/{rp_name}?{BK}", f.item("vm1")),
        None,
    )
    .await;
    assert_eq!((st, &one), (200, rp));

    // $filter on dates, in Azure's forms; a bad one names the problem.
    let t = chrono::Utc::now();
    for (filter, want) in [
        (
            // Midnight as Azure's own examples write it (issue 16: once refused with 400).
            format!(
                "startDate eq '{}' and endDate eq '{}'",
                (t - chrono::Duration::days(1)).format("%Y-%m-%d 00:00:00 AM"),
                (t + chrono::Duration::days(1)).format("%Y-%m-%d 00:00:00 AM")
            ),
            1,
        ),
        (
            format!(
                "startDate eq '{}' and endDate eq '{}'",
                (t - chrono::Duration::days(1)).format("%Y-%m-%d %I:%M:%S %p"),
                (t + chrono::Duration::days(1)).format("%Y-%m-%d %I:%M:%S %p")
            ),
            1,
        ),
        (
            format!(
                "startDate eq '{}' and endDate eq '{}'",
                (t + chrono::Duration::hours(1)).to_rfc3339(),
                (t + chrono::Duration::days(1)).to_rfc3339()
            ),
            0,
        ),
    ] {
        let (st, _, b) = send(
            &f.s,
            "GET",
            &format!("{}/recoveryPoints?{BK}&$filter={}", f.item("vm1"), urlencoding(&filter)),
            None,
        )
        .await;
        assert_eq!(st, 200, "{filter}: {b}");
        assert_eq!(b["value"].as_array().unwrap().len(), want, "{filter}");
    }
    let (st, _, b) = send(
        &f.s,
        "GET",
        &format!(
            "{}/recoveryPoints?{BK}&$filter={}",
            f.item("vm1"),
            urlencoding("startDate eq 'someday'")
        ),
        None,
    )
    .await;
    assert_arm_error(st, &b, 400, "BMSUserErrorInvalidInput");
    let (st, _, b) = send(&f.s, "GET", &format!("{}/recoveryPoints/123?{BK}", f.item("vm1")), None).await;
    assert_arm_error(st, &b, 404, "BMSUserErrorRecoveryPointNotFound");

    // Issue 16: the point's extended info lists its disks (the OS disk at lun -1).
    let ext_url = format!("{}/backupFabrics/Azure/getRPExtendedInfo?{BK}", f.vault());
    let rp_id = format!("{}/recoveryPoints/{rp_name}", f.item("vm1")).replace("%3B", ";");
    let (st, _, b) = send(
        &f.s,
        "POST",
        &ext_url,
        Some(&json!({"properties": {"recoveryPointIds": [rp_id]}})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let ext = &b["value"][0]["properties"];
    assert_eq!(ext["objectType"], "IaasVMRPExtendedInfo", "{b}");
    assert_eq!(ext["osDisk"]["lun"], -1, "{b}");
    assert_eq!(ext["dataDisks"].as_array().unwrap().len(), 1, "{b}");
    for bad in [
        json!({"properties": {"recoveryPointIds": []}}),
        json!({"properties": {"recoveryPointIds": ["/subscriptions/x"]}}),
    ] {
        let (st, _, b) = send(&f.s, "POST", &ext_url, Some(&bad)).await;
        assert_arm_error(st, &b, 400, "BMSUserErrorInvalidInput");
    }

    // RestoreDisks into a storage account: raw images equal to the guest content at backup time.
    let acct_dir = account(&f, "restoresa").await;
    let restore_url =
        f.s.url(&format!("{}/recoveryPoints/{rp_name}/restore?{BK}", f.item("vm1")));
    let vm_id = format!("{}/providers/Microsoft.Compute/virtualMachines/vm1", f.s.rg_path("rg"));
    let rjob = accept(
        &f,
        &restore_url,
        &json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp_name, "recoveryType": "RestoreDisks",
            "sourceResourceId": vm_id, "storageAccountId": f.account_id("restoresa"), "region": "westus",
            "createNewCloudService": false, "originalStorageAccountOption": false}}),
    )
    .await;
    let r = wait_job(&f, &rjob).await.pop().unwrap();
    let rp_props = &r["properties"];
    assert_eq!(rp_props["status"], "Completed", "{r}");
    assert_eq!(rp_props["operation"], "Restore");
    assert_eq!(rp_props["extendedInfo"]["propertyBag"]["Job Type"], "Recover disks");
    assert_eq!(
        rp_props["extendedInfo"]["internalPropertyBag"],
        json!({"restoreLocationType": "RestoreDisks"})
    );
    assert_eq!(
        rp_props["extendedInfo"]["propertyBag"]["Target Storage Account Name"],
        "restoresa"
    );
    let names: Vec<&str> = rp_props["extendedInfo"]["tasksList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskId"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Transfer data from vault", "Verify restored data"]);
    // Issue 16: the transfer's bytes are on the transfer task (they once all showed under
    // "Verify restored data", with "0 MB / 40 MB" on the transfer).
    let transfer = &rp_props["extendedInfo"]["tasksList"][0];
    assert_eq!(
        transfer["taskExecutionDetails"], "40 MB / 40 MB Transferred",
        "{transfer}"
    );
    assert_eq!(transfer["progressPercentage"], 100.0, "{transfer}");
    let (restored, configs): (Vec<PathBuf>, Vec<PathBuf>) = std::fs::read_dir(&acct_dir)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .partition(|p| p.extension().is_none_or(|e| e != "json"));
    assert_eq!(restored.len(), 2, "{restored:?}");
    // Issue 16: the VM's configuration and a template that re-creates it, named in the bag as Azure
    // names its config and template blobs.
    let bag = &rp_props["extendedInfo"]["propertyBag"];
    let file_of = |k: &str| PathBuf::from(bag[k].as_str().unwrap().strip_prefix("file://").unwrap());
    let (config_path, template_path) = (file_of("Config Blob Uri"), file_of("Template Blob Uri"));
    assert_eq!(configs.len(), 2, "{configs:?}");
    assert!(
        configs.contains(&config_path) && configs.contains(&template_path),
        "{bag}"
    );
    assert_eq!(
        config_path.file_name().unwrap().to_str(),
        bag["Config Blob Name"].as_str()
    );
    assert_eq!(
        config_path.parent().unwrap().file_name().unwrap().to_str(),
        bag["Config Blob Container Name"].as_str()
    );
    let config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(config["id"], vm_id);
    assert_eq!(
        config["properties"]["storageProfile"]["osDisk"]["osType"], "Linux",
        "{config}"
    );
    let template: Value = serde_json::from_slice(&std::fs::read(&template_path).unwrap()).unwrap();
    let res = &template["resources"][0];
    assert_eq!(res["type"], "Microsoft.Compute/virtualMachines");
    // Deploying the template's VM (its properties as they are) declares a VM over the restored disks.
    let (st, b) =
        f.s.call(
            "PUT",
            &format!(
                "{}/providers/Microsoft.Compute/virtualMachines/vm1-fromtemplate?api-version=2024-07-01",
                f.s.rg_path("rg")
            ),
            Some(&json!({"location": res["location"], "properties": res["properties"]})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let os_uri = b["properties"]["storageProfile"]["osDisk"]["vhd"]["uri"]
        .as_str()
        .unwrap();
    assert!(
        restored.iter().any(|p| os_uri == format!("file://{}", p.display())),
        "{b}"
    );
    let mut contents: Vec<Vec<u8>> = restored.iter().map(|p| std::fs::read(p).unwrap()).collect();
    contents.sort_by_key(|c| c.len());
    assert_eq!(
        contents[0],
        std::fs::read(&data_raw).unwrap(),
        "qcow2 disk restored as its guest content"
    );
    assert_eq!(contents[1], os_then);

    // OriginalLocation: the OS disk is replaced by its backed-up content.
    write_random(&os, 24 << 20, 99);
    let ojob = accept(
        &f,
        &restore_url,
        &json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp_name, "recoveryType": "OriginalLocation", "sourceResourceId": vm_id}}),
    )
    .await;
    let r = wait_job(&f, &ojob).await.pop().unwrap();
    assert_eq!(r["properties"]["status"], "Completed", "{r}");
    assert_eq!(std::fs::read(&os).unwrap(), os_then);

    // AlternateLocation: a new VM over restored disks; an existing name is refused.
    let new_vm = format!(
        "{}/providers/Microsoft.Compute/virtualMachines/vm1-restored",
        f.s.rg_path("rg")
    );
    let alr = |target: &str| {
        json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp_name, "recoveryType": "AlternateLocation",
        "sourceResourceId": vm_id, "storageAccountId": f.account_id("restoresa"), "targetVirtualMachineId": target,
        "targetResourceGroupId": f.s.rg_path("rg"), "region": "westus"}})
    };
    let ajob = accept(&f, &restore_url, &alr(&new_vm)).await;
    let r = wait_job(&f, &ajob).await.pop().unwrap();
    assert_eq!(r["properties"]["status"], "Completed", "{r}");
    let (st, _, vm) = send(&f.s, "GET", &format!("{new_vm}?{VM_API}"), None).await;
    assert_eq!(st, 200, "{vm}");
    assert_eq!(
        vm["properties"]["storageProfile"]["dataDisks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (st, _, b) = send(
        &f.s,
        "POST",
        &format!("{}/recoveryPoints/{rp_name}/restore?{BK}", f.item("vm1")),
        Some(&alr(&new_vm)),
    )
    .await;
    assert_arm_error(st, &b, 400, "UserErrorVmNameAlreadyExists");

    // Bad requests get Azure's errors, and nothing is queued.
    let cases = [
        (
            "POST",
            format!("{}/backup?{BK}", f.item("vm1")),
            json!({"properties": {"objectType": "AzureFileShareBackupRequest"}}),
            400,
            "BMSUserErrorInvalidInput",
        ),
        (
            "POST",
            format!("{}/backup?{BK}", f.item("vm1")),
            json!({"properties": {"objectType": "AzureWorkloadBackupRequest"}}),
            400,
            "BMSUserErrorWorkloadNotProtected",
        ),
        (
            "POST",
            format!("{}/backup?{BK}", f.item("vm1")),
            json!({"properties": {"objectType": "IaasVMBackupRequest", "recoveryPointExpiryTimeInUTC": "2001-01-01T00:00:00Z"}}),
            400,
            "UserErrorInvalidRecoveryPointExpiryTime",
        ),
        (
            "POST",
            format!("{}/backup?{BK}", f.item("vm1")),
            json!({"properties": {}}),
            400,
            "BMSUserErrorInvalidInput",
        ),
        (
            "POST",
            format!("{}/backup?{BK}", f.item("nosuchvm")),
            json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
            404,
            "BMSUserErrorProtectedItemNotFound",
        ),
        (
            "POST",
            format!("{}/recoveryPoints/{rp_name}/restore?{BK}", f.item("vm1")),
            json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryType": "RestoreDisks"}}),
            400,
            "BMSUserErrorInvalidInput",
        ),
        (
            "POST",
            format!("{}/recoveryPoints/{rp_name}/restore?{BK}", f.item("vm1")),
            json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryType": "RestoreDisks", "storageAccountId": f.account_id("nosuch")}}),
            400,
            "UserErrorStorageAccountNotFound",
        ),
        (
            "POST",
            format!("{}/recoveryPoints/{rp_name}/restore?{BK}", f.item("vm1")),
            json!({"properties": {"objectType": "AzureFileShareRestoreRequest", "recoveryType": "OriginalLocation"}}),
            400,
            "BMSUserErrorInvalidInput",
        ),
        (
            "POST",
            format!("{}/recoveryPoints/999/restore?{BK}", f.item("vm1")),
            json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryType": "OriginalLocation"}}),
            404,
            "BMSUserErrorRecoveryPointNotFound",
        ),
        (
            "POST",
            format!("{}/backupJobs/{job_id}/cancel?{BK}", f.vault()),
            Value::Null,
            400,
            "BMSUserErrorJobNotCancellable",
        ),
        (
            "POST",
            format!("{}/backupJobs/nosuchjob/cancel?{BK}", f.vault()),
            Value::Null,
            404,
            "BMSUserErrorJobNotFound",
        ),
    ];
    let before = f.s.call("GET", &format!("{}/backupJobs?{BK}", f.vault()), None).await.1["value"]
        .as_array()
        .unwrap()
        .len();
    for (m, path, body, want, code) in cases {
        let (st, _, b) = send(&f.s, m, &path, (!body.is_null()).then_some(&body)).await;
        assert_arm_error(st, &b, want, code);
    }
    let after = f.s.call("GET", &format!("{}/backupJobs?{BK}", f.vault()), None).await.1["value"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "a refused request creates no job");

    // Export: the ids of the jobs the filter keeps.
    let (st, h, _) = send(
        &f.s,
        "POST",
        &format!(
            "{}/backupJobsExport?{BK}&$filter={}",
            f.vault(),
            urlencoding("operation eq 'Restore'")
        ),
        None,
    )
    .await;
    assert_eq!(st, 202);
    let (st, res) = get_url(&f.s, &header(&h, "location")).await;
    assert_eq!(st, 200, "{res}");
    let op = &res["operation"];
    assert_eq!(op["objectType"], "ExportJobsOperationResultInfo", "{res}");
    let (url, sas) = (op["blobUrl"].as_str().unwrap(), op["blobSasKey"].as_str().unwrap());
    assert!(url.starts_with(&f.s.base), "{url}");
    // A plain GET, no token: the signature is the credential, as with a blob SAS.
    let plain = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(f.s.dir.join("ca.pem")).unwrap()).unwrap())
        .build()
        .unwrap();
    let r = plain.get(format!("{url}{sas}")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let exported: Value = r.json().await.unwrap();
    let mut list: Vec<String> = exported
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            assert_eq!(j["properties"]["operation"], "Restore", "{j}");
            j["name"].as_str().unwrap().to_string()
        })
        .collect();
    list.sort();
    let mut want = vec![rjob.clone(), ojob.clone(), ajob.clone()];
    want.sort();
    assert_eq!(list, want);
    // A changed signature, a changed expiry, another export's name or no query: one not-found.
    let expiry: i64 = sas
        .split("se=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let sig = sas.split("sig=").nth(1).unwrap();
    let flipped: String = sig.chars().rev().collect();
    for bad in [
        format!("{url}?se={expiry}&sig={flipped}"),
        format!("{url}?se={}&sig={sig}", expiry + 3600),
        format!(
            "{}00000000-0000-0000-0000-000000000000{sas}",
            url.rsplit_once('/').unwrap().0.to_string() + "/"
        ),
        url.to_string(),
    ] {
        let r = plain.get(&bad).send().await.unwrap();
        let st = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        assert_arm_error(st, &b, 404, "ResourceNotFound");
    }
    f.s.stop().await;
}

fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn share_backup_and_restores_with_each_copy_option() {
    let f = fixture().await;
    let share = protect_share(&f, "filesa", "docs", |share| {
        std::fs::create_dir_all(share.join("sub")).unwrap();
        std::fs::write(share.join("a.txt"), "alpha v1").unwrap();
        std::fs::write(share.join("sub/b.txt"), "beta v1").unwrap();
    })
    .await;

    let job_id = accept(
        &f,
        &f.s.url(&format!("{}/backup?{BK}", f.share_item("filesa", "docs"))),
        &json!({"properties": {"objectType": "AzureFileShareBackupRequest"}}),
    )
    .await;
    let j = wait_job(&f, &job_id).await.pop().unwrap();
    let p = &j["properties"];
    assert_eq!(
        (p["status"].as_str(), p["jobType"].as_str()),
        (Some("Completed"), Some("AzureStorageJob")),
        "{j}"
    );
    assert_eq!(p["storageAccountName"], "filesa");
    assert_eq!(p["extendedInfo"]["propertyBag"]["File Share Name"], "docs");
    for t in p["extendedInfo"]["tasksList"].as_array().unwrap() {
        assert_eq!(
            t.as_object().unwrap().len(),
            2,
            "storage job tasks are {{taskId, status}}: {t}"
        );
    }
    let (_, _, rps) = send(
        &f.s,
        "GET",
        &format!("{}/recoveryPoints?{BK}", f.share_item("filesa", "docs")),
        None,
    )
    .await;
    let rp = rps["value"][0].clone();
    assert_eq!(rp["properties"]["objectType"], "AzureFileShareRecoveryPoint");
    assert_eq!(rp["properties"]["recoveryPointType"], "FileSystemConsistent");
    let rp_name = rp["name"].as_str().unwrap().to_string();
    let restore = f.s.url(&format!(
        "{}/recoveryPoints/{rp_name}/restore?{BK}",
        f.share_item("filesa", "docs")
    ));

    // The share changes after the backup.
    std::fs::write(share.join("a.txt"), "alpha v2").unwrap();
    std::fs::write(share.join("sub/b.txt"), "beta v2").unwrap();
    let req = |copy: &str, level: &str, specs: Value| {
        json!({"properties": {"objectType": "AzureFileShareRestoreRequest", "recoveryType": "OriginalLocation",
        "sourceResourceId": f.account_id("filesa"), "copyOptions": copy, "restoreRequestType": level, "restoreFileSpecs": specs}})
    };

    // FailOnConflict: the job fails, nothing is written.
    let jid = accept(&f, &restore, &req("FailOnConflict", "FullShareRestore", Value::Null)).await;
    let j = wait_job(&f, &jid).await.pop().unwrap();
    assert_eq!(j["properties"]["status"], "Failed", "{j}");
    let err = &j["properties"]["errorDetails"][0];
    assert!(
        err["errorCode"].is_i64() && err["errorString"].as_str().unwrap().contains("FailOnConflict"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(share.join("a.txt")).unwrap(), "alpha v2");
    // Skip keeps existing files.
    let jid = accept(&f, &restore, &req("Skip", "FullShareRestore", Value::Null)).await;
    let j = wait_job(&f, &jid).await.pop().unwrap();
    assert_eq!(j["properties"]["status"], "Completed", "{j}");
    assert_eq!(std::fs::read_to_string(share.join("a.txt")).unwrap(), "alpha v2");
    assert_eq!(
        j["properties"]["extendedInfo"]["propertyBag"]["Number Of Skipped Files"],
        "2"
    );
    // Item level, Overwrite: only the chosen file comes back.
    let jid = accept(
        &f,
        &restore,
        &req(
            "Overwrite",
            "ItemLevelRestore",
            json!([{"path": "/sub/b.txt", "fileSpecType": "File"}]),
        ),
    )
    .await;
    let j = wait_job(&f, &jid).await.pop().unwrap();
    assert_eq!(j["properties"]["status"], "Completed", "{j}");
    assert_eq!(std::fs::read_to_string(share.join("sub/b.txt")).unwrap(), "beta v1");
    assert_eq!(std::fs::read_to_string(share.join("a.txt")).unwrap(), "alpha v2");
    // Alternate location: another share, into a folder.
    let (st, _, _) = send(
        &f.s,
        "PUT",
        &format!("{}/fileServices/default/shares/other?{ST_API}", f.account_id("filesa")),
        Some(&json!({"properties": {}})),
    )
    .await;
    assert!(st == 200 || st == 201);
    let alt = json!({"properties": {"objectType": "AzureFileShareRestoreRequest", "recoveryType": "AlternateLocation", "sourceResourceId": f.account_id("filesa"),
        "copyOptions": "Overwrite", "restoreRequestType": "FullShareRestore", "restoreFileSpecs": [{"targetFolderPath": "restored"}],
        "targetDetails": {"name": "other", "targetResourceId": f.account_id("filesa")}}});
    let jid = accept(&f, &restore, &alt).await;
    let j = wait_job(&f, &jid).await.pop().unwrap();
    assert_eq!(j["properties"]["status"], "Completed", "{j}");
    let acct_dir = share.parent().unwrap();
    assert_eq!(
        std::fs::read_to_string(acct_dir.join("other/restored/a.txt")).unwrap(),
        "alpha v1"
    );
    assert_eq!(
        std::fs::read_to_string(acct_dir.join("other/restored/sub/b.txt")).unwrap(),
        "beta v1"
    );
    assert_eq!(
        j["properties"]["extendedInfo"]["propertyBag"]["Job Type"],
        "Recovering to an alternate file share"
    );
    f.s.stop().await;
}

/// A VM whose one disk is `mib` MiB of random data: big enough that a backup is still transferring
/// when the test acts on it.
/// Issue 16: fields Azure always sends were missing. A VM's item carries its policy's `policyType`
/// (`V1` for DefaultPolicy); a VM recovery point carries `recoveryPointProperties.ruleName`,
/// `recoveryPointMoveReadinessInfo` (keyed by tier, as in Azure's `RecoveryPoints_Get` example: no
/// archive tier here, so never ready) and, for a zone-pinned VM, the VM's `zones`; a policy PUT
/// without `scheduleWeeklyFrequency` answers it (0, as in the live recordings).
#[tokio::test]
async fn items_and_recovery_points_carry_the_fields_azure_always_sends() {
    let f = fixture().await;
    let os = f.dir.join("os.raw");
    write_random(&os, 2 << 20, 11);
    let body = json!({"location": "westus", "zones": ["1"], "properties": {"storageProfile": {
        "osDisk": {"osType": "Linux", "vhd": {"uri": format!("file://{}", os.display())}}, "dataDisks": []}}});
    let vm_url = format!(
        "{}/providers/Microsoft.Compute/virtualMachines/zoned?{VM_API}",
        f.s.rg_path("rg")
    );
    let (st, _, b) = send(&f.s, "PUT", &vm_url, Some(&body)).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["zones"], json!(["1"]));
    let pol = format!("{}/backupPolicies/DefaultPolicy", f.vault());
    let (st, _, b) = send(
        &f.s,
        "PUT",
        &format!("{}?{BK}", f.item("zoned")),
        Some(&json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": pol}})),
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let (st, _, item) = send(&f.s, "GET", &format!("{}?{BK}", f.item("zoned")), None).await;
    assert_eq!(st, 200);
    assert_eq!(item["properties"]["policyType"], "V1", "{item}");
    let job_id = accept(
        &f,
        &f.s.url(&format!("{}/backup?{BK}", f.item("zoned"))),
        &json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
    )
    .await;
    wait_job(&f, &job_id).await;
    let (st, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("zoned")), None).await;
    assert_eq!(st, 200);
    let rp = &rps["value"][0]["properties"];
    assert_eq!(rp["objectType"], "IaasVMRecoveryPoint");
    assert_eq!(rp["recoveryPointProperties"]["ruleName"], "DefaultRule", "{rp}");
    assert_eq!(
        rp["recoveryPointMoveReadinessInfo"]["ArchivedRP"]["isReadyForMove"], false,
        "{rp}"
    );
    assert!(rp["recoveryPointMoveReadinessInfo"]["ArchivedRP"]["additionalInfo"].is_string());
    assert_eq!(rp["zones"], json!(["1"]), "{rp}");

    let (st, _, p) = send(
        &f.s,
        "PUT",
        &format!("{}/backupPolicies/weekly?{BK}", f.vault()),
        Some(&json!({"properties": {"backupManagementType": "AzureIaasVM",
            "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Weekly", "scheduleRunDays": ["Sunday"], "scheduleRunTimes": ["2026-01-01T02:00:00Z"]},
            "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "weeklySchedule": {"daysOfTheWeek": ["Sunday"], "retentionTimes": ["2026-01-01T02:00:00Z"], "retentionDuration": {"count": 12, "durationType": "Weeks"}}}}})),
    )
    .await;
    assert!(st == 200 || st == 201, "{p}");
    assert_eq!(p["properties"]["schedulePolicy"]["scheduleWeeklyFrequency"], 0, "{p}");
}

pub(crate) async fn big_vm(f: &Fixture, vm: &str, mib: usize) {
    let os = f.dir.join(format!("{vm}.raw"));
    write_random(&os, mib << 20, 3);
    protect_vm(f, vm, &os, &[]).await;
}

/// Waits until the job's transfer task is running.
pub(crate) async fn wait_transfer(f: &Fixture, id: &str) -> Value {
    for _ in 0..2400 {
        let b = job(f, id).await;
        let t = &b["properties"]["extendedInfo"]["tasksList"][1];
        if t["status"] == "InProgress" || b["properties"]["status"] != "InProgress" {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} never started its transfer");
}

#[tokio::test]
async fn cancel_stops_a_running_backup_and_leaves_no_recovery_point() {
    let f = fixture().await;
    big_vm(&f, "big", 1024).await;
    let trigger = f.s.url(&format!("{}/backup?{BK}", f.item("big")));
    let job_id = accept(
        &f,
        &trigger,
        &json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
    )
    .await;
    let running = wait_transfer(&f, &job_id).await;
    assert_eq!(
        running["properties"]["status"], "InProgress",
        "the backup finished before the test could cancel it: {running}"
    );
    assert_eq!(
        running["properties"]["extendedInfo"]["tasksList"][0]["status"],
        "Completed"
    );
    // A second backup of the same item is refused while this one runs.
    let (st, _, b) = send(
        &f.s,
        "POST",
        &trigger,
        Some(&json!({"properties": {"objectType": "IaasVMBackupRequest"}})),
    )
    .await;
    assert_arm_error(st, &b, 409, "UserErrorBackupOperationInProgress");
    // Cancel: 202 with the job's operationResults URL.
    let (st, h, _) = send(
        &f.s,
        "POST",
        &format!("{}/backupJobs/{job_id}/cancel?{BK}", f.vault()),
        None,
    )
    .await;
    assert_eq!(st, 202);
    let loc = header(&h, "location");
    assert!(
        loc.contains(&format!("/backupJobs/{job_id}/operationResults/")),
        "{loc}"
    );
    let (st, _) = get_url(&f.s, &loc).await;
    assert!(st == 204 || st == 202, "{st}");
    let end = wait_job(&f, &job_id).await.pop().unwrap();
    let p = &end["properties"];
    assert_eq!(p["status"], "Cancelled", "{end}");
    assert_eq!(p["extendedInfo"]["tasksList"][1]["status"], "Cancelled");
    assert!(p["extendedInfo"]["progressPercentage"].as_f64().unwrap() < 100.0);
    let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("big")), None).await;
    assert_eq!(rps["value"], json!([]), "a cancelled backup is no recovery point");
    let (_, _, item) = send(&f.s, "GET", &format!("{}?{BK}", f.item("big")), None).await;
    assert_eq!(item["properties"]["lastBackupStatus"], "Cancelled");
    assert_eq!(item["properties"]["protectionState"], "IRPending");
    let (st, _, b) = send(
        &f.s,
        "POST",
        &format!("{}/backupJobs/{job_id}/cancel?{BK}", f.vault()),
        None,
    )
    .await;
    assert_arm_error(st, &b, 400, "BMSUserErrorJobNotCancellable");
    // Filters see it.
    let (_, _, l) = send(
        &f.s,
        "GET",
        &format!(
            "{}/backupJobs?{BK}&$filter={}",
            f.vault(),
            urlencoding("status eq 'Cancelled' and operation eq 'Backup'")
        ),
        None,
    )
    .await;
    assert_eq!(l["value"].as_array().unwrap().len(), 1, "{l}");
    f.s.stop().await;
}

#[tokio::test]
async fn a_backup_interrupted_by_a_graceful_restart_runs_again_after_it() {
    let f = fixture().await;
    big_vm(&f, "big", 512).await;
    let job_id = accept(
        &f,
        &f.s.url(&format!("{}/backup?{BK}", f.item("big"))),
        &json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
    )
    .await;
    let running = wait_transfer(&f, &job_id).await;
    assert_eq!(running["properties"]["status"], "InProgress", "{running}");
    let Fixture { s, _tmp, dir } = f;
    let (data_dir, tmp) = s.stop().await;
    let s = start_with(test_config(data_dir), tmp).await;
    let f = Fixture { s, _tmp, dir };
    let end = wait_job(&f, &job_id).await.pop().unwrap();
    assert_eq!(end["properties"]["status"], "Completed", "{end}");
    let (_, _, rps) = send(&f.s, "GET", &format!("{}/recoveryPoints?{BK}", f.item("big")), None).await;
    assert_eq!(rps["value"].as_array().unwrap().len(), 1);
    f.s.stop().await;
}

/// Issue 16: a storage account unregistered while its shares are soft-deleted is a soft-deleted
/// container (`backupDeletedProtectionContainers`, `registrationStatus: SoftDeleted`) until the last
/// of its items is purged; registered again, it is back in the containers list.
#[tokio::test]
async fn a_container_unregistered_with_soft_deleted_items_is_soft_deleted_until_their_purge() {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path().join("data"));
    config.policy_interval = Duration::from_secs(3600);
    let clock = std::sync::Arc::new(rsvault_core::time::TestClock::new(chrono::Utc::now()));
    let s = start_with_clock(config, Some(data), clock).await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let tmp = s.tempdir();
    let dir = tmp.path().to_path_buf();
    let f = Fixture { s, _tmp: tmp, dir };
    protect_share(&f, "sdsa", "docs", |d| {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("a.txt"), "alpha").unwrap();
    })
    .await;
    let container = format!(
        "{}/backupFabrics/Azure/protectionContainers/StorageContainer%3BStorage%3Brg%3Bsdsa?{BK}",
        f.vault()
    );
    let listed = |deleted: bool| {
        let f = &f;
        async move {
            let what = if deleted {
                "backupDeletedProtectionContainers"
            } else {
                "backupProtectionContainers"
            };
            let (st, b) = f.s.call("GET", &format!("{}/{what}?{BK}", f.vault()), None).await;
            assert_eq!(st, 200, "{b}");
            b["value"].as_array().unwrap().clone()
        }
    };
    let (st, _, b) = send(&f.s, "DELETE", &container, None).await;
    assert_arm_error(st, &b, 400, "BMSUserErrorContainerHasDatasources");
    let (st, _, b) = send(&f.s, "DELETE", &format!("{}?{BK}", f.share_item("sdsa", "docs")), None).await;
    assert_eq!(st, 202, "{b}");
    let (st, _, b) = send(&f.s, "DELETE", &container, None).await;
    assert!([200, 202].contains(&st), "{st} {b}");
    let (st, _, b) = send(&f.s, "GET", &container, None).await;
    assert_arm_error(st, &b, 404, "BMSUserErrorContainerObjectNotFound");
    assert!(listed(false).await.is_empty());
    let deleted = listed(true).await;
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["properties"]["registrationStatus"], "SoftDeleted");
    assert_eq!(deleted[0]["properties"]["friendlyName"], "sdsa");

    // Registered again: back in the list, its soft-deleted share still there to undelete.
    let reg = json!({"properties": {"backupManagementType": "AzureStorage", "containerType": "StorageContainer", "sourceResourceId": f.account_id("sdsa")}});
    let (st, _, b) = send(&f.s, "PUT", &container, Some(&reg)).await;
    assert!(st == 200 || st == 202, "{b}");
    assert_eq!(listed(false).await.len(), 1);
    assert!(listed(true).await.is_empty());
    let (st, _, b) = send(&f.s, "DELETE", &container, None).await;
    assert!([200, 202].contains(&st), "{st} {b}");
    assert_eq!(listed(true).await.len(), 1);

    // The share's soft-delete period ends: it is purged, and the container with it.
    let (st, b) =
        f.s.call(
            "POST",
            "/rsvault/admin/clock/advance",
            Some(&json!({"seconds": 15 * 86_400})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["purgedItems"], 1, "{b}");
    assert!(listed(true).await.is_empty());
    assert!(listed(false).await.is_empty());
    f.s.stop().await;
}
