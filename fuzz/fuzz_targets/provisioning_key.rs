//! `ProvisioningKey::decode` (the key string an operator pastes into a factory image) and
//! the JSON of the provisioning stream's request and response, on arbitrary text.
//!
//! Properties: never panics; an accepted key has a 64-hex-digit CA fingerprint, a
//! gateway list whose every entry is `HOST:PORT`-shaped, and a secret, encodes to a string that decodes to the same
//! key, and decodes the same with surrounding whitespace; an accepted request or response
//! survives a JSON round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{ProvisionRequest, ProvisionResponse, ProvisioningKey};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let res = ProvisioningKey::decode(text);
        assert_eq!(
            ProvisioningKey::decode(&format!(" \t{text}\n")),
            res,
            "surrounding whitespace changed the result"
        );
        if let Ok(key) = res {
            assert_eq!(key.ca_fingerprint.len(), 64, "{key:?}");
            assert!(key.ca_fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(!key.secret.is_empty(), "{key:?}");
            assert!(
                protocol::host::gateway_addresses(&key.gateway).is_ok()
                    && key.gateways().iter().all(|g| g.contains(':')),
                "{key:?}"
            );
            let encoded = key.encode();
            assert!(encoded.starts_with("epk1."));
            assert_eq!(ProvisioningKey::decode(&encoded), Ok(key), "{encoded}");
        }
    }
    if let Ok(req) = serde_json::from_slice::<ProvisionRequest>(data) {
        let json = serde_json::to_vec(&req).expect("a request serializes");
        let back: ProvisionRequest = serde_json::from_slice(&json).expect("and reads back");
        assert_eq!(back, req);
    }
    if let Ok(resp) = serde_json::from_slice::<ProvisionResponse>(data) {
        let json = serde_json::to_vec(&resp).expect("a response serializes");
        let back: ProvisionResponse = serde_json::from_slice(&json).expect("and reads back");
        assert_eq!(back, resp);
    }
});
