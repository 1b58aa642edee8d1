//! The request pipeline: every request, identity or ARM, passes through [`handle`].
//!
//! *Architecture Invariant*: no body byte before authentication. Order for ARM requests (each step
//! answers with its ARM error and stops): path segments (a segment decoding to `/`, `\`, `.` or `..` is a
//! 400) → bearer token → route → `api-version` → subscription exists → role grants the route's action at
//! the path's scope → only now the body: its declared size, then its bytes, within the body timeout and
//! the server-wide in-flight budget → body is JSON → conditional headers → handler. A refused caller's
//! body is never read. Anonymous (identity) requests read at most [`Limits::anonymous_body_bytes`]; the
//! token endpoint is metered per client id and per address. Blocking work (token checks, SQLite,
//! hashing) runs on the blocking pool, so async workers never wait on disk: an ARM request with a body
//! goes there twice (admission, then its handler, with the body read in between on the async task), one
//! without a body (most reads) once for both.
//!
//! Every URL the server writes (discovery, `metadata/endpoints`, `Location`, `Azure-AsyncOperation`,
//! `nextLink`) starts with the configured base URL, never with the request's `Host`. Each request is
//! logged once, naming its caller (object id and client id) and peer address; only authenticated
//! exchanges are recorded by the traffic recorder.
//!
//! [`Limits::anonymous_body_bytes`]: crate::limits::Limits::anonymous_body_bytes

use crate::limits::Guards;
use crate::reply::{error_reply, render, Reply};
use crate::routes::{self, Access, Op, Params, Route};
use crate::traffic::{Exchange, Recorder};
use crate::{arm, identity, Config};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::{HeaderMap, Request, Response};
use rsvault_control::{Caller, Control};
use rsvault_core::apiversion::ApiVersion;
use rsvault_core::ids::decode_path;
use rsvault_core::{time, Error};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

/// Everything a request handler can reach.
pub struct State {
    pub control: Arc<Control>,
    pub config: Config,
    pub base_url: String,
    pub recorder: Option<Recorder>,
    pub guards: Guards,
}

/// What is known of a request before its body: its line, headers and origin.
pub struct Head {
    pub method: String,
    /// The raw path as sent (its casing is echoed in returned URLs).
    pub raw_path: String,
    pub query_text: String,
    pub headers: HeaderMap,
    /// The configured base URL (`https://host:port`), never the request's `Host`.
    pub base: String,
    pub request_id: String,
    pub peer: SocketAddr,
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
    /// The configured base URL (`https://host:port`), never the request's `Host`.
    pub base: String,
    pub request_id: String,
    /// The peer's address.
    pub peer: SocketAddr,
}

impl<'a> Ctx<'a> {
    fn new(state: &'a State, head: &'a Head, segs: Vec<String>, body: &'a Bytes) -> Ctx<'a> {
        Ctx {
            state,
            method: head.method.clone(),
            raw_path: head.raw_path.clone(),
            segs,
            query: url::form_urlencoded::parse(head.query_text.as_bytes())
                .into_owned()
                .collect(),
            headers: &head.headers,
            body,
            base: head.base.clone(),
            request_id: head.request_id.clone(),
            peer: head.peer,
        }
    }
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

/// What became of a request.
struct Outcome {
    reply: Reply,
    op: Option<Op>,
    /// The authenticated caller, when there is one.
    caller: Option<Caller>,
    /// The body, when it was read.
    body: Bytes,
}

impl Outcome {
    fn refused(reply: Reply) -> Outcome {
        Outcome {
            reply,
            op: None,
            caller: None,
            body: Bytes::new(),
        }
    }
}

/// Handles one HTTP request from `peer`.
pub async fn handle(state: Arc<State>, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = req.into_parts();
    let correlation = header_or_new(&parts.headers, "x-ms-correlation-request-id");
    let client_request_id = parts
        .headers
        .get("x-ms-client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let head = Arc::new(Head {
        method: parts.method.as_str().to_string(),
        raw_path: parts.uri.path().to_string(),
        query_text: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts.headers,
        base: state.base_url.clone(),
        request_id: request_id.clone(),
        peer,
    });
    let segs = decode_path(&head.raw_path);
    let is_identity = segs.as_ref().is_ok_and(|s| identity::is_identity(s));
    let outcome = match segs {
        Err(e) => Outcome::refused(error_reply(&e, &request_id)),
        Ok(segs) if is_identity => identity_request(&state, &head, segs, body).await,
        Ok(segs) => arm_request(&state, &head, segs, body).await,
    };

    // Recorded: authenticated exchanges whose body (if any) was read. A request refused before its
    // body (an authorization failure) would be recorded with a body it never had.
    let unread_body = outcome.body.is_empty()
        && (head.headers.contains_key(hyper::header::TRANSFER_ENCODING)
            || head
                .headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > 0));
    if let (Some(rec), Some(_), false) = (&state.recorder, &outcome.caller, unread_body) {
        rec.record(&Exchange {
            method: &head.method,
            url: &format!(
                "{}{}{}",
                head.base,
                head.raw_path,
                if head.query_text.is_empty() {
                    String::new()
                } else {
                    format!("?{}", head.query_text)
                }
            ),
            request_headers: &head.headers,
            request_body: &outcome.body,
            reply: &outcome.reply,
            op: outcome.op.map(|o: Op| format!("{o:?}")),
        });
    }

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
        let (name, left) = match head.method.as_str() {
            "GET" | "HEAD" => ("x-ms-ratelimit-remaining-subscription-reads", "11999"),
            "DELETE" => ("x-ms-ratelimit-remaining-subscription-deletes", "11999"),
            _ => ("x-ms-ratelimit-remaining-subscription-writes", "1199"),
        };
        common.push((name.to_string(), left.to_string()));
    }
    let status = outcome.reply.status;
    let response = render(outcome.reply, &common, head.method == "HEAD");
    let (object_id, client_id) = outcome
        .caller
        .as_ref()
        .map(|c| (c.object_id.as_str(), c.client_id.as_str()))
        .unwrap_or(("-", "-"));
    tracing::info!(
        request_id = %request_id,
        correlation_id = %correlation,
        method = %head.method,
        path = %head.raw_path,
        op = ?outcome.op,
        status,
        object_id,
        client_id,
        peer = %peer,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads a body of at most `limit` bytes within the body timeout, holding its bytes from the
/// server-wide in-flight budget (the permit returned gives them back when dropped).
async fn read_body(
    state: &State,
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Error> {
    if body.is_end_stream() {
        return Ok((Bytes::new(), None));
    }
    let too_large = || Error::PayloadTooLarge { limit };
    let busy = || Error::ServerBusy { retry_after_secs: 1 };
    let declared = content_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let budget = &state.guards.body_budget;
    let reserve = |n: usize| -> Result<OwnedSemaphorePermit, Error> {
        let n = u32::try_from(n).map_err(|_| too_large())?;
        budget.clone().try_acquire_many_owned(n).map_err(|_| busy())
    };
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut reserved = 0usize;
    if let Some(n) = declared.filter(|n| *n > 0) {
        held = Some(reserve(n as usize)?);
        reserved = n as usize;
    }
    let timeout = state.config.limits.body_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(reserved);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(Error::RequestTimeout {
                    seconds: timeout.as_secs().max(1),
                })
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Error::InvalidRequestContent(format!(
                    "the request body could not be read: {e}"
                )))
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else { continue };
        let len = buf.len() + data.len();
        if len > limit {
            return Err(too_large());
        }
        if len > reserved {
            let more = reserve(len - reserved)?;
            match &mut held {
                Some(p) => p.merge(more),
                None => held = Some(more),
            }
            reserved = len;
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}

/// An anonymous request: discovery, JWKS, `metadata/endpoints` or the token endpoint.
async fn identity_request(state: &Arc<State>, head: &Arc<Head>, segs: Vec<String>, body: Incoming) -> Outcome {
    if identity::is_token_request(&head.method, &segs) {
        let wait = state
            .guards
            .token_by_addr
            .wait_secs(&crate::limits::peer_key(head.peer.ip()).to_string());
        if wait > 0 {
            return Outcome::refused(identity::throttled(state, wait));
        }
    }
    let (bytes, permit) = match read_body(state, body, &head.headers, state.config.limits.anonymous_body_bytes).await {
        Ok(x) => x,
        Err(e) => return Outcome::refused(identity::failed(state, &e)),
    };
    let (st, h) = (state.clone(), head.clone());
    let res = tokio::task::spawn_blocking(move || {
        let ctx = Ctx::new(&st, &h, segs, &bytes);
        identity::handle(&ctx)
    })
    .await;
    drop(permit);
    Outcome::refused(
        res.unwrap_or_else(|e| error_reply(&Error::internal(format!("handler panicked: {e}")), &head.request_id)),
    )
}

/// A request the pipeline admitted: its caller and route.
struct Admitted {
    caller: Caller,
    op: Op,
    params: Params,
}

/// Why a request was refused before its handler, and how far it got.
type Refused = Box<(Error, Option<Op>, Option<Caller>)>;

/// An ARM request: admitted from its headers alone, then its body, then its handler.
async fn arm_request(state: &Arc<State>, head: &Arc<Head>, segs: Vec<String>, body: Incoming) -> Outcome {
    if body.is_end_stream() {
        return bodiless_arm_request(state, head, segs).await;
    }
    let (st, h, sg) = (state.clone(), head.clone(), segs.clone());
    let admitted = tokio::task::spawn_blocking(move || admit(&st, &h, sg))
        .await
        .unwrap_or_else(|e| Err(panicked(e)));
    let a = match admitted {
        Ok(a) => a,
        Err(refused) => return refusal(state, head, *refused),
    };
    let (bytes, permit) = match read_body(state, body, &head.headers, state.config.max_body_bytes).await {
        Ok(x) => x,
        Err(e) => {
            return Outcome {
                reply: arm_error(state, head, &e),
                op: Some(a.op),
                caller: Some(a.caller),
                body: Bytes::new(),
            }
        }
    };
    let (st, h, b) = (state.clone(), head.clone(), bytes.clone());
    let (caller, op, params) = (a.caller.clone(), a.op, a.params);
    let res = tokio::task::spawn_blocking(move || {
        let ctx = Ctx::new(&st, &h, segs, &b);
        arm::dispatch(&ctx, &caller, op, &params)
    })
    .await
    .unwrap_or_else(|e| Err(Error::internal(format!("handler panicked: {e}"))));
    drop(permit);
    Outcome {
        reply: res.unwrap_or_else(|e| arm_error(state, head, &e)),
        op: Some(a.op),
        caller: Some(a.caller),
        body: bytes,
    }
}

/// An ARM request without a body (most GETs and DELETEs): admitted and handled in one trip to the
/// blocking pool, in the same order as [`arm_request`] (there is no body to read in between).
async fn bodiless_arm_request(state: &Arc<State>, head: &Arc<Head>, segs: Vec<String>) -> Outcome {
    let (st, h) = (state.clone(), head.clone());
    let res = tokio::task::spawn_blocking(move || {
        let a = admit(&st, &h, segs.clone())?;
        let empty = Bytes::new();
        let ctx = Ctx::new(&st, &h, segs, &empty);
        let res = arm::dispatch(&ctx, &a.caller, a.op, &a.params);
        Ok::<_, Refused>((res, a.op, a.caller))
    })
    .await
    .unwrap_or_else(|e| Err(panicked(e)));
    match res {
        Ok((res, op, caller)) => Outcome {
            reply: res.unwrap_or_else(|e| arm_error(state, head, &e)),
            op: Some(op),
            caller: Some(caller),
            body: Bytes::new(),
        },
        Err(refused) => refusal(state, head, *refused),
    }
}

/// A blocking task that panicked, as a refusal (an internal error).
fn panicked(e: tokio::task::JoinError) -> Refused {
    Box::new((Error::internal(format!("handler panicked: {e}")), None, None))
}

/// The outcome of a request refused before its handler.
fn refusal(state: &State, head: &Head, (e, op, caller): (Error, Option<Op>, Option<Caller>)) -> Outcome {
    Outcome {
        reply: arm_error(state, head, &e),
        op,
        caller,
        body: Bytes::new(),
    }
}

/// The ARM error reply, with `WWW-Authenticate` on a 401.
fn arm_error(state: &State, head: &Head, e: &Error) -> Reply {
    let mut r = error_reply(e, &head.request_id);
    if e.kind() == rsvault_core::ErrorKind::Unauthorized {
        let desc = e.to_string().replace('"', "'");
        r = r.header(
            "WWW-Authenticate",
            format!(
                "Bearer authorization_uri=\"{}/{}\", error=\"invalid_token\", error_description=\"{desc}\"",
                head.base,
                state.control.tenant_id()
            ),
        );
    }
    r
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
    // Microsoft.Compute's versions (virtualMachines), stable and preview.
    const COMPUTE: &[&str] = &[
        "2015-05-01-preview",
        "2015-06-15",
        "2016-03-30",
        "2016-04-30-preview",
        "2017-03-30",
        "2017-12-01",
        "2018-04-01",
        "2018-06-01",
        "2018-10-01",
        "2019-03-01",
        "2019-07-01",
        "2019-12-01",
        "2020-06-01",
        "2020-12-01",
        "2021-03-01",
        "2021-04-01",
        "2021-07-01",
        "2021-11-01",
        "2022-03-01",
        "2022-08-01",
        "2022-11-01",
        "2023-03-01",
        "2023-07-01",
        "2023-09-01",
        "2024-03-01",
        "2024-07-01",
        "2024-11-01",
        "2025-04-01",
    ];
    // Microsoft.Storage's versions (storageAccounts, fileServices/shares).
    const STORAGE: &[&str] = &[
        "2015-05-01-preview",
        "2015-06-15",
        "2016-01-01",
        "2016-05-01",
        "2016-12-01",
        "2017-06-01",
        "2017-10-01",
        "2018-02-01",
        "2018-03-01-preview",
        "2018-07-01",
        "2018-11-01",
        "2019-04-01",
        "2019-06-01",
        "2020-08-01-preview",
        "2021-01-01",
        "2021-02-01",
        "2021-04-01",
        "2021-06-01",
        "2021-08-01",
        "2021-09-01",
        "2022-05-01",
        "2022-09-01",
        "2023-01-01",
        "2023-04-01",
        "2023-05-01",
        "2024-01-01",
        "2025-01-01",
        "2025-06-01",
    ];
    match namespace(route.pattern) {
        Some(ns) if ns.eq_ignore_ascii_case("Microsoft.Authorization") => AUTHORIZATION,
        Some(ns) if ns.eq_ignore_ascii_case("Microsoft.RecoveryServices") => RECOVERY,
        Some(ns) if ns.eq_ignore_ascii_case("Microsoft.Compute") => COMPUTE,
        Some(ns) if ns.eq_ignore_ascii_case("Microsoft.Storage") => STORAGE,
        _ => RESOURCES,
    }
}

/// The provider namespace a route pattern names: the segment after its last `providers` (the
/// resource's own provider, as ARM resolves the api-version), none for subscriptions and groups.
fn namespace(pattern: &str) -> Option<&str> {
    let segs: Vec<&str> = pattern.split('/').collect();
    let i = segs.iter().rposition(|s| s.eq_ignore_ascii_case("providers"))?;
    segs.get(i + 1).copied()
}

/// Everything that can be decided from the request line and headers: the token, the route, the
/// `api-version`, the subscription and the caller's role for the route's action at the path's scope
/// (the same segments the handler reads).
fn admit(state: &State, head: &Head, segs: Vec<String>) -> Result<Admitted, Refused> {
    let empty = Bytes::new();
    let ctx = Ctx::new(state, head, segs, &empty);
    let control = &state.control;
    let token = bearer(&ctx).map_err(|e| Box::new((e, None, None)))?;
    let caller: Caller = control.authenticate(&token).map_err(|e| Box::new((e, None, None)))?;
    let version = ctx.query("api-version").map(String::from);
    let (route, params) = match routes::find(&ctx.method, &ctx.segs, version.as_deref().unwrap_or_default()) {
        Ok(x) => x,
        Err(e) => return Err(Box::new((e, None, Some(caller)))),
    };
    let op = route.op;
    let fail = |e: Error| Box::new((e, Some(op), Some(caller.clone())));
    if let Access::Owner(action) = route.access {
        control.authorize_owner(&caller, action).map_err(fail)?;
        return Ok(Admitted { caller, op, params });
    }
    let version = version.ok_or(Error::MissingApiVersion).map_err(fail)?;
    let published = published(route);
    ApiVersion::parse(&version, published).map_err(fail)?;
    if state.config.strict_api_versions && !ApiVersion::is_published(&version, published) {
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
    Ok(Admitted { caller, op, params })
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

/// [`page_reply`] of items rendered already: `{"value":[…],"nextLink":…}` spliced as text, so a page of
/// stored rows is not parsed and serialized again.
pub fn rendered_page_reply<T: AsRef<str>>(ctx: &Ctx, items: &[T], next: Option<String>) -> Reply {
    let len: usize = items.iter().map(|i| i.as_ref().len() + 1).sum();
    let mut body = String::with_capacity(len + 64);
    body.push_str("{\"value\":[");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(item.as_ref());
    }
    body.push(']');
    if let Some(link) = next_link(ctx, next) {
        body.push_str(",\"nextLink\":");
        body.push_str(&Value::String(link).to_string());
    }
    body.push('}');
    Reply::rendered(body)
}

/// `Params` re-exported for handlers.
pub type RouteParams = Params;
