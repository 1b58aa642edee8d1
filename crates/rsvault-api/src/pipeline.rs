//! The request pipeline: every request, identity or ARM, passes through [`handle`].
//!
//! Order for ARM requests (each step answers with its ARM error and stops): body size → bearer token →
//! route → `api-version` → subscription exists → role grants the route's action at the path's scope →
//! body is JSON → conditional headers → handler. The handler runs on the blocking pool (the control plane
//! does SQLite and hashing), so async workers never wait on disk.

use crate::reply::{error_reply, render, Reply};
use crate::routes::{self, Access, Op, Params, Route};
use crate::traffic::{Exchange, Recorder};
use crate::{arm, identity, Config};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use rsvault_control::{Caller, Control};
use rsvault_core::apiversion::ApiVersion;
use rsvault_core::ids::decode_path;
use rsvault_core::{time, Error};
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// Everything a request handler can reach.
pub struct State {
    pub control: Arc<Control>,
    pub config: Config,
    pub base_url: String,
    pub recorder: Option<Recorder>,
}

/// A parsed request, as handlers see it.
pub struct Ctx<'a> {
    pub state: &'a State,
    pub method: String,
    /// The raw path as sent (its casing is echoed in returned URLs).
    pub raw_path: String,
    pub segs: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
    /// `https://host:port` as the client addressed us.
    pub base: String,
    pub request_id: String,
}

impl Ctx<'_> {
    /// A query parameter, by case-insensitive name.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn api_version(&self) -> &str {
        self.query("api-version").unwrap_or_default()
    }

    /// The body as JSON (`null` when empty), or `InvalidRequestContent`.
    pub fn json(&self) -> Result<Value, Error> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(self.body).map_err(|e| Error::InvalidRequestContent(e.to_string()))
    }

    /// The decoded path as an ARM scope.
    pub fn scope(&self) -> String {
        format!("/{}", self.segs.join("/"))
    }
}

fn header_or_new(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Handles one HTTP request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = req.into_parts();
    let correlation = header_or_new(&parts.headers, "x-ms-correlation-request-id");
    let client_request_id = parts
        .headers
        .get("x-ms-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let base = host
        .map(|h| format!("https://{h}"))
        .unwrap_or_else(|| state.base_url.clone());
    let method = parts.method.as_str().to_string();
    let raw_path = parts.uri.path().to_string();
    let query_text = parts.uri.query().unwrap_or_default().to_string();

    let body = match Limited::new(body, state.config.max_body_bytes).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(Error::PayloadTooLarge {
            limit: state.config.max_body_bytes,
        }),
        Err(e) => Err(Error::InvalidRequestContent(format!(
            "the request body could not be read: {e}"
        ))),
    };
    let is_identity = identity::is_identity_path(&raw_path);

    let st = state.clone();
    let (m, p, q, b, hdrs, rid) = (
        method.clone(),
        raw_path.clone(),
        query_text.clone(),
        base.clone(),
        parts.headers.clone(),
        request_id.clone(),
    );
    let (reply, op) = match body {
        Err(e) => (error_reply(&e, &request_id), None),
        Ok(bytes) => {
            let body_for_record = bytes.clone();
            let res = tokio::task::spawn_blocking(move || process(&st, &m, &p, &q, &hdrs, &bytes, &b, &rid)).await;
            let (reply, op) = match res {
                Ok(x) => x,
                Err(e) => (
                    error_reply(&Error::internal(format!("handler panicked: {e}")), &request_id),
                    None,
                ),
            };
            if let (Some(rec), false) = (&state.recorder, is_identity) {
                rec.record(&Exchange {
                    method: &method,
                    url: &format!(
                        "{base}{raw_path}{}",
                        if query_text.is_empty() {
                            String::new()
                        } else {
                            format!("?{query_text}")
                        }
                    ),
                    request_headers: &parts.headers,
                    request_body: &body_for_record,
                    reply: &reply,
                    op: op.map(|o: Op| format!("{o:?}")),
                });
            }
            (reply, op)
        }
    };

    let now = state.control.wall_now();
    let mut common = vec![
        ("x-ms-request-id".to_string(), request_id.clone()),
        ("x-ms-correlation-request-id".to_string(), correlation.clone()),
        ("Date".to_string(), time::http_date(now)),
        ("Cache-Control".to_string(), "no-cache".to_string()),
        (
            "Strict-Transport-Security".to_string(),
            "max-age=31536000; includeSubDomains".to_string(),
        ),
        ("X-Content-Type-Options".to_string(), "nosniff".to_string()),
    ];
    if let Some(c) = &client_request_id {
        common.push(("x-ms-client-request-id".to_string(), c.clone()));
    }
    if !is_identity {
        let (name, left) = match method.as_str() {
            "GET" | "HEAD" => ("x-ms-ratelimit-remaining-subscription-reads", "11999"),
            "DELETE" => ("x-ms-ratelimit-remaining-subscription-deletes", "11999"),
            _ => ("x-ms-ratelimit-remaining-subscription-writes", "1199"),
        };
        common.push((name.to_string(), left.to_string()));
    }
    let response = render(&reply, &common, method == "HEAD");
    tracing::info!(
        request_id = %request_id,
        correlation_id = %correlation,
        method = %method,
        path = %raw_path,
        op = ?op,
        status = reply.status,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

#[allow(clippy::too_many_arguments)]
fn process(
    state: &State,
    method: &str,
    raw_path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
    base: &str,
    request_id: &str,
) -> (Reply, Option<Op>) {
    let segs = match decode_path(raw_path) {
        Ok(s) => s,
        Err(e) => return (error_reply(&e, request_id), None),
    };
    let ctx = Ctx {
        state,
        method: method.to_string(),
        raw_path: raw_path.to_string(),
        segs,
        query: url::form_urlencoded::parse(query.as_bytes()).into_owned().collect(),
        headers,
        body,
        base: base.to_string(),
        request_id: request_id.to_string(),
    };
    if identity::is_identity_path(raw_path) {
        return (identity::handle(&ctx), None);
    }
    match arm_request(&ctx) {
        Ok((reply, op)) => (reply, Some(op)),
        Err((e, op)) => {
            let mut r = error_reply(&e, request_id);
            if e.kind() == rsvault_core::ErrorKind::Unauthorized {
                let desc = e.to_string().replace('"', "'");
                r = r.header(
                    "WWW-Authenticate",
                    format!(
                        "Bearer authorization_uri=\"{}/{}\", error=\"invalid_token\", error_description=\"{desc}\"",
                        ctx.base,
                        state.control.tenant_id()
                    ),
                );
            }
            (r, op)
        }
    }
}

fn bearer(ctx: &Ctx) -> Result<String, Error> {
    let h = ctx.header("authorization").ok_or_else(|| {
        Error::AuthenticationFailed("Authentication failed. The 'Authorization' header is missing.".into())
    })?;
    let (scheme, token) = h.split_once(' ').unwrap_or((h, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Error::AuthenticationFailed(
            "Authentication failed. The 'Authorization' header is provided in an invalid format.".into(),
        ));
    }
    Ok(token.trim().to_string())
}

/// Published api-versions per namespace, for `--strict-api-versions`.
fn published(route: &Route) -> &'static [&'static str] {
    const RECOVERY: &[&str] = &[
        "2016-06-01",
        "2016-08-10",
        "2016-12-01",
        "2017-07-01",
        "2019-05-13",
        "2019-06-15",
        "2020-02-02",
        "2020-10-01",
        "2020-12-01",
        "2021-01-01",
        "2021-02-01",
        "2021-03-01",
        "2021-04-01",
        "2021-06-01",
        "2021-07-01",
        "2021-08-01",
        "2021-10-01",
        "2021-11-01-preview",
        "2021-12-01",
        "2022-01-01",
        "2022-02-01",
        "2022-03-01",
        "2022-04-01",
        "2022-08-01",
        "2022-09-10",
        "2022-09-30-preview",
        "2022-10-01",
        "2023-01-01",
        "2023-02-01",
        "2023-04-01",
        "2023-06-01",
        "2023-08-01",
        "2024-01-01",
        "2024-02-01",
        "2024-04-01",
        "2024-10-01",
        "2025-01-01",
        "2025-02-01",
        "2025-08-01",
        "2026-01-01",
        "2026-02-01",
        "2026-05-01",
        "2026-07-01",
        "2026-08-01",
        "2026-10-01",
        "2026-11-01",
    ];
    const RESOURCES: &[&str] = &[
        "2014-04-01",
        "2015-11-01",
        "2016-02-01",
        "2016-06-01",
        "2016-09-01",
        "2017-05-10",
        "2018-02-01",
        "2018-05-01",
        "2019-05-01",
        "2019-06-01",
        "2019-07-01",
        "2019-10-01",
        "2020-01-01",
        "2020-06-01",
        "2020-10-01",
        "2021-01-01",
        "2021-04-01",
        "2022-09-01",
        "2022-12-01",
        "2023-07-01",
        "2024-03-01",
        "2024-07-01",
        "2024-11-01",
        "2025-03-01",
        "2025-04-01",
    ];
    const AUTHORIZATION: &[&str] = &[
        "2015-07-01",
        "2018-01-01-preview",
        "2018-09-01-preview",
        "2020-04-01-preview",
        "2020-10-01",
        "2022-04-01",
    ];
    if route.pattern.contains("Microsoft.Authorization") {
        AUTHORIZATION
    } else if route.pattern.contains("Microsoft.RecoveryServices") {
        RECOVERY
    } else {
        RESOURCES
    }
}

type ArmResult = Result<(Reply, Op), (Error, Option<Op>)>;

fn arm_request(ctx: &Ctx) -> ArmResult {
    let control = &ctx.state.control;
    let token = bearer(ctx).map_err(|e| (e, None))?;
    let caller: Caller = control.authenticate(&token).map_err(|e| (e, None))?;
    let version = ctx.query("api-version").map(String::from);
    let (route, params) =
        routes::find(&ctx.method, &ctx.segs, version.as_deref().unwrap_or_default()).map_err(|e| (e, None))?;
    let op = route.op;
    let fail = |e: Error| (e, Some(op));
    if let Access::Owner(action) = route.access {
        control.authorize_owner(&caller, action).map_err(fail)?;
        let reply = arm::dispatch(ctx, &caller, op, &params).map_err(fail)?;
        return Ok((reply, op));
    }
    let version = version.ok_or(Error::MissingApiVersion).map_err(fail)?;
    let published = published(route);
    ApiVersion::parse(&version, published).map_err(fail)?;
    if ctx.state.config.strict_api_versions && !ApiVersion::is_published(&version, published) {
        return Err(fail(Error::InvalidApiVersion {
            version,
            supported: published.join(", "),
        }));
    }
    if !params.sub().is_empty() {
        control.subscription_row(params.sub()).map_err(fail)?;
    }
    if let Access::Action(action) = route.access {
        control.authorize(&caller, action, &ctx.scope()).map_err(fail)?;
    }
    let reply = arm::dispatch(ctx, &caller, op, &params).map_err(fail)?;
    Ok((reply, op))
}

/// Used by handlers that page: the absolute `nextLink` for a continuation key.
pub fn next_link(ctx: &Ctx, next: Option<String>) -> Option<String> {
    use base64::Engine;
    let key = next?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &ctx.query {
        if !k.eq_ignore_ascii_case("$skipToken") {
            q.append_pair(k, v);
        }
    }
    // The token is URL-safe base64; `$skipToken` stays literal, as Azure writes it.
    Some(format!(
        "{}{}?{}&$skipToken={token}",
        ctx.base,
        ctx.raw_path,
        q.finish()
    ))
}

/// The continuation key of a request's `$skipToken`, or a 400 for a token rsvault did not issue.
pub fn skip_token(ctx: &Ctx) -> Result<Option<String>, Error> {
    use base64::Engine;
    let Some(t) = ctx.query("$skipToken").or_else(|| ctx.query("$skiptoken")) else {
        return Ok(None);
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(Some)
        .ok_or_else(|| Error::Invalid {
            code: "InvalidSkipToken",
            message: format!("The skip token '{t}' is invalid."),
            target: Some("$skipToken".into()),
        })
}

/// Renders a page as `{"value": […], "nextLink": …}` (no `nextLink` on the last page).
pub fn page_reply(ctx: &Ctx, items: Vec<Value>, next: Option<String>) -> Reply {
    let mut body = serde_json::json!({ "value": items });
    if let Some(link) = next_link(ctx, next) {
        body["nextLink"] = Value::String(link);
    }
    Reply::ok(body)
}

/// `Params` re-exported for handlers.
pub type RouteParams = Params;
