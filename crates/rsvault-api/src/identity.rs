//! The Entra-compatible endpoints on the same listener: OpenID discovery (v2.0 and ADFS), JWKS, the
//! token endpoint (v2.0, v1 and ADFS paths), instance discovery, and ARM's `metadata/endpoints`.
//! These are anonymous; every other path is ARM and needs a token.

use crate::pipeline::Ctx;
use crate::reply::Reply;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;

fn segs(path: &str) -> Vec<String> {
    rsvault_core::ids::decode_path(path).unwrap_or_default()
}

/// True for the anonymous identity and metadata paths.
pub fn is_identity_path(path: &str) -> bool {
    let s = segs(path);
    let s: Vec<&str> = s.iter().map(String::as_str).collect();
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
    )
}

fn oauth_error(ctx: &Ctx, status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        json!({
            "error": error,
            "error_description": description,
            "error_codes": [description.strip_prefix("AADSTS").and_then(|d| d.split(':').next()).and_then(|c| c.parse::<u64>().ok()).unwrap_or(0)],
            "timestamp": rsvault_core::time::timestamp(ctx.state.control.wall_now()),
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
    match ctx.state.control.token_request(tenant, &form) {
        Ok(t) => {
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
            tracing::info!(client_id = %t.claims.appid, "issued access token");
            Reply::ok(body)
        }
        Err(e) => oauth_error(ctx, if e.unauthorized { 401 } else { 400 }, e.error, &e.description),
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
