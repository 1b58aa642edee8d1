//! The restic repository format, for the parts the engine writes and reads itself.
//!
//! rustic_core 0.13 keeps its packer, indexer and decrypting backend private, and its archiver
//! chunks and hashes a file on one thread. The disk pipeline ([`crate::diskpipe`]) therefore
//! writes the format directly, exactly as restic's design document specifies it (repository
//! version 2), and this module holds those pieces:
//!
//! * **Encryption**: every stored object is `nonce (16) ‖ AES-256-CTR ciphertext ‖
//!   Poly1305-AES MAC (16)` under the repository's master key ([`Crypto`]).
//! * **Blobs and packs**: a pack is its encrypted blobs back to back, then the encrypted header
//!   (one entry per blob: type byte — 0 data, 1 tree, 2 compressed data, 3 compressed tree —,
//!   stored length as u32 LE, for compressed blobs the plain length as u32 LE, the 32-byte
//!   blob id), then the header's length as u32 LE ([`PackBuilder`]). A blob's id is the
//!   SHA-256 of its plain content; a pack's id (its file name) is the SHA-256 of the file.
//!   Data blobs are zstd-compressed at the repository's level; a blob that does not shrink is
//!   stored uncompressed (type 0), which every version-2 reader accepts.
//! * **Unpacked files** (index, snapshot): JSON, compressed as `0x02 ‖ zstd(JSON)` in a
//!   version-2 repository, then encrypted; the file's id is the SHA-256 of the encrypted bytes
//!   ([`encode_file`]). Index files list packs with their blobs, offsets and lengths
//!   ([`IndexWriter`]).
//!
//! Files are written through [`crate::backend`]'s storage rules (temp file, fsync, rename,
//! fsync dir); the write order (packs, then index, then snapshot) is the caller's.

use std::collections::HashMap;

use aes256ctr_poly1305aes::aead::{AeadInPlace, Nonce, Tag};
use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use rand::RngCore;
use rustic_core::repofile::{BlobType, IndexFile, KeyFile, MasterKey};
use rustic_core::{FileType, Id, WriteBackend};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::Repo;
use crate::error::{EngineError, Result};
use crate::iobuf::AlignedBuf;

/// Bytes an encryption adds (nonce + MAC).
pub(crate) const CRYPTO_OVERHEAD: usize = 32;

/// A blob or file id: the SHA-256 of its content.
pub(crate) type Hash = [u8; 32];

pub(crate) fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

pub(crate) fn repo_err(what: impl Into<String>) -> EngineError {
    EngineError::Repository(what.into())
}

/// restic's authenticated encryption with the repository's master key.
pub(crate) struct Crypto(Aes256CtrPoly1305Aes);

impl Crypto {
    pub fn new(key: &MasterKey) -> Result<Self> {
        if key.encrypt.len() != 32 || key.mac.k.len() != 16 || key.mac.r.len() != 16 {
            return Err(repo_err("unexpected master key layout"));
        }
        let mut k = [0u8; 64];
        k[0..32].copy_from_slice(&key.encrypt);
        k[32..48].copy_from_slice(&key.mac.k);
        k[48..64].copy_from_slice(&key.mac.r);
        Ok(Self::from_bytes(&k))
    }

    /// From the 64 key bytes: AES-256 key, Poly1305 k, Poly1305 r (a master key's layout, and
    /// that of the scrypt output that encrypts a key file).
    pub fn from_bytes(k: &[u8; 64]) -> Self {
        Self(Aes256CtrPoly1305Aes::new(aes256ctr_poly1305aes::Key::from_slice(k)))
    }

    /// Encrypts `buf[16..16+len]` in place: writes a fresh nonce into `buf[..16]` and the MAC
    /// into `buf[16+len..32+len]` (`buf` must be at least `len + 32` long). Returns `len + 32`.
    pub fn seal_in_place(&self, buf: &mut [u8], len: usize) -> Result<usize> {
        let mut nonce = Nonce::<Aes256CtrPoly1305Aes>::default();
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        buf[..16].copy_from_slice(&nonce);
        let tag = self
            .0
            .encrypt_in_place_detached(&nonce, &[], &mut buf[16..16 + len])
            .map_err(|_| repo_err("encryption failed"))?;
        buf[16 + len..32 + len].copy_from_slice(&tag);
        Ok(len + CRYPTO_OVERHEAD)
    }

    /// `nonce ‖ ciphertext ‖ MAC` of `data`.
    pub fn encrypt(&self, data: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; data.len() + CRYPTO_OVERHEAD];
        out[16..16 + data.len()].copy_from_slice(data);
        self.seal_in_place(&mut out, data.len())?;
        Ok(out)
    }

    /// Checks the MAC and decrypts `data` (nonce ‖ ciphertext ‖ MAC) in place; returns the
    /// plain part's range within `data`.
    pub fn open_in_place(&self, data: &mut [u8]) -> Result<std::ops::Range<usize>> {
        if data.len() < CRYPTO_OVERHEAD {
            return Err(repo_err("encrypted object too short"));
        }
        let n = data.len();
        let nonce = *Nonce::<Aes256CtrPoly1305Aes>::from_slice(&data[..16]);
        let tag = *Tag::<Aes256CtrPoly1305Aes>::from_slice(&data[n - 16..]);
        self.0
            .decrypt_in_place_detached(&nonce, &[], &mut data[16..n - 16], &tag)
            .map_err(|_| repo_err("MAC check failed: the stored object is damaged"))?;
        Ok(16..n - 16)
    }
}

/// Encodes an unpacked file (index, snapshot): JSON, compressed for version 2, encrypted.
pub(crate) fn encode_file(crypto: &Crypto, json: &[u8], zstd: Option<i32>) -> Result<Vec<u8>> {
    match zstd {
        None => crypto.encrypt(json),
        Some(level) => {
            let mut plain = vec![2u8];
            plain.extend_from_slice(
                &zstd::bulk::compress(json, level).map_err(|e| repo_err(format!("compressing: {e}")))?,
            );
            crypto.encrypt(&plain)
        }
    }
}

/// Writes an already encoded unpacked file under its id (SHA-256 of `bytes`); returns the id.
pub(crate) fn write_file(be: &dyn WriteBackend, tpe: FileType, bytes: Vec<u8>) -> Result<Id> {
    let id = Id::new(sha256(&bytes));
    be.write_bytes(tpe, &id, false, bytes.into())?;
    Ok(id)
}

/// scrypt parameters of key files for random 256-bit passwords ([`crate::KeyDerivation`]).
pub(crate) const RANDOM_SECRET_SCRYPT: (u8, u32, u32) = (10, 8, 1);
/// Smallest password [`crate::KeyDerivation::RandomSecret`] accepts: 256 bits in base64.
pub(crate) const RANDOM_SECRET_MIN_LEN: usize = 43;

/// A restic key file for `master`: `scrypt(password, salt, N, r, p)` gives 64 bytes (AES key,
/// Poly1305 k, Poly1305 r), which encrypt the master key's JSON; N, r, p and the 64-byte salt
/// are stored beside it. (rustic_core writes the same format but only with N = 2^17.)
pub(crate) fn key_file(master: &MasterKey, password: &str, (log_n, r, p): (u8, u32, u32)) -> Result<KeyFile> {
    let params = scrypt::Params::new(log_n, r, p).map_err(|e| repo_err(format!("scrypt parameters: {e}")))?;
    let mut salt = vec![0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let mut derived = [0u8; 64];
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut derived).map_err(|e| repo_err(format!("scrypt: {e}")))?;
    let json = serde_json::to_vec(master).map_err(|e| repo_err(format!("master key: {e}")))?;
    Ok(KeyFile {
        hostname: None,
        username: None,
        created: Some(rustic_core::jiff::Zoned::now()),
        kdf: "scrypt".into(),
        n: 1 << log_n,
        r,
        p,
        data: Crypto::from_bytes(&derived).encrypt(&json)?,
        salt,
    })
}

/// One blob as a pack header and an index name it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PackedBlob {
    pub id: Hash,
    pub tpe: BlobType,
    pub offset: u32,
    /// Stored (encrypted) length.
    pub length: u32,
    /// Plain length if the blob is compressed.
    pub uncompressed: Option<u32>,
}

/// A pack being filled (in an aligned buffer, so it can be written with direct I/O).
pub(crate) struct PackBuilder {
    pub data: AlignedBuf,
    pub blobs: Vec<PackedBlob>,
}

impl PackBuilder {
    /// A new pack in `buf` (cleared; a buffer of an earlier pack can be reused).
    pub fn new(mut buf: AlignedBuf) -> Self {
        buf.clear();
        Self {
            data: buf,
            blobs: Vec::new(),
        }
    }

    /// Appends an encrypted blob.
    pub fn add(&mut self, id: Hash, tpe: BlobType, stored: &[u8], uncompressed: Option<u32>) {
        self.blobs.push(PackedBlob {
            id,
            tpe,
            offset: self.data.len() as u32,
            length: stored.len() as u32,
            uncompressed,
        });
        self.data.extend_from_slice(stored);
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Appends the encrypted header and its length; returns the pack file and its id.
    pub fn finish(mut self, crypto: &Crypto) -> Result<(AlignedBuf, Hash, Vec<PackedBlob>)> {
        let mut header = Vec::with_capacity(self.blobs.len() * 41);
        for b in &self.blobs {
            let compressed = b.uncompressed.is_some();
            header.push(match (b.tpe, compressed) {
                (BlobType::Data, false) => 0,
                (BlobType::Tree, false) => 1,
                (BlobType::Data, true) => 2,
                (BlobType::Tree, true) => 3,
            });
            header.extend_from_slice(&b.length.to_le_bytes());
            if let Some(u) = b.uncompressed {
                header.extend_from_slice(&u.to_le_bytes());
            }
            header.extend_from_slice(&b.id);
        }
        let enc = crypto.encrypt(&header)?;
        self.data.extend_from_slice(&enc);
        self.data.extend_from_slice(&(enc.len() as u32).to_le_bytes());
        let id = sha256(self.data.as_slice());
        Ok((self.data, id, self.blobs))
    }
}

#[derive(Serialize)]
struct IndexJson<'a> {
    packs: &'a [PackJson],
}

#[derive(Serialize)]
struct PackJson {
    id: Id,
    blobs: Vec<BlobJson>,
}

#[derive(Serialize)]
struct BlobJson {
    id: Id,
    #[serde(rename = "type")]
    tpe: BlobType,
    offset: u32,
    length: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    uncompressed_length: Option<u32>,
}

/// Collects written packs and writes index files naming them.
#[derive(Default)]
pub(crate) struct IndexWriter {
    packs: Vec<PackJson>,
}

/// Blobs per index file (restic starts a new index file at about this many).
const INDEX_BLOBS_PER_FILE: usize = 50_000;

impl IndexWriter {
    pub fn add(&mut self, pack: Hash, blobs: &[PackedBlob]) {
        self.packs.push(PackJson {
            id: Id::new(pack),
            blobs: blobs
                .iter()
                .map(|b| BlobJson {
                    id: Id::new(b.id),
                    tpe: b.tpe,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed,
                })
                .collect(),
        });
    }

    /// Writes the index file(s). Call only after every pack they name is written.
    pub fn write(&self, be: &dyn WriteBackend, crypto: &Crypto, zstd: Option<i32>) -> Result<()> {
        let mut start = 0;
        while start < self.packs.len() {
            let mut end = start;
            let mut n = 0;
            while end < self.packs.len() && (end == start || n + self.packs[end].blobs.len() <= INDEX_BLOBS_PER_FILE) {
                n += self.packs[end].blobs.len();
                end += 1;
            }
            let json = serde_json::to_vec(&IndexJson {
                packs: &self.packs[start..end],
            })
            .map_err(|e| repo_err(format!("serializing index: {e}")))?;
            write_file(be, FileType::Index, encode_file(crypto, &json, zstd)?)?;
            start = end;
        }
        Ok(())
    }
}

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobLoc {
    pub pack: Hash,
    pub offset: u32,
    pub length: u32,
    pub uncompressed: Option<u32>,
}

/// The repository's index as the engine needs it: data and tree blobs by id. Packs marked for
/// deletion are left out (their blobs must be stored again).
#[derive(Default)]
pub(crate) struct BlobIndex {
    pub data: HashMap<Hash, BlobLoc>,
    pub tree: HashMap<Hash, BlobLoc>,
}

impl BlobIndex {
    pub fn load(repo: &Repo) -> Result<Self> {
        let mut out = Self::default();
        for f in repo.stream_files::<IndexFile>()? {
            let (_, f) = f?;
            for p in f.packs {
                let pack = id_bytes(&p.id.into_inner());
                for b in p.blobs {
                    let loc = BlobLoc {
                        pack,
                        offset: b.location.offset,
                        length: b.location.length,
                        uncompressed: b.location.uncompressed_length.map(|n| n.get()),
                    };
                    let id = id_bytes(&b.id.into_inner());
                    match b.tpe {
                        BlobType::Data => out.data.insert(id, loc),
                        BlobType::Tree => out.tree.insert(id, loc),
                    };
                }
            }
        }
        Ok(out)
    }
}

/// The 32 bytes of an [`Id`] (rustic_core shows them only as hex).
pub(crate) fn id_bytes(id: &Id) -> Hash {
    let hex = id.to_hex();
    let h = hex.as_str().as_bytes();
    let nib = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c.wrapping_sub(b'A').wrapping_add(10) & 15,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(h[2 * i]) << 4) | nib(h[2 * i + 1]);
    }
    out
}

/// Decrypts (and decompresses) one stored blob; checks its length and, if `verify`, its id.
pub(crate) fn open_blob(
    crypto: &Crypto,
    dctx: &mut zstd::bulk::Decompressor<'static>,
    stored: &mut [u8],
    loc: &BlobLoc,
    id: &Hash,
) -> Result<Vec<u8>> {
    let r = crypto.open_in_place(stored)?;
    let plain = match loc.uncompressed {
        None => stored[r].to_vec(),
        Some(n) => {
            let mut out = Vec::with_capacity(n as usize);
            dctx.decompress_to_buffer(&stored[r], &mut out)
                .map_err(|e| repo_err(format!("decompressing blob: {e}")))?;
            if out.len() != n as usize {
                return Err(repo_err("blob has the wrong length after decompression"));
            }
            out
        }
    };
    if sha256(&plain) != *id {
        return Err(repo_err("blob content does not match its id"));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto() -> Crypto {
        let key: MasterKey = serde_json::from_value(serde_json::json!({
            "encrypt": base64_of(&[7u8; 32]),
            "mac": {"k": base64_of(&[8u8; 16]), "r": base64_of(&[9u8; 16])},
        }))
        .unwrap();
        Crypto::new(&key).unwrap()
    }

    fn base64_of(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn seal_open_and_tamper() {
        let c = crypto();
        let mut e = c.encrypt(b"hello vault").unwrap();
        assert_eq!(e.len(), 11 + CRYPTO_OVERHEAD);
        assert_ne!(&e[16..27], b"hello vault");
        let mut copy = e.clone();
        let r = c.open_in_place(&mut copy).unwrap();
        assert_eq!(&copy[r], b"hello vault");
        e[20] ^= 1;
        assert!(c.open_in_place(&mut e).is_err());
        assert!(c.open_in_place(&mut [0u8; 31]).is_err());
    }

    #[test]
    fn pack_layout() {
        let c = crypto();
        let mut p = PackBuilder::new(AlignedBuf::with_capacity(0));
        let a = c.encrypt(b"aaaa").unwrap();
        let b = c.encrypt(b"bb").unwrap();
        p.add([1; 32], BlobType::Data, &a, None);
        p.add([2; 32], BlobType::Tree, &b, Some(9));
        let (bytes, id, blobs) = p.finish(&c).unwrap();
        let bytes = bytes.as_slice();
        assert_eq!(id, sha256(bytes));
        assert_eq!((blobs[0].offset, blobs[0].length), (0, a.len() as u32));
        assert_eq!((blobs[1].offset, blobs[1].length), (a.len() as u32, b.len() as u32));
        // The last 4 bytes: the encrypted header's length; the header: one entry per blob.
        let hlen = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()) as usize;
        let mut header = bytes[bytes.len() - 4 - hlen..bytes.len() - 4].to_vec();
        let r = c.open_in_place(&mut header).unwrap();
        let h = &header[r];
        assert_eq!(h.len(), (1 + 4 + 32) + (1 + 4 + 4 + 32));
        assert_eq!(h[0], 0);
        assert_eq!(u32::from_le_bytes(h[1..5].try_into().unwrap()), a.len() as u32);
        assert_eq!(&h[5..37], &[1; 32]);
        assert_eq!(h[37], 3);
        assert_eq!(u32::from_le_bytes(h[42..46].try_into().unwrap()), 9);
        assert_eq!(&h[46..78], &[2; 32]);
    }

    #[test]
    fn light_key_file_opens_with_its_password_only() {
        let master = MasterKey::new();
        let kf = key_file(&master, "pw-0123456789", RANDOM_SECRET_SCRYPT).unwrap();
        assert_eq!((kf.n, kf.r, kf.p, kf.salt.len()), (1024, 8, 1, 64));
        // Through JSON, as a key file is stored, then opened the way rustic_core opens it.
        let kf: KeyFile = serde_json::from_slice(&serde_json::to_vec(&kf).unwrap()).unwrap();
        let key = kf.key_from_password(&"pw-0123456789").unwrap();
        let (e, k, r) = key.to_keys();
        assert_eq!(
            (e, k, r),
            (master.encrypt.clone(), master.mac.k.clone(), master.mac.r.clone())
        );
        assert!(kf.key_from_password(&"pw-0123456788").is_err());
    }

    #[test]
    fn id_bytes_round_trip() {
        let h = sha256(b"x");
        assert_eq!(id_bytes(&Id::new(h)), h);
    }
}
