//! rustls configurations: the tunnel server and client (mutual TLS pinned to the
//! fleet CA), the provisioning client (pinned by fingerprint), and HTTPS.

use super::*;

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

pub(crate) fn parse_key(
    pem: &str,
    what: &'static str,
) -> Result<PrivateKeyDer<'static>, CertError> {
    use rustls_pki_types::pem::PemObject;
    PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map(PrivateKeyDer::from)
        .map_err(|e| CertError::Pem {
            what,
            detail: e.to_string(),
        })
}

pub(crate) fn roots(ca_pem: &str) -> Result<RootCertStore, CertError> {
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

/// A certificate chain and its key, checked to belong together, for a certificate
/// resolver (the public HTTPS listener, whose files are read again when they change).
pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, CertError> {
    let chain = parse_certs(cert_pem, "HTTPS certificate")?;
    let key = parse_key(key_pem, "HTTPS key")?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(CertError::Tls)?;
    let ck = rustls::sign::CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(CertError::Tls)?;
    Ok(Arc::new(ck))
}

/// When the first certificate of `cert_pem` (a chain, leaf first) stops being valid.
pub fn not_after(cert_pem: &str) -> Result<std::time::SystemTime, CertError> {
    Ok(validity(cert_pem)?.1)
}

/// The validity period (not before, not after) of the first certificate of `cert_pem`.
pub fn validity(
    cert_pem: &str,
) -> Result<(std::time::SystemTime, std::time::SystemTime), CertError> {
    let chain = parse_certs(cert_pem, "certificate")?;
    let leaf = chain.first().ok_or_else(|| CertError::Pem {
        what: "certificate",
        detail: "no certificate found".into(),
    })?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| CertError::Pem {
        what: "certificate",
        detail: e.to_string(),
    })?;
    let at = |secs: i64| {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    };
    let v = cert.validity();
    Ok((at(v.not_before.timestamp()), at(v.not_after.timestamp())))
}

/// TLS server config for public HTTPS: the certificate `resolver` picks (reloadable), and
/// HTTP/1.1 and h2 offered by ALPN, h2 first.
pub fn https_server_config_with(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<rustls::ServerConfig, CertError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
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

/// TLS server config for the peer link between gateway nodes: TLS 1.3, ALPN
/// [`PEER_ALPN`], a client certificate from the fleet CA required (whether it is a node
/// certificate is checked after the handshake, with [`node_id_from_cert`]).
pub fn peer_server_config(
    ca_pem: &str,
    node: &ServerIdentity,
) -> Result<rustls::ServerConfig, CertError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            parse_certs(&node.cert_pem, "node certificate")?,
            parse_key(&node.key_pem, "node key")?,
        )?;
    cfg.alpn_protocols = vec![PEER_ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// TLS client config for the peer link: trusts only the fleet CA (a server must hold a
/// certificate for [`PEER_SERVER_NAME`], which only node certificates carry), presents
/// this node's certificate.
pub fn peer_client_config(
    ca_pem: &str,
    node: &ServerIdentity,
) -> Result<rustls::ClientConfig, CertError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(
            parse_certs(&node.cert_pem, "node certificate")?,
            parse_key(&node.key_pem, "node key")?,
        )?;
    cfg.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Ok(cfg)
}
