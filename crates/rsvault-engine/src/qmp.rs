//! The two JSON protocols a running QEMU guest answers on Unix sockets: QMP (the QEMU Machine
//! Protocol: greeting, `qmp_capabilities`, then `{"execute", "arguments", "id"}` commands whose
//! answers come between asynchronous events) and the QEMU guest agent's (no greeting; a
//! `guest-sync` with a random id first, so a stale answer left on the channel is never taken for
//! this one; then `guest-fsfreeze-freeze` / `guest-fsfreeze-thaw`).
//!
//! Both are one request at a time, with a read timeout; a command's `{"error": {"class",
//! "desc"}}` is [`QmpError::Command`], a broken or silent channel [`QmpError::Io`] or
//! [`QmpError::Protocol`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// A QMP or guest agent failure.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed or timed out.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer did not speak the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A command answered an error.
    #[error("{command}: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`, …).
        class: String,
        /// QEMU's text.
        desc: String,
    },
}

type Result<T> = std::result::Result<T, QmpError>;

/// A JSON-lines channel.
struct Channel {
    w: UnixStream,
    r: BufReader<UnixStream>,
    line: String,
}

impl Channel {
    fn open(path: &Path, timeout: Duration) -> Result<Self> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Self {
            r: BufReader::new(s.try_clone()?),
            w: s,
            line: String::new(),
        })
    }

    fn send(&mut self, v: &Value) -> Result<()> {
        let mut b = serde_json::to_vec(v).map_err(|e| QmpError::Protocol(e.to_string()))?;
        b.push(b'\n');
        self.w.write_all(&b)?;
        Ok(())
    }

    /// The next JSON message (lines that are not JSON objects, such as a guest agent's
    /// `0xff` sync delimiter, are skipped).
    fn recv(&mut self) -> Result<Value> {
        loop {
            self.line.clear();
            if self.r.read_line(&mut self.line)? == 0 {
                return Err(QmpError::Protocol("the peer closed the connection".into()));
            }
            let t = self.line.trim_matches(|c: char| c.is_whitespace() || c == '\u{ff}');
            if t.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(t) {
                Ok(v) if v.is_object() => return Ok(v),
                _ => continue,
            }
        }
    }

    fn set_timeout(&self, t: Duration) -> Result<()> {
        self.w.set_read_timeout(Some(t))?;
        Ok(())
    }
}

fn answer(command: &str, v: Value) -> Result<Value> {
    if let Some(e) = v.get("error") {
        return Err(QmpError::Command {
            command: command.into(),
            class: e["class"].as_str().unwrap_or("GenericError").into(),
            desc: e["desc"].as_str().unwrap_or_default().into(),
        });
    }
    v.get("return")
        .cloned()
        .ok_or_else(|| QmpError::Protocol(format!("{command}: an answer without 'return'")))
}

/// A QMP session.
pub struct Qmp {
    ch: Channel,
    next_id: u64,
    /// Events seen while waiting for answers, oldest first.
    events: Vec<Value>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation.
    pub fn connect(path: &Path) -> Result<Self> {
        let mut ch = Channel::open(path, Duration::from_secs(30))?;
        let greeting = ch.recv()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol("no QMP greeting".into()));
        }
        let mut q = Self {
            ch,
            next_id: 0,
            events: Vec::new(),
        };
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// Runs `command` with `args`; its `return`, or its error.
    pub fn execute(&mut self, command: &str, args: Value) -> Result<Value> {
        self.next_id += 1;
        let id = format!("rsvault-{}", self.next_id);
        let mut msg = json!({"execute": command, "id": id});
        if args.as_object().is_some_and(|a| !a.is_empty()) {
            msg["arguments"] = args;
        }
        self.ch.send(&msg)?;
        loop {
            let v = self.ch.recv()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if v.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                continue;
            }
            return answer(command, v);
        }
    }

    /// Waits until `done` accepts the events seen (polling `query-block-jobs`-style state is the
    /// caller's): true when it did within `timeout`.
    pub fn wait_event(&mut self, timeout: Duration, mut done: impl FnMut(&Value) -> bool) -> Result<bool> {
        let end = std::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(&mut done) {
                self.events.remove(i);
                return Ok(true);
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.ch.set_timeout(left.max(Duration::from_millis(10)))?;
            let got = self.ch.recv();
            self.ch.set_timeout(Duration::from_secs(30))?;
            match got {
                Ok(v) if v.get("event").is_some() => self.events.push(v),
                Ok(_) => {}
                Err(QmpError::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A QEMU guest agent session.
pub struct GuestAgent {
    ch: Channel,
}

impl GuestAgent {
    /// Connects and synchronises (`guest-sync` with a random id).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let mut g = Self {
            ch: Channel::open(path, timeout)?,
        };
        let id: u32 = rand::random::<u32>() & 0x7fff_ffff;
        g.ch.send(&json!({"execute": "guest-sync", "arguments": {"id": id}}))?;
        loop {
            let v = answer("guest-sync", g.ch.recv()?)?;
            if v.as_u64() == Some(u64::from(id)) {
                return Ok(g);
            }
        }
    }

    /// Runs a guest agent command.
    pub fn execute(&mut self, command: &str, args: Value) -> Result<Value> {
        let mut msg = json!({"execute": command});
        if args.as_object().is_some_and(|a| !a.is_empty()) {
            msg["arguments"] = args;
        }
        self.ch.send(&msg)?;
        answer(command, self.ch.recv()?)
    }

    /// Freezes the guest's file systems; how many it froze.
    pub fn freeze(&mut self) -> Result<u64> {
        let v = self.execute("guest-fsfreeze-freeze", json!({}))?;
        v.as_u64()
            .ok_or_else(|| QmpError::Protocol("guest-fsfreeze-freeze: not a count".into()))
    }

    /// Thaws them; how many it thawed.
    pub fn thaw(&mut self) -> Result<u64> {
        let v = self.execute("guest-fsfreeze-thaw", json!({}))?;
        v.as_u64()
            .ok_or_else(|| QmpError::Protocol("guest-fsfreeze-thaw: not a count".into()))
    }
}
