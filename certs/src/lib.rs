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
//! This crate contains no networking code.
#![warn(missing_docs)]

pub mod device_file;

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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
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

/// The gateway's certificate authority.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Creates a new CA in `dir` (created if missing): `ca.key` (mode 0600), then
    /// `ca.pem`. Never overwrites: if either file exists, nothing is written and the
    /// answer is [`CertError::Exists`]. Each file is created with `O_EXCL` semantics, so
    /// two processes racing here cannot both succeed, and a reader never sees half a file.
    pub fn create_new(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for p in [&key_path, &cert_path] {
            if fs::symlink_metadata(p).is_ok() {
                return Err(CertError::Exists(p.to_path_buf()));
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "edge tunnel fleet CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        // Key first: whoever sees ca.pem can rely on ca.key.
        write_new(&key_path, key_pem.as_bytes(), true)?;
        write_new(&cert_path, cert.pem().as_bytes(), false)?;
        Self::from_pem(&cert.pem(), &key_pem)
    }

    /// Loads the CA from `dir/ca.pem` + `dir/ca.key`; both must exist. Writes nothing.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Loads the CA from `dir`, or creates it when neither `ca.pem` nor `ca.key` exists
    /// (for tests and tools that make a throwaway CA). A dir holding only one of the two
    /// is refused with [`CertError::Partial`]; nothing is ever overwritten. The gateway
    /// itself decides between [`Ca::create_new`] and [`Ca::load`] from the whole data
    /// dir, not from the CA files alone.
    pub fn load_or_create(dir: &Path) -> Result<Self, CertError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // Several threads or processes may get here at once on a fresh dir: the lock
        // makes one of them create the CA and the others load it.
        let _lock = lock_dir(dir)?;
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        match (cert.exists(), key.exists()) {
            (false, false) => Self::create_new(dir),
            (true, true) => Self::load(dir),
            (false, true) => Err(CertError::Partial {
                missing: cert,
                present: key,
            }),
            (true, false) => Err(CertError::Partial {
                missing: key,
                present: cert,
            }),
        }
    }

    /// Builds a CA from PEM strings.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let cert_der = parse_certs(cert_pem, "CA certificate")?
            .into_iter()
            .next()
            .ok_or(CertError::Pem {
                what: "CA certificate",
                detail: "no certificate found".into(),
            })?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex. Devices pin this.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Issues a new device identity (key generated here) for `uuid`.
    pub fn issue_device(&self, uuid: DeviceUuid) -> Result<DeviceIdentity, CertError> {
        let key = KeyPair::generate()?;
        let params = device_params(uuid)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(DeviceIdentity {
            uuid,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a tunnel server certificate valid for [`TUNNEL_SERVER_NAME`] and `extra_names`.
    pub fn issue_server(&self, extra_names: &[String]) -> Result<ServerIdentity, CertError> {
        let key = KeyPair::generate()?;
        let mut names = vec![TUNNEL_SERVER_NAME.to_string()];
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "edge tunnel gateway");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a new tunnel server identity into `dir/tunnel.key` (mode 0600) and
    /// `dir/tunnel.pem`; like [`Ca::create_new`], never overwrites either file.
    pub fn create_server(&self, dir: &Path) -> Result<ServerIdentity, CertError> {
        let cert_path = dir.join(TUNNEL_CERT_FILE);
        let key_path = dir.join(TUNNEL_KEY_FILE);
        for p in [&key_path, &cert_path] {
            if fs::symlink_metadata(p).is_ok() {
                return Err(CertError::Exists(p.to_path_buf()));
            }
        }
        let id = self.issue_server(&[])?;
        write_new(&key_path, id.key_pem.as_bytes(), true)?;
        write_new(&cert_path, id.cert_pem.as_bytes(), false)?;
        Ok(id)
    }

    /// Loads the tunnel server identity from `dir/tunnel.pem` + `dir/tunnel.key`; both
    /// must exist. Writes nothing.
    pub fn load_server(dir: &Path) -> Result<ServerIdentity, CertError> {
        let cert_path = dir.join(TUNNEL_CERT_FILE);
        let key_path = dir.join(TUNNEL_KEY_FILE);
        Ok(ServerIdentity {
            cert_pem: fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?,
            key_pem: fs::read_to_string(&key_path).map_err(io_err(&key_path))?,
        })
    }

    /// Loads the tunnel server identity from `dir`, issuing it when neither file exists;
    /// one file without the other is refused with [`CertError::Partial`].
    pub fn load_or_create_server(&self, dir: &Path) -> Result<ServerIdentity, CertError> {
        let _lock = lock_dir(dir)?;
        let cert = dir.join(TUNNEL_CERT_FILE);
        let key = dir.join(TUNNEL_KEY_FILE);
        match (cert.exists(), key.exists()) {
            (false, false) => self.create_server(dir),
            (true, true) => Self::load_server(dir),
            (false, true) => Err(CertError::Partial {
                missing: cert,
                present: key,
            }),
            (true, false) => Err(CertError::Partial {
                missing: key,
                present: cert,
            }),
        }
    }

    /// Checks that `server` is a tunnel certificate devices accept from this CA: signed
    /// by it, valid now, for [`TUNNEL_SERVER_NAME`]. (A tunnel certificate from another CA
    /// would make every device refuse the gateway.)
    pub fn verify_server(&self, server: &ServerIdentity) -> Result<(), CertError> {
        use rustls::client::danger::ServerCertVerifier;
        let chain = parse_certs(&server.cert_pem, "tunnel certificate")?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(&self.cert_pem)?),
            provider(),
        )
        .build()
        .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
        let name = rustls_pki_types::ServerName::try_from(TUNNEL_SERVER_NAME)
            .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
        verifier.verify_server_cert(
            &chain[0],
            &chain[1..],
            &name,
            &[],
            rustls_pki_types::UnixTime::now(),
        )?;
        Ok(())
    }
}

fn device_params(uuid: DeviceUuid) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, uuid.as_str());
    dn.push(DnType::OrganizationalUnitName, "device");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// Takes an exclusive advisory lock on `dir/.certs.lock`, released when dropped.
fn lock_dir(dir: &Path) -> Result<fs::File, CertError> {
    let path = dir.join(".certs.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    f.lock().map_err(io_err(&path))?;
    Ok(f)
}

/// Writes `bytes` to `path` crash-safely: temp file (mode 0600 when `secret`, else 0644),
/// fsync, rename. A reader sees the old file or the new one, never half of one. Used for
/// every key, identity and state file the gateway and the agent write.
pub fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        // The mode above applies only to a file this call creates: a temp file left by a
        // crash keeps its old mode, so set it explicitly.
        set_mode(&f, secret).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes a file that must not exist yet (mode 0600 when `secret`, else 0644): fails with
/// [`CertError::Exists`] if it does, even when another process creates it at the same
/// moment. The bytes go to a temp file created with `O_EXCL`, which is then hard-linked to
/// `path` (the link fails if `path` exists), so a reader never sees half a file.
pub fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let tmp = path.with_extension(format!("new.{}.{}", std::process::id(), random_hex(4)));
    let result = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        set_mode(&f, secret).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(CertError::Exists(path.to_path_buf()))
            }
            // A file system without hard links: create the file itself exclusively.
            Err(_) => {
                let mut opts = fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(if secret { 0o600 } else { 0o644 });
                }
                let mut f = opts.open(path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => CertError::Exists(path.to_path_buf()),
                    _ => io_err(path)(e),
                })?;
                f.write_all(bytes).map_err(io_err(path))?;
                f.sync_all().map_err(io_err(path))
            }
        }
    })();
    let _ = fs::remove_file(&tmp);
    result?;
    // Make the new directory entry durable too.
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn set_mode(f: &fs::File, secret: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(if secret {
            0o600
        } else {
            0o644
        }))?;
    }
    #[cfg(not(unix))]
    let _ = (f, secret);
    Ok(())
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    sha256_hex(der)
}

/// SHA-256 of `data`, lowercase hex (also used to store API secrets hashed).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// `n` random bytes as lowercase hex (ids, secrets, API keys).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses every certificate in a PEM string.
pub fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::Pem {
            what,
            detail: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn parse_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, CertError> {
    use rustls_pki_types::pem::PemObject;
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map(PrivateKeyDer::from)
        .map_err(|e| CertError::Pem {
            what,
            detail: e.to_string(),
        })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    for c in parse_certs(ca_pem, "CA certificate")? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// TLS server config for the tunnel: TLS 1.3, ALPN [`ALPN`], client certificate from the
/// CA required.
pub fn server_config(
    ca_pem: &str,
    server: &ServerIdentity,
) -> Result<rustls::ServerConfig, CertError> {
    let provider = provider();
    // A client certificate is optional at the TLS layer only so that devices without one
    // can provision; the gateway closes every tunnel (ALPN `edge-tunnel/1`) connection that
    // did not present a certificate from this CA.
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .allow_unauthenticated()
            .build()?;
    // The CA goes along with the server certificate so a provisioning device can check
    // it against the fingerprint in its provisioning key.
    let mut chain = parse_certs(&server.cert_pem, "server certificate")?;
    chain.extend(parse_certs(ca_pem, "CA certificate")?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, parse_key(&server.key_pem, "server key")?)?;
    cfg.alpn_protocols = vec![ALPN.to_vec(), PROVISION_ALPN.to_vec()];
    // 0-RTT would let a replayed first flight open streams; the tunnel does not need it.
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// A plain HTTPS server config (TLS 1.2/1.3, `http/1.1`) from an operator-supplied
/// certificate chain and private key (PKCS#8, PKCS#1 or SEC1 PEM), for the management API.
pub fn https_server_config(
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ServerConfig, CertError> {
    use rustls_pki_types::pem::PemObject;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Pem {
        what: "TLS key",
        detail: e.to_string(),
    })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(parse_certs(cert_pem, "TLS certificate")?, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// TLS client config for an agent: trusts only `ca_pem`, presents the device identity.
pub fn client_config(
    ca_pem: &str,
    device: &DeviceIdentity,
) -> Result<rustls::ClientConfig, CertError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(
            parse_certs(&device.cert_pem, "device certificate")?,
            parse_key(&device.key_pem, "device key")?,
        )?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// TLS client config for provisioning: no client certificate; the gateway is trusted if
/// its chain contains a CA whose SHA-256 is `ca_fingerprint` and that CA signed the
/// server certificate for [`TUNNEL_SERVER_NAME`] (like `kubeadm join
/// --discovery-token-ca-cert-hash`).
pub fn provisioning_client_config(ca_fingerprint: &str) -> Result<rustls::ClientConfig, CertError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![PROVISION_ALPN.to_vec()];
    Ok(cfg)
}

#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the gateway's CA does not match the fingerprint in the provisioning key"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Generates a device key pair and a CSR for it. Returns `(key_pem, csr_pem)`; the key never
/// leaves the device.
pub fn generate_csr() -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        "edge device (identity assigned by the gateway)",
    );
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

impl Ca {
    /// Signs a device CSR. The certificate's identity is `uuid`, whatever the CSR asked
    /// for: the gateway decides who a device is.
    pub fn sign_csr(&self, csr_pem: &str, uuid: DeviceUuid) -> Result<String, CertError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = device_params(uuid)?;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
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
