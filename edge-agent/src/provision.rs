//! Provisioning and the agent's data dir.
//!
//! `edge-agent provision --key KEY --data-dir DIR` generates the device key pair here (the
//! private key never leaves the device), sends a CSR with the fleet provisioning key to the
//! gateway named in the key (trying its addresses in turn when it names several), checks
//! the gateway against the CA fingerprint in the key, and stores the signed identity in
//! `DIR/identity.toml` (the same format as the file `gateway device add` writes, with the
//! key's whole address list) plus a supervisor API key in `DIR/api-key`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::{
    DeviceUuid, Frame, FrameType, ProvisionErrorCode, ProvisionRequest, ProvisionResponse,
    ProvisioningKey, MAX_CONTROL_FRAME,
};

use certs::device_file::AgentConfig;
use transport::wire::{self, FrameReader, WireError};

use crate::dial::{DialError, Route};

/// File holding the device identity inside the data dir.
pub const IDENTITY_FILE: &str = "identity.toml";
/// File holding the local supervisor API key inside the data dir.
pub const API_KEY_FILE: &str = "api-key";

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The gateway refused (bad, expired or used-up key, uuid taken, ...). Retrying will
    /// not help.
    #[error("the gateway refused provisioning: {message} ({code:?})")]
    Refused {
        /// Machine-readable reason.
        code: ProvisionErrorCode,
        /// The gateway's explanation.
        message: String,
    },
    /// The gateway could not be reached or verified. Retrying may help.
    #[error("cannot provision via {gateway}: {reason}")]
    Network {
        /// The gateway address from the key.
        gateway: String,
        /// Why.
        reason: String,
    },
    /// The gateway's certificate failed verification against the key's CA fingerprint.
    #[error("the gateway at {gateway} is not trusted: {reason}")]
    Untrusted {
        /// The gateway address from the key.
        gateway: String,
        /// The TLS failure.
        reason: String,
    },
    /// Certificates could not be generated or checked.
    #[error("certificates: {0}")]
    Certs(#[from] certs::CertError),
    /// The data dir could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The gateway answered with a CA that does not match the key's fingerprint.
    #[error("the CA the gateway returned does not match the provisioning key")]
    CaMismatch,
}

impl ProvisionError {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Network { .. })
    }
}

/// Path of the identity file in `data_dir`.
pub fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

/// The certificate problem behind a failed dial, when the gateway's certificate is not
/// from the CA the key pins (on either transport).
fn untrusted(e: &DialError) -> Option<String> {
    use transport::{ConnectError, ConnectionError};
    let one = |c: &ConnectError| match c {
        ConnectError::Tls(reason) => Some(reason.clone()),
        // QUIC reports TLS alerts as transport errors in the CRYPTO_ERROR range.
        ConnectError::Connection(ConnectionError::Transport(reason))
            if reason.contains("certificate") || reason.contains("crypto") =>
        {
            Some(reason.clone())
        }
        _ => None,
    };
    match e {
        DialError::Quic(c) | DialError::Tcp(c) => one(c),
        DialError::Both { quic, tcp } => one(quic).or_else(|| one(tcp)),
        _ => None,
    }
}

/// Provisions this device with `key`, writes the identity to `identity_file` (normally
/// `data_dir/identity.toml`) and creates the local API key in `data_dir`. `route` says
/// which transports to try (as for the tunnel).
///
/// A key naming several addresses has each of its candidates (every address of every
/// name, as for the tunnel) tried in turn until one answers; the gateway's answer, a
/// refusal included, is final. When none answers, the failure is
/// [`ProvisionError::Untrusted`] if every candidate failed certificate verification, and
/// [`ProvisionError::Network`] (retryable) naming each failure otherwise.
pub async fn provision(
    key: &ProvisioningKey,
    route: &Route,
    uuid: Option<DeviceUuid>,
    identity_file: &Path,
    data_dir: &Path,
) -> Result<AgentConfig, ProvisionError> {
    let net = |reason: String| ProvisionError::Network {
        gateway: key.gateway.clone(),
        reason,
    };
    let (key_pem, csr_pem) = certs::generate_csr()?;
    let tls = certs::provisioning_client_config(&key.ca_fingerprint)?;
    let dialer = route
        .dialer(
            &key.gateway,
            certs::TUNNEL_SERVER_NAME,
            tls,
            None,
            Default::default(),
            Duration::from_secs(15),
        )
        .map_err(|e| net(e.to_string()))?;
    let request = ProvisionRequest {
        key: key.secret.clone(),
        csr: csr_pem,
        uuid: uuid.map(|u| u.to_string()),
        agent_version: crate::VERSION.to_string(),
    };
    let candidates = dialer.candidates().await;
    let several = candidates.len() > 1;
    let mut failures: Vec<ProvisionError> = Vec::new();
    let mut response = None;
    for to in &candidates {
        match exchange(&dialer, to, &request, &net).await {
            Ok(r) => {
                response = Some(r);
                break;
            }
            Err(e) => {
                if several {
                    tracing::warn!(gateway = %to, error = %e, "provisioning through this address failed; trying the next");
                }
                failures.push(e);
            }
        }
    }
    let Some(response) = response else {
        return Err(none_answered(key, &candidates, failures));
    };
    let (uuid, cert, ca) = match response {
        ProvisionResponse::Ok { uuid, cert, ca, .. } => (uuid, cert, ca),
        ProvisionResponse::Error { code, message } => {
            return Err(ProvisionError::Refused { code, message })
        }
    };
    let ca_der = certs::parse_certs(&ca, "CA certificate")?;
    if certs::fingerprint(&ca_der[0]) != key.ca_fingerprint.to_ascii_lowercase() {
        return Err(ProvisionError::CaMismatch);
    }
    let cfg = AgentConfig {
        uuid,
        // The whole list: the tunnel moves through it as provisioning did.
        gateway: key.gateway.clone(),
        server_name: certs::TUNNEL_SERVER_NAME.to_string(),
        ca_cert: ca,
        cert,
        key: key_pem,
        target: None,
    };
    std::fs::create_dir_all(data_dir).map_err(|source| ProvisionError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    if let Some(parent) = identity_file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| ProvisionError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    write_private(identity_file, cfg.to_toml().as_bytes())?;
    api_key(data_dir)?;
    Ok(cfg)
}

/// The error of a provisioning in which no candidate answered.
fn none_answered(
    key: &ProvisioningKey,
    candidates: &[crate::dial::Candidate],
    mut failures: Vec<ProvisionError>,
) -> ProvisionError {
    if failures.len() == 1 {
        return failures.remove(0);
    }
    // A TLS failure means that address is not the gateway the key names; only when every
    // address says so is retrying pointless.
    if failures
        .iter()
        .all(|f| matches!(f, ProvisionError::Untrusted { .. }))
    {
        let reasons: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        return ProvisionError::Untrusted {
            gateway: key.gateway.clone(),
            reason: reasons.join("; "),
        };
    }
    let reasons: Vec<String> = candidates
        .iter()
        .zip(&failures)
        .map(|(c, f)| match f {
            ProvisionError::Network { reason, .. } => format!("{c}: {reason}"),
            other => format!("{c}: {other}"),
        })
        .collect();
    ProvisionError::Network {
        gateway: key.gateway.clone(),
        reason: reasons.join("; "),
    }
}

/// Dials `to`, sends `request` and reads the gateway's answer.
async fn exchange(
    dialer: &crate::dial::Dialer,
    to: &crate::dial::Candidate,
    request: &ProvisionRequest,
    net: &impl Fn(String) -> ProvisionError,
) -> Result<ProvisionResponse, ProvisionError> {
    let mut endpoint = None;
    let conn = dialer.dial(to, &mut endpoint).await.map_err(|e| {
        // A TLS failure means this gateway is not the one the key names: retrying cannot
        // help.
        match untrusted(&e) {
            Some(reason) => ProvisionError::Untrusted {
                gateway: to.to_string(),
                reason,
            },
            None => net(e.to_string()),
        }
    })?;
    let exchange = async {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| net(e.to_string()))?;
        let frame = Frame::new(
            FrameType::Message,
            serde_json::to_vec(&request).expect("request serializes"),
        );
        wire::write_frame(&mut send, &frame)
            .await
            .map_err(|e| net(e.to_string()))?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME);
        let answer = reader
            .next()
            .await
            .map_err(|e: WireError| net(e.to_string()))?;
        serde_json::from_slice::<ProvisionResponse>(&answer.payload)
            .map_err(|e| net(format!("malformed answer: {e}")))
    };
    let response = tokio::time::timeout(Duration::from_secs(15), exchange).await;
    conn.close(protocol::AppErrorCode::NoError, b"done");
    if let Some(ep) = endpoint {
        ep.wait_idle().await;
    }
    response.map_err(|_| net("no answer in time".into()))?
}

/// The local supervisor API key stored in `data_dir`, created on first use.
pub fn api_key(data_dir: &Path) -> Result<String, ProvisionError> {
    let path = data_dir.join(API_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => return Ok(k.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ProvisionError::Io { path, source }),
    }
    set_api_key(data_dir, &new_api_key())
}

/// Stores `key` as the local API key (regenerate-api-key).
pub fn set_api_key(data_dir: &Path, key: &str) -> Result<String, ProvisionError> {
    std::fs::create_dir_all(data_dir).map_err(|source| ProvisionError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    write_private(&data_dir.join(API_KEY_FILE), key.as_bytes())?;
    Ok(key.to_string())
}

/// A fresh random API key (32 hex characters, like balena's).
pub fn new_api_key() -> String {
    certs::random_hex(16)
}

/// Writes a private file (mode 0600) crash-safely; see [`certs::write_atomic`].
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    certs::write_atomic(path, bytes, true).map_err(|e| match e {
        certs::CertError::Io { path, source } => ProvisionError::Io { path, source },
        other => ProvisionError::Certs(other),
    })
}
