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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- raw compose, as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompose {
    #[serde(default)]
    #[allow(dead_code)] // accepted and ignored, as docker compose does
    version: Option<serde_yaml::Value>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<RawVolume>>,
    #[serde(default)]
    networks: BTreeMap<String, Option<RawNetwork>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    image: Option<String>,
    command: Option<Words>,
    entrypoint: Option<Words>,
    #[serde(default)]
    environment: KeyValues,
    #[serde(default)]
    labels: KeyValues,
    #[serde(default)]
    ports: Vec<ComposePort>,
    #[serde(default)]
    volumes: Vec<ComposeMount>,
    restart: Option<RestartPolicy>,
    #[serde(default)]
    depends_on: DependsOn,
    healthcheck: Option<RawHealthcheck>,
    network_mode: Option<String>,
    #[serde(default)]
    networks: Vec<String>,
    #[serde(default)]
    privileged: bool,
    #[serde(default)]
    cap_add: Vec<String>,
    #[serde(default)]
    devices: Vec<String>,
    stop_grace_period: Option<Millis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthcheck {
    test: Option<Words>,
    interval: Option<Millis>,
    timeout: Option<Millis>,
    retries: Option<u32>,
    start_period: Option<Millis>,
    #[serde(default)]
    disable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    driver: Option<String>,
    #[serde(default)]
    driver_opts: BTreeMap<String, String>,
    #[serde(default)]
    labels: KeyValues,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    driver: Option<String>,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    labels: KeyValues,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDepends {
    condition: DependsCondition,
}

/// A string (split shell-style) or a list of strings.
struct Words(Vec<String>);

impl<'de> Deserialize<'de> for Words {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum W {
            S(String),
            L(Vec<String>),
        }
        match W::deserialize(d)
            .map_err(|_| de::Error::custom("expected a string or a list of strings"))?
        {
            W::S(s) => split_words(&s).map(Words).map_err(de::Error::custom),
            W::L(l) => Ok(Words(l)),
        }
    }
}

/// A map, or a list of `KEY=VALUE` strings.
#[derive(Default)]
struct KeyValues(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for KeyValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum KV {
            M(BTreeMap<String, Option<Scalar>>),
            L(Vec<String>),
        }
        let kv = KV::deserialize(d).map_err(|_| {
            de::Error::custom("expected a map of scalars or a list of KEY=VALUE strings")
        })?;
        let mut out = BTreeMap::new();
        match kv {
            KV::M(m) => {
                for (k, v) in m {
                    let v = match v {
                        None => String::new(),
                        Some(Scalar::S(s)) => s,
                        Some(Scalar::I(i)) => i.to_string(),
                        Some(Scalar::F(f)) => f.to_string(),
                        Some(Scalar::B(b)) => b.to_string(),
                    };
                    out.insert(k, v);
                }
            }
            KV::L(l) => {
                for item in l {
                    let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
                    if k.is_empty() {
                        return Err(de::Error::custom(format!("invalid entry {item:?}")));
                    }
                    out.insert(k.to_string(), v.to_string());
                }
            }
        }
        Ok(KeyValues(out))
    }
}

/// `depends_on` as a list of names or a map of name to `{condition}`.
#[derive(Default)]
struct DependsOn(BTreeMap<String, DependsCondition>);

impl<'de> Deserialize<'de> for DependsOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum DO {
            L(Vec<String>),
            M(BTreeMap<String, RawDepends>),
        }
        match DO::deserialize(d).map_err(|_| {
            de::Error::custom(
                "expected a list of services or a map of service to {condition: service_started|service_healthy}",
            )
        })? {
            DO::L(l) => Ok(DependsOn(
                l.into_iter()
                    .map(|s| (s, DependsCondition::ServiceStarted))
                    .collect(),
            )),
            DO::M(m) => Ok(DependsOn(
                m.into_iter().map(|(k, v)| (k, v.condition)).collect(),
            )),
        }
    }
}

/// A compose duration (`1m30s`, `500ms`, `10s`) or a number of seconds.
struct Millis(u64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum M {
            N(u64),
            S(String),
        }
        match M::deserialize(d).map_err(|_| de::Error::custom("expected a duration like 10s"))? {
            M::N(n) => Ok(Millis(n * 1000)),
            M::S(s) => parse_duration_ms(&s)
                .map(Millis)
                .ok_or_else(|| de::Error::custom(format!("invalid duration {s:?}"))),
        }
    }
}

/// A port as written in compose (`"8080:80"`).
struct ComposePort(PortMapping);

/// A mount as written in compose (`data:/data:ro`).
struct ComposeMount(VolumeMount);

impl<'de> Deserialize<'de> for ComposePort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum P {
            N(u16),
            S(String),
        }
        let s = match P::deserialize(d)
            .map_err(|_| de::Error::custom("expected a port like \"8080:80\""))?
        {
            P::N(n) => n.to_string(),
            P::S(s) => s,
        };
        parse_port(&s)
            .map(ComposePort)
            .ok_or_else(|| de::Error::custom(format!("invalid port {s:?}")))
    }
}

impl<'de> Deserialize<'de> for ComposeMount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_mount(&s).map(ComposeMount).map_err(de::Error::custom)
    }
}

fn parse_port(s: &str) -> Option<PortMapping> {
    let (spec, protocol) = match s.split_once('/') {
        Some((spec, p)) if p == "tcp" || p == "udp" => (spec, p),
        Some(_) => return None,
        None => (s, "tcp"),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [c] => (None, None, port(c)?),
        [h, c] => (None, Some(port(h)?), port(c)?),
        [ip, h, c] => {
            ip.parse::<std::net::IpAddr>().ok()?;
            let h = if h.is_empty() { None } else { Some(port(h)?) };
            (Some(ip.to_string()), h, port(c)?)
        }
        _ => return None,
    };
    Some(PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol: protocol.to_string(),
    })
}

fn parse_mount(s: &str) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [s, t] => (*s, *t, None),
        [s, t, m] => (*s, *t, Some(*m)),
        _ => return Err(format!("invalid volume {s:?}: expected NAME:/PATH[:ro|rw]")),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => {
            return Err(format!(
                "invalid volume mode {m:?} in {s:?}: expected ro or rw"
            ))
        }
    };
    if !target.starts_with('/') {
        return Err(format!(
            "invalid volume {s:?}: the container path must be absolute"
        ));
    }
    let bind = source.starts_with('/') || source.starts_with('.') || source.starts_with('~');
    if bind {
        let normal = !source.split('/').any(|c| c == "..");
        if !(source.starts_with(ALLOWED_BIND_ROOT) && normal) {
            return Err(format!(
                "host bind mount {source:?} is not allowed: use a named volume, or a path under {ALLOWED_BIND_ROOT}"
            ));
        }
    } else if !valid_name(source) {
        return Err(format!("invalid volume name {source:?}"));
    }
    Ok(VolumeMount {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
        bind,
    })
}

fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0u64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(mult)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Splits a command string like a POSIX shell would for plain words and quotes.
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err(format!("unterminated quote in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn validate(text: &str, raw: RawCompose) -> Result<Compose, ComposeError> {
    let err = |path: Vec<String>, message: String| {
        let (line, column) = locate(text, &path).unzip();
        ComposeError {
            line,
            column,
            path: render_path(&path),
            message,
        }
    };
    if raw.services.is_empty() {
        return Err(err(
            vec!["services".into()],
            "at least one service is required".into(),
        ));
    }
    let mut volumes: BTreeMap<String, VolumeSpec> = raw
        .volumes
        .into_iter()
        .map(|(k, v)| {
            let v = v.map(|v| VolumeSpec {
                driver: v.driver,
                driver_opts: v.driver_opts,
                labels: v.labels.0,
            });
            (k, v.unwrap_or_default())
        })
        .collect();
    for name in volumes.keys() {
        if !valid_name(name) {
            return Err(err(
                vec!["volumes".into(), name.clone()],
                format!("invalid volume name {name:?}: use [a-z0-9][a-z0-9_-]*"),
            ));
        }
    }
    let networks: BTreeMap<String, NetworkSpec> = raw
        .networks
        .into_iter()
        .map(|(k, v)| {
            let v = v.map(|v| NetworkSpec {
                driver: v.driver,
                internal: v.internal,
                labels: v.labels.0,
            });
            (k, v.unwrap_or_default())
        })
        .collect();
    for name in networks.keys() {
        if !valid_name(name) {
            return Err(err(
                vec!["networks".into(), name.clone()],
                format!("invalid network name {name:?}: use [a-z0-9][a-z0-9_-]*"),
            ));
        }
    }
    let names: BTreeSet<String> = raw.services.keys().cloned().collect();
    let mut services = BTreeMap::new();
    for (name, s) in raw.services {
        let at = |key: &str| vec!["services".to_string(), name.clone(), key.to_string()];
        if !valid_name(&name) {
            return Err(err(
                vec!["services".into(), name.clone()],
                format!("invalid service name {name:?}: use [a-z0-9][a-z0-9_-]*"),
            ));
        }
        let Some(image) = s.image.filter(|i| !i.is_empty()) else {
            return Err(err(
                vec!["services".into(), name.clone()],
                "missing field `image`".into(),
            ));
        };
        for dep in s.depends_on.0.keys() {
            if !names.contains(dep) {
                return Err(err(at("depends_on"), format!("unknown service {dep:?}")));
            }
            if *dep == name {
                return Err(err(
                    at("depends_on"),
                    "a service cannot depend on itself".into(),
                ));
            }
        }
        for m in s.volumes.iter().map(|m| &m.0).filter(|m| !m.bind) {
            volumes.entry(m.source.clone()).or_default();
        }
        for n in &s.networks {
            if !networks.contains_key(n) {
                return Err(err(at("networks"), format!("undeclared network {n:?}")));
            }
        }
        if s.network_mode.is_some() && !s.networks.is_empty() {
            return Err(err(
                at("network_mode"),
                "network_mode and networks cannot be used together".into(),
            ));
        }
        let healthcheck = s.healthcheck.map(|h| Healthcheck {
            test: if h.disable {
                vec!["NONE".into()]
            } else {
                match h.test {
                    Some(Words(t))
                        if t.first().map(String::as_str) == Some("CMD")
                            || t.first().map(String::as_str) == Some("CMD-SHELL")
                            || t.first().map(String::as_str) == Some("NONE") =>
                    {
                        t
                    }
                    // A plain string means a shell command, as in compose.
                    Some(Words(t)) => vec!["CMD-SHELL".into(), t.join(" ")],
                    None => Vec::new(),
                }
            },
            interval_ms: h.interval.map(|m| m.0),
            timeout_ms: h.timeout.map(|m| m.0),
            retries: h.retries,
            start_period_ms: h.start_period.map(|m| m.0),
        });
        services.insert(
            name.clone(),
            ServiceSpec {
                service_id: service_id(&name),
                image,
                command: s.command.map(|w| w.0),
                entrypoint: s.entrypoint.map(|w| w.0),
                environment: s.environment.0,
                labels: s.labels.0,
                ports: s.ports.into_iter().map(|p| p.0).collect(),
                volumes: s.volumes.into_iter().map(|m| m.0).collect(),
                restart: s.restart.unwrap_or_default(),
                depends_on: s.depends_on.0,
                healthcheck,
                network_mode: s.network_mode,
                networks: s.networks,
                privileged: s.privileged,
                cap_add: s.cap_add,
                devices: s.devices,
                stop_grace_period: s.stop_grace_period.map(|m| m.0.div_ceil(1000)),
            },
        );
    }
    if let Some(cycle) = find_cycle(&services) {
        return Err(err(
            vec!["services".into(), cycle[0].clone(), "depends_on".into()],
            format!("dependency cycle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(Compose {
        services,
        volumes,
        networks,
    })
}

/// A dependency cycle, as the list of services on it (first repeated at the end).
fn find_cycle(services: &BTreeMap<String, ServiceSpec>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        services: &BTreeMap<String, ServiceSpec>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for dep in services
            .get(n)
            .map(|s| s.depends_on.keys())
            .into_iter()
            .flatten()
        {
            if let Some(c) = visit(dep, services, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in services.keys() {
        if let Some(c) = visit(n, services, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn render_path(path: &[String]) -> String {
    path.join(".")
}

/// Best-effort line and column of a key path in block-style YAML (errors found after
/// deserialising have no location of their own).
fn locate(text: &str, path: &[String]) -> Option<(usize, usize)> {
    let mut min_indent: i64 = -1;
    let mut found = None;
    let mut lines = text.lines().enumerate();
    'keys: for key in path {
        for (i, line) in lines.by_ref() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = (line.len() - trimmed.len()) as i64;
            if indent <= min_indent {
                // Left the parent's block without finding the key.
                return found;
            }
            let k = trimmed.trim_start_matches("- ");
            let k = k.trim_start_matches(['"', '\'']);
            if let Some(rest) = k.strip_prefix(key.as_str()) {
                let rest = rest.trim_start_matches(['"', '\'']);
                if rest.starts_with(':') {
                    min_indent = indent;
                    found = Some((i + 1, indent as usize + 1));
                    continue 'keys;
                }
            }
        }
        return found;
    }
    found
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
