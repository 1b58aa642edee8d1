//! A fault-injecting HTTP/1.1 proxy in front of a test object store (Garage's S3 endpoint or
//! Azurite), for the engine's and the API's object-store tests (the API suite includes this file
//! with `#[path]`).
//!
//! It forwards every request to the real store unchanged, one upstream connection per client
//! connection, keeping both alive. When armed, the requests a [`Rule`] matches (method and a part
//! of the path) get a fault instead of reaching the store:
//! * [`Fault::Unavailable`]: `503 Service Unavailable` with the store's own "slow down" error
//!   (S3 `SlowDown`, Azure `ServerBusy`), which clients treat as temporary and retry;
//! * [`Fault::Stall`]: the request is read and never answered (until the proxy is disarmed, when
//!   the connection is closed), so the client's timeout is what ends it.
//!
//! A rule applies to every matching request while armed, or to the next `count` of them only (a
//! burst). [`FaultProxy::injected`] counts the faults given, so a test can tell that its fault
//! really met the client. This is a deliberate fault injector, not a mock: every request it does
//! not fault is served by the real store.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsvault_engine::objstore::ObjectTarget;

/// What a faulted request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `503 Service Unavailable`, with the store's own "slow down" error body.
    Unavailable,
    /// No answer at all, until the proxy is disarmed.
    Stall,
}

/// Which requests a fault meets.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The fault given.
    pub fault: Fault,
    /// Only requests with this method (`PUT`, `GET`, …); any when `None`.
    pub method: Option<&'static str>,
    /// Only requests whose path (with query) contains this; any when `None`.
    pub path_contains: Option<String>,
    /// Only the next this many matching requests (a burst); every one while armed when `None`.
    pub count: Option<usize>,
}

impl Rule {
    /// Every request gets `fault`.
    pub fn all(fault: Fault) -> Rule {
        Rule {
            fault,
            method: None,
            path_contains: None,
            count: None,
        }
    }
    /// Only requests with `method`.
    pub fn method(mut self, method: &'static str) -> Rule {
        self.method = Some(method);
        self
    }
    /// Only requests whose path contains `part`.
    pub fn path(mut self, part: &str) -> Rule {
        self.path_contains = Some(part.to_string());
        self
    }
    /// Only the next `n` matching requests.
    pub fn times(mut self, n: usize) -> Rule {
        self.count = Some(n);
        self
    }
    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path_contains.as_deref().is_none_or(|p| path.contains(p))
            && self.count != Some(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    S3,
    Azure,
}

#[derive(Default)]
struct State {
    rule: Option<Rule>,
    injected: usize,
    forwarded: usize,
}

/// A running proxy (see the module doc); it stops accepting when dropped.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    closed: Arc<AtomicBool>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `closed`.
        let _ = TcpStream::connect(self.addr);
    }
}

impl FaultProxy {
    /// Starts a proxy in front of `target`'s store; returns it and the target as reached
    /// through it (the same store, bucket or container, and credentials).
    pub fn start(target: &ObjectTarget) -> (FaultProxy, ObjectTarget) {
        let (endpoint, flavor) = match target {
            ObjectTarget::S3 { endpoint, .. } => (endpoint.clone(), Flavor::S3),
            ObjectTarget::Azblob { endpoint, .. } => (endpoint.clone(), Flavor::Azure),
        };
        let host_port = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let upstream: SocketAddr = host_port.parse().expect("the test store listens on an IP address");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let closed = Arc::new(AtomicBool::new(false));
        {
            let (state, closed) = (state.clone(), closed.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if closed.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = serve(conn, upstream, flavor, &state);
                    });
                }
            });
        }
        let mut through = target.clone();
        match &mut through {
            ObjectTarget::S3 { endpoint, .. } | ObjectTarget::Azblob { endpoint, .. } => {
                *endpoint = endpoint.replacen(&host_port, &addr.to_string(), 1);
            }
        }
        (FaultProxy { addr, state, closed }, through)
    }

    /// Faults the requests `rule` matches from now on (replacing any earlier rule).
    pub fn arm(&self, rule: Rule) {
        self.state.lock().unwrap().rule = Some(rule);
    }

    /// Forwards every request again (stalled requests' connections are closed).
    pub fn disarm(&self) {
        self.state.lock().unwrap().rule = None;
    }

    /// How many faults were given since the start.
    pub fn injected(&self) -> usize {
        self.state.lock().unwrap().injected
    }

    /// How many requests reached the store through the proxy since the start.
    pub fn forwarded(&self) -> usize {
        self.state.lock().unwrap().forwarded
    }
}

/// One message head: the start line and the header lines, as sent.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn read(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
        let mut start = String::new();
        if r.read_line(&mut start)? == 0 {
            return Ok(None);
        }
        let mut headers = vec![];
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Ok(Some(Head {
            start: start.trim_end_matches(['\r', '\n']).to_string(),
            headers,
        }))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }
}

/// Reads one message body framed as `head` says, raw (chunk framing included).
fn read_body(r: &mut impl BufRead, head: &Head, until_close: bool) -> std::io::Result<Vec<u8>> {
    let mut body = vec![];
    if head.chunked() {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            body.extend_from_slice(line.as_bytes());
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t)?;
                    body.extend_from_slice(t.as_bytes());
                    if t.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            r.read_exact(&mut body[start..])?;
        }
    } else if let Some(n) = head.length() {
        body.resize(n as usize, 0);
        r.read_exact(&mut body)?;
    } else if until_close {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn unavailable(flavor: Flavor, head_only: bool) -> Vec<u8> {
    let (code, message, extra) = match flavor {
        Flavor::S3 => ("SlowDown", "Please reduce your request rate.", ""),
        Flavor::Azure => ("ServerBusy", "The server is busy.", "x-ms-error-code: ServerBusy\r\n"),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn serve(client: TcpStream, upstream: SocketAddr, flavor: Flavor, state: &Mutex<State>) -> std::io::Result<()> {
    let mut out = client.try_clone()?;
    let mut r = BufReader::new(client);
    let mut up: Option<(TcpStream, BufReader<TcpStream>)> = None;
    while let Some(req) = Head::read(&mut r)? {
        let body = read_body(&mut r, &req, false)?;
        let mut parts = req.start.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let fault = {
            let mut st = state.lock().unwrap();
            let f = match &mut st.rule {
                Some(rule) if rule.matches(&method, &path) => {
                    if let Some(n) = &mut rule.count {
                        *n -= 1;
                    }
                    Some(rule.fault)
                }
                _ => None,
            };
            match f {
                Some(_) => st.injected += 1,
                None => st.forwarded += 1,
            }
            f
        };
        match fault {
            Some(Fault::Unavailable) => {
                out.write_all(&unavailable(flavor, method == "HEAD"))?;
                continue;
            }
            Some(Fault::Stall) => {
                // Hold the request unanswered while a stall is armed (at most ten minutes).
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(600)
                    && state
                        .lock()
                        .unwrap()
                        .rule
                        .as_ref()
                        .is_some_and(|r| r.fault == Fault::Stall)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = out.shutdown(Shutdown::Both);
                return Ok(());
            }
            None => {}
        }
        if up.is_none() {
            let s = TcpStream::connect(upstream)?;
            up = Some((s.try_clone()?, BufReader::new(s)));
        }
        let (w, ur) = up.as_mut().unwrap();
        w.write_all(&req.bytes())?;
        w.write_all(&body)?;
        let Some(resp) = Head::read(ur)? else {
            return Ok(());
        };
        let status: u16 = resp.start.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let no_body = method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
        let until_close = !no_body && !resp.chunked() && resp.length().is_none();
        let rbody = if no_body {
            vec![]
        } else {
            read_body(ur, &resp, until_close)?
        };
        out.write_all(&resp.bytes())?;
        out.write_all(&rbody)?;
        let closing = until_close
            || resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if closing {
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
    Ok(())
}
