//! Issue 16: the spec's operations rsvault answers beyond the seed flow — what it does not have said
//! plainly, deleted vaults, capabilities, recovery points' extended info.

use crate::access::instantiate;
use crate::harness::*;
use rsvault_api::routes::{Op, ROUTES};
use serde_json::json;

/// Every route of a part of Azure rsvault does not have answers by one rule in an existing vault (a
/// list is empty, a get is a not-found, anything else is `OperationNotSupported` naming the spec's
/// operation), and a missing vault's `ResourceNotFound` before that — never `InvalidResourceType`.
#[tokio::test]
async fn absent_operations_answer_plainly_not_invalid_resource_type() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "vv").await;
    let mut seen = 0;
    for route in ROUTES {
        let want: (u16, Option<&str>) = match route.op {
            Op::AbsentList(_) => (200, None),
            Op::AbsentGet(_) => (404, Some("ResourceNotFound")),
            Op::AbsentAction(_, _) => (400, Some("OperationNotSupported")),
            _ => continue,
        };
        seen += 1;
        let path = format!("{}?api-version=2026-11-01", instantiate(route.pattern, s.sub()));
        let body = matches!(route.method, "PUT" | "PATCH" | "POST").then(|| json!({"properties": {}}));
        let (st, v) = s.call(route.method, &path, body.as_ref()).await;
        match want {
            (200, _) => {
                assert_eq!(st, 200, "{} {}: {v}", route.method, route.pattern);
                assert_eq!(v, json!({"value": []}), "{} {}", route.method, route.pattern);
            }
            (code, Some(err)) => {
                assert_arm_error(st, &v, code, err);
                if let Op::AbsentAction(_, operation) = route.op {
                    let msg = v["error"]["message"].as_str().unwrap();
                    assert!(msg.contains(operation), "{msg}");
                }
            }
            _ => unreachable!(),
        }
        let missing = path.replace("/vaults/vv/", "/vaults/nope/");
        let (st, v) = s.call(route.method, &missing, body.as_ref()).await;
        assert_arm_error(st, &v, 404, "ResourceNotFound");
    }
    assert!(seen >= 30, "only {seen} absent routes");
}

/// `RecoveryServices_Capabilities`: every vault sub-resource asked about needs no private DNS zone
/// (rsvault has no private endpoints); what Azure refuses is refused with its code.
#[tokio::test]
async fn capabilities_answer_each_sub_resource_and_check_the_request() {
    let s = start().await;
    let path = format!(
        "/subscriptions/{}/providers/Microsoft.RecoveryServices/locations/westus/capabilities?{API}",
        s.sub()
    );
    let zones = |subs: &[&str]| -> serde_json::Value { subs.iter().map(|z| json!({"subResource": z})).collect() };
    let ok = json!({"type": "Microsoft.RecoveryServices/Vaults", "properties": {"dnsZones": zones(&["AzureBackup", "azuresiterecovery"])}});
    let (st, b) = s.call("POST", &path, Some(&ok)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b,
        json!({"type": "Microsoft.RecoveryServices/vaults", "properties": {"dnsZones": [
            {"subResource": "AzureBackup", "requiredZoneNames": []},
            {"subResource": "AzureSiteRecovery", "requiredZoneNames": []}]}})
    );
    let bad = [
        json!({"properties": {}}),
        json!({"type": "Microsoft.Compute/virtualMachines"}),
        json!({"type": "Microsoft.RecoveryServices/Vaults", "properties": {"dnsZones": zones(&["Blob"])}}),
    ];
    for body in bad {
        let (st, b) = s.call("POST", &path, Some(&body)).await;
        assert_arm_error(st, &b, 400, "InvalidParameter");
    }
}

/// A group's delete soft-deletes its vaults too, and a deleted vault comes back into another group
/// (the reason `recoveryResourceGroupId` exists: its own group may be gone).
#[tokio::test]
async fn a_vault_deleted_with_its_group_is_undeleted_into_another() {
    let s = start().await;
    s.make_group("gone").await;
    s.make_group("other").await;
    s.make_vault("gone", "vv").await;
    let (st, b) = s
        .call("DELETE", &format!("{}?api-version=2021-04-01", s.rg_path("gone")), None)
        .await;
    assert_eq!(st, 200, "{b}");
    let deleted = format!(
        "/subscriptions/{}/providers/Microsoft.RecoveryServices/locations/westus/deletedVaults/vv",
        s.sub()
    );
    let (st, dv) = s.call("GET", &format!("{deleted}?{API}"), None).await;
    assert_eq!(st, 200, "{dv}");
    assert_eq!(dv["properties"]["vaultId"], s.vault_path("gone", "vv"));
    let body =
        json!({"properties": {"recoveryResourceGroupId": format!("/subscriptions/{}/resourceGroups/other", s.sub())}});
    let (st, b) = s.call("POST", &format!("{deleted}/undelete?{API}"), Some(&body)).await;
    assert_eq!(st, 202, "{b}");
    let (st, v) = s
        .call("GET", &format!("{}?{API}", s.vault_path("other", "vv")), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], s.vault_path("other", "vv"));
}
