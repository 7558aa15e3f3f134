//! The fleet CA: created once, loaded on every start, signing device and server
//! certificates.

use super::*;

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

pub(crate) fn device_params(uuid: DeviceUuid) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, uuid.as_str());
    dn.push(DnType::OrganizationalUnitName, "device");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params)
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

/// The organisational unit that marks a gateway node's peer-link certificate (a device
/// certificate carries `device`).
pub const NODE_OU: &str = "gateway-node";

impl Ca {
    /// Issues a peer-link identity for gateway node `node_id`: a certificate for
    /// [`PEER_SERVER_NAME`] usable as server and client, whose common name is the node
    /// id and whose organisational unit is [`NODE_OU`]. Made in memory at every start;
    /// only a holder of the fleet CA key can make one.
    pub fn issue_node(&self, node_id: &str) -> Result<ServerIdentity, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![PEER_SERVER_NAME.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, NODE_OU);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The node id of a verified peer-link certificate: its common name, provided its
/// organisational unit is [`NODE_OU`]. A device certificate (OU `device`) is refused.
pub fn node_id_from_cert(der: &[u8]) -> Result<String, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::NoIdentity(e.to_string()))?;
    let subject = cert.subject();
    let ou = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok());
    if ou != Some(NODE_OU) {
        return Err(CertError::NoIdentity(format!(
            "not a gateway node certificate (organisational unit {ou:?})"
        )));
    }
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string)
        .ok_or_else(|| CertError::NoIdentity("no common name".into()));
    cn
}
