//! Releases as compose files: the compose subset a fleet publishes, validated, and the
//! target state a device runs, built from one.
//!
//! [`parse_compose`] validates a compose file and reports errors with the line, column and
//! key path of the offending value; [`target_state`] turns a parsed release plus the
//! fleet's and the device's environment variables into the [`TargetState`] that travels to
//! the agent (as JSON, in the `target_state` control message) and sits in its journal.
//! Nothing here talks to an engine.
//!
//! Rules that are ours rather than compose's:
//!
//! * **service ids** are stable across releases: the first 31 bits of the SHA-256 of the
//!   service name, plus one (never 0). Adding a service never renumbers the others;
//! * **host bind mounts** are refused, except sources under [`ALLOWED_BIND_ROOT`] (a
//!   device-local data area the operator controls). Named volumes are always allowed;
//!   volumes a service uses but the top level does not declare are declared implicitly;
//! * **restart** defaults to `always` (balena's default, not compose's `no`);
//! * service names match `[a-z0-9][a-z0-9_-]*`.
//!
//! The target model itself ([`TargetState`] and friends) is in `protocol::release`; this
//! crate is the gateway's (and the fuzz build's): the agent never parses YAML. Sans-IO.
#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use protocol::release::{
    DependsCondition, EnvVar, Healthcheck, NetworkSpec, PortMapping, RestartPolicy, ServiceSpec,
    TargetState, VolumeMount, VolumeSpec,
};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod raw;
mod validate;

use raw::*;
use validate::*;

/// Host paths under this directory may be bind-mounted into services; others are refused.
pub const ALLOWED_BIND_ROOT: &str = "/var/lib/edge-agent/";

/// A compose file that passed validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compose {
    /// Services by name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Named volumes (declared, or used by a service).
    pub volumes: BTreeMap<String, VolumeSpec>,
    /// Named networks.
    pub networks: BTreeMap<String, NetworkSpec>,
}

/// Why a compose file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ComposeError {
    /// 1-based line of the offending value, when known.
    pub line: Option<usize>,
    /// 1-based column of the offending value, when known.
    pub column: Option<usize>,
    /// Key path, e.g. `services.web.ports[0]`; empty for the whole document.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "line {line}, column {column}: ")?;
        }
        if !self.path.is_empty() && self.path != "." {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Parses and validates a compose file.
pub fn parse_compose(text: &str) -> Result<Compose, ComposeError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let raw: RawCompose = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let loc = inner.location();
        let mut message = inner.to_string();
        // serde_yaml appends " at line L column C"; we print the location ourselves.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // serde_yaml prefixes the part of the path it knows ("services.web: ..."); we
        // print the full path ourselves.
        if let Some((head, rest)) = message.split_once(": ") {
            if !head.contains(' ') && path.starts_with(head) {
                message = rest.to_string();
            }
        }
        ComposeError {
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            path,
            message,
        }
    })?;
    validate(text, raw)
}

/// SHA-256 hex of a compose file's text: the release's content hash.
pub fn release_hash(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// The stable numeric id of a service name (see the module docs).
pub fn service_id(name: &str) -> u32 {
    let d = Sha256::digest(name.as_bytes());
    (u32::from_be_bytes([d[0], d[1], d[2], d[3]]) & 0x7fff_ffff) + 1
}

/// Builds a device's target state: the release's services with environments merged
/// compose < fleet (all) < fleet (service) < device (all) < device (service).
pub fn target_state(
    app_id: u32,
    app_name: &str,
    release_id: &str,
    compose: &Compose,
    fleet_env: &[EnvVar],
    device_env: &[EnvVar],
) -> TargetState {
    let mut services = compose.services.clone();
    for (name, svc) in &mut services {
        for layer in [fleet_env, device_env] {
            for v in layer.iter().filter(|v| v.service.is_empty()) {
                svc.environment.insert(v.name.clone(), v.value.clone());
            }
            for v in layer.iter().filter(|v| v.service == *name) {
                svc.environment.insert(v.name.clone(), v.value.clone());
            }
        }
    }
    TargetState {
        app_id,
        app_name: app_name.to_string(),
        release: release_id.to_string(),
        services,
        volumes: compose.volumes.clone(),
        networks: compose.networks.clone(),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = r#"version: "2.1"
services:
  db:
    image: edge-test/db:v1
    environment:
      DB_READY_AFTER: 3
    volumes:
      - data:/data
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      retries: 3
  api:
    image: edge-test/web:v1
    command: sh -c 'echo "hi there"'
    environment:
      - MODE=api
    depends_on:
      db:
        condition: service_healthy
    ports:
      - "8080:80"
      - "127.0.0.1:9000:90/udp"
  proxy:
    image: edge-test/web:v1
    depends_on: [db, api]
    restart: unless-stopped
    labels:
      io.balena.update.strategy: hand-over
    stop_grace_period: 1m30s
volumes:
  data:
"#;

    #[test]
    fn parses_the_subset() {
        let c = parse_compose(APP).unwrap();
        assert_eq!(c.services.len(), 3);
        let api = &c.services["api"];
        assert_eq!(
            api.command.as_deref().unwrap(),
            ["sh", "-c", "echo \"hi there\""]
        );
        assert_eq!(api.environment["MODE"], "api");
        assert_eq!(api.depends_on["db"], DependsCondition::ServiceHealthy);
        assert_eq!(api.ports[0].host_port, Some(8080));
        assert_eq!(api.ports[1].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(api.ports[1].protocol, "udp");
        let db = &c.services["db"];
        assert_eq!(db.environment["DB_READY_AFTER"], "3");
        assert_eq!(db.healthcheck.as_ref().unwrap().interval_ms, Some(1000));
        assert_eq!(db.restart, RestartPolicy::Always);
        let proxy = &c.services["proxy"];
        assert_eq!(proxy.depends_on["api"], DependsCondition::ServiceStarted);
        assert_eq!(proxy.restart, RestartPolicy::UnlessStopped);
        assert_eq!(proxy.update_strategy(), "hand-over");
        assert_eq!(proxy.stop_grace_period, Some(90));
        assert!(c.volumes.contains_key("data"));
        assert_ne!(db.service_id, 0);
        assert_eq!(db.service_id, service_id("db"));
    }

    #[test]
    fn errors_name_line_column_and_key() {
        let bad = APP.replace("\"8080:80\"", "\"80x\"");
        let e = parse_compose(&bad).unwrap_err();
        assert_eq!(e.path, "services.api.ports[0]");
        assert_eq!(e.line, Some(22));
        assert_eq!(
            e.to_string(),
            format!(
                "line 22, column {}: services.api.ports[0]: invalid port \"80x\"",
                e.column.unwrap()
            )
        );

        let e =
            parse_compose(&APP.replace("    restart: unless", "    restrat: unless")).unwrap_err();
        assert!(e.to_string().contains("services.proxy"), "{e}");
        assert!(e.to_string().contains("restrat"), "{e}");
        assert!(e.line.is_some());
    }

    #[test]
    fn semantic_errors_are_located() {
        let e = parse_compose(&APP.replace("depends_on: [db, api]", "depends_on: [db, nope]"))
            .unwrap_err();
        assert_eq!(e.path, "services.proxy.depends_on");
        assert_eq!(e.line, Some(26));
        assert!(
            e.to_string().starts_with(
                "line 26, column 5: services.proxy.depends_on: unknown service \"nope\""
            ),
            "{e}"
        );

        let cyc = "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n";
        let e = parse_compose(cyc).unwrap_err();
        assert!(e.message.contains("dependency cycle: a -> b -> a"), "{e}");
        assert_eq!(e.line, Some(4));

        let e = parse_compose("services:\n  web:\n    command: x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2, column 3: services.web: missing field `image`"
        );

        let e = parse_compose("services:\n  Web:\n    image: x\n").unwrap_err();
        assert!(e.message.contains("invalid service name"), "{e}");

        let e = parse_compose("services: {}\n").unwrap_err();
        assert!(e.message.contains("at least one service"));

        let e = parse_compose("services:\n  w:\n    image: x\n    volumes: [\"/etc:/host-etc\"]\n")
            .unwrap_err();
        assert!(e.message.contains("not allowed"), "{e}");
        assert_eq!(e.path, "services.w.volumes[0]");
        parse_compose(
            "services:\n  w:\n    image: x\n    volumes: [\"/var/lib/edge-agent/x:/x:ro\"]\n",
        )
        .unwrap();
    }

    #[test]
    fn env_merge_order_and_config_hash() {
        let c = parse_compose(APP).unwrap();
        let fleet = vec![
            EnvVar {
                service: "".into(),
                name: "MODE".into(),
                value: "fleet".into(),
            },
            EnvVar {
                service: "api".into(),
                name: "MODE".into(),
                value: "fleet-api".into(),
            },
        ];
        let device = vec![EnvVar {
            service: "".into(),
            name: "X".into(),
            value: "1".into(),
        }];
        let t = target_state(7, "app", "r1", &c, &fleet, &device);
        assert_eq!(t.services["api"].environment["MODE"], "fleet-api");
        assert_eq!(t.services["db"].environment["MODE"], "fleet");
        assert_eq!(t.services["db"].environment["X"], "1");
        let device2 = vec![
            EnvVar {
                service: "".into(),
                name: "X".into(),
                value: "1".into(),
            },
            EnvVar {
                service: "db".into(),
                name: "X".into(),
                value: "2".into(),
            },
        ];
        let t2 = target_state(7, "app", "r2", &c, &fleet, &device2);
        assert_eq!(t2.services["db"].environment["X"], "2");
        assert_ne!(
            t.services["db"].config_hash(),
            t2.services["db"].config_hash()
        );
        assert_eq!(
            t.services["api"].config_hash(),
            t2.services["api"].config_hash()
        );
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<TargetState>(&json).unwrap(), t);
        assert_eq!(release_hash("a").len(), 64);
    }

    #[test]
    fn durations_and_words() {
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("x"), None);
        assert_eq!(
            split_words("a 'b c' \"d\\\"e\"").unwrap(),
            ["a", "b c", "d\"e"]
        );
    }
}
