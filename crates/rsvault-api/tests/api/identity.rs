//! The token issuer as clients see it: discovery, JWKS, the token endpoint and its OAuth2 errors.

use crate::harness::*;
use serde_json::Value;

#[tokio::test]
async fn discovery_documents_point_at_this_server() {
    let s = start().await;
    let t = &s.boot.tenant_id;
    for path in [
        format!("/{t}/v2.0/.well-known/openid-configuration"),
        "/adfs/.well-known/openid-configuration".to_string(),
    ] {
        let b: Value = s.http.get(s.url(&path)).send().await.unwrap().json().await.unwrap();
        for k in ["issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"] {
            assert!(b[k].as_str().unwrap().starts_with(&s.base), "{path} {k}: {b}");
        }
        let jwks: Value = s
            .http
            .get(b["jwks_uri"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(jwks["keys"][0]["alg"], "RS256");
    }
    let m: Value = s
        .http
        .get(s.url("/metadata/endpoints?api-version=2022-09-01"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["resourceManager"].as_str().unwrap(), format!("{}/", s.base));
    assert!(m["authentication"]["audiences"][0].is_string());
}

#[tokio::test]
async fn token_endpoint_errors_are_oauth2_errors() {
    let s = start().await;
    let t = s.boot.tenant_id.clone();
    let id = s.boot.client_id.clone();
    let secret = s.boot.client_secret.clone();
    let arm = "https://management.azure.com/.default";
    let cases: Vec<(String, Vec<(&str, &str)>, u16, &str)> = vec![
        (
            t.clone(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", "wrong"),
                ("scope", arm),
            ],
            401,
            "invalid_client",
        ),
        (
            t.clone(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "00000000-0000-0000-0000-000000000001"),
                ("client_secret", &secret),
                ("scope", arm),
            ],
            401,
            "invalid_client",
        ),
        (
            t.clone(),
            vec![
                ("grant_type", "password"),
                ("client_id", &id),
                ("client_secret", &secret),
                ("scope", arm),
            ],
            400,
            "unsupported_grant_type",
        ),
        (
            t.clone(),
            vec![("client_id", &id), ("client_secret", &secret), ("scope", arm)],
            400,
            "invalid_request",
        ),
        (
            t.clone(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_secret", &secret),
                ("scope", arm),
            ],
            400,
            "invalid_request",
        ),
        (
            t.clone(),
            vec![("grant_type", "client_credentials"), ("client_id", &id), ("scope", arm)],
            400,
            "invalid_request",
        ),
        (
            t.clone(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &secret),
            ],
            400,
            "invalid_request",
        ),
        (
            t.clone(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &secret),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
            400,
            "invalid_scope",
        ),
        (
            "other-tenant".into(),
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &secret),
                ("scope", arm),
            ],
            400,
            "invalid_tenant",
        ),
    ];
    for (tenant, form, status, error) in cases {
        let r = s
            .http
            .post(s.url(&format!("/{tenant}/oauth2/v2.0/token")))
            .form(&form)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let b: Value = r.json().await.unwrap();
        assert_eq!((st, b["error"].as_str().unwrap()), (status, error), "{form:?}: {b}");
        assert!(b["error_description"].as_str().unwrap().starts_with("AADSTS"), "{b}");
        assert!(!b.to_string().contains(&secret), "the secret is never echoed");
    }
}

#[tokio::test]
async fn tokens_for_every_scope_form_clients_send() {
    let s = start().await;
    for scope in [
        "https://management.azure.com/.default",
        "https://management.azure.com//.default",
        "https://management.core.windows.net//.default",
    ] {
        let r = s
            .http
            .post(s.url(&format!("/{}/oauth2/v2.0/token", s.boot.tenant_id)))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &s.boot.client_id),
                ("client_secret", &s.boot.client_secret),
                ("scope", scope),
                ("claims", "{\"access_token\":{\"xms_cc\":{\"values\":[\"CP1\"]}}}"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scope}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["token_type"], "Bearer");
        assert!(b["expires_in"].as_i64().unwrap() > 0 && b["ext_expires_in"].is_i64());
        let tok = b["access_token"].as_str().unwrap();
        let (st, _) = {
            let r = s
                .call_as(Some(tok), "GET", "/subscriptions?api-version=2022-12-01", None)
                .await;
            (r.status().as_u16(), ())
        };
        assert_eq!(st, 200, "{scope}");
    }
    // client_secret_basic, as some clients send it
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", s.boot.client_id, s.boot.client_secret));
    let r = s
        .http
        .post(s.url("/adfs/oauth2/token"))
        .header("Authorization", format!("Basic {basic}"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", "https://management.core.windows.net/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn rotated_keys_keep_old_tokens_valid() {
    let s = start().await;
    let old = s.token.clone();
    let kid = s
        .offline(|c| rsvault_control::tokens::rotate_keys(c.store(), &s.dir.join("engine.key"), chrono::Utc::now()))
        .unwrap();
    let jwks: Value = s
        .http
        .get(s.url(&format!("/{}/discovery/v2.0/keys", s.boot.tenant_id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        s.call_as(Some(&old), "GET", "/subscriptions?api-version=2022-12-01", None)
            .await
            .status(),
        200
    );
    let fresh = s.token_for(&s.boot.client_id, &s.boot.client_secret).await;
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            fresh.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], kid.as_str());
    assert_eq!(
        s.call_as(Some(&fresh), "GET", "/subscriptions?api-version=2022-12-01", None)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn secrets_are_hashed_at_rest_and_reset_works() {
    let s = start().await;
    let p = s.offline(|c| c.create_principal("svc", None)).unwrap();
    if on_postgres() {
        // No file to search: every stored principal field instead.
        let rows = s.offline(|c| c.store().read(|db| db.principals())).unwrap();
        assert!(!format!("{rows:?}").contains(&p.client_secret));
    } else {
        let db = std::fs::read(s.dir.join("meta.db")).unwrap();
        let wal = std::fs::read(s.dir.join("meta.db-wal")).unwrap_or_default();
        let needle = p.client_secret.as_bytes();
        assert!(!db.windows(needle.len()).any(|w| w == needle) && !wal.windows(needle.len()).any(|w| w == needle));
    }
    let reset = s.offline(|c| c.reset_secret(&p.client_id)).unwrap();
    let r = s
        .http
        .post(s.url(&format!("/{}/oauth2/v2.0/token", s.boot.tenant_id)))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &p.client_id),
            ("client_secret", &p.client_secret),
            ("scope", "https://management.azure.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the old secret stops working");
    let _ = s.token_for(&p.client_id, &reset.client_secret).await;
}

/// Token-signing keys rest sealed with the server key: a reader of the store (a database dump, a
/// replica) cannot sign tokens. Keys an older version kept in clear are sealed at the next start.
#[tokio::test]
async fn signing_keys_rest_sealed_and_clear_ones_are_sealed_at_start() {
    let s = start().await;
    let rows = s.offline(|c| c.store().read(|db| db.signing_keys())).unwrap();
    assert_eq!(rows.len(), 1);
    let stored = String::from_utf8(rows[0].pkcs8.clone()).expect("the sealed form is text");
    assert!(rsvault_engine::VaultKeys::is_sealed(&stored), "{}", &stored[..8]);
    let key = rsvault_engine::VaultKeys::load(&s.dir.join("engine.key")).unwrap();
    let clear = rsvault_control::tokens::open_signing_keys(rows.clone(), Some(&key)).unwrap();
    assert!(
        rsvault_control::tokens::open_signing_keys(rows.clone(), None).is_err(),
        "no server key, no signing key"
    );
    // As an older version left it: in clear.
    s.offline(|c| {
        c.store()
            .write(|db| db.set_signing_key_material(&clear[0].kid, &clear[0].pkcs8))
    })
    .unwrap();
    let (dir, tmp) = s.stop().await;
    let s = start_with(test_config(dir), tmp).await;
    let rows = s.offline(|c| c.store().read(|db| db.signing_keys())).unwrap();
    assert!(rsvault_engine::VaultKeys::is_sealed(
        std::str::from_utf8(&rows[0].pkcs8).unwrap()
    ));
    // The restarted server (a new port, so a new issuer URL) signs with the same, now sealed, key.
    let kid = |t: &str| -> Value {
        serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                t.split('.').next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(kid(&s.token)["kid"], clear[0].kid.as_str());
    assert_eq!(
        s.call("GET", "/subscriptions?api-version=2022-12-01", None).await.0,
        200
    );
}
