//! Issue 13 items 5 and 6 over HTTPS with real tokens: a resource-group delete goes through each
//! vault's own delete (a non-empty vault refuses; a deleted vault leaves no password, repository or
//! recovery point a re-created name could reach), and immutable vaults and always-on soft delete
//! refuse what Azure's refuse, with nothing changed in the store.

use crate::harness::*;
use crate::recovery::{get_url, header, send, write_random, Fixture, BK, VM_API};
use serde_json::{json, Value};
use std::path::Path;

const LOCKED: &str = "UserErrorImmutabilityStateLocked";
const BLOCKED: &str = "UserErrorOperationNotAllowedOnImmutableVault";
const ALWAYS_ON: &str = "BMSUserErrorSoftDeleteAlwaysOnCannotBeDisabled";

/// A server with group `rg` and no vault yet.
async fn server() -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let config = test_config(data.path().join("data"));
    let s = start_with(config, Some(data)).await;
    s.make_group("rg").await;
    let tmp = s.tempdir();
    let dir = tmp.path().to_path_buf();
    Fixture { s, _tmp: tmp, dir }
}

fn item_of(s: &Server, vault: &str, vm: &str) -> String {
    format!(
        "{}/backupFabrics/Azure/protectionContainers/IaasVMContainer%3Biaasvmcontainerv2%3Brg%3B{vm}/protectedItems/VM%3Biaasvmcontainerv2%3Brg%3B{vm}",
        s.vault_path("rg", vault)
    )
}

/// Declares VM `vm` over a 1 MiB disk and protects it in `vault` with DefaultPolicy.
async fn protect(f: &Fixture, vault: &str, vm: &str, disk: &Path) {
    if !disk.exists() {
        write_random(disk, 1 << 20, 3);
    }
    let body = json!({"location": "westus", "properties": {"storageProfile": {
        "osDisk": {"osType": "Linux", "vhd": {"uri": format!("file://{}", disk.display())}}, "dataDisks": []}}});
    let vm_path = format!(
        "{}/providers/Microsoft.Compute/virtualMachines/{vm}?{VM_API}",
        f.s.rg_path("rg")
    );
    let (st, _, b) = send(&f.s, "PUT", &vm_path, Some(&body)).await;
    assert!(st == 200 || st == 201, "{b}");
    let pol = format!("{}/backupPolicies/DefaultPolicy", f.s.vault_path("rg", vault));
    let (st, _, b) = send(
        &f.s,
        "PUT",
        &format!("{}?{BK}", item_of(&f.s, vault, vm)),
        Some(&json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": pol}})),
    )
    .await;
    assert_eq!(st, 202, "{b}");
}

/// Backs the item up (the point expires in 10 days) and returns its recovery point's name.
async fn back_up(f: &Fixture, vault: &str, vm: &str) -> String {
    let expiry = (chrono::Utc::now() + chrono::Duration::days(10))
        .format("%Y-%m-%dT00:00:00.000Z")
        .to_string();
    back_up_until(f, vault, vm, &expiry).await
}

/// Backs the item up with a point that expires at `expiry`; returns the point's name.
async fn back_up_until(f: &Fixture, vault: &str, vm: &str, expiry: &str) -> String {
    let item = item_of(&f.s, vault, vm);
    let (st, h, b) = send(
        &f.s,
        "POST",
        &format!("{item}/backup?{BK}"),
        Some(&json!({"properties": {"objectType": "IaasVMBackupRequest", "recoveryPointExpiryTimeInUTC": expiry}})),
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let (st, op) = get_url(&f.s, &header(&h, "azure-asyncoperation")).await;
    assert_eq!(st, 200, "{op}");
    let job = op["properties"]["jobId"].as_str().unwrap();
    let jobs = format!("{}/backupJobs/{job}?{BK}", f.s.vault_path("rg", vault));
    let mut done = Value::Null;
    for _ in 0..1200 {
        done = f.s.call("GET", &jobs, None).await.1;
        if !matches!(done["properties"]["status"].as_str(), Some("InProgress" | "Cancelling")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(done["properties"]["status"], "Completed", "{done}");
    let (st, _, rps) = send(&f.s, "GET", &format!("{item}/recoveryPoints?{BK}"), None).await;
    assert_eq!(st, 200, "{rps}");
    rps["value"][0]["name"].as_str().unwrap().to_string()
}

/// Everything an attack could change, as clients read it (without the one field that is a countdown
/// to a fixed time, `deferredDeleteTimeRemaining`).
async fn snapshot(s: &Server, urls: &[String]) -> Vec<(u16, Value)> {
    fn fixed(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("deferredDeleteTimeRemaining");
                m.values_mut().for_each(fixed);
            }
            Value::Array(a) => a.iter_mut().for_each(fixed),
            _ => {}
        }
    }
    let mut out = vec![];
    for u in urls {
        let (st, mut b) = s.call("GET", u, None).await;
        fixed(&mut b);
        out.push((st, b));
    }
    out
}

fn vaults_on_disk(s: &Server) -> Vec<String> {
    match std::fs::read_dir(s.dir.join("vaults")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

#[tokio::test]
async fn group_delete_refuses_a_vault_that_holds_items_as_the_vault_delete_does() {
    let f = server().await;
    let s = &f.s;
    s.make_vault("rg", "v1").await;
    s.make_vault("rg", "v2").await;
    protect(&f, "v1", "vm1", &f.dir.join("vm1.raw")).await;
    let contributor = s.principal(Some("Contributor"), &s.rg_path("rg")).await;
    let group = format!("{}?api-version=2021-04-01", s.rg_path("rg"));
    let vault = format!("{}?{API}", s.vault_path("rg", "v1"));
    let item = format!("{}?{BK}", item_of(s, "v1", "vm1"));
    let watched = [
        group.clone(),
        vault.clone(),
        format!("{}?{API}", s.vault_path("rg", "v2")),
        item.clone(),
        format!(
            "{}/providers/Microsoft.Compute/virtualMachines/vm1?{VM_API}",
            s.rg_path("rg")
        ),
    ];

    // Protected, then soft deleted: both keep the vault, and so the group.
    for step in ["protected", "soft deleted"] {
        if step == "soft deleted" {
            let (st, _, b) = send(s, "DELETE", &item, None).await;
            assert_eq!(st, 202, "{b}");
        }
        let before = snapshot(s, &watched).await;
        let r = s.call_as(Some(&contributor), "DELETE", &vault, None).await;
        let (vst, vb): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
        assert_arm_error(vst, &vb, 400, "ServiceResourceNotEmptyWithBackendMessage");
        let r = s.call_as(Some(&contributor), "DELETE", &group, None).await;
        let (gst, gb): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
        assert_eq!(
            (gst, &gb["error"]),
            (vst, &vb["error"]),
            "{step}: the vault's own answer"
        );
        assert_eq!(snapshot(s, &watched).await, before, "{step}: nothing changed");
    }
}

#[tokio::test]
async fn a_recreated_group_never_sees_the_deleted_vaults_data() {
    let f = server().await;
    let s = &f.s;
    let disk = f.dir.join("vm1.raw");
    s.make_vault("rg", "v1").await;
    protect(&f, "v1", "vm1", &disk).await;
    let old_rp = back_up(&f, "v1", "vm1").await;
    let old_repos = vaults_on_disk(s);
    assert_eq!(old_repos.len(), 1, "{old_repos:?}");

    // The owner empties the vault (soft delete off, item deleted) and deletes the group.
    let vault = s.vault_path("rg", "v1");
    let (st, _) = s
        .call(
            "PATCH",
            &format!("{vault}/backupconfig/vaultconfig?{BK}"),
            Some(&json!({"properties": {"softDeleteFeatureState": "Disabled"}})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _, b) = send(s, "DELETE", &format!("{}?{BK}", item_of(s, "v1", "vm1")), None).await;
    assert_eq!(st, 202, "{b}");
    let (st, b) = s
        .call("DELETE", &format!("{}?api-version=2021-04-01", s.rg_path("rg")), None)
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        vaults_on_disk(s),
        Vec::<String>::new(),
        "the repository went with the vault"
    );

    // Someone re-creates the same names: an empty vault, and the old point cannot be restored.
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    protect(&f, "v1", "vm1", &disk).await;
    let item = item_of(s, "v1", "vm1");
    let (st, _, rps) = send(s, "GET", &format!("{item}/recoveryPoints?{BK}"), None).await;
    assert_eq!((st, &rps["value"]), (200, &json!([])), "{rps}");
    let vm_id = format!("{}/providers/Microsoft.Compute/virtualMachines/vm1", s.rg_path("rg"));
    let (st, _, b) = send(
        s,
        "POST",
        &format!("{item}/recoveryPoints/{old_rp}/restore?{BK}"),
        Some(
            &json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": old_rp,
            "recoveryType": "OriginalLocation", "sourceResourceId": vm_id}}),
        ),
    )
    .await;
    assert_arm_error(st, &b, 404, "BMSUserErrorRecoveryPointNotFound");

    // Its first backup makes a new repository (a new password), not the old one.
    back_up(&f, "v1", "vm1").await;
    let new_repos = vaults_on_disk(s);
    assert_eq!(new_repos.len(), 1, "{new_repos:?}");
    assert_ne!(new_repos, old_repos);
}

#[tokio::test]
async fn an_immutable_vault_refuses_every_step_of_the_attack() {
    let f = server().await;
    let s = &f.s;
    let contributor = s.principal(Some("Contributor"), &s.rg_path("rg")).await;
    for (vault, state) in [("vunlocked", "Unlocked"), ("vlocked", "Locked")] {
        s.make_vault("rg", vault).await;
        let vm = format!("vm-{vault}");
        protect(&f, vault, &vm, &f.dir.join(format!("{vm}.raw"))).await;
        let rp = back_up(&f, vault, &vm).await;
        let vp = format!("{}?{API}", s.vault_path("rg", vault));
        let (st, b) = s
            .call(
                "PATCH",
                &vp,
                Some(&json!({"properties": {"securitySettings": {"immutabilitySettings": {"state": state}}}})),
            )
            .await;
        assert_eq!(st, 200, "{b}");
        assert_eq!(
            b["properties"]["securitySettings"]["immutabilitySettings"]["state"],
            state
        );

        let item = format!("{}?{BK}", item_of(s, vault, &vm));
        let config = format!("{}/backupconfig/vaultconfig?{BK}", s.vault_path("rg", vault));
        let policy = format!("{}/backupPolicies/DefaultPolicy?{BK}", s.vault_path("rg", vault));
        let rps = format!("{}/recoveryPoints?{BK}", item_of(s, vault, &vm));
        let (_, pol) = s.call("GET", &policy, None).await;
        let mut cut = json!({"properties": pol["properties"].clone()});
        cut["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"] = json!(7);
        cut["properties"].as_object_mut().unwrap().remove("protectedItemsCount");
        let short = format!("{}/backupPolicies/Short?{BK}", s.vault_path("rg", vault));
        let (st, b) = s.call("PUT", &short, Some(&cut)).await;
        assert_eq!(st, 200, "an unused policy may be anything: {b}");
        let short_id = format!("{}/backupPolicies/Short", s.vault_path("rg", vault));

        // The recovery point reports its immutability, until its own expiry (Azure's
        // RecoveryPoints_Get example).
        let (_, got) = s.call("GET", &rps, None).await;
        let rpp = &got["value"][0]["properties"]["recoveryPointProperties"];
        assert_eq!(
            rpp["immutabilityProperties"],
            json!({"isImmutable": true, "expiryTime": rpp["expiryTime"].clone()}),
            "{got}"
        );
        assert!(rpp["expiryTime"].is_string(), "{got}");
        assert_eq!(got["value"][0]["name"], rp.as_str());

        let mut attacks: Vec<(&str, &str, String, Value, &str)> = vec![
            (
                "disable soft delete on the vault",
                "PATCH",
                vp.clone(),
                json!({"properties": {"securitySettings": {"softDeleteSettings": {"softDeleteState": "Disabled"}}}}),
                BLOCKED,
            ),
            (
                "disable soft delete in backupconfig",
                "PATCH",
                config.clone(),
                json!({"properties": {"softDeleteFeatureState": "Disabled"}}),
                BLOCKED,
            ),
            (
                "disable soft delete in backupconfig by PUT",
                "PUT",
                config.clone(),
                json!({"properties": {"softDeleteFeatureState": "Disabled"}}),
                BLOCKED,
            ),
            (
                "delete the item and its data",
                "DELETE",
                item.clone(),
                Value::Null,
                BLOCKED,
            ),
            (
                "cut the retention of the policy in use",
                "PUT",
                policy.clone(),
                cut.clone(),
                BLOCKED,
            ),
            (
                "move the item to a shorter policy",
                "PUT",
                item.clone(),
                json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": short_id}}),
                BLOCKED,
            ),
        ];
        if state == "Locked" {
            attacks.extend([
                ("unlock the vault", "PATCH", vp.clone(),
                 json!({"properties": {"securitySettings": {"immutabilitySettings": {"state": "Unlocked"}}}}), LOCKED),
                ("disable immutability", "PATCH", vp.clone(),
                 json!({"properties": {"securitySettings": {"immutabilitySettings": {"state": "Disabled"}}}}), LOCKED),
                ("disable immutability by PUT", "PUT", vp.clone(),
                 json!({"location": "westus", "sku": {"name": "Standard"}, "properties": {"securitySettings": {"immutabilitySettings": {"state": "Disabled"}}}}), LOCKED),
            ]);
        }
        let watched = [vp.clone(), config.clone(), item.clone(), rps.clone(), policy.clone()];
        for (what, method, url, body, code) in attacks {
            let before = snapshot(s, &watched).await;
            let r = s
                .call_as(Some(&contributor), method, &url, (!body.is_null()).then_some(&body))
                .await;
            let st = r.status().as_u16();
            let b: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(st, 400, "{state}: {what}: {b}");
            assert_eq!(b["error"]["code"], code, "{state}: {what}: {b}");
            assert!(b["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
            assert_eq!(snapshot(s, &watched).await, before, "{state}: {what}: nothing changed");
        }

        // What keeps or adds protection is still allowed: stopping protection keeping the data,
        // and a longer retention.
        let mut longer = cut.clone();
        longer["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"] = json!(60);
        let (st, b) = s.call("PUT", &policy, Some(&longer)).await;
        assert!(st == 200 || st == 202, "{state}: a longer retention is allowed: {b}");
        let (st, _, b) = send(
            s,
            "PUT",
            &item,
            Some(&json!({"properties": {"protectionState": "ProtectionStopped"}})),
        )
        .await;
        assert_eq!(st, 202, "{state}: stop protection keeping data: {b}");
    }
}

#[tokio::test]
async fn unlocked_immutability_can_be_disabled_and_then_the_rules_relax() {
    let f = server().await;
    let s = &f.s;
    s.make_vault("rg", "v1").await;
    protect(&f, "v1", "vm1", &f.dir.join("vm1.raw")).await;
    back_up(&f, "v1", "vm1").await;
    let vp = format!("{}?{API}", s.vault_path("rg", "v1"));
    let set = |state: &str| json!({"properties": {"securitySettings": {"immutabilitySettings": {"state": state}}}});
    assert_eq!(s.call("PATCH", &vp, Some(&set("Unlocked"))).await.0, 200);
    let item = format!("{}?{BK}", item_of(s, "v1", "vm1"));
    let (st, _, b) = send(s, "DELETE", &item, None).await;
    assert_arm_error(st, &b, 400, BLOCKED);
    let (st, b) = s.call("PATCH", &vp, Some(&set("Disabled"))).await;
    assert_eq!(st, 200, "{b}");
    let (_, got) = s
        .call("GET", &format!("{}/recoveryPoints?{BK}", item_of(s, "v1", "vm1")), None)
        .await;
    assert_eq!(
        got["value"][0]["properties"]["recoveryPointProperties"]["immutabilityProperties"],
        json!({"isImmutable": false})
    );
    // Soft delete (on by default) still holds: the delete schedules the item's deletion.
    let (st, _, b) = send(s, "DELETE", &item, None).await;
    assert_eq!(st, 202, "{b}");
    let (_, it) = s.call("GET", &item, None).await;
    assert_eq!(it["properties"]["isScheduledForDeferredDelete"], true, "{it}");
}

#[tokio::test]
async fn always_on_soft_delete_cannot_be_turned_back() {
    let f = server().await;
    let s = &f.s;
    s.make_vault("rg", "v1").await;
    let vp = format!("{}?{API}", s.vault_path("rg", "v1"));
    let config = format!("{}/backupconfig/vaultconfig?{BK}", s.vault_path("rg", "v1"));
    let sd =
        |state: &str| json!({"properties": {"securitySettings": {"softDeleteSettings": {"softDeleteState": state}}}});
    let (st, b) = s.call("PATCH", &vp, Some(&sd("AlwaysON"))).await;
    assert_eq!(st, 200, "{b}");
    let (_, c) = s.call("GET", &config, None).await;
    assert_eq!(c["properties"]["softDeleteFeatureState"], "AlwaysON");
    assert_eq!(c["properties"]["isSoftDeleteFeatureStateEditable"], false);
    let contributor = s.principal(Some("Contributor"), &s.rg_path("rg")).await;
    let cases: [(&str, &String, Value); 5] = [
        ("PATCH", &vp, sd("Enabled")),
        ("PATCH", &vp, sd("Disabled")),
        (
            "PUT",
            &vp,
            json!({"location": "westus", "sku": {"name": "Standard"}, "properties": {"securitySettings": {"softDeleteSettings": {"softDeleteState": "Enabled"}}}}),
        ),
        (
            "PATCH",
            &config,
            json!({"properties": {"softDeleteFeatureState": "Enabled"}}),
        ),
        (
            "PUT",
            &config,
            json!({"properties": {"softDeleteFeatureState": "Disabled"}}),
        ),
    ];
    for (method, url, body) in cases {
        let before = snapshot(s, &[vp.clone(), config.clone()]).await;
        let r = s.call_as(Some(&contributor), method, url, Some(&body)).await;
        let st = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        assert_arm_error(st, &b, 400, ALWAYS_ON);
        assert_eq!(
            snapshot(s, &[vp.clone(), config.clone()]).await,
            before,
            "{method} {body}"
        );
    }
    // AlwaysON again is no change, and allowed.
    assert_eq!(s.call("PATCH", &vp, Some(&sd("AlwaysON"))).await.0, 200);
}

#[tokio::test]
async fn a_mutable_vault_keeps_its_soft_delete_and_retention_behaviour() {
    let f = server().await;
    let s = &f.s;
    s.make_vault("rg", "v1").await;
    protect(&f, "v1", "vm1", &f.dir.join("vm1.raw")).await;
    let policy = format!("{}/backupPolicies/DefaultPolicy?{BK}", s.vault_path("rg", "v1"));
    let (_, pol) = s.call("GET", &policy, None).await;
    let mut cut = json!({"properties": pol["properties"].clone()});
    cut["properties"]["retentionPolicy"]["dailySchedule"]["retentionDuration"]["count"] = json!(7);
    cut["properties"].as_object_mut().unwrap().remove("protectedItemsCount");
    let (st, b) = s.call("PUT", &policy, Some(&cut)).await;
    assert!(st == 200 || st == 202, "{b}");
    let config = format!("{}/backupconfig/vaultconfig?{BK}", s.vault_path("rg", "v1"));
    let (st, b) = s
        .call(
            "PATCH",
            &config,
            Some(&json!({"properties": {"softDeleteFeatureState": "Disabled"}})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let (st, _, b) = send(s, "DELETE", &format!("{}?{BK}", item_of(s, "v1", "vm1")), None).await;
    assert_eq!(st, 202, "{b}");
    let (st, b) = s.call("GET", &format!("{}?{BK}", item_of(s, "v1", "vm1")), None).await;
    assert_arm_error(st, &b, 404, "BMSUserErrorProtectedItemNotFound");
}

#[tokio::test]
async fn leftovers_of_a_group_an_older_version_deleted_are_removed_at_start() {
    let f = server().await;
    f.s.make_vault("rg", "v1").await;
    protect(&f, "v1", "vm1", &f.dir.join("vm1.raw")).await;
    back_up(&f, "v1", "vm1").await;
    assert_eq!(vaults_on_disk(&f.s).len(), 1);
    let sub = f.s.sub().to_string();
    let Fixture { s, _tmp, dir } = f;
    let (data, tmp) = s.stop().await;
    // What a group delete did before it went through each vault's delete: the rows only.
    off_async(|| {
        let store = rsvault_store::Store::connect(&store_location(&data)).unwrap();
        store.write(|db| db.delete_group(&sub, "rg")).unwrap();
        assert_eq!(store.read(|db| db.orphaned_vault_secrets()).unwrap().len(), 1);
    });

    let config = test_config(data);
    let s = start_with(config, tmp).await;
    let f = Fixture { s, _tmp, dir };
    assert_eq!(vaults_on_disk(&f.s), Vec::<String>::new(), "the repository is gone");
    f.s.make_group("rg").await;
    f.s.make_vault("rg", "v1").await;
    protect(&f, "v1", "vm1", &f.dir.join("vm1.raw")).await;
    let item = item_of(&f.s, "v1", "vm1");
    let (st, _, rps) = send(&f.s, "GET", &format!("{item}/recoveryPoints?{BK}"), None).await;
    assert_eq!((st, &rps["value"]), (200, &json!([])), "{rps}");
    let vault_id = f.s.vault_path("rg", "v1");
    f.s.offline(|c| {
        assert!(c.store().read(|db| db.orphaned_vault_secrets()).unwrap().is_empty());
        assert!(
            c.store().read(|db| db.vault_secret(&vault_id)).unwrap().is_none(),
            "no password until first use"
        );
    });
}

#[tokio::test]
async fn an_immutable_vault_purges_a_soft_deleted_item_only_after_its_points_expire() {
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path().join("data"));
    config.policy_interval = std::time::Duration::from_secs(3600);
    let start: chrono::DateTime<chrono::Utc> = "2026-03-02T10:00:00Z".parse().unwrap();
    let clock = std::sync::Arc::new(rsvault_core::time::TestClock::new(start));
    let s = start_with_clock(config, Some(data), clock).await;
    s.make_group("rg").await;
    s.make_vault("rg", "v1").await;
    let tmp = s.tempdir();
    let f = Fixture {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        s,
    };
    let s = &f.s;
    protect(&f, "v1", "vm1", &f.dir.join("vm1.raw")).await;
    let rp = back_up_until(&f, "v1", "vm1", "2026-04-01T00:00:00.000Z").await;
    // Soft deleted (purge due on 16 March), then the vault is made immutable.
    let item = format!("{}?{BK}", item_of(s, "v1", "vm1"));
    let (st, _, b) = send(s, "DELETE", &item, None).await;
    assert_eq!(st, 202, "{b}");
    let vp = format!("{}?{API}", s.vault_path("rg", "v1"));
    let locked = json!({"properties": {"securitySettings": {"immutabilitySettings": {"state": "Locked"}}}});
    assert_eq!(s.call("PATCH", &vp, Some(&locked)).await.0, 200);
    let advance = |days: i64| {
        let body = json!({"seconds": days * 86400});
        async move { s.call("POST", "/rsvault/admin/clock/advance", Some(&body)).await }
    };
    let (st, b) = advance(20).await;
    assert_eq!((st, &b["purgedItems"]), (200, &json!(0)), "{b}");
    let (st, it) = s.call("GET", &item, None).await;
    assert_eq!(st, 200, "kept past its soft-delete period: {it}");
    let (_, rps) = s
        .call("GET", &format!("{}/recoveryPoints?{BK}", item_of(s, "v1", "vm1")), None)
        .await;
    assert_eq!(rps["value"][0]["name"], rp.as_str(), "{rps}");
    let (st, b) = advance(15).await;
    assert_eq!(
        (st, &b["purgedItems"]),
        (200, &json!(1)),
        "purged once its point expired: {b}"
    );
    let (st, b) = s.call("GET", &item, None).await;
    assert_arm_error(st, &b, 404, "BMSUserErrorProtectedItemNotFound");
}

#[tokio::test]
async fn a_new_vault_cannot_be_immutable_without_soft_delete() {
    let f = server().await;
    let s = &f.s;
    let vp = format!("{}?{API}", s.vault_path("rg", "v1"));
    for state in ["Unlocked", "Locked"] {
        let body = json!({"location": "westus", "sku": {"name": "Standard"}, "properties": {"securitySettings": {
            "immutabilitySettings": {"state": state}, "softDeleteSettings": {"softDeleteState": "Disabled"}}}});
        let (st, b) = s.call("PUT", &vp, Some(&body)).await;
        assert_arm_error(st, &b, 400, BLOCKED);
        let (st, b) = s.call("GET", &vp, None).await;
        assert_arm_error(st, &b, 404, "ResourceNotFound");
    }
    let body = json!({"location": "westus", "sku": {"name": "Standard"}, "properties": {"securitySettings": {
        "immutabilitySettings": {"state": "Locked"}, "softDeleteSettings": {"softDeleteState": "AlwaysON"}}}});
    let (st, b) = s.call("PUT", &vp, Some(&body)).await;
    assert_eq!(st, 201, "{b}");
}
