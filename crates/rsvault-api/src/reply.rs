//! Answers and their rendering: ARM's headers, its error envelope, and the one mapping from
//! [`ErrorKind`] to HTTP status.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use rsvault_core::{Error, ErrorKind};
use serde_json::{json, Value};

/// What a handler answers, before ARM's common headers are added.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Option<Body>,
    pub headers: Vec<(String, String)>,
}

/// A reply's JSON body: a value, or text already rendered (a page of stored rows spliced together).
#[derive(Debug, Clone)]
pub enum Body {
    Value(Value),
    Rendered(String),
}

impl Body {
    /// The body as a JSON value (rendered text parsed back: for recordings and tests, not the hot path).
    pub fn to_value(&self) -> Value {
        match self {
            Body::Value(v) => v.clone(),
            Body::Rendered(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.clone())),
        }
    }
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(Body::Value(body)),
            headers: vec![],
        }
    }

    /// A 200 whose body is JSON text rendered already.
    pub fn rendered(text: String) -> Reply {
        Reply {
            status: 200,
            body: Some(Body::Rendered(text)),
            headers: vec![],
        }
    }

    pub fn ok(body: Value) -> Reply {
        Reply::json(200, body)
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: None,
            headers: vec![],
        }
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Reply {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

/// The HTTP status of an error kind — the only place rsvault chooses one for an error.
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::BadRequest => 400,
        ErrorKind::Unauthorized => 401,
        ErrorKind::Forbidden => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::MethodNotAllowed => 405,
        ErrorKind::Conflict => 409,
        ErrorKind::PreconditionFailed => 412,
        ErrorKind::PayloadTooLarge => 413,
        ErrorKind::InsufficientStorage => 507,
        ErrorKind::RequestTimeout => 408,
        ErrorKind::ServiceUnavailable => 503,
        ErrorKind::TooManyRequests => 429,
        ErrorKind::Internal => 500,
    }
}

/// The ARM error envelope for a domain error. Internal details are logged, not shown.
pub fn error_reply(e: &Error, request_id: &str) -> Reply {
    let message = match e.kind() {
        ErrorKind::Internal => {
            tracing::error!(request_id, error = %e, "internal error");
            format!("The server encountered an internal error. Please retry the request. Request id: {request_id}.")
        }
        _ => e.to_string(),
    };
    let mut err = json!({"code": e.code(), "message": message});
    if let Some(t) = e.target() {
        err["target"] = json!(t);
    }
    let reply = Reply::json(status_of(e.kind()), json!({ "error": err }));
    match e {
        Error::ServerBusy { retry_after_secs } | Error::Throttled { retry_after_secs, .. } => {
            reply.header("Retry-After", retry_after_secs.to_string())
        }
        _ => reply,
    }
}

/// Renders a reply into an HTTP response with the given extra headers.
pub fn render(reply: Reply, common: &[(String, String)], head: bool) -> Response<Full<Bytes>> {
    let has_body = reply.body.is_some();
    let body = match (reply.body, head) {
        (Some(Body::Value(v)), false) => Bytes::from(serde_json::to_vec(&v).expect("JSON values serialize")),
        (Some(Body::Rendered(t)), false) => Bytes::from(t.into_bytes()),
        _ => Bytes::new(),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    if has_body {
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    for (k, v) in common.iter().chain(&reply.headers) {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            h.append(k, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_the_arm_envelope() {
        let r = error_reply(&Error::ResourceGroupNotFound("rg".into()), "id");
        assert_eq!(r.status, 404);
        assert_eq!(
            r.body.unwrap().to_value(),
            json!({"error": {"code": "ResourceGroupNotFound", "message": "Resource group 'rg' could not be found."}})
        );
        let r = error_reply(&Error::internal("disk on fire at /secret/path"), "id");
        assert_eq!(r.status, 500);
        assert!(!r.body.unwrap().to_value().to_string().contains("/secret/path"));
    }
}
