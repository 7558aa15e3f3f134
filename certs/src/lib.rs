//! Certificates and TLS configuration for the device tunnel.
//!
//! * [`Ca`]: the gateway's fleet CA, created on first start in the gateway's data dir.
//! * Device identities: a key pair and a certificate whose common name is the device uuid.
//! * The tunnel server certificate, valid for [`TUNNEL_SERVER_NAME`].
//! * [`server_config`] requires a client certificate from the CA; [`client_config`]
//!   trusts only the CA. Both are TLS 1.3 only, as QUIC requires.
//! * [`device_uuid_from_cert`] returns the uuid of a verified peer.
//!
//! The agent always connects with the server name [`TUNNEL_SERVER_NAME`], whatever address
//! it dials, so a gateway reachable by IP address or by several DNS names needs no
//! certificate change: trust comes from the pinned CA, not from DNS.
//!
//! `ca.rs` holds the CA, `tls.rs` the rustls configurations, `files.rs` the crash-safe
//! writes, and `device_file.rs` the agent's identity file. This crate contains no
//! networking code.
#![warn(missing_docs)]

pub mod device_file;

mod ca;
mod files;
mod tls;

pub use ca::*;
pub use files::*;
pub use tls::*;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::DeviceUuid;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// File name of the CA certificate in the gateway's data dir.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in the gateway's data dir.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the tunnel server certificate in the gateway's data dir.
pub const TUNNEL_CERT_FILE: &str = "tunnel.pem";
/// File name of the tunnel server private key in the gateway's data dir.
pub const TUNNEL_KEY_FILE: &str = "tunnel.key";

/// The TLS server name the agent verifies, whatever address it dials.
pub const TUNNEL_SERVER_NAME: &str = "tunnel.gateway.invalid";

/// The TLS server name gateway nodes verify on each other's peer link.
pub const PEER_SERVER_NAME: &str = "peer.gateway.invalid";

/// ALPN protocol id of the peer link between gateway nodes.
pub const PEER_ALPN: &[u8] = b"edge-peer/1";

/// ALPN protocol id of the tunnel.
pub const ALPN: &[u8] = b"edge-tunnel/1";

/// ALPN protocol id of provisioning: a device without a certificate yet sends a CSR and a
/// provisioning key on the tunnel port and gets its certificate back.
pub const PROVISION_ALPN: &[u8] = b"edge-provision/1";

/// Errors from certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a certificate or key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM document did not contain what was expected.
    #[error("invalid PEM ({what}): {detail}")]
    Pem {
        /// What was being read (`CA certificate`, `device key`, ...).
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// Building the rustls configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Building the client certificate verifier failed.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A file that is only ever created, never replaced, already exists.
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    /// One file of a pair (certificate and key) is there without the other.
    #[error("{} is missing while {} is present; restore both from a backup", missing.display(), present.display())]
    Partial {
        /// The file that is not there.
        missing: PathBuf,
        /// Its partner, which is.
        present: PathBuf,
    },
    /// The peer certificate does not carry a device identity.
    #[error("peer certificate has no device identity: {0}")]
    NoIdentity(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The crypto provider used everywhere (ring: pure Rust + asm, no cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A device's identity: its uuid, certificate and private key, all PEM.
#[derive(Clone)]
pub struct DeviceIdentity {
    /// The device uuid (also the certificate's common name).
    pub uuid: DeviceUuid,
    /// The device certificate, signed by the fleet CA.
    pub cert_pem: String,
    /// The device's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("DeviceIdentity")
            .field("uuid", &self.uuid)
            .finish_non_exhaustive()
    }
}

/// A certificate chain and key for the tunnel server.
#[derive(Clone)]
pub struct ServerIdentity {
    /// Server certificate PEM.
    pub cert_pem: String,
    /// Server private key PEM.
    pub key_pem: String,
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    sha256_hex(der)
}

/// SHA-256 of `data`, lowercase hex (also used to store API secrets hashed).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// HMAC-SHA256 of `data` keyed with `key` (signed share links and cookies of public
/// URLs). Compare tags with [`hmac_sha256_verify`], which takes constant time.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `tag` is the HMAC-SHA256 of `data` keyed with `key`, in constant time.
pub fn hmac_sha256_verify(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, data, tag).is_ok()
}

/// `n` random bytes as lowercase hex (ids, secrets, API keys).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    hex(&bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Returns the device uuid of a (verified) peer certificate: its common name.
pub fn device_uuid_from_cert(der: &[u8]) -> Result<DeviceUuid, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::NoIdentity(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| CertError::NoIdentity("no common name".into()))?
        .as_str()
        .map_err(|e| CertError::NoIdentity(e.to_string()))?;
    cn.parse()
        .map_err(|e: protocol::InvalidUuid| CertError::NoIdentity(e.to_string()))
}

/// Generates a fresh random device uuid.
pub fn random_uuid() -> DeviceUuid {
    DeviceUuid::from_bytes(rand::random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231_and_verifies() {
        // RFC 4231 test case 2.
        let tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(hmac_sha256_verify(
            b"Jefe",
            b"what do ya want for nothing?",
            &tag
        ));
        assert!(!hmac_sha256_verify(
            b"Jefe",
            b"what do ya want for nothing!",
            &tag
        ));
        assert!(!hmac_sha256_verify(
            b"Jeff",
            b"what do ya want for nothing?",
            &tag
        ));
    }

    #[test]
    fn ca_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ca::load_or_create(dir.path()).unwrap();
        let b = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "CA key must be private");
        }
        let s1 = a.load_or_create_server(dir.path()).unwrap();
        let s2 = b.load_or_create_server(dir.path()).unwrap();
        assert_eq!(s1.cert_pem, s2.cert_pem);
    }

    #[test]
    fn csr_is_signed_with_the_gateway_chosen_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let (key_pem, csr_pem) = generate_csr().unwrap();
        let uuid = random_uuid();
        let cert_pem = ca.sign_csr(&csr_pem, uuid).unwrap();
        let der = parse_certs(&cert_pem, "signed").unwrap();
        assert_eq!(device_uuid_from_cert(&der[0]).unwrap(), uuid);
        let id = DeviceIdentity {
            uuid,
            cert_pem,
            key_pem,
        };
        client_config(ca.cert_pem(), &id).unwrap();
        assert!(ca.sign_csr("not a csr", uuid).is_err());
    }

    #[test]
    fn concurrent_creation_yields_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let fps: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Ca::load_or_create(dir.path()).unwrap().fingerprint()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(fps.windows(2).all(|w| w[0] == w[1]), "{fps:?}");
    }

    #[test]
    fn device_cert_carries_uuid_and_builds_configs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let uuid = random_uuid();
        let id = ca.issue_device(uuid).unwrap();
        let der = parse_certs(&id.cert_pem, "device").unwrap();
        assert_eq!(device_uuid_from_cert(&der[0]).unwrap(), uuid);
        client_config(ca.cert_pem(), &id).unwrap();
        let server = ca.load_or_create_server(dir.path()).unwrap();
        server_config(ca.cert_pem(), &server).unwrap();
        // The server certificate is not a device identity.
        let der = parse_certs(&server.cert_pem, "server").unwrap();
        assert!(device_uuid_from_cert(&der[0]).is_err());
        assert!(!format!("{id:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_ca_key_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create_new(dir.path()).unwrap();
        let key = fs::read(dir.path().join(CA_KEY_FILE)).unwrap();
        // ca.pem gone (a bad restore): creating again must not touch ca.key.
        fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        let e = Ca::create_new(dir.path())
            .err()
            .expect("created over an existing key");
        assert!(
            matches!(e, CertError::Exists(ref p) if p.ends_with(CA_KEY_FILE)),
            "{e}"
        );
        let e = Ca::load_or_create(dir.path())
            .err()
            .expect("partial CA accepted");
        assert!(e.to_string().contains("ca.pem is missing while"), "{e}");
        assert_eq!(fs::read(dir.path().join(CA_KEY_FILE)).unwrap(), key);
        assert!(!dir.path().join(CA_CERT_FILE).exists());
        // Loading needs both files.
        assert!(Ca::load(dir.path()).is_err());
        fs::write(dir.path().join(CA_CERT_FILE), ca.cert_pem()).unwrap();
        assert_eq!(
            Ca::load(dir.path()).unwrap().fingerprint(),
            ca.fingerprint()
        );
    }

    #[test]
    fn write_new_lets_exactly_one_racer_win_and_never_leaves_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let wins: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || write_new(path, &[i; 64], true).is_ok())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
        let bytes = fs::read(&path).unwrap();
        assert!(bytes.len() == 64 && bytes.iter().all(|b| *b == bytes[0]));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp files left"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn write_atomic_makes_a_secret_private_even_over_a_stale_temp_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.toml");
        let stale = path.with_extension(format!("tmp.{}", std::process::id()));
        fs::write(&stale, "old").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"key = 1", true).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tunnel_certificates_are_checked_against_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create_new(dir.path()).unwrap();
        let server = ca.create_server(dir.path()).unwrap();
        ca.verify_server(&server).unwrap();
        assert!(matches!(
            ca.create_server(dir.path()),
            Err(CertError::Exists(_))
        ));
        let other = tempfile::tempdir().unwrap();
        let foreign = Ca::create_new(other.path())
            .unwrap()
            .issue_server(&[])
            .unwrap();
        assert!(ca.verify_server(&foreign).is_err());
        fs::remove_file(dir.path().join(TUNNEL_CERT_FILE)).unwrap();
        let e = ca.load_or_create_server(dir.path()).err().unwrap();
        assert!(matches!(e, CertError::Partial { .. }), "{e}");
    }
}
