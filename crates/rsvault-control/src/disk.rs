//! Disk images behind a VM's `vhd.uri`: `file:///…` URIs, format detection (qcow2 or raw) and the
//! virtual (guest-visible) size.
//!
//! Images are probed by the vault engine's reader (`rsvault_engine::disk`: qcow2 through `imago`,
//! never by shelling out; anything else is raw, its size its length). A URI that is not an absolute
//! `file://` path is the caller's 400 `InvalidParameter`; an image that cannot be used (not granted,
//! missing, unreadable, a symlink, a qcow2 with a backing file) is the generic 400 of
//! [`crate::hostaccess::unavailable`].

use rsvault_core::{Error, Result};
use std::path::{Path, PathBuf};

pub use rsvault_engine::disk::ImageFormat as DiskFormat;

/// What a probe learns about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub path: PathBuf,
    pub format: DiskFormat,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
}

/// The local path of a `file:///abs/path` URI (percent-decoded); `target` names the member for errors.
pub fn path_of_uri(uri: &str, target: &str) -> Result<PathBuf> {
    let invalid = |why: &str| Error::Invalid {
        code: "InvalidParameter",
        message: format!("The value '{uri}' of parameter '{target}' is not valid: {why}"),
        target: Some(target.to_string()),
    };
    let rest = uri
        .strip_prefix("file://")
        .ok_or_else(|| invalid("rsvault disks are local images given as file:///absolute/path URIs."))?;
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return Err(invalid("the path must be absolute (file:///absolute/path)."));
    }
    let decoded = percent_decode(path).ok_or_else(|| invalid("the URI is not valid percent-encoded UTF-8."))?;
    Ok(PathBuf::from(decoded))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Opens an image (through the vault engine's reader, which follows no symlink and refuses qcow2
/// backing and external data files) and reads its format and virtual size. `path` has passed the
/// grant check ([`crate::hostaccess`]); any failure is the same generic error naming the path as the
/// request gave it (`shown`), so an answer never tells why an image cannot be used.
pub fn probe(path: &Path, shown: &str, target: &str) -> Result<DiskInfo> {
    let info = rsvault_engine::disk::probe(path).map_err(|e| {
        tracing::info!(path = %path.display(), reason = %e, "disk image refused");
        crate::hostaccess::unavailable(shown, Some(target))
    })?;
    Ok(DiskInfo {
        path: path.to_path_buf(),
        format: info.format,
        virtual_size: info.virtual_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_must_be_absolute_file_uris() {
        for bad in [
            "http://x/y.img",
            "file://relative/x",
            "/abs/no/scheme",
            "file:///bad%zz",
        ] {
            assert_eq!(path_of_uri(bad, "t").unwrap_err().code(), "InvalidParameter", "{bad}");
        }
        assert_eq!(
            path_of_uri("file:///a%20b/c.img", "t").unwrap(),
            PathBuf::from("/a b/c.img")
        );
        assert_eq!(path_of_uri("file://localhost/x", "t").unwrap(), PathBuf::from("/x"));
    }

    #[test]
    fn raw_and_qcow2_images_are_probed() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("d.raw");
        std::fs::write(&raw, vec![7u8; 3 * 65536]).unwrap();
        let info = probe(&raw, "r", "t").unwrap();
        assert_eq!((info.format, info.virtual_size), (DiskFormat::Raw, 3 * 65536));
        let q = dir.path().join("d.qcow2");
        // qemu-img (Debian's qemu-utils, installed by scripts/setup-test-env) only builds the fixture.
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&q)
            .arg("64M")
            .status()
            .expect("qemu-img (qemu-utils) is needed to build qcow2 fixtures");
        assert!(ok.success());
        let info = probe(&q, "q", "t").unwrap();
        assert_eq!((info.format, info.virtual_size), (DiskFormat::Qcow2, 64 << 20));
        let missing = probe(&dir.path().join("nope.img"), "nope", "t").unwrap_err();
        assert_eq!(missing.code(), crate::hostaccess::UNAVAILABLE_CODE);
        let corrupt = dir.path().join("bad.qcow2");
        std::fs::write(&corrupt, b"QFI\xfb\0\0\0\x03garbage").unwrap();
        assert_eq!(
            probe(&corrupt, "bad", "t").unwrap_err().to_string(),
            missing.to_string().replace("nope", "bad"),
            "a corrupt image and a missing one answer alike"
        );
    }
}
