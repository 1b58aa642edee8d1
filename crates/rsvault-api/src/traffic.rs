//! Optional recording of ARM exchanges in the traffic format `oav validate-traffic` reads:
//! one JSON file per exchange with `liveRequest` and `liveResponse`. The `Authorization` header is never
//! written. Only exchanges of an authenticated caller are recorded (the pipeline decides), each in a new
//! file readable by its owner only (0600).

use crate::reply::Reply;
use bytes::Bytes;
use hyper::HeaderMap;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes exchanges into a directory.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    seq: AtomicU64,
}

/// One request and its answer.
pub struct Exchange<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub request_headers: &'a HeaderMap,
    pub request_body: &'a Bytes,
    pub reply: &'a Reply,
    pub op: Option<String>,
}

impl Recorder {
    pub fn new(dir: &Path) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        Ok(Recorder {
            dir: dir.to_path_buf(),
            seq: AtomicU64::new(0),
        })
    }

    pub fn record(&self, x: &Exchange) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let headers: Map<String, Value> = x
            .request_headers
            .iter()
            .filter(|(k, _)| *k != hyper::header::AUTHORIZATION)
            .filter_map(|(k, v)| Some((k.as_str().to_string(), json!(v.to_str().ok()?))))
            .collect();
        let request_body = if x.request_body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(x.request_body).unwrap_or_else(|_| json!(String::from_utf8_lossy(x.request_body)))
        };
        let mut response_headers: Map<String, Value> =
            x.reply.headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        if x.reply.body.is_some() {
            response_headers.insert("content-type".into(), json!("application/json; charset=utf-8"));
        }
        let doc = json!({
            "liveRequest": {"method": x.method, "url": x.url, "headers": headers, "body": request_body},
            "liveResponse": {"statusCode": x.reply.status.to_string(), "headers": response_headers, "body": x.reply.body.as_ref().map_or(Value::Null, |b| b.to_value())},
            "rsvaultOperation": x.op,
        });
        let name = format!("{n:06}-{}-{}.json", x.method, x.op.as_deref().unwrap_or("Unrouted"));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.dir.join(&name))?;
            f.write_all(&serde_json::to_vec_pretty(&doc).unwrap_or_default())
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "could not record traffic");
        }
    }
}
