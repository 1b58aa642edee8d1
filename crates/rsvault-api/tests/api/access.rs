//! Authentication and authorization: the matrix over every route in the router, and role assignments.

use crate::harness::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use rsvault_api::routes::{Access, ROUTES};
use rsvault_identity::rbac;
use rsvault_identity::tokens::{Issuer, KeyMaterial};
use serde_json::{json, Value};

fn server_keys(s: &Server) -> Vec<KeyMaterial> {
    let rows = s.offline(|c| c.store().read(|db| db.signing_keys())).unwrap();
    let key = rsvault_engine::VaultKeys::load(&s.dir.join("engine.key")).unwrap();
    rsvault_control::tokens::open_signing_keys(rows, Some(&key)).unwrap()
}

/// Tokens that must all be refused with 401.
fn bad_tokens(s: &Server) -> Vec<(&'static str, String)> {
    let issuer_url = format!("{}/{}/v2.0", s.base, s.boot.tenant_id);
    let keys = server_keys(s);
    let real = Issuer::new(&keys, issuer_url.clone(), chrono::Duration::hours(1)).unwrap();
    let now = chrono::Utc::now();
    let owner_oid = s
        .offline(|c| c.store().read(|db| db.principal(&s.boot.client_id)))
        .unwrap()
        .unwrap()
        .object_id;
    let expired = real
        .issue(
            &s.boot.tenant_id,
            &owner_oid,
            &s.boot.client_id,
            "https://management.azure.com/",
            now - chrono::Duration::hours(3),
        )
        .unwrap()
        .access_token;
    let wrong_aud = real
        .issue(
            &s.boot.tenant_id,
            &owner_oid,
            &s.boot.client_id,
            "https://vault.azure.net/",
            now,
        )
        .unwrap()
        .access_token;
    let wrong_issuer = Issuer::new(
        &keys,
        "https://login.microsoftonline.com/x/v2.0".into(),
        chrono::Duration::hours(1),
    )
    .unwrap()
    .issue(
        &s.boot.tenant_id,
        &owner_oid,
        &s.boot.client_id,
        "https://management.azure.com/",
        now,
    )
    .unwrap()
    .access_token;
    // Same kid, different key: the signature cannot match.
    let mut foreign = rsvault_identity::tokens::generate_key(now).unwrap();
    foreign.kid = keys[0].kid.clone();
    let bad_sig = Issuer::new(&[foreign], issuer_url, chrono::Duration::hours(1))
        .unwrap()
        .issue(
            &s.boot.tenant_id,
            &owner_oid,
            &s.boot.client_id,
            "https://management.azure.com/",
            now,
        )
        .unwrap()
        .access_token;
    let payload = s.token.split('.').nth(1).unwrap().to_string();
    let alg_none = format!(
        "{}.{payload}.",
        B64.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#, keys[0].kid))
    );
    vec![
        ("garbage", "not-a-token".to_string()),
        ("bad signature", bad_sig),
        ("alg none", alg_none),
        ("expired", expired),
        ("wrong audience", wrong_aud),
        ("wrong issuer", wrong_issuer),
    ]
}

pub(crate) fn instantiate(pattern: &str, sub: &str) -> String {
    pattern
        .replace("{*scope}", &format!("/subscriptions/{sub}"))
        .replace("{subscriptionId}", sub)
        .replace("{resourceGroupName}", "rg")
        .replace("{vaultName}", "vv")
        .replace("{location}", "westus")
        .replace("{roleAssignmentName}", &uuid::Uuid::new_v4().to_string())
        .replace("{roleDefinitionId}", "acdd72a7-3385-48ef-bd42-f606fba81ae7")
        .replace("{operationId}", "00000000-0000-0000-0000-000000000000")
        .replace("{vmName}", "vm1")
        .replace("{accountName}", "acct1")
        .replace("{shareName}", "share1")
        .replace("{fabricName}", "Azure")
        .replace("{containerName}", "IaasVMContainer%3Biaasvmcontainerv2%3Brg%3Bvm1")
        .replace("{protectedItemName}", "VM%3Biaasvmcontainerv2%3Brg%3Bvm1")
        .replace("{policyName}", "DefaultPolicy")
        .replace("{jobName}", "00000000-0000-0000-0000-000000000000")
        .replace("{azureRegion}", "westus")
}

/// Every route × every kind of caller: 401 for bad tokens, 403 exactly where the role lacks the
/// route's action, something else otherwise.
#[tokio::test]
async fn authorization_matrix_covers_every_route() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "vv").await;
    let scope = format!("/subscriptions/{}", s.sub());
    let bad = bad_tokens(&s);
    let mut callers: Vec<(String, Option<String>, Option<&str>)> = vec![("no token".into(), None, None)];
    callers.push(("no role".into(), Some(s.principal(None, &scope).await), Some("")));
    for role in [
        "Backup Reader",
        "Backup Operator",
        "Backup Contributor",
        "Reader",
        "Contributor",
        "Owner",
    ] {
        callers.push((role.into(), Some(s.principal(Some(role), &scope).await), Some(role)));
    }
    let mut checked = 0;
    // Mutating routes last, so deletes do not hide other answers (they never change the 401/403 outcome).
    let mut routes: Vec<_> = ROUTES.iter().collect();
    routes.sort_by_key(|r| r.method == "DELETE");
    for route in routes {
        let path = format!("{}?api-version=2026-11-01", instantiate(route.pattern, s.sub()));
        let body = matches!(route.method, "PUT" | "PATCH" | "POST").then(|| json!({}));
        for (what, tok) in &bad {
            let st = s
                .call_as(Some(tok), route.method, &path, body.as_ref())
                .await
                .status()
                .as_u16();
            assert_eq!(st, 401, "{what} on {} {}", route.method, route.pattern);
            checked += 1;
        }
        for (who, tok, role) in &callers {
            let r = s.call_as(tok.as_deref(), route.method, &path, body.as_ref()).await;
            let st = r.status().as_u16();
            let want_allowed = match (route.access, role) {
                (_, None) => {
                    assert_eq!(st, 401, "{who} on {} {}", route.method, route.pattern);
                    assert!(r.headers()["www-authenticate"]
                        .to_str()
                        .unwrap()
                        .contains("error=\"invalid_token\""));
                    checked += 1;
                    continue;
                }
                (Access::Authenticated, _) => true,
                (Access::Owner(_), Some(role)) => *role == "Owner",
                (Access::Action(_), Some("")) => false,
                (Access::Action(a), Some(role)) => rbac::find_role(role).unwrap().allows(a),
            };
            if want_allowed {
                // A route's own action is allowed; what the request reaches beyond its path (the
                // placeholder VM or account of a container) is ARM's linked check, a different 403.
                let linked = st == 403
                    && route.method != "HEAD"
                    && r.json::<Value>().await.unwrap()["error"]["code"] == "LinkedAuthorizationFailed";
                assert!(
                    st != 401 && (st != 403 || linked),
                    "{who} should reach {} {} but got {st}",
                    route.method,
                    route.pattern
                );
            } else {
                assert_eq!(st, 403, "{who} on {} {}", route.method, route.pattern);
                if route.method != "HEAD" {
                    let b: Value = r.json().await.unwrap();
                    assert_eq!(b["error"]["code"], "AuthorizationFailed");
                    assert!(b["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("does not have authorization to perform action"));
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * (bad.len() + callers.len()));
}

#[tokio::test]
async fn backup_reader_reads_but_cannot_write() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_vault("rg", "vv").await;
    let reader = s
        .principal(Some("Backup Reader"), &format!("/subscriptions/{}", s.sub()))
        .await;
    let p = format!("{}?{API}", s.vault_path("rg", "vv"));
    assert_eq!(s.call_as(Some(&reader), "GET", &p, None).await.status(), 200);
    let r = s
        .call_as(Some(&reader), "PUT", &p, Some(&json!({"location": "westus"})))
        .await;
    assert_eq!(r.status(), 403);
    let b: Value = r.json().await.unwrap();
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("'Microsoft.RecoveryServices/Vaults/write'")
            && msg.contains(&format!("over scope '{}", s.vault_path("rg", "vv"))),
        "{msg}"
    );
    assert_eq!(s.call_as(Some(&reader), "DELETE", &p, None).await.status(), 403);
    assert_eq!(s.call("GET", &p, None).await.0, 200, "the vault is still there");
}

#[tokio::test]
async fn subscriptions_list_only_what_the_caller_may_see() {
    let s = start().await;
    let nobody = s.principal(None, "/").await;
    let b: Value = s
        .call_as(Some(&nobody), "GET", "/subscriptions?api-version=2022-12-01", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["value"], json!([]));
    s.make_group("rg").await;
    let scoped = s.principal(Some("Backup Reader"), &s.rg_path("rg")).await;
    let b: Value = s
        .call_as(Some(&scoped), "GET", "/subscriptions?api-version=2022-12-01", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["value"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn role_assignments_through_arm_grant_and_revoke() {
    let s = start().await;
    s.make_group("rg").await;
    s.make_group("other").await;
    s.make_vault("rg", "vv").await;
    s.make_vault("other", "ww").await;
    let p = s.offline(|c| c.create_principal("ops", None)).unwrap();
    let tok = s.token_for(&p.client_id, &p.client_secret).await;
    let vault = format!("{}?{API}", s.vault_path("rg", "vv"));
    assert_eq!(s.call_as(Some(&tok), "GET", &vault, None).await.status(), 403);

    let defs = format!("{}/providers/Microsoft.Authorization/roleDefinitions?$filter=roleName%20eq%20'Backup%20Reader'&api-version=2022-04-01", s.rg_path("rg"));
    let (st, d) = s.call("GET", &defs, None).await;
    assert_eq!(st, 200);
    assert_eq!(d["value"].as_array().unwrap().len(), 1);
    let role_id = d["value"][0]["id"].as_str().unwrap().to_string();
    let name = uuid::Uuid::new_v4().to_string();
    let ra = format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=2022-04-01",
        s.rg_path("rg")
    );
    let (st, b) = s.call("PUT", &ra, Some(&json!({"properties": {"roleDefinitionId": role_id, "principalId": p.object_id, "principalType": "ServicePrincipal"}}))).await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["properties"]["scope"], s.rg_path("rg"));
    let (st, b) = s
        .call(
            "PUT",
            &format!(
                "{}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
                s.rg_path("rg"),
                uuid::Uuid::new_v4()
            ),
            Some(&json!({"properties": {"roleDefinitionId": role_id, "principalId": p.object_id}})),
        )
        .await;
    assert_arm_error(st, &b, 409, "RoleAssignmentExists");
    let (st, b) = s
        .call(
            "PUT",
            &format!(
                "{}/providers/Microsoft.Authorization/roleAssignments/{}?api-version=2022-04-01",
                s.rg_path("rg"),
                uuid::Uuid::new_v4()
            ),
            Some(
                &json!({"properties": {"roleDefinitionId": role_id, "principalId": uuid::Uuid::new_v4().to_string()}}),
            ),
        )
        .await;
    assert_arm_error(st, &b, 400, "PrincipalNotFound");

    assert_eq!(
        s.call_as(Some(&tok), "GET", &vault, None).await.status(),
        200,
        "granted at the group"
    );
    assert_eq!(
        s.call_as(
            Some(&tok),
            "GET",
            &format!("{}?{API}", s.vault_path("other", "ww")),
            None
        )
        .await
        .status(),
        403,
        "not beyond it"
    );
    assert_eq!(
        s.call_as(Some(&tok), "PATCH", &vault, Some(&json!({"tags": {}})))
            .await
            .status(),
        403
    );

    let list = format!("/subscriptions/{}/providers/Microsoft.Authorization/roleAssignments?$filter=principalId%20eq%20'{}'&api-version=2022-04-01", s.sub(), p.object_id);
    let (_, l) = s.call("GET", &list, None).await;
    assert_eq!(l["value"].as_array().unwrap().len(), 1);
    assert_eq!(s.call("DELETE", &ra, None).await.0, 200);
    assert_eq!(s.call("DELETE", &ra, None).await.0, 204);
    assert_eq!(
        s.call_as(Some(&tok), "GET", &vault, None).await.status(),
        403,
        "revoked"
    );
}

async fn status_of(s: &Server, token: &str, path: &str) -> u16 {
    s.call_as(Some(token), "GET", path, None).await.status().as_u16()
}

/// Issue 17: each node keeps principals' assignments in memory, yet an assignment revoked through any
/// node sharing the store (or by the CLI beside them) stops access on the very next request to every
/// node, and a new one grants it at once.
#[tokio::test]
async fn revocations_on_one_node_refuse_the_next_request_on_another() {
    let a = start().await;
    let b = start_beside(&a).await;
    a.make_group("rg").await;
    a.make_vault("rg", "vv").await;
    let p = a.offline(|c| c.create_principal("ops", None)).unwrap();
    let (tok_a, tok_b) = (
        a.token_for(&p.client_id, &p.client_secret).await,
        b.token_for(&p.client_id, &p.client_secret).await,
    );
    let vault = format!("{}?{API}", a.vault_path("rg", "vv"));
    // Refused everywhere, twice (a refusal is remembered too).
    for _ in 0..2 {
        assert_eq!(status_of(&a, &tok_a, &vault).await, 403);
        assert_eq!(status_of(&b, &tok_b, &vault).await, 403);
    }
    // Granted through node B's API: node A, which remembered "no assignment", lets the next request in.
    let name = uuid::Uuid::new_v4().to_string();
    let ra = format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{name}?api-version=2022-04-01",
        a.rg_path("rg")
    );
    let reader = format!(
        "/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{}",
        a.sub(),
        rbac::find_role("Backup Reader").unwrap().name
    );
    let (st, body) = b
        .call(
            "PUT",
            &ra,
            Some(&json!({"properties": {"roleDefinitionId": reader, "principalId": p.object_id}})),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    for _ in 0..3 {
        assert_eq!(status_of(&a, &tok_a, &vault).await, 200, "granted on B, seen on A");
        assert_eq!(status_of(&b, &tok_b, &vault).await, 200);
    }
    // Revoked through node B's API: the next request to A is refused.
    assert_eq!(b.call("DELETE", &ra, None).await.0, 200);
    assert_eq!(status_of(&a, &tok_a, &vault).await, 403, "revoked on B, refused on A");
    assert_eq!(status_of(&b, &tok_b, &vault).await, 403);
    // Granted again, then the principal deleted by the CLI (`rsvault principal delete`, outside both
    // servers): refused on both at once.
    let sub_scope = format!("/subscriptions/{}", a.sub());
    a.offline(|c| c.assign_role(&p.object_id, "Backup Reader", &sub_scope, "test"))
        .unwrap();
    assert_eq!(status_of(&a, &tok_a, &vault).await, 200);
    assert_eq!(status_of(&b, &tok_b, &vault).await, 200);
    a.offline(|c| c.delete_principal(&p.client_id)).unwrap();
    assert_eq!(
        status_of(&a, &tok_a, &vault).await,
        403,
        "deleted by the CLI, refused on A"
    );
    assert_eq!(status_of(&b, &tok_b, &vault).await, 403, "and on B");
    b.stop().await;
    a.stop().await;
}
