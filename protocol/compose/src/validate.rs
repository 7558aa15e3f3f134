//! From the raw file to a checked [`Compose`]: names, references, cycles, limits, and
//! errors that point at the line and key.

use super::*;

pub(crate) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

pub(crate) fn validate(text: &str, raw: RawCompose) -> Result<Compose, ComposeError> {
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
pub(crate) fn find_cycle(services: &BTreeMap<String, ServiceSpec>) -> Option<Vec<String>> {
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

pub(crate) fn render_path(path: &[String]) -> String {
    path.join(".")
}

/// Best-effort line and column of a key path in block-style YAML (errors found after
/// deserialising have no location of their own).
pub(crate) fn locate(text: &str, path: &[String]) -> Option<(usize, usize)> {
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
