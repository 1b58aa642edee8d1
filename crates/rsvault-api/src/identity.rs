//! The Entra-compatible endpoints on the same listener: OpenID discovery (v2.0 and ADFS), JWKS, the
//! token endpoint (v2.0, v1 and ADFS paths), instance discovery, and ARM's `metadata/endpoints`.
//! These are anonymous; every other path is ARM and needs a token.
//!
//! The token endpoint is metered: each attempt takes one from its client id's and its peer address's
//! token buckets (a successful one gives them back), so guessing is slowed to the configured rate (429
//! with `Retry-After`) while other clients still log in; an empty client-id bucket binds only addresses
//! that have failed lately, so guessers cannot lock a client out of a clean address; at most a few secret checks run at once (beyond
//! that, 503 at once rather than a queue). A failed login is logged with its client id and peer address,
//! never its secret.

use crate::pipeline::{Ctx, State};
use crate::reply::{status_of, Reply};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;

/// True for the decoded segments of an anonymous path: identity, metadata, or a job export's signed
/// download URL.
pub fn is_identity(s: &[String]) -> bool {
    let lower: Vec<String> = s.iter().map(|x| x.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    matches!(
        l.as_slice(),
        ["metadata", "endpoints"]
            | [_, "v2.0", ".well-known", "openid-configuration"]
            | [_, ".well-known", "openid-configuration"]
            | [_, "discovery", "keys"]
            | [_, "discovery", "v2.0", "keys"]
            | [_, "discovery", "instance"]
            | [_, "oauth2", "token"]
            | [_, "oauth2", "v2.0", "token"]
            | ["rsvault", "exports", _]
    )
}

/// True for a POST to a token endpoint.
pub fn is_token_request(method: &str, segs: &[String]) -> bool {
    method == "POST" && segs.last().is_some_and(|s| s.eq_ignore_ascii_case("token")) && is_identity(segs)
}

fn oauth_error(ctx: &Ctx, status: u16, error: &str, description: &str) -> Reply {
    oauth_error_at(ctx.state, status, error, description)
}

/// The token endpoint's answer when a caller has tried too often: 429, `Retry-After`, an OAuth body.
pub fn throttled(state: &State, retry_after_secs: u64) -> Reply {
    oauth_error_at(
        state,
        429,
        "temporarily_unavailable",
        &format!("AADSTS50196: Too many requests for this client or from this address. Retry after {retry_after_secs} seconds."),
    )
    .header("Retry-After", retry_after_secs.to_string())
}

/// An anonymous request refused before its handler (body too large, too slow, server busy), in OAuth's
/// error shape; the status is [`status_of`] the error's kind.
pub fn failed(state: &State, e: &rsvault_core::Error) -> Reply {
    let status = status_of(e.kind());
    let error = if status >= 500 {
        "temporarily_unavailable"
    } else {
        "invalid_request"
    };
    let r = oauth_error_at(state, status, error, &format!("AADSTS90000: {e}"));
    match e {
        rsvault_core::Error::ServerBusy { retry_after_secs } => r.header("Retry-After", retry_after_secs.to_string()),
        _ => r,
    }
}

fn oauth_error_at(state: &State, status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        json!({
            "error": error,
            "error_description": description,
            "error_codes": [description.strip_prefix("AADSTS").and_then(|d| d.split(':').next()).and_then(|c| c.parse::<u64>().ok()).unwrap_or(0)],
            "timestamp": rsvault_core::time::timestamp(state.control.wall_now()),
            "trace_id": uuid::Uuid::new_v4().to_string(),
            "correlation_id": uuid::Uuid::new_v4().to_string(),
        }),
    )
}

/// Answers an identity or metadata request.
pub fn handle(ctx: &Ctx) -> Reply {
    let control = &ctx.state.control;
    let l: Vec<String> = ctx.segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    if l[0] == "metadata" {
        return metadata(ctx);
    }
    if l[0] == "rsvault" {
        // A job export's signed download URL: the signature is the credential (as a blob SAS is).
        if ctx.method != "GET" {
            let e = rsvault_core::Error::HttpMethodNotSupported(ctx.method.clone());
            return crate::reply::error_reply(&e, &ctx.request_id);
        }
        return match control.export_download(&ctx.segs[2], ctx.query("se"), ctx.query("sig")) {
            Ok(jobs) => Reply::ok(jobs),
            Err(e) => crate::reply::error_reply(&e, &ctx.request_id),
        };
    }
    let tenant = ctx.segs[0].as_str();
    if l[1] == "discovery" && l[2] == "instance" {
        return Reply::ok(json!({
            "tenant_discovery_endpoint": format!("{}/{tenant}/v2.0/.well-known/openid-configuration", ctx.base),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host(ctx), "preferred_cache": host(ctx), "aliases": [host(ctx)]}],
        }));
    }
    if !control.is_our_tenant(tenant) {
        return oauth_error(
            ctx,
            400,
            "invalid_tenant",
            &format!("AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        );
    }
    match l[1].as_str() {
        "v2.0" | ".well-known" => openid_configuration(ctx, tenant),
        "discovery" => match control.issuer() {
            Ok(i) => Reply::ok(i.jwks(control.wall_now())),
            Err(e) => crate::reply::error_reply(&e, &ctx.request_id),
        },
        _ => token(ctx, tenant),
    }
}

fn host(ctx: &Ctx) -> String {
    ctx.base.trim_start_matches("https://").to_string()
}

fn openid_configuration(ctx: &Ctx, tenant: &str) -> Reply {
    let b = &ctx.base;
    let control = &ctx.state.control;
    let adfs = tenant.eq_ignore_ascii_case("adfs");
    let (token, authorize, keys) = if adfs {
        (
            format!("{b}/adfs/oauth2/token"),
            format!("{b}/adfs/oauth2/authorize"),
            format!("{b}/adfs/discovery/keys"),
        )
    } else {
        (
            format!("{b}/{tenant}/oauth2/v2.0/token"),
            format!("{b}/{tenant}/oauth2/v2.0/authorize"),
            format!("{b}/{tenant}/discovery/v2.0/keys"),
        )
    };
    let issuer = control.issuer().map(|i| i.issuer().to_string()).unwrap_or_default();
    Reply::ok(json!({
        "issuer": issuer,
        "authorization_endpoint": authorize,
        "token_endpoint": token,
        "device_authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/devicecode"),
        "jwks_uri": keys,
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "grant_types_supported": ["client_credentials"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "appid"],
        "request_uri_parameter_supported": false,
        "tenant_region_scope": "NA",
        "cloud_instance_name": "rsvault.local",
        "access_token_issuer": issuer,
    }))
}

fn token(ctx: &Ctx, tenant: &str) -> Reply {
    if ctx.method != "POST" {
        return oauth_error(
            ctx,
            405,
            "invalid_request",
            "AADSTS900561: The endpoint only accepts POST requests.",
        );
    }
    let mut form: HashMap<String, String> = url::form_urlencoded::parse(ctx.body).into_owned().collect();
    // client_secret_basic
    if let Some(basic) = ctx
        .header("authorization")
        .and_then(|h| h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic ")))
    {
        if let Some((id, secret)) = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_string(), b.to_string())))
        {
            let dec = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            form.entry("client_id".into()).or_insert_with(|| dec(&id));
            form.entry("client_secret".into()).or_insert_with(|| dec(&secret));
        }
    }
    let guards = &ctx.state.guards;
    let addr = crate::limits::peer_key(ctx.peer.ip()).to_string();
    let client_id: String = form
        .get("client_id")
        .map(|c| c.chars().take(128).collect())
        .unwrap_or_default();
    let client_key = client_id.to_ascii_lowercase();
    // The client id's bucket binds addresses that have failed lately; one that has not (its own bucket
    // is full) still gets its attempt, so guessing a client id from elsewhere cannot lock it out.
    let clean_addr = guards.token_by_addr.is_full(&addr);
    if let Err(wait) = guards.token_by_addr.take(&addr) {
        tracing::warn!(client_id = %client_id, peer = %ctx.peer, "token request throttled (address)");
        return throttled(ctx.state, wait);
    }
    let mut took_client = true;
    if let Err(wait) = guards.token_by_client.take(&client_key) {
        if clean_addr {
            took_client = false;
        } else {
            guards.token_by_addr.give_back(&addr);
            tracing::warn!(client_id = %client_id, peer = %ctx.peer, "token request throttled (client id)");
            return throttled(ctx.state, wait);
        }
    }
    let give_back = || {
        guards.token_by_addr.give_back(&addr);
        if took_client {
            guards.token_by_client.give_back(&client_key);
        }
    };
    let Ok(_check) = guards.secret_checks.clone().try_acquire_owned() else {
        give_back();
        return oauth_error(
            ctx,
            503,
            "temporarily_unavailable",
            "AADSTS90033: The server is busy checking other credentials. Retry after 1 second.",
        )
        .header("Retry-After", "1");
    };
    match ctx.state.control.token_request(tenant, &form) {
        Ok(t) => {
            give_back();
            let mut body = json!({
                "token_type": "Bearer",
                "expires_in": t.expires_in,
                "ext_expires_in": t.expires_in,
                "access_token": t.access_token,
            });
            if form.contains_key("resource") && !form.contains_key("scope") {
                // v1 / ADFS endpoint shape
                body["resource"] = Value::String(t.claims.aud.clone());
                body["expires_on"] = json!(t.claims.exp.to_string());
                body["not_before"] = json!(t.claims.nbf.to_string());
            }
            tracing::info!(client_id = %t.claims.appid, object_id = %t.claims.oid, peer = %ctx.peer, "issued access token");
            Reply::ok(body)
        }
        Err(e) => {
            if e.unauthorized {
                tracing::warn!(client_id = %client_id, peer = %ctx.peer, error = e.error, "failed login");
            } else {
                // A malformed request checked no secret: it does not count against the buckets.
                give_back();
                tracing::info!(client_id = %client_id, peer = %ctx.peer, error = e.error, "token request refused");
            }
            oauth_error(ctx, if e.unauthorized { 401 } else { 400 }, e.error, &e.description)
        }
    }
}

/// `GET /metadata/endpoints`: what `az cloud register` reads.
fn metadata(ctx: &Ctx) -> Reply {
    let b = &ctx.base;
    Reply::ok(json!({
        "galleryEndpoint": "",
        "graphEndpoint": "https://graph.windows.net/",
        "graphAudience": "https://graph.windows.net/",
        "portalEndpoint": "",
        "microsoftGraphResourceId": "https://graph.microsoft.com/",
        "batch": "",
        "media": "",
        "sqlManagement": "",
        "vmImageAliasDoc": "",
        "activeDirectoryDataLake": "",
        "appInsightsResourceId": "",
        "appInsightsTelemetryChannelResourceId": "",
        "attestationResourceId": "",
        "synapseAnalyticsResourceId": "",
        "logAnalyticsResourceId": "",
        "ossrDbmsResourceId": "",
        "suffixes": {"storage": "core.windows.net", "keyVaultDns": ".vault.azure.net", "sqlServerHostname": ".database.windows.net",
                     "acrLoginServer": ".azurecr.io", "azureDatalakeStoreFileSystem": "", "azureDatalakeAnalyticsCatalogAndJob": ""},
        "authentication": {
            "loginEndpoint": format!("{b}/"),
            "audiences": ["https://management.core.windows.net/", "https://management.azure.com/"],
            "tenant": "common",
            "identityProvider": "AAD",
        },
        "name": "rsvault",
        "resourceManager": format!("{b}/"),
    }))
}
