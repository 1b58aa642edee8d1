//! The local certificate authority and the server's TLS certificate.
//!
//! First start writes, in the data dir: `ca.pem` (what clients trust), `ca-key.pem`, `server.pem` (leaf
//! then CA) and `server-key.pem`; keys are written 0600. Later starts reuse them, and re-issue only the
//! server certificate when the requested host names changed or it is near expiry. ECDSA P-256 keys.
//!
//! The CA is name constrained: it may vouch only for the server's own names and addresses (its
//! `nameConstraints` permit exactly those, kept in `ca-hosts.txt`), so a client that trusts `ca.pem`
//! trusts nothing else with it. When a start asks for a name the CA does not cover (or finds a CA from
//! before constraints existed), the CA certificate is re-issued with the same key and name and the union
//! of the names: clients holding the earlier `ca.pem` keep trusting the server's certificates.

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair,
    KeyUsagePurpose, NameConstraints, SanType,
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

    let ca_hosts_path = dir.join("ca-hosts.txt");
    let have_ca_hosts: Vec<String> = fs::read_to_string(&ca_hosts_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();

    let mut reissued_ca = false;
    let ca_key = if ca_pem_path.exists() && ca_key_path.exists() {
        KeyPair::from_pem(&fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?)?
    } else {
        let key = KeyPair::generate()?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&ca_key_path))?;
        reissued_ca = true;
        key
    };
    let covered = !have_ca_hosts.is_empty() && hosts.iter().all(|h| have_ca_hosts.contains(h));
    let mut ca_hosts = if reissued_ca { vec![] } else { have_ca_hosts.clone() };
    if reissued_ca || !covered {
        ca_hosts.extend(hosts.iter().cloned());
        ca_hosts.sort();
        ca_hosts.dedup();
        let cert = ca_params(&ca_hosts)?.self_signed(&ca_key)?;
        write_private(&ca_pem_path, cert.pem().as_bytes(), 0o644).map_err(io(&ca_pem_path))?;
        write_private(&ca_hosts_path, ca_hosts.join("\n").as_bytes(), 0o644).map_err(io(&ca_hosts_path))?;
        reissued_ca = true;
    }
    // Issuing needs only the CA's name and key identifier, both fixed by `ca_params` and the key, so a
    // re-made CA object signs exactly as the one in `ca.pem` does.
    let ca_cert = ca_params(&ca_hosts)?.self_signed(&ca_key)?;
    let ca_pem = fs::read_to_string(&ca_pem_path).map_err(io(&ca_pem_path))?;

    let want_hosts = hosts.join("\n");
    let have_hosts = fs::read_to_string(&hosts_path).unwrap_or_default();
    let fresh =
        !reissued_ca && cert_path.exists() && key_path.exists() && have_hosts == want_hosts && !near_expiry(&cert_path);
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

/// The CA's parameters: its fixed name, basic constraints and usages, ten years of validity, and name
/// constraints that permit only `hosts` (DNS names and their subdomains, single IP addresses).
fn ca_params(hosts: &[String]) -> Result<CertificateParams, rcgen::Error> {
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
    let permitted = hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, if ip.is_ipv4() { 32 } else { 128 })),
            Err(_) => GeneralSubtree::DnsName(h.trim_start_matches("*.").to_string()),
        })
        .collect();
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: vec![],
    });
    Ok(params)
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    }

    /// The DER of the nameConstraints extension's OID (2.5.29.30).
    const NAME_CONSTRAINTS_OID: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x1e];

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_ca_is_name_constrained_to_the_server_hosts_and_widens_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        ensure(dir.path(), &hosts).unwrap();
        let ca = fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let d = der(&ca);
        assert!(contains(&d, NAME_CONSTRAINTS_OID), "nameConstraints present");
        assert!(contains(&d, b"localhost"));
        assert!(
            contains(&d, &[127, 0, 0, 1, 255, 255, 255, 255]),
            "127.0.0.1/32 permitted"
        );
        assert!(!contains(&d, b"backup.example"));
        let key = fs::read_to_string(dir.path().join("ca-key.pem")).unwrap();

        // Same hosts: nothing re-issued.
        ensure(dir.path(), &hosts).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("ca.pem")).unwrap(), ca);

        // A new name: the CA is re-issued with the same key, covering old and new names.
        let more = vec!["backup.example".to_string(), "localhost".to_string()];
        let m = ensure(dir.path(), &more).unwrap();
        let ca2 = fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        assert_ne!(ca2, ca);
        let d2 = der(&ca2);
        assert!(contains(&d2, b"backup.example") && contains(&d2, b"localhost"));
        assert!(contains(&d2, &[127, 0, 0, 1, 255, 255, 255, 255]));
        assert_eq!(fs::read_to_string(dir.path().join("ca-key.pem")).unwrap(), key);
        assert!(m.cert_chain_pem.ends_with(&ca2), "the chain carries the current CA");
    }
}
