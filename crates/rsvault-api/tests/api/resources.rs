//! Resource groups and vaults end to end, including paging, restart and bad input.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn resource_group_lifecycle() {
    let s = start().await;
    let p = format!("{}?api-version=2021-04-01", s.rg_path("rg1"));
    let (st, b) = s
        .call("PUT", &p, Some(&json!({"location": "West US", "tags": {"a": "b"}})))
        .await;
    assert_eq!(st, 201);
    assert_eq!(b["location"], "westus");
    assert_eq!(b["properties"]["provisioningState"], "Succeeded");
    assert_eq!(s.call("PUT", &p, Some(&json!({"location": "westus"}))).await.0, 200);
    assert_eq!(s.call("HEAD", &p, None).await.0, 204);
    assert_eq!(
        s.call("HEAD", &format!("{}?api-version=2021-04-01", s.rg_path("nope")), None)
            .await
            .0,
        404
    );
    let (st, b) = s.call("PATCH", &p, Some(&json!({"tags": {"x": "y"}}))).await;
    assert_eq!((st, b["tags"].clone()), (200, json!({"x": "y"})));
    let (st, b) = s
        .call(
            "GET",
            &format!("/subscriptions/{}/resourcegroups?api-version=2021-04-01", s.sub()),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(b["value"].as_array().unwrap().len(), 1);
    assert_eq!(s.call("DELETE", &p, None).await.0, 200);
    let (st, b) = s.call("GET", &p, None).await;
    assert_arm_error(st, &b, 404, "ResourceGroupNotFound");
}

#[tokio::test]
async fn vault_lifecycle_as_the_spec_shows() {
    let s = start().await;
    s.make_group("rg").await;
    let p = format!("{}?{API}", s.vault_path("rg", "v1"));
    let put = json!({"location": "West US", "identity": {"type": "SystemAssigned"}, "sku": {"name": "Standard"},
                     "properties": {"publicNetworkAccess": "Enabled",
                                    "securitySettings": {"softDeleteSettings": {"softDeleteState": "Disabled"}},
                                    "redundancySettings": {"standardTierStorageRedundancy": "LocallyRedundant"}}});
    let (st, b) = s.call("PUT", &p, Some(&put)).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["type"], "Microsoft.RecoveryServices/vaults");
    assert_eq!(b["location"], "westus");
    assert_eq!(b["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        b["properties"]["securitySettings"]["softDeleteSettings"]["softDeleteState"],
        "Disabled"
    );
    assert_eq!(
        b["properties"]["redundancySettings"]["standardTierStorageRedundancy"],
        "LocallyRedundant"
    );
    assert_eq!(b["identity"]["type"], "SystemAssigned");
    assert!(b["identity"]["principalId"].is_string());
    assert!(b["etag"].as_str().unwrap().starts_with("W/\"datetime'"));
    let (st, again) = s
        .call("PUT", &p, Some(&json!({"location": "westus", "tags": {"k": "v"}})))
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        again["properties"]["securitySettings"]["softDeleteSettings"]["softDeleteState"], "Disabled",
        "PUT keeps earlier settings"
    );
    assert_eq!(again["identity"]["principalId"], b["identity"]["principalId"]);
    let (st, got) = s.call("GET", &p, None).await;
    assert_eq!((st, &got["tags"]), (200, &json!({"k": "v"})));
    let (st, patched) = s
        .call(
            "PATCH",
            &p,
            Some(&json!({"tags": {"p": "q"}, "properties": {"publicNetworkAccess": "Disabled"}})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(patched["tags"], json!({"p": "q"}));
    assert_eq!(patched["properties"]["publicNetworkAccess"], "Disabled");
    assert_eq!(
        patched["properties"]["redundancySettings"]["standardTierStorageRedundancy"],
        "LocallyRedundant"
    );

    let (st, u) = s
        .call("GET", &format!("{}/usages?{API}", s.vault_path("rg", "v1")), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(u["value"][0]["name"]["value"], "ProtectedItemCount");
    assert_eq!(u["value"][0]["currentValue"], 0);
    let ext = format!(
        "{}/extendedInformation/vaultExtendedInfo?{API}",
        s.vault_path("rg", "v1")
    );
    let (st, e) = s.call("GET", &ext, None).await;
    assert_eq!(st, 200);
    assert!(e["properties"]["integrityKey"].is_string());
    let (st, e2) = s
        .call("PATCH", &ext, Some(&json!({"properties": {"algorithm": "RSA"}})))
        .await;
    assert_eq!((st, &e2["properties"]["algorithm"]), (200, &json!("RSA")));
    assert_eq!(e2["properties"]["integrityKey"], e["properties"]["integrityKey"]);

    let check = format!("/subscriptions/{}/resourceGroups/rg/providers/Microsoft.RecoveryServices/locations/westus/checkNameAvailability?{API}", s.sub());
    let (_, c) = s
        .call(
            "POST",
            &check,
            Some(&json!({"type": "Microsoft.RecoveryServices/Vaults", "name": "v1"})),
        )
        .await;
    assert_eq!(
        c,
        json!({"nameAvailable": false, "reason": "AlreadyExists", "message": "Resource already exists"})
    );
    let (_, c) = s
        .call(
            "POST",
            &check,
            Some(&json!({"type": "Microsoft.RecoveryServices/Vaults", "name": "v2"})),
        )
        .await;
    assert_eq!(c["nameAvailable"], true);

    // DELETE is a long-running operation as the spec shows: 202, then status and result URLs.
    let r = s.call_as(Some(&s.token), "DELETE", &p, None).await;
    assert_eq!(r.status(), 202);
    let h = r.headers().clone();
    let status_url = h["azure-asyncoperation"].to_str().unwrap().to_string();
    let result_url = h["location"].to_str().unwrap().to_string();
    assert!(
        status_url.starts_with(&s.base)
            && status_url.contains("/operationStatus/")
            && status_url.ends_with("api-version=2026-11-01"),
        "{status_url}"
    );
    assert!(result_url.contains("/operationResults/"), "{result_url}");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().is_ok());
    let st: serde_json::Value = s
        .http
        .get(&status_url)
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["status"], "Succeeded");
    assert!(st["id"].as_str().unwrap().ends_with(st["name"].as_str().unwrap()));
    assert_eq!(
        s.http
            .get(&result_url)
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the vault is gone: the spec's GetOperationResult declares 200 and 202, never 204"
    );
    let other = status_url.replace(st["name"].as_str().unwrap(), &uuid::Uuid::new_v4().to_string());
    assert_eq!(
        s.http.get(&other).bearer_auth(&s.token).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        s.call("DELETE", &p, None).await.0,
        204,
        "deleting a missing vault is idempotent"
    );
    let (st, b) = s.call("GET", &p, None).await;
    assert_arm_error(st, &b, 404, "ResourceNotFound");
}

#[tokio::test]
async fn lists_page_with_skip_token_and_end_without_next_link() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = rsvault_api::Config::new(tmp.path().join("d"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.page_size = 2;
    let s = start_with(config, Some(tmp)).await;
    s.make_group("rg").await;
    s.make_group("other").await;
    for i in 0..5 {
        s.make_vault("rg", &format!("v{i}")).await;
    }
    s.make_vault("other", "ww").await;
    let mut url = s.url(&format!(
        "/subscriptions/{}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults?{API}",
        s.sub()
    ));
    let mut names = vec![];
    let mut pages = 0;
    loop {
        let r = s.http.get(&url).bearer_auth(&s.token).send().await.unwrap();
        let b: serde_json::Value = r.json().await.unwrap();
        pages += 1;
        names.extend(
            b["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_string()),
        );
        match b.get("nextLink") {
            Some(n) => {
                url = n.as_str().unwrap().to_string();
                assert!(
                    url.contains("$skipToken=") && url.contains("api-version=2026-11-01"),
                    "{url}"
                );
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["v0", "v1", "v2", "v3", "v4"]);
    let (_, all) = s
        .call(
            "GET",
            &format!(
                "/subscriptions/{}/providers/Microsoft.RecoveryServices/vaults?{API}",
                s.sub()
            ),
            None,
        )
        .await;
    assert_eq!(
        all["value"].as_array().unwrap().len(),
        2,
        "first page of the subscription list"
    );
    let (st, b) = s
        .call(
            "GET",
            &format!(
                "/subscriptions/{}/providers/Microsoft.RecoveryServices/vaults?{API}&$skipToken=!!",
                s.sub()
            ),
            None,
        )
        .await;
    assert_arm_error(st, &b, 400, "InvalidSkipToken");
}

#[tokio::test]
async fn restart_on_the_same_dir_keeps_everything() {
    let s = start().await;
    s.make_group("rg").await;
    let v = s.make_vault("rg", "keep").await;
    let (client, secret) = (s.boot.client_id.clone(), s.boot.client_secret.clone());
    let (dir, tmp) = s.stop().await;
    let s2 = start_with(test_config(dir), tmp).await;
    assert_eq!(
        (s2.boot.client_id.clone(), s2.boot.client_secret.clone()),
        (client, secret)
    );
    let (st, got) = s2
        .call("GET", &format!("{}?{API}", s2.vault_path("rg", "keep")), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(got["id"], v["id"]);
    assert_eq!(got["etag"], v["etag"]);
}

/// Each bad request gets its ARM error and changes nothing.
#[tokio::test]
async fn bad_input_gets_arm_errors_and_changes_nothing() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "vv").await;
    let sub = s.sub().to_string();
    let vp = |name: &str| {
        format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/{name}?{API}")
    };
    let huge = "x".repeat(5 * 1024 * 1024);
    let cases: Vec<(&str, String, Option<serde_json::Value>, Option<&str>, u16, &str)> = vec![
        ("PUT", vp("new"), None, Some("{not json"), 400, "InvalidRequestContent"),
        ("PUT", vp("new"), Some(json!([1, 2])), None, 400, "InvalidRequestContent"),
        ("PUT", vp("new"), Some(json!({"location": 5})), None, 400, "InvalidRequestContent"),
        ("PUT", vp("new"), Some(json!({"sku": {"name": "Standard"}})), None, 400, "LocationRequired"),
        ("PUT", vp("new"), Some(json!({"location": "westus", "sku": {"name": "Gold"}})), None, 400, "BadRequest"),
        ("PUT", vp("new"), Some(json!({"location": "westus", "identity": {"type": "Magic"}})), None, 400, "BadRequest"),
        ("PUT", vp("new"), Some(json!({"location": "westus", "properties": {"publicNetworkAccess": "Sometimes"}})), None, 400, "BadRequest"),
        ("PUT", vp("new"), Some(json!({"location": "westus", "properties": {"redundancySettings": "GRS"}})), None, 400, "InvalidRequestContent"),
        ("PUT", vp("new"), Some(json!({"location": "westus", "tags": {"a": 1}})), None, 400, "InvalidRequestContent"),
        ("PUT", vp("new"), Some(json!({"location": "westus", "properties": {"securitySettings": {"softDeleteSettings": {"softDeleteRetentionPeriodInDays": 2}}}})), None, 400, "BMSUserErrorInvalidSoftDeleteRetentionPeriod"),
        ("PUT", vp("1bad"), Some(json!({"location": "westus"})), None, 400, "InvalidResourceName"),
        ("PUT", vp("a"), Some(json!({"location": "westus"})), None, 400, "InvalidResourceName"),
        ("PUT", vp("under_score"), Some(json!({"location": "westus"})), None, 400, "InvalidResourceName"),
        ("PUT", vp("vv"), Some(json!({"location": "eastus"})), None, 400, "InvalidResourceLocation"),
        ("PUT", format!("/subscriptions/{sub}/resourceGroups/nogroup/providers/Microsoft.RecoveryServices/vaults/x?{API}"), Some(json!({"location": "westus"})), None, 404, "ResourceGroupNotFound"),
        ("PUT", format!("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/x?{API}"), Some(json!({"location": "westus"})), None, 404, "SubscriptionNotFound"),
        ("PUT", format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/new"), Some(json!({"location": "westus"})), None, 400, "MissingApiVersionParameter"),
        ("PUT", format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/new?api-version=2026-13-45"), Some(json!({"location": "westus"})), None, 400, "InvalidApiVersionParameter"),
        ("PUT", format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/new?api-version=latest"), Some(json!({"location": "westus"})), None, 400, "InvalidApiVersionParameter"),
        ("PUT", vp("new"), None, Some(huge.as_str()), 413, "RequestEntityTooLarge"),
        ("GET", format!("/subscriptions/{sub}/providers/Microsoft.Foo/bars?{API}"), None, None, 404, "NoRegisteredProviderFound"),
        ("GET", format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.RecoveryServices/widgets?{API}"), None, None, 404, "InvalidResourceType"),
        ("POST", vp("vv"), None, None, 405, "HttpMethodNotSupported"),
        ("PUT", format!("/subscriptions/{sub}/resourcegroups/bad.?api-version=2021-04-01"), Some(json!({"location": "westus"})), None, 400, "InvalidResourceName"),
        ("PUT", format!("/subscriptions/{sub}/resourcegroups/rg?api-version=2021-04-01"), Some(json!({"location": "eastus"})), None, 409, "InvalidResourceGroupLocation"),
    ];
    let before = s
        .call(
            "GET",
            &format!("/subscriptions/{sub}/providers/Microsoft.RecoveryServices/vaults?{API}"),
            None,
        )
        .await
        .1;
    let groups_before = s
        .call(
            "GET",
            &format!("/subscriptions/{sub}/resourcegroups?api-version=2021-04-01"),
            None,
        )
        .await
        .1;
    for (method, path, body, raw, status, code) in cases {
        let mut req = s
            .http
            .request(method.parse().unwrap(), s.url(&path))
            .bearer_auth(&s.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(r) = raw {
            req = req.header("content-type", "application/json").body(r.to_string());
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        let b: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: body not JSON: {e}"));
        assert_eq!(
            (st, b["error"]["code"].as_str().unwrap_or_default()),
            (status, code),
            "{method} {path}: {b}"
        );
    }
    let after = s
        .call(
            "GET",
            &format!("/subscriptions/{sub}/providers/Microsoft.RecoveryServices/vaults?{API}"),
            None,
        )
        .await
        .1;
    assert_eq!(before, after, "no bad request changed the vaults");
    let groups_after = s
        .call(
            "GET",
            &format!("/subscriptions/{sub}/resourcegroups?api-version=2021-04-01"),
            None,
        )
        .await
        .1;
    assert_eq!(groups_before, groups_after);
}

#[tokio::test]
async fn if_match_guards_vault_writes() {
    let s = start().await;
    s.make_group("rg").await;
    let v = s.make_vault("rg", "vv").await;
    let url = s.url(&format!("{}?{API}", s.vault_path("rg", "vv")));
    let r = s
        .http
        .patch(&url)
        .bearer_auth(&s.token)
        .header("If-Match", "W/\"datetime'1999'\"")
        .json(&json!({"tags": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "PreconditionFailed");
    let r = s
        .http
        .patch(&url)
        .bearer_auth(&s.token)
        .header("If-Match", v["etag"].as_str().unwrap())
        .json(&json!({"tags": {"a": "b"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .http
        .put(&url)
        .bearer_auth(&s.token)
        .header("If-None-Match", "*")
        .json(&json!({"location": "westus"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412, "If-None-Match: * on an existing vault");
}

#[tokio::test]
async fn paths_are_case_insensitive_and_percent_decoded() {
    let s = start().await;
    s.make_group("RG").await;
    s.make_vault("RG", "MyVault").await;
    let path = format!(
        "/SUBSCRIPTIONS/{}/resourcegroups/rg/PROVIDERS/microsoft.recoveryservices/VAULTS/myvault?{API}",
        s.sub()
    );
    let (st, b) = s.call("GET", &path, None).await;
    assert_eq!(st, 200);
    assert_eq!(b["name"], "MyVault", "stored casing is echoed");
    let path = format!(
        "/subscriptions/{}/resourceGroups/RG/providers/Microsoft.RecoveryServices/vaults/My%56ault?{API}",
        s.sub()
    );
    assert_eq!(s.call("GET", &path, None).await.0, 200);
}

/// A vault that still holds protected items refuses deletion with Azure's error. The item is written
/// straight into the store (protection itself arrives with the protection layer).
#[tokio::test]
async fn a_vault_with_protected_items_refuses_deletion() {
    let s = start().await;
    s.make_group("rg").await;
    let v = s.make_vault("rg", "busy").await;
    let vault_id = v["id"].as_str().unwrap().to_string();
    let item_id = format!("{vault_id}/backupFabrics/Azure/protectionContainers/IaasVMContainer;iaasvmcontainerv2;rg;vm1/protectedItems/VM;iaasvmcontainerv2;rg;vm1");
    let now = chrono::Utc::now();
    let sub = s.sub().to_string();
    s.offline(|c| {
        c.store().write(|db| {
            db.put_resource(&rsvault_store::ResourceRow {
                id: item_id.clone(),
                subscription: sub.clone(),
                resource_group: Some("rg".into()),
                type_key: "microsoft.recoveryservices/vaults/backupfabrics/protectioncontainers/protecteditems".into(),
                name: "VM;iaasvmcontainerv2;rg;vm1".into(),
                parent_key: None,
                body: json!({}),
                etag: "e".into(),
                created: now,
                updated: now,
            })
        })
    })
    .unwrap();
    let p = format!("{}?{API}", s.vault_path("rg", "busy"));
    let (st, b) = s.call("DELETE", &p, None).await;
    assert_arm_error(st, &b, 400, "ServiceResourceNotEmptyWithBackendMessage");
    let (_, u) = s
        .call("GET", &format!("{}/usages?{API}", s.vault_path("rg", "busy")), None)
        .await;
    assert_eq!(u["value"][0]["currentValue"], 1, "usages count the item");
    assert_eq!(s.call("GET", &p, None).await.0, 200, "the vault is still there");
}

/// Issue 16: a vault answers `securitySettings.immutabilitySettings` and `multiUserAuthorization` as
/// Azure's `GETVault` example does for a plain vault (`Disabled` both); `multiUserAuthorization` is
/// read-only (no Resource Guard here), so a client's value is ignored.
#[tokio::test]
async fn a_plain_vault_answers_immutability_and_multi_user_authorization() {
    let s = start().await;
    s.make_group("rg").await;
    let p = format!("{}?{API}", s.vault_path("rg", "plain"));
    for body in [
        json!({"location": "westus", "sku": {"name": "Standard"}, "properties": {}}),
        json!({"location": "westus", "sku": {"name": "Standard"}, "properties": {"securitySettings": {"multiUserAuthorization": "Enabled"}}}),
    ] {
        let (st, v) = s.call("PUT", &p, Some(&body)).await;
        assert!(st == 200 || st == 201, "{v}");
        let (_, v) = s.call("GET", &p, None).await;
        let sec = &v["properties"]["securitySettings"];
        assert_eq!(sec["immutabilitySettings"], json!({"state": "Disabled"}), "{v}");
        assert_eq!(sec["multiUserAuthorization"], "Disabled", "{v}");
        assert_eq!(sec["softDeleteSettings"]["softDeleteState"], "Enabled", "{v}");
    }
}
