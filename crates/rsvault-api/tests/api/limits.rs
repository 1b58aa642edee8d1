//! Resource limits and the small hardening items of issue 13, tried as an attacker would: raw TLS
//! requests that lie about their bodies, idle connection floods, HTTP/2 stream floods, token guessing,
//! `Host` spoofing, encoded separators in paths, and what the traffic recorder keeps. Each test uses
//! small limits so it runs in seconds, and checks that a genuine client still gets through.

use crate::harness::*;
use rsvault_api::{Config, Rate};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A server with limits changed by `f`.
async fn start_limited(f: impl FnOnce(&mut Config)) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::new(tmp.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    f(&mut config);
    start_with(config, Some(tmp)).await
}

fn tls_client(s: &Server, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let ca = std::fs::read(s.dir.join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A TLS connection to the server (HTTP/1.1 or h2 by ALPN), from 127.0.0.1.
async fn connect(s: &Server, alpn: &[u8]) -> TlsStream<TcpStream> {
    let addr = s.running.as_ref().unwrap().local_addr;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tls_client(s, alpn).connect(name, tcp).await.unwrap()
}

/// Writes `head` (an HTTP/1.1 request head, maybe with part of a body) and reads what comes back until
/// the server closes or `within` passes. Returns the status (0 when nothing came) and the text.
async fn raw(s: &Server, head: &str, within: Duration) -> (u16, String) {
    let mut c = connect(s, b"http/1.1").await;
    c.write_all(head.as_bytes()).await.unwrap();
    c.flush().await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        // A complete answer (headers and the body its Content-Length declares) is enough.
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some((h, b)) = text.split_once("\r\n\r\n") {
            let len = h
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if b.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

fn host(s: &Server) -> String {
    s.base.trim_start_matches("https://").to_string()
}

#[tokio::test]
async fn an_unauthenticated_body_is_refused_before_it_is_read() {
    let s = start().await;
    let path = format!("{}?api-version=2021-04-01", s.rg_path("rg"));
    // Headers promising 4 MiB, and not one body byte: the 401 comes anyway, at once.
    for auth in ["", "Authorization: Bearer not-a-token\r\n"] {
        let t = Instant::now();
        let (status, text) = raw(
            &s,
            &format!(
                "PUT {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: 4194304\r\n\r\n",
                host(&s)
            ),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status, 401, "{text}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
    // The token endpoint takes small forms only: 4 MiB declared is refused without reading it.
    let (status, text) = raw(
        &s,
        &format!(
            "POST /{}/oauth2/v2.0/token HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4194304\r\n\r\n",
            s.boot.tenant_id,
            host(&s)
        ),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("\"error\":\"invalid_request\""),
        "an OAuth error body: {text}"
    );
    // A genuine caller is unaffected.
    s.make_group("rg").await;
}

#[tokio::test]
async fn a_lying_content_length_is_not_waited_on() {
    let s = start_limited(|c| c.limits.body_timeout = Duration::from_secs(1)).await;
    let path = format!("{}?api-version=2021-04-01", s.rg_path("rg"));
    let t = Instant::now();
    let (status, text) = raw(
        &s,
        &format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"location\"",
            host(&s),
            s.token
        ),
        Duration::from_secs(10),
    )
    .await;
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "answered or closed within the body timeout: {waited:?}"
    );
    assert!(status == 408 || status == 0, "{text}");
    if status == 408 {
        assert!(text.contains("RequestTimeout"), "{text}");
    }
    let (st, _) = s.call("GET", &path, None).await;
    assert_eq!(st, 404, "nothing was created");
}

#[tokio::test]
async fn bodies_beyond_the_in_flight_budget_get_server_busy() {
    let s = start_limited(|c| c.limits.inflight_body_bytes = 1000).await;
    s.make_group("rg").await;
    let path = format!("{}?api-version=2021-04-01", s.rg_path("rg"));
    let body = json!({"location": "westus", "tags": {"pad": "x".repeat(2000)}});
    let r = s.call_as(Some(&s.token), "PUT", &path, Some(&body)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let b: Value = r.json().await.unwrap();
    assert_arm_error(503, &b, 503, "ServerBusy");
    // A body within the budget is served.
    let (st, b) = s.call("PUT", &path, Some(&json!({"location": "westus"}))).await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_closed_while_another_client_gets_through() {
    let s = start_limited(|c| {
        c.limits.max_connections_per_addr = 3;
        c.limits.header_timeout = Duration::from_secs(2);
        c.limits.idle_timeout = Duration::from_secs(1);
    })
    .await;
    // The harness's pooled connection (its token request) is closed once idle for a second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Three idle TLS connections from 127.0.0.1 fill its share.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect(&s, b"http/1.1").await);
    }
    // A fourth is closed right after accept: its handshake fails.
    let addr = s.running.as_ref().unwrap().local_addr;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let refused = tokio::time::timeout(Duration::from_secs(5), tls_client(&s, b"http/1.1").connect(name, tcp)).await;
    assert!(matches!(refused, Ok(Err(_))), "the connection over the cap is closed");
    // A client from another address is served meanwhile.
    let other = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(s.dir.join("ca.pem")).unwrap()).unwrap())
        .tls_built_in_root_certs(false)
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = other
        .get(s.url("/subscriptions?api-version=2022-12-01"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Connections that never send a request are closed after the header timeout, freeing the place.
    let t = Instant::now();
    for c in &mut idle {
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(6), c.read(&mut b)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed by the server");
    }
    assert!(t.elapsed() < Duration::from_secs(6));
    let (st, _) = s.call("GET", "/subscriptions?api-version=2022-12-01", None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn an_http2_connection_cannot_open_more_streams_than_the_cap() {
    let s = start_limited(|c| {
        c.limits.h2_max_streams = 4;
        c.limits.body_timeout = Duration::from_secs(20);
    })
    .await;
    let io = connect(&s, b"h2").await;
    let (h2, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let get = || {
        hyper::Request::builder()
            .uri(format!("{}/subscriptions?api-version=2022-12-01", s.base))
            .header("authorization", format!("Bearer {}", s.token))
            .body(())
            .unwrap()
    };
    // One whole exchange first, so the server's settings are in force on the client side too.
    let (first, _) = h2.clone().ready().await.unwrap().send_request(get(), true).unwrap();
    assert_eq!(first.await.unwrap().status(), 200);
    let put = format!("{}{}?api-version=2021-04-01", s.base, s.rg_path("rg"));
    let mut hanging = Vec::new();
    for _ in 0..4 {
        let req = hyper::Request::builder()
            .method("PUT")
            .uri(&put)
            .header("authorization", format!("Bearer {}", s.token))
            .header("content-type", "application/json")
            .header("content-length", "100")
            .body(())
            .unwrap();
        let mut h = h2.clone().ready().await.unwrap();
        // The body never comes: each stream stays open on the server.
        hanging.push(h.send_request(req, false).unwrap());
    }
    let mut h = h2.clone().ready().await.unwrap();
    let (fifth, _) = h.send_request(get(), true).unwrap();
    tokio::pin!(fifth);
    let early = tokio::time::timeout(Duration::from_secs(1), &mut fifth).await;
    assert!(early.is_err(), "a fifth stream waits while four are open: {early:?}");
    // One of the four ends: the fifth is served.
    let (_, mut stream) = hanging.pop().unwrap();
    stream.send_reset(h2::Reason::CANCEL);
    let resp = tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("served once a stream is free")
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn token_request(client: &reqwest::Client, s: &Server, id: &str, secret: &str) -> (u16, Option<u64>, Value) {
    let r = client
        .post(s.url(&format!("/{}/oauth2/v2.0/token", s.boot.tenant_id)))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("scope", "https://management.azure.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, r.json().await.unwrap())
}

#[tokio::test]
async fn token_guessing_is_throttled_while_other_clients_still_log_in() {
    let s = start_limited(|c| {
        // Refills of one a minute: nothing comes back while the test runs.
        c.limits.token_rate_per_client = Rate {
            burst: 3,
            per_minute: 1,
        };
        c.limits.token_rate_per_addr = Rate {
            burst: 8,
            per_minute: 1,
        };
    })
    .await;
    let victim = s.offline(|c| c.create_principal("victim", None)).unwrap();
    // Per client id: three guesses are checked, then 429 with Retry-After and an OAuth body.
    let mut seen = vec![];
    for _ in 0..5 {
        let (st, retry, b) = token_request(&s.http, &s, &victim.client_id, "guess").await;
        if st == 429 {
            assert!(retry.is_some_and(|r| r >= 1), "{b}");
            assert_eq!(b["error"], "temporarily_unavailable", "{b}");
            assert!(b["error_description"].as_str().unwrap().starts_with("AADSTS"), "{b}");
        }
        seen.push(st);
    }
    assert_eq!(seen, vec![401, 401, 401, 429, 429]);
    let other = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(s.dir.join("ca.pem")).unwrap()).unwrap())
        .tls_built_in_root_certs(false)
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    // The guessing address is held back even with the right secret; the victim, from an address that
    // has not failed, still logs in: guessing cannot lock a client out.
    let (st, _, _) = token_request(&s.http, &s, &victim.client_id, &victim.client_secret).await;
    assert_eq!(st, 429);
    let (st, _, b) = token_request(&other, &s, &victim.client_id, &victim.client_secret).await;
    assert_eq!(st, 200, "{b}");
    // Another client id from the guessing address still logs in.
    let (st, _, b) = token_request(&s.http, &s, &s.boot.client_id, &s.boot.client_secret).await;
    assert_eq!(st, 200, "{b}");
    // Per address: spraying client ids from one address is throttled too (3 + 5 failures so far
    // cost the address 3; five more fill it) …
    let mut statuses = vec![];
    for i in 0..7 {
        let (st, _, _) = token_request(&s.http, &s, &format!("00000000-0000-0000-0000-00000000000{i}"), "x").await;
        statuses.push(st);
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 401, 429, 429]);
    // … while a client from another address logs in.
    let (st, _, b) = token_request(&other, &s, &s.boot.client_id, &s.boot.client_secret).await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test]
async fn unknown_client_ids_and_wrong_secrets_answer_alike() {
    let s = start().await;
    let known = s.offline(|c| c.create_principal("known", None)).unwrap();
    let unknown = "11111111-2222-3333-4444-555555555555";
    let (st1, _, b1) = token_request(&s.http, &s, &known.client_id, "wrong-secret").await;
    let (st2, _, b2) = token_request(&s.http, &s, unknown, "wrong-secret").await;
    assert_eq!(st1, 401);
    assert_eq!(st1, st2);
    let shape = |b: &Value, id: &str| {
        let mut b = b.clone();
        for k in ["timestamp", "trace_id", "correlation_id"] {
            assert!(b[k].is_string(), "{b}");
            b[k] = Value::Null;
        }
        b["error_description"] = json!(b["error_description"].as_str().unwrap().replace(id, "ID"));
        b
    };
    assert_eq!(shape(&b1, &known.client_id), shape(&b2, unknown));
    assert_eq!(b1["error"], "invalid_client");
}

#[tokio::test]
async fn the_host_header_never_reaches_returned_urls() {
    let s = start_limited(|c| c.page_size = 1).await;
    s.make_group("rg").await;
    s.make_group("rg2").await;
    s.make_vault("rg", "v1").await;
    let evil = |r: &reqwest::Response| {
        r.headers()
            .iter()
            .any(|(_, v)| v.to_str().unwrap_or_default().contains("evil.example"))
    };
    let t = &s.boot.tenant_id;
    let mut seen_urls = 0;
    for (method, path, token) in [
        ("GET", format!("/{t}/v2.0/.well-known/openid-configuration"), false),
        ("GET", "/adfs/.well-known/openid-configuration".to_string(), false),
        ("GET", format!("/{t}/discovery/instance"), false),
        ("GET", "/metadata/endpoints?api-version=2022-09-01".to_string(), false),
        (
            "GET",
            format!("/subscriptions/{}/resourcegroups?api-version=2021-04-01", s.sub()),
            true,
        ),
        ("DELETE", format!("{}?{API}", s.vault_path("rg", "v1")), true),
        ("GET", "/subscriptions?api-version=2022-12-01".to_string(), false),
    ] {
        let mut req = s
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), s.url(&path))
            .header("Host", "evil.example");
        if token {
            req = req.bearer_auth(&s.token);
        }
        let r = req.send().await.unwrap();
        assert!(!evil(&r), "{path}: {:?}", r.headers());
        let h = format!("{:?}", r.headers());
        let text = r.text().await.unwrap();
        assert!(!text.contains("evil.example"), "{path}: {text}");
        seen_urls += text.matches(&s.base).count() + h.matches(&s.base).count();
    }
    assert!(seen_urls >= 8, "the answers did carry URLs ({seen_urls})");
}

#[tokio::test]
async fn segments_decoding_to_separators_or_dots_are_refused() {
    let s = start().await;
    s.make_group("rg").await;
    let sub = s.sub().to_string();
    for path in [
        format!("/subscriptions/{sub}/resourceGroups/rg%2Fproviders%2FMicrosoft.RecoveryServices%2Fvaults%2Fv?{API}"),
        format!("/subscriptions/{sub}/resourceGroups/%2e%2e/providers?api-version=2021-04-01"),
        format!("/subscriptions/{sub}/resourceGroups/../resourceGroups/rg?api-version=2021-04-01"),
        format!("/subscriptions/{sub}/resourceGroups/rg%5C..?api-version=2021-04-01"),
    ] {
        // Refused before authorization: with or without a token, the same 400.
        for auth in [String::new(), format!("Authorization: Bearer {}\r\n", s.token)] {
            let (status, text) = raw(
                &s,
                &format!(
                    "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
                    host(&s)
                ),
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(status, 400, "{path}: {text}");
            assert!(text.contains("\"code\":\"BadRequest\""), "{text}");
        }
    }
    let (st, _) = s
        .call("GET", &format!("{}?api-version=2021-04-01", s.rg_path("rg")), None)
        .await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn traffic_files_are_private_and_hold_only_authenticated_exchanges() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let traffic = tmp.path().join("traffic");
    let t2 = traffic.clone();
    let s = start_limited(move |c| c.traffic_dir = Some(t2)).await;
    // The harness's own token request, an anonymous ARM call, a forged token and a discovery GET are
    // not recorded; two authenticated calls are.
    let anon = s
        .call_as(None, "GET", "/subscriptions?api-version=2022-12-01", None)
        .await;
    assert_eq!(anon.status(), 401);
    let forged = s
        .call_as(
            Some("a.b.c"),
            "PUT",
            &format!("{}?api-version=2021-04-01", s.rg_path("x")),
            Some(&json!({"location": "unrecorded-body"})),
        )
        .await;
    assert_eq!(forged.status(), 401);
    let _ = s
        .http
        .get(s.url(&format!("/{}/v2.0/.well-known/openid-configuration", s.boot.tenant_id)))
        .send()
        .await
        .unwrap();
    s.make_group("rg").await;
    let (st, _) = s.call("GET", "/subscriptions?api-version=2022-12-01", None).await;
    assert_eq!(st, 200);
    let files: Vec<_> = std::fs::read_dir(&traffic)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in files {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f:?}");
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("unrecorded-body") && !text.contains("client_secret"),
            "{text}"
        );
        assert!(!text.contains(&s.token), "no bearer token recorded");
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_ne!(doc["liveResponse"]["statusCode"], "401", "{doc}");
    }
}

#[tokio::test]
async fn fast_hashed_and_old_argon2_secrets_both_log_in() {
    let s = start().await;
    let stored = |id: &str| {
        s.offline(|c| c.store().read(|db| db.principal(id)))
            .unwrap()
            .unwrap()
            .secret_hash
    };
    // New secrets are stored in the fast keyed form and log in.
    let p = s.offline(|c| c.create_principal("fast", None)).unwrap();
    assert!(
        stored(&p.client_id).starts_with("$rsv-hmac$"),
        "{}",
        stored(&p.client_id)
    );
    let (st, _, b) = token_request(&s.http, &s, &p.client_id, &p.client_secret).await;
    assert_eq!(st, 200, "{b}");
    // A row written before (Argon2id) still logs in, and is re-hashed to the fast form on the way.
    let old = s.offline(|c| c.create_principal("old", None)).unwrap();
    let argon = rsvault_identity::secrets::hash(&old.client_secret);
    s.offline(|c| c.store().write(|db| db.set_principal_secret(&old.client_id, &argon)))
        .unwrap();
    assert!(stored(&old.client_id).starts_with("$argon2id$"));
    let (st, _, b) = token_request(&s.http, &s, &old.client_id, "wrong").await;
    assert_eq!(st, 401, "{b}");
    let (st, _, b) = token_request(&s.http, &s, &old.client_id, &old.client_secret).await;
    assert_eq!(st, 200, "{b}");
    assert!(stored(&old.client_id).starts_with("$rsv-hmac$"));
    let (st, _, b) = token_request(&s.http, &s, &old.client_id, &old.client_secret).await;
    assert_eq!(st, 200, "{b}");
}
