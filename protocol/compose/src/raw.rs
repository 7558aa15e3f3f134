//! The compose file as written: serde shapes for YAML, with the short and long forms
//! compose allows (lists or maps, strings or numbers), and the value parsers (ports,
//! mounts, durations, command words).

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCompose {
    #[serde(default)]
    #[allow(dead_code)] // accepted and ignored, as docker compose does
    pub(crate) version: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(crate) services: BTreeMap<String, RawService>,
    #[serde(default)]
    pub(crate) volumes: BTreeMap<String, Option<RawVolume>>,
    #[serde(default)]
    pub(crate) networks: BTreeMap<String, Option<RawNetwork>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub(crate) image: Option<String>,
    pub(crate) command: Option<Words>,
    pub(crate) entrypoint: Option<Words>,
    #[serde(default)]
    pub(crate) environment: KeyValues,
    #[serde(default)]
    pub(crate) labels: KeyValues,
    #[serde(default)]
    pub(crate) ports: Vec<ComposePort>,
    #[serde(default)]
    pub(crate) volumes: Vec<ComposeMount>,
    pub(crate) restart: Option<RestartPolicy>,
    #[serde(default)]
    pub(crate) depends_on: DependsOn,
    pub(crate) healthcheck: Option<RawHealthcheck>,
    pub(crate) network_mode: Option<String>,
    #[serde(default)]
    pub(crate) networks: Vec<String>,
    #[serde(default)]
    pub(crate) privileged: bool,
    #[serde(default)]
    pub(crate) cap_add: Vec<String>,
    #[serde(default)]
    pub(crate) devices: Vec<String>,
    pub(crate) stop_grace_period: Option<Millis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthcheck {
    pub(crate) test: Option<Words>,
    pub(crate) interval: Option<Millis>,
    pub(crate) timeout: Option<Millis>,
    pub(crate) retries: Option<u32>,
    pub(crate) start_period: Option<Millis>,
    #[serde(default)]
    pub(crate) disable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVolume {
    pub(crate) driver: Option<String>,
    #[serde(default)]
    pub(crate) driver_opts: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) labels: KeyValues,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub(crate) driver: Option<String>,
    #[serde(default)]
    pub(crate) internal: bool,
    #[serde(default)]
    pub(crate) labels: KeyValues,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDepends {
    pub(crate) condition: DependsCondition,
}

/// A string (split shell-style) or a list of strings.
pub(crate) struct Words(pub(crate) Vec<String>);

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
pub(crate) struct KeyValues(pub(crate) BTreeMap<String, String>);

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
pub(crate) struct DependsOn(pub(crate) BTreeMap<String, DependsCondition>);

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
pub(crate) struct Millis(pub(crate) u64);

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
pub(crate) struct ComposePort(pub(crate) PortMapping);

/// A mount as written in compose (`data:/data:ro`).
pub(crate) struct ComposeMount(pub(crate) VolumeMount);

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

pub(crate) fn parse_port(s: &str) -> Option<PortMapping> {
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

/// A value inside a service that does not parse (a `volumes:` entry, a command string);
/// the text names the value and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadValue(pub(crate) String);

pub(crate) fn parse_mount(s: &str) -> Result<VolumeMount, BadValue> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [s, t] => (*s, *t, None),
        [s, t, m] => (*s, *t, Some(*m)),
        _ => {
            return Err(BadValue(format!(
                "invalid volume {s:?}: expected NAME:/PATH[:ro|rw]"
            )))
        }
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => {
            return Err(BadValue(format!(
                "invalid volume mode {m:?} in {s:?}: expected ro or rw"
            )))
        }
    };
    if !target.starts_with('/') {
        return Err(BadValue(format!(
            "invalid volume {s:?}: the container path must be absolute"
        )));
    }
    let bind = source.starts_with('/') || source.starts_with('.') || source.starts_with('~');
    if bind {
        let normal = !source.split('/').any(|c| c == "..");
        if !(source.starts_with(ALLOWED_BIND_ROOT) && normal) {
            return Err(BadValue(format!(
                "host bind mount {source:?} is not allowed: use a named volume, or a path under {ALLOWED_BIND_ROOT}"
            )));
        }
    } else if !valid_name(source) {
        return Err(BadValue(format!("invalid volume name {source:?}")));
    }
    Ok(VolumeMount {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
        bind,
    })
}

pub(crate) fn parse_duration_ms(s: &str) -> Option<u64> {
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
pub(crate) fn split_words(s: &str) -> Result<Vec<String>, BadValue> {
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
                        None => return Err(BadValue(format!("unterminated quote in {s:?}"))),
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
                            None => return Err(BadValue(format!("unterminated quote in {s:?}"))),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(BadValue(format!("unterminated quote in {s:?}"))),
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
