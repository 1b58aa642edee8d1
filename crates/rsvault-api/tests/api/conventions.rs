//! ARM conventions every route follows: headers, api-version policy, provider operations.

use crate::harness::*;
use serde_json::Value;

#[tokio::test]
async fn arm_headers_are_present_and_echoed() {
    let s = start().await;
    let r = s
        .http
        .get(s.url("/subscriptions?api-version=2022-12-01"))
        .bearer_auth(&s.token)
        .header("x-ms-client-request-id", "client-1")
        .header("x-ms-correlation-request-id", "corr-1")
        .send()
        .await
        .unwrap();
    let h = r.headers();
    assert_eq!(h["x-ms-client-request-id"], "client-1");
    assert_eq!(h["x-ms-correlation-request-id"], "corr-1");
    assert!(uuid::Uuid::parse_str(h["x-ms-request-id"].to_str().unwrap()).is_ok());
    assert!(h.contains_key("x-ms-ratelimit-remaining-subscription-reads"));
    assert!(h.contains_key("date"));
    assert!(h["content-type"].to_str().unwrap().starts_with("application/json"));
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["value"][0]["subscriptionId"], s.sub());
    assert_eq!(b["value"][0]["tenantId"], s.boot.tenant_id.as_str());
    let r = s
        .http
        .put(s.url(&format!("{}?api-version=2021-04-01", s.rg_path("g"))))
        .bearer_auth(&s.token)
        .json(&serde_json::json!({"location": "westus"}))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-ms-ratelimit-remaining-subscription-writes"));
}

#[tokio::test]
async fn any_wellformed_api_version_is_accepted_by_default_but_not_in_strict_mode() {
    let s = start().await;
    for v in [
        "2016-12-01",
        "2026-11-01",
        "2026-10-01",
        "2099-01-01",
        "2019-05-13-preview",
    ] {
        let (st, b) = s
            .call(
                "GET",
                &format!(
                    "/subscriptions/{}/providers/Microsoft.RecoveryServices/vaults?api-version={v}",
                    s.sub()
                ),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}: {b}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut config = rsvault_api::Config::new(tmp.path().join("d"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.strict_api_versions = true;
    let strict = start_with(config, Some(tmp)).await;
    let path = |v: &str| {
        format!(
            "/subscriptions/{}/providers/Microsoft.RecoveryServices/vaults?api-version={v}",
            strict.sub()
        )
    };
    assert_eq!(strict.call("GET", &path("2026-11-01"), None).await.0, 200);
    let (st, b) = strict.call("GET", &path("2099-01-01"), None).await;
    assert_arm_error(st, &b, 400, "InvalidApiVersionParameter");
}

/// Issue 16: strict mode checked Microsoft.Compute and Microsoft.Storage against
/// Microsoft.Resources' versions, so the README's quickstart (Storage 2023-05-01) was refused. Each
/// namespace has its own published versions; a version of another namespace is refused.
#[tokio::test]
async fn strict_api_versions_check_each_namespace_against_its_own_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = rsvault_api::Config::new(tmp.path().join("d"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.strict_api_versions = true;
    let strict = start_with(config, Some(tmp)).await;
    let sub = format!("/subscriptions/{}", strict.sub());
    for (path, version, published) in [
        ("providers/Microsoft.Storage/storageAccounts", "2023-05-01", true),
        ("providers/Microsoft.Storage/storageAccounts", "2016-01-01", true),
        ("providers/Microsoft.Storage/storageAccounts", "2024-07-01", false),
        ("providers/Microsoft.Compute/virtualMachines", "2024-07-01", true),
        ("providers/Microsoft.Compute/virtualMachines", "2022-03-01", true),
        ("providers/Microsoft.Compute/virtualMachines", "2023-05-01", false),
        ("resourcegroups", "2021-04-01", true),
        ("resourcegroups", "2023-05-01", false),
        ("providers/Microsoft.RecoveryServices/vaults", "2024-07-01", false),
    ] {
        let (st, b) = strict
            .call("GET", &format!("{sub}/{path}?api-version={version}"), None)
            .await;
        if published {
            assert_eq!(st, 200, "{path} {version}: {b}");
        } else {
            assert_arm_error(st, &b, 400, "InvalidApiVersionParameter");
        }
    }
}

#[tokio::test]
async fn provider_operations_list_the_actions_routes_declare() {
    let s = start().await;
    let (st, b) = s
        .call(
            "GET",
            "/providers/Microsoft.RecoveryServices/operations?api-version=2026-11-01",
            None,
        )
        .await;
    assert_eq!(st, 200);
    let names: Vec<&str> = b["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Microsoft.RecoveryServices/Vaults/write"), "{names:?}");
    assert!(b["value"][0]["display"]["provider"].is_string());
}
