//! A minimal NBD client (the protocol QEMU exports point-in-time views with), enough to read a
//! running guest's disk: the fixed newstyle handshake over a Unix socket, `NBD_OPT_STRUCTURED_REPLY`,
//! `NBD_OPT_SET_META_CONTEXT` (`base:allocation`, `qemu:dirty-bitmap:NAME`), `NBD_OPT_GO`, then
//! `NBD_CMD_READ` and `NBD_CMD_BLOCK_STATUS` one request at a time per connection, and
//! `NBD_CMD_DISC`. Everything the server sends is checked (magics, cookies, lengths, offsets); any
//! surprise is an error, never a panic. Writes are not part of it: rsvault only reads views.
//!
//! [`NbdReader`] shares one export between the disk pipeline's workers: each read borrows a
//! connection from a small pool (opening one when none is free), so workers read in parallel.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const INFO_EXPORT: u16 = 0;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
const CMD_BLOCK_STATUS: u16 = 7;
const REPLY_FLAG_DONE: u16 = 1;
const REPLY_NONE: u16 = 0;
const REPLY_OFFSET_DATA: u16 = 1;
const REPLY_OFFSET_HOLE: u16 = 2;
const REPLY_BLOCK_STATUS: u16 = 5;
/// `base:allocation`: the range reads as zeros.
pub(crate) const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:*`: the range is dirty.
pub(crate) const STATE_DIRTY: u32 = 1;
/// Largest request sent (QEMU accepts 32 MiB).
const MAX_REQUEST: u32 = 32 << 20;

/// An NBD failure: the server's refusal or a broken conversation.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed.
    #[error("NBD: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not speak the protocol as expected.
    #[error("NBD protocol: {0}")]
    Protocol(String),
    /// The server refused an option or a command.
    #[error("NBD server refused {what}: {message}")]
    Refused {
        /// The option or command.
        what: String,
        /// The server's error (code and text).
        message: String,
    },
}

type Result<T> = std::result::Result<T, NbdError>;

fn proto(s: impl Into<String>) -> NbdError {
    NbdError::Protocol(s.into())
}

/// One extent of a block status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

/// One connection to an export, negotiated.
pub(crate) struct NbdConn {
    s: UnixStream,
    size: u64,
    /// Context ids by name.
    contexts: HashMap<String, u32>,
    cookie: u64,
}

fn read_u16(r: &mut impl Read) -> Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
fn read_u32(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}
fn read_vec(r: &mut impl Read, n: usize) -> Result<Vec<u8>> {
    if n > MAX_REQUEST as usize + 64 {
        return Err(proto(format!("a {n}-byte message")));
    }
    let mut v = vec![0u8; n];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn name_field(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl NbdConn {
    /// Connects to `socket`, negotiates structured replies and the meta `contexts` (all must be
    /// granted), and enters transmission on `export`.
    pub fn connect(socket: &Path, export: &str, contexts: &[String]) -> Result<Self> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.set_write_timeout(Some(Duration::from_secs(120)))?;
        if read_u64(&mut s)? != NBDMAGIC || read_u64(&mut s)? != IHAVEOPT {
            return Err(proto("not a newstyle NBD server"));
        }
        let flags = read_u16(&mut s)?;
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(proto("the server does not speak fixed newstyle"));
        }
        let no_zeroes = flags & FLAG_NO_ZEROES;
        s.write_all(&u32::from(FLAG_FIXED_NEWSTYLE | no_zeroes).to_be_bytes())?;
        let mut c = NbdConn {
            s,
            size: 0,
            contexts: HashMap::new(),
            cookie: 0,
        };
        c.option(OPT_STRUCTURED_REPLY, &[])?;
        c.expect_ack(OPT_STRUCTURED_REPLY, "structured replies")?;
        if !contexts.is_empty() {
            let mut d = Vec::new();
            name_field(&mut d, export);
            d.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
            for q in contexts {
                name_field(&mut d, q);
            }
            c.option(OPT_SET_META_CONTEXT, &d)?;
            loop {
                let (ty, data) = c.option_reply(OPT_SET_META_CONTEXT, "meta contexts")?;
                match ty {
                    REP_ACK => break,
                    REP_META_CONTEXT if data.len() >= 4 => {
                        let id = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
                        let name = String::from_utf8_lossy(&data[4..]).into_owned();
                        c.contexts.insert(name, id);
                    }
                    _ => return Err(proto(format!("unexpected reply {ty} to SET_META_CONTEXT"))),
                }
            }
            if let Some(missing) = contexts.iter().find(|q| !c.contexts.contains_key(*q)) {
                return Err(NbdError::Refused {
                    what: format!("meta context '{missing}'"),
                    message: "not offered by the export".into(),
                });
            }
        }
        let mut d = Vec::new();
        name_field(&mut d, export);
        d.extend_from_slice(&0u16.to_be_bytes());
        c.option(OPT_GO, &d)?;
        let mut got_size = false;
        loop {
            let (ty, data) = c.option_reply(OPT_GO, &format!("export '{export}'"))?;
            match ty {
                REP_ACK => break,
                REP_INFO if data.len() >= 2 => {
                    if u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT && data.len() >= 12 {
                        c.size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
                        got_size = true;
                    }
                }
                _ => return Err(proto(format!("unexpected reply {ty} to GO"))),
            }
        }
        if !got_size {
            return Err(proto("the server did not give the export's size"));
        }
        Ok(c)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn option(&mut self, opt: u32, data: &[u8]) -> Result<()> {
        let mut m = Vec::with_capacity(16 + data.len());
        m.extend_from_slice(&IHAVEOPT.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m)?;
        Ok(())
    }

    /// One option reply: its type and data; an error reply is [`NbdError::Refused`].
    fn option_reply(&mut self, opt: u32, what: &str) -> Result<(u32, Vec<u8>)> {
        if read_u64(&mut self.s)? != REPLY_MAGIC {
            return Err(proto("bad option reply magic"));
        }
        if read_u32(&mut self.s)? != opt {
            return Err(proto("an option reply for another option"));
        }
        let ty = read_u32(&mut self.s)?;
        let len = read_u32(&mut self.s)? as usize;
        let data = read_vec(&mut self.s, len)?;
        if ty & 0x8000_0000 != 0 {
            return Err(NbdError::Refused {
                what: what.into(),
                message: format!("error {:#x}: {}", ty, String::from_utf8_lossy(&data)),
            });
        }
        Ok((ty, data))
    }

    fn expect_ack(&mut self, opt: u32, what: &str) -> Result<()> {
        match self.option_reply(opt, what)? {
            (REP_ACK, _) => Ok(()),
            (ty, _) => Err(proto(format!("unexpected reply {ty} to {what}"))),
        }
    }

    fn request(&mut self, ty: u16, flags: u16, off: u64, len: u32) -> Result<u64> {
        self.cookie += 1;
        let mut m = [0u8; 28];
        m[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m[4..6].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&ty.to_be_bytes());
        m[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        m[16..24].copy_from_slice(&off.to_be_bytes());
        m[24..28].copy_from_slice(&len.to_be_bytes());
        self.s.write_all(&m)?;
        Ok(self.cookie)
    }

    /// Reads the reply chunks of request `cookie`, giving each (type, payload) to `chunk`, until
    /// the last one. An error chunk or a simple error reply is [`NbdError::Refused`].
    fn replies(&mut self, cookie: u64, what: &str, mut chunk: impl FnMut(u16, &[u8]) -> Result<()>) -> Result<()> {
        loop {
            let magic = read_u32(&mut self.s)?;
            if magic == SIMPLE_REPLY_MAGIC {
                let err = read_u32(&mut self.s)?;
                if read_u64(&mut self.s)? != cookie {
                    return Err(proto("a reply to another request"));
                }
                if err != 0 {
                    return Err(NbdError::Refused {
                        what: what.into(),
                        message: format!("error {err}"),
                    });
                }
                return Err(proto("a simple reply where structured replies were negotiated"));
            }
            if magic != STRUCTURED_REPLY_MAGIC {
                return Err(proto("bad reply magic"));
            }
            let flags = read_u16(&mut self.s)?;
            let ty = read_u16(&mut self.s)?;
            if read_u64(&mut self.s)? != cookie {
                return Err(proto("a reply to another request"));
            }
            let len = read_u32(&mut self.s)? as usize;
            let payload = read_vec(&mut self.s, len)?;
            if ty & 0x8000 != 0 {
                let code = payload
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4")));
                let mlen = payload.get(4..6).map_or(0, |b| u16::from_be_bytes([b[0], b[1]])) as usize;
                let msg = payload
                    .get(6..6 + mlen)
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                return Err(NbdError::Refused {
                    what: what.into(),
                    message: format!("error {code}: {msg}"),
                });
            }
            if ty != REPLY_NONE {
                chunk(ty, &payload)?;
            }
            if flags & REPLY_FLAG_DONE != 0 {
                return Ok(());
            }
        }
    }

    /// Reads `buf.len()` bytes at `off` (holes the server reports read as zeros).
    pub fn read_at(&mut self, buf: &mut [u8], off: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let len = (buf.len() - done).min(MAX_REQUEST as usize);
            let base = off + done as u64;
            let part = &mut buf[done..done + len];
            let cookie = self.request(CMD_READ, 0, base, len as u32)?;
            let mut covered = 0usize;
            self.replies(cookie, "a read", |ty, p| {
                if p.len() < 8 {
                    return Err(proto("a short read chunk"));
                }
                let at = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
                let rel = at
                    .checked_sub(base)
                    .ok_or_else(|| proto("a read chunk before the request"))? as usize;
                let n = match ty {
                    REPLY_OFFSET_DATA => p.len() - 8,
                    REPLY_OFFSET_HOLE if p.len() >= 12 => u32::from_be_bytes(p[8..12].try_into().expect("4")) as usize,
                    _ => return Err(proto(format!("unexpected chunk type {ty} in a read"))),
                };
                let end = rel
                    .checked_add(n)
                    .filter(|&e| e <= len)
                    .ok_or_else(|| proto("a read chunk past the request"))?;
                match ty {
                    REPLY_OFFSET_DATA => part[rel..end].copy_from_slice(&p[8..]),
                    _ => part[rel..end].fill(0),
                }
                covered += n;
                Ok(())
            })?;
            if covered != len {
                return Err(proto(format!("a read answered {covered} of {len} bytes")));
            }
            done += len;
        }
        Ok(())
    }

    /// The extents of context `context` from `off`, covering at least part of `[off, off+len)`
    /// (servers may answer short; callers loop).
    pub fn block_status(&mut self, context: &str, off: u64, len: u64) -> Result<Vec<Extent>> {
        let id = *self
            .contexts
            .get(context)
            .ok_or_else(|| proto(format!("meta context '{context}' was not negotiated")))?;
        let len = len.min(u64::from(!0xfffu32)) as u32;
        let cookie = self.request(CMD_BLOCK_STATUS, 0, off, len)?;
        let mut out = Vec::new();
        self.replies(cookie, "a block status", |ty, p| {
            if ty != REPLY_BLOCK_STATUS || p.len() < 4 || (p.len() - 4) % 8 != 0 {
                return Err(proto(format!("unexpected chunk type {ty} in a block status")));
            }
            if u32::from_be_bytes(p[..4].try_into().expect("4")) != id {
                return Ok(());
            }
            let mut at = off;
            for d in p[4..].chunks_exact(8) {
                let length = u64::from(u32::from_be_bytes(d[..4].try_into().expect("4")));
                let flags = u32::from_be_bytes(d[4..].try_into().expect("4"));
                if length == 0 {
                    return Err(proto("an empty extent"));
                }
                out.push(Extent {
                    offset: at,
                    length,
                    flags,
                });
                at += length;
            }
            Ok(())
        })?;
        if out.is_empty() {
            return Err(proto("a block status without extents"));
        }
        Ok(out)
    }

    /// Every extent of `context` over `[off, off+len)`, clipped to it.
    pub fn block_status_all(&mut self, context: &str, off: u64, len: u64) -> Result<Vec<Extent>> {
        let end = off + len;
        let mut at = off;
        let mut out = Vec::new();
        while at < end {
            for mut e in self.block_status(context, at, end - at)? {
                if e.offset != at {
                    return Err(proto("extents out of order"));
                }
                e.length = e.length.min(end - at);
                at += e.length;
                out.push(e);
                if at >= end {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Ends the conversation politely.
    pub fn disconnect(mut self) {
        let _ = self.request(CMD_DISC, 0, 0, 0);
        let _ = self.s.shutdown(std::net::Shutdown::Both);
    }
}

/// An export read by several threads: a pool of connections, each read on one of them.
pub(crate) struct NbdReader {
    socket: PathBuf,
    export: String,
    contexts: Vec<String>,
    size: u64,
    pool: Mutex<Vec<NbdConn>>,
    /// Bytes read from the export (data and holes alike).
    pub bytes_read: AtomicU64,
}

impl NbdReader {
    /// Opens a first connection (checking the export and its contexts).
    pub fn open(socket: &Path, export: &str, contexts: Vec<String>) -> Result<Self> {
        let c = NbdConn::connect(socket, export, &contexts)?;
        Ok(Self {
            socket: socket.to_path_buf(),
            export: export.to_string(),
            contexts,
            size: c.size(),
            pool: Mutex::new(vec![c]),
            bytes_read: AtomicU64::new(0),
        })
    }

    /// The export's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Runs `f` on a free connection (a new one when none is free); a connection that failed is
    /// dropped, not reused.
    pub fn with<T>(&self, f: impl FnOnce(&mut NbdConn) -> Result<T>) -> Result<T> {
        let got = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut c = match got {
            Some(c) => c,
            None => NbdConn::connect(&self.socket, &self.export, &self.contexts)?,
        };
        let r = f(&mut c);
        if r.is_ok() {
            self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
        r
    }

    /// Reads `buf.len()` bytes at `off`.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.with(|c| c.read_at(buf, off))?;
        self.bytes_read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Whether `[off, off+len)` reads as zeros, by `base:allocation` (false when not negotiated).
    pub fn is_zero(&self, off: u64, len: u64) -> Result<bool> {
        if !self.contexts.iter().any(|c| c == "base:allocation") {
            return Ok(false);
        }
        let ext = self.with(|c| c.block_status_all("base:allocation", off, len))?;
        Ok(ext.iter().all(|e| e.flags & STATE_ZERO != 0))
    }

    /// Closes every pooled connection.
    pub fn close(&self) {
        for c in self.pool.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            c.disconnect();
        }
    }
}

impl Drop for NbdReader {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A server that sends `bytes` and hangs up: the client errs, never panics or hangs.
    fn against(bytes: Vec<u8>) -> NbdError {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let _ = c.write_all(&bytes);
            let _ = c.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 4096];
            while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
        });
        let err = NbdConn::connect(&path, "x", &["base:allocation".into()])
            .err()
            .expect("an error");
        t.join().unwrap();
        err
    }

    fn greeting(flags: u16) -> Vec<u8> {
        let mut g = NBDMAGIC.to_be_bytes().to_vec();
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&flags.to_be_bytes());
        g
    }

    fn reply(opt: u32, ty: u32, data: &[u8]) -> Vec<u8> {
        let mut r = REPLY_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&opt.to_be_bytes());
        r.extend_from_slice(&ty.to_be_bytes());
        r.extend_from_slice(&(data.len() as u32).to_be_bytes());
        r.extend_from_slice(data);
        r
    }

    #[test]
    fn a_server_that_breaks_the_protocol_is_an_error() {
        assert!(matches!(
            against(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
            NbdError::Protocol(_)
        ));
        assert!(matches!(against(greeting(0)), NbdError::Protocol(m) if m.contains("fixed newstyle")));
        // Structured replies refused with an error reply and its message.
        let mut b = greeting(3);
        b.extend(reply(OPT_STRUCTURED_REPLY, 0x8000_0001, b"unsupported"));
        assert!(matches!(against(b), NbdError::Refused { message, .. } if message.contains("unsupported")));
        // A meta context not granted.
        let mut b = greeting(3);
        b.extend(reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        b.extend(reply(OPT_SET_META_CONTEXT, REP_ACK, &[]));
        assert!(matches!(against(b), NbdError::Refused { what, .. } if what.contains("base:allocation")));
        // A huge announced length is refused before it is allocated.
        let mut b = greeting(3);
        b.extend(reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]));
        let mut r = REPLY_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&OPT_SET_META_CONTEXT.to_be_bytes());
        r.extend_from_slice(&REP_META_CONTEXT.to_be_bytes());
        r.extend_from_slice(&u32::MAX.to_be_bytes());
        b.extend(r);
        assert!(matches!(against(b), NbdError::Protocol(m) if m.contains("byte message")));
        // A hang-up mid-handshake.
        assert!(matches!(against(greeting(3)[..10].to_vec()), NbdError::Io(_)));
    }
}
