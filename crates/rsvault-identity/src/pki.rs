//! The local certificate authority and the server's TLS certificate.
//!
//! First start writes, in the data dir: `ca.pem` (what clients trust), `ca-key.pem`, `server.pem` (leaf
//! then CA) and `server-key.pem`; keys are written 0600. Later starts reuse them, and re-issue only the
//! server certificate when the requested host names changed or it is near expiry. ECDSA P-256 keys.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the TLS material lives and what it holds.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub ca_pem_path: PathBuf,
    /// The server chain, leaf first, PEM.
    pub cert_chain_pem: String,
    /// The server's private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// A failure creating or reading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("i/o on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename) with the given mode.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Loads the CA and server certificate from `dir`, creating what is missing.
/// `hosts` are the names and addresses the server certificate must cover.
pub fn ensure(dir: &Path, hosts: &[String]) -> Result<TlsMaterial, PkiError> {
    let ca_pem_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server-key.pem");
    let hosts_path = dir.join("server-hosts.txt");

    let ca_key = if ca_pem_path.exists() && ca_key_path.exists() {
        KeyPair::from_pem(&fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?)?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&ca_key_path))?;
        write_private(&ca_pem_path, cert.pem().as_bytes(), 0o644).map_err(io(&ca_pem_path))?;
        key
    };
    // Issuing needs only the CA's name and key identifier, both fixed by `ca_params` and the key, so a
    // re-made CA object signs exactly as the one in `ca.pem` does.
    let ca_cert = ca_params().self_signed(&ca_key)?;
    let ca_pem = fs::read_to_string(&ca_pem_path).map_err(io(&ca_pem_path))?;

    let want_hosts = hosts.join("\n");
    let have_hosts = fs::read_to_string(&hosts_path).unwrap_or_default();
    let fresh = cert_path.exists() && key_path.exists() && have_hosts == want_hosts && !near_expiry(&cert_path);
    if !fresh {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().map(String::as_str).unwrap_or("localhost"),
        );
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(h.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time_now();
        params.not_before = now - rcgen_days(1);
        params.not_after = now + rcgen_days(397);
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        write_private(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
        write_private(&cert_path, format!("{}{}", cert.pem(), ca_pem).as_bytes(), 0o644).map_err(io(&cert_path))?;
        write_private(&hosts_path, want_hosts.as_bytes(), 0o644).map_err(io(&hosts_path))?;
    }
    Ok(TlsMaterial {
        ca_pem_path,
        cert_chain_pem: fs::read_to_string(&cert_path).map_err(io(&cert_path))?,
        key_pem: fs::read_to_string(&key_path).map_err(io(&key_path))?,
    })
}

/// The CA's fixed parameters (name, constraints, usages, ten years of validity).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "rsvault local CA");
    params.distinguished_name.push(DnType::OrganizationName, "rsvault");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time_now();
    params.not_before = now - rcgen_days(1);
    params.not_after = now + rcgen_days(3650);
    params
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_days(d: i64) -> time::Duration {
    time::Duration::days(d)
}

/// The server certificate is re-issued 30 days before it expires (checked by file age: it lives 397 days).
fn near_expiry(cert_path: &Path) -> bool {
    fs::metadata(cert_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 367 * 86_400)
}
