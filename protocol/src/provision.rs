//! Provisioning: how a device without a certificate gets one.
//!
//! The operator hands out a [`ProvisioningKey`]: one string that carries the gateway's
//! tunnel address (or several, comma-separated, for a gateway with several nodes), the
//! SHA-256 fingerprint of the gateway's CA and a secret. The device dials an address with
//! ALPN `edge-provision/1` and no client certificate, checks the
//! gateway's chain against the fingerprint, opens one bidirectional stream and sends one
//! [`ProvisionRequest`] frame (JSON, [`crate::FrameType::Message`]); the gateway answers
//! one [`ProvisionResponse`] frame and closes the connection.

use serde::{Deserialize, Serialize};

const KEY_PREFIX: &str = "epk1.";

/// A fleet provisioning key as handed to a factory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningKey {
    /// Tunnel address the device dials, `HOST:PORT`; or several, comma-separated
    /// (`a.example:443,b.example:443`), tried in order (see [`crate::host::gateway_addresses`]).
    /// A plain string either way, so keys made before lists existed decode unchanged.
    #[serde(rename = "g")]
    pub gateway: String,
    /// SHA-256 of the gateway CA certificate (DER), lowercase hex.
    #[serde(rename = "f")]
    pub ca_fingerprint: String,
    /// `<key id>.<secret>`; the gateway stores only a hash of it.
    #[serde(rename = "k")]
    pub secret: String,
}

/// A string that is not a provisioning key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a provisioning key ({0}); keys look like `epk1.` followed by letters and digits")]
pub struct InvalidKey(String);

impl ProvisioningKey {
    /// Encodes as `epk1.<base64url(JSON)>`.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("key serializes");
        format!("{KEY_PREFIX}{}", base64url_encode(&json))
    }

    /// Parses a key string (surrounding whitespace is ignored).
    pub fn decode(s: &str) -> Result<Self, InvalidKey> {
        let body = s
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| InvalidKey("missing epk1. prefix".into()))?;
        let json = base64url_decode(body).ok_or_else(|| InvalidKey("bad encoding".into()))?;
        let key: Self =
            serde_json::from_slice(&json).map_err(|_| InvalidKey("bad contents".into()))?;
        if key.ca_fingerprint.len() != 64
            || !key.ca_fingerprint.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(InvalidKey("bad CA fingerprint".into()));
        }
        if key.secret.is_empty() {
            return Err(InvalidKey("missing secret".into()));
        }
        crate::host::gateway_addresses(&key.gateway)
            .map_err(|e| InvalidKey(format!("gateway address: {e}")))?;
        Ok(key)
    }

    /// The gateway addresses the key names, in the order the device tries them.
    pub fn gateways(&self) -> Vec<&str> {
        // Checked by `decode`; a key built by hand with a bad entry keeps it, and its
        // dial fails naming it.
        crate::host::gateway_addresses(&self.gateway)
            .unwrap_or_else(|_| self.gateway.split(',').map(str::trim).collect())
    }
}

/// Device → gateway on the provisioning stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionRequest {
    /// The key's `secret` field.
    pub key: String,
    /// PEM certificate signing request for the device's own key pair.
    pub csr: String,
    /// A pre-registered uuid to claim (balena's offline flow); a new one is assigned if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The agent's version, for display.
    #[serde(default)]
    pub agent_version: String,
}

/// Why provisioning was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionErrorCode {
    /// No such key, or wrong secret.
    InvalidKey,
    /// The key expired.
    KeyExpired,
    /// The key reached its use limit.
    KeyUsedUp,
    /// The key was revoked.
    KeyRevoked,
    /// The requested uuid is already provisioned or was deleted.
    UuidUnavailable,
    /// The request is malformed (bad CSR, bad uuid).
    BadRequest,
    /// Anything else.
    #[serde(other)]
    Internal,
}

/// Gateway → device on the provisioning stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ProvisionResponse {
    /// Provisioned.
    Ok {
        /// The device's uuid.
        uuid: String,
        /// The signed device certificate (PEM).
        cert: String,
        /// The fleet CA certificate (PEM); its fingerprint matches the key's.
        ca: String,
        /// The fleet the device joined.
        fleet: String,
    },
    /// Refused.
    Error {
        /// Machine-readable reason.
        code: ProvisionErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero padding of the last character.
    (acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn base64_round_trip(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(base64url_decode(&base64url_encode(&data)).unwrap(), data);
        }

        #[test]
        fn key_round_trip(gws in proptest::collection::vec(("[a-z0-9.]{1,20}", 1u16..), 1..4), fp in "[0-9a-f]{64}", secret in "[a-z0-9]{1,10}\\.[a-z0-9]{1,40}") {
            let gw = gws.iter().map(|(h, p)| format!("{h}:{p}")).collect::<Vec<_>>().join(",");
            let k = ProvisioningKey { gateway: gw, ca_fingerprint: fp, secret };
            prop_assert_eq!(ProvisioningKey::decode(&format!(" {} \n", k.encode())).unwrap(), k);
        }
    }

    #[test]
    fn a_key_carries_a_gateway_list_and_old_keys_still_decode() {
        let fp = "ab".repeat(32);
        // A key made before lists existed: one address.
        let old = ProvisioningKey {
            gateway: "gw.example:443".into(),
            ca_fingerprint: fp.clone(),
            secret: "id.secret".into(),
        };
        let decoded = ProvisioningKey::decode(&old.encode()).unwrap();
        assert_eq!(decoded, old);
        assert_eq!(decoded.gateways(), ["gw.example:443"]);
        let list = ProvisioningKey {
            gateway: "a.example:443, b.example:443".into(),
            ..old.clone()
        };
        let decoded = ProvisioningKey::decode(&list.encode()).unwrap();
        assert_eq!(decoded.gateways(), ["a.example:443", "b.example:443"]);
        let bad = ProvisioningKey {
            gateway: "a.example:443,b.example".into(),
            ..old
        };
        let e = ProvisioningKey::decode(&bad.encode())
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"b.example\" is not HOST:PORT"), "{e}");
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in ["", "epk1.", "epk1.!!!", "hello", "epk1.e30"] {
            assert!(ProvisioningKey::decode(bad).is_err(), "{bad}");
        }
        let r = ProvisionResponse::Error {
            code: ProvisionErrorCode::KeyExpired,
            message: "expired".into(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"result":"error","code":"key_expired","message":"expired"}"#
        );
    }
}
