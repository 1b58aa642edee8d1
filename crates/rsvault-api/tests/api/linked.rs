//! Issue 13: linked access, as ARM checks it. A caller allowed to act on a vault must also hold the
//! rights on what the action reaches beyond the vault: the VM or storage account it protects, the
//! storage account or group a restore writes into. The attacks the issue reproduced, refused with
//! `LinkedAuthorizationFailed` and nothing changed.

use crate::harness::*;
use crate::recovery::*;
use serde_json::{json, Value};

async fn as_(f: &Fixture, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let r = f.s.call_as(Some(token), method, path, body).await;
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

fn vm_body(disk: &std::path::Path) -> Value {
    json!({"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux", "vhd": {"uri": format!("file://{}", disk.display())}}}}})
}

#[tokio::test]
async fn linked_access_is_checked_for_protection_registration_listing_and_restore() {
    let f = fixture().await;
    f.s.make_group("other").await;
    let sub = f.s.sub().to_string();
    // The other group's VM and storage account, declared by the Owner.
    let disk_b = f.dir.join("b.raw");
    write_random(&disk_b, 1 << 20, 1);
    let (st, b) =
        f.s.call(
            "PUT",
            &format!(
                "{}/providers/Microsoft.Compute/virtualMachines/vmb?api-version=2024-07-01",
                f.s.rg_path("other")
            ),
            Some(&vm_body(&disk_b)),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let acct_b = f.dir.join("sab");
    std::fs::create_dir_all(&acct_b).unwrap();
    let sab = format!(
        "{}/providers/Microsoft.Storage/storageAccounts/sab",
        f.s.rg_path("other")
    );
    let (st, b) =
        f.s.call(
            "PUT",
            &format!("{sab}?api-version=2023-05-01"),
            Some(&json!({"location": "westus", "kind": "StorageV2", "tags": {"rsvault-path": acct_b}})),
        )
        .await;
    assert!(st == 200 || st == 201, "{b}");
    // A Contributor of the vault's group only.
    let mallory = f.s.principal(Some("Contributor"), &f.s.rg_path("rg")).await;
    let pol = format!("{}/backupPolicies/DefaultPolicy", f.vault());
    let enable = json!({"properties": {"protectedItemType": "Microsoft.Compute/virtualMachines", "policyId": pol}});
    let item_b = format!(
        "{}/backupFabrics/Azure/protectionContainers/IaasVMContainer%3Biaasvmcontainerv2%3Bother%3Bvmb/protectedItems/VM%3Biaasvmcontainerv2%3Bother%3Bvmb",
        f.vault()
    );
    // 1. Protecting another group's VM, or one that does not exist there: the same 403.
    let item_ghost = item_b.replace("vmb", "ghost");
    for item in [&item_b, &item_ghost] {
        let (st, b) = as_(&f, &mallory, "PUT", &format!("{item}?{BK}"), Some(&enable)).await;
        assert_arm_error(st, &b, 403, "LinkedAuthorizationFailed");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Microsoft.Compute/virtualMachines/"),
            "{b}"
        );
    }
    let (st, _) = f.s.call("GET", &format!("{item_b}?{BK}"), None).await;
    assert_eq!(st, 404, "the refused protection left an item");
    // 2. Registering another group's storage account.
    let container_b = format!(
        "{}/backupFabrics/Azure/protectionContainers/StorageContainer%3BStorage%3Bother%3Bsab",
        f.vault()
    );
    let (st, b) = as_(
        &f,
        &mallory,
        "PUT",
        &format!("{container_b}?{BK}"),
        Some(&json!({"properties": {"backupManagementType": "AzureStorage", "containerType": "StorageContainer", "sourceResourceId": sab}})),
    )
    .await;
    assert_arm_error(st, &b, 403, "LinkedAuthorizationFailed");
    // 3. The protectable list shows only what the caller can read.
    let list = format!(
        "{}/backupProtectableItems?{BK}&$filter=backupManagementType%20eq%20'AzureIaasVM'",
        f.vault()
    );
    let disk_a = f.dir.join("a.raw");
    write_random(&disk_a, 1 << 20, 2);
    let (st, b) = as_(
        &f,
        &mallory,
        "PUT",
        &format!(
            "{}/providers/Microsoft.Compute/virtualMachines/vma?api-version=2024-07-01",
            f.s.rg_path("rg")
        ),
        Some(&vm_body(&disk_a)),
    )
    .await;
    assert_eq!(st, 201, "{b}");
    let names = |v: &Value| -> Vec<String> {
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["properties"]["friendlyName"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, mine) = as_(&f, &mallory, "GET", &list, None).await;
    assert_eq!(names(&mine), ["vma"], "{mine}");
    let (_, all) = f.s.call("GET", &list, None).await;
    let mut all = names(&all);
    all.sort();
    assert_eq!(all, ["vma", "vmb"]);
    // 4. Its own VM: protected, backed up; a restore into the other group's account is refused,
    //    one into its own group's account is accepted.
    let item_a = f.item("vma");
    let (st, b) = as_(&f, &mallory, "PUT", &format!("{item_a}?{BK}"), Some(&enable)).await;
    assert_eq!(st, 202, "{b}");
    let j = accept(
        &f,
        &f.s.url(&format!("{item_a}/backup?{BK}")),
        &json!({"properties": {"objectType": "IaasVMBackupRequest"}}),
    )
    .await;
    assert_eq!(
        wait_job(&f, &j).await.pop().unwrap()["properties"]["status"],
        "Completed"
    );
    let (_, rps) = f.s.call("GET", &format!("{item_a}/recoveryPoints?{BK}"), None).await;
    let rp = rps["value"][0]["name"].as_str().unwrap().to_string();
    let restore = |acct: &str| {
        json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp, "recoveryType": "RestoreDisks",
            "sourceResourceId": format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vma"),
            "storageAccountId": acct, "region": "westus"}})
    };
    let url = format!("{item_a}/recoveryPoints/{rp}/restore?{BK}");
    let (st, b) = as_(&f, &mallory, "POST", &url, Some(&restore(&sab))).await;
    assert_arm_error(st, &b, 403, "LinkedAuthorizationFailed");
    assert_eq!(
        std::fs::read_dir(&acct_b).unwrap().count(),
        0,
        "a refused restore wrote files"
    );
    let new_vm = json!({"properties": {"objectType": "IaasVMRestoreRequest", "recoveryPointId": rp, "recoveryType": "AlternateLocation",
        "sourceResourceId": format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vma"),
        "storageAccountId": f.account_id("saa"), "region": "westus",
        "targetVirtualMachineId": format!("{}/providers/Microsoft.Compute/virtualMachines/planted", f.s.rg_path("other"))}});
    let (st, b) = as_(&f, &mallory, "POST", &url, Some(&new_vm)).await;
    assert_arm_error(st, &b, 403, "LinkedAuthorizationFailed");
    account(&f, "saa").await;
    let (st, b) = as_(&f, &mallory, "POST", &url, Some(&restore(&f.account_id("saa")))).await;
    assert_eq!(st, 202, "{b}");
    // 5. The VM's real owner can still protect its VM.
    let (st, b) = f.s.call("PUT", &format!("{item_b}?{BK}"), Some(&enable)).await;
    assert_eq!(st, 202, "{b}");
    f.s.stop().await;
}
