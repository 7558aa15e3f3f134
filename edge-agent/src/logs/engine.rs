//! Collects the stdout and stderr of every container the agent manages (labelled
//! `io.edge.managed=1`) from the container engine, with the engine's timestamps.
//!
//! Where reading stopped is kept per container (nanoseconds of the last line taken), in
//! the spool itself, so a restarted agent goes on after the last line it spooled and
//! reads nothing twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptions, LogsOptions};
use bollard::Docker;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::{LogPipeline, LogRecord, LogSink};

/// Label that marks containers the agent manages.
pub const MANAGED_LABEL: &str = "io.edge.managed";
/// Label holding a managed container's service name.
pub const SERVICE_NAME_LABEL: &str = "io.edge.service-name";
/// Label holding a managed container's numeric service id.
pub const SERVICE_ID_LABEL: &str = "io.edge.service-id";

const POLL: Duration = Duration::from_secs(1);

/// Connects to the engine at `engine` (`unix:///var/run/docker.sock` style) and follows
/// every managed container's output into `pipeline`, forever. An unreachable engine is
/// reported once and retried.
pub async fn collect(engine: String, pipeline: LogPipeline) {
    let sink = pipeline.sink();
    let cursors: Arc<Mutex<HashMap<String, i64>>> =
        Arc::new(Mutex::new(pipeline.cursors().into_iter().collect()));
    let mut warned = false;
    loop {
        let docker = match connect(&engine).await {
            Ok(d) => d,
            Err(e) => {
                if !warned {
                    warn!(%engine, error = %e, "container engine unreachable; container logs are not collected until it is");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
                continue;
            }
        };
        if warned {
            info!(%engine, "container engine reachable; collecting container logs");
            warned = false;
        }
        run(&docker, &sink, &cursors).await;
        tokio::time::sleep(POLL).await;
    }
}

/// Connects and negotiates the API version.
pub async fn connect(engine: &str) -> Result<Docker, bollard::errors::Error> {
    let docker = if let Some(path) = engine.strip_prefix("unix://") {
        Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)?
    } else if engine.starts_with('/') {
        Docker::connect_with_unix(engine, 120, bollard::API_DEFAULT_VERSION)?
    } else {
        Docker::connect_with_host(engine)?
    };
    docker.negotiate_version().await
}

/// Polls the engine's container list and keeps one follower per container, until the
/// engine stops answering.
async fn run(docker: &Docker, sink: &LogSink, cursors: &Arc<Mutex<HashMap<String, i64>>>) {
    // Followers end with this function (also when it is cancelled).
    let mut following: HashMap<String, AbortOnDrop> = HashMap::new();
    // Stopped containers whose output was read to the end.
    let mut drained: HashSet<String> = HashSet::new();
    loop {
        let filters = HashMap::from([("label".to_string(), vec![format!("{MANAGED_LABEL}=1")])]);
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await;
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                debug!(error = %e, "cannot list containers");
                return;
            }
        };
        following.retain(|_, h| !h.0.is_finished());
        let mut present = HashSet::new();
        for c in list {
            let Some(id) = c.id.clone() else { continue };
            present.insert(id.clone());
            let running = matches!(
                c.state,
                Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            );
            if following.contains_key(&id) || (!running && drained.contains(&id)) {
                continue;
            }
            if running {
                drained.remove(&id);
            } else {
                drained.insert(id.clone());
            }
            let labels = c.labels.unwrap_or_default();
            let service = labels.get(SERVICE_NAME_LABEL).cloned();
            let service_id = labels
                .get(SERVICE_ID_LABEL)
                .and_then(|v| v.parse::<u32>().ok());
            let h = tokio::spawn(follow(
                docker.clone(),
                id.clone(),
                service,
                service_id,
                sink.clone(),
                Arc::clone(cursors),
            ));
            following.insert(id, AbortOnDrop(h));
        }
        drained.retain(|id| present.contains(id));
        cursors
            .lock()
            .expect("cursor lock")
            .retain(|id, _| present.contains(id));
        tokio::time::sleep(POLL).await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn follow(
    docker: Docker,
    id: String,
    service: Option<String>,
    service_id: Option<u32>,
    sink: LogSink,
    cursors: Arc<Mutex<HashMap<String, i64>>>,
) {
    let mut cursor = cursors
        .lock()
        .expect("cursor lock")
        .get(&id)
        .copied()
        .unwrap_or(i64::MIN);
    let since = if cursor == i64::MIN {
        0
    } else {
        (cursor / 1_000_000_000) as i32
    };
    let mut stream = docker.logs(
        &id,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            timestamps: true,
            since,
            ..Default::default()
        }),
    );
    let mut partial: Vec<u8> = Vec::new();
    while let Some(item) = stream.next().await {
        let (bytes, is_stderr) = match item {
            Ok(bollard::container::LogOutput::StdErr { message }) => (message, true),
            Ok(bollard::container::LogOutput::StdOut { message })
            | Ok(bollard::container::LogOutput::Console { message }) => (message, false),
            Ok(bollard::container::LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                debug!(container = %id, error = %e, "log stream ended");
                break;
            }
        };
        partial.extend_from_slice(&bytes);
        while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = partial.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&raw[..raw.len() - 1]);
            let text = text.strip_suffix('\r').unwrap_or(&text);
            let Some((ts, message)) = split_timestamp(text) else {
                continue;
            };
            if ts <= cursor {
                continue;
            }
            cursor = ts;
            cursors.lock().expect("cursor lock").insert(id.clone(), ts);
            sink.push(LogRecord {
                timestamp_ms: ts / 1_000_000,
                service: service.clone(),
                service_id,
                is_stderr,
                is_system: false,
                message: message.to_string(),
                source: Some((id.clone(), ts)),
            });
        }
    }
}

/// Splits `2026-11-22T16:40:00.123456789Z message` into nanoseconds since the epoch and
/// the message.
pub fn split_timestamp(line: &str) -> Option<(i64, &str)> {
    let (ts, rest) = line.split_once(' ').unwrap_or((line, ""));
    Some((parse_rfc3339_nanos(ts)?, rest))
}

/// Parses the engine's RFC 3339 timestamps (UTC, `Z`, optional fraction) to nanoseconds.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut nanos = 0i64;
    if b[19] == b'.' {
        let frac = &s[20..s.len() - 1];
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        nanos = frac.parse::<i64>().ok()? * 10i64.pow(9 - frac.len() as u32);
    } else if b[19] != b'Z' {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3_600 + mi * 60 + se) * 1_000_000_000) + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_timestamps() {
        assert_eq!(
            parse_rfc3339_nanos("1970-01-01T00:00:01Z"),
            Some(1_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2024-02-29T12:00:00.5Z"),
            Some(1_709_208_000_500_000_000)
        );
        let (ts, msg) = split_timestamp("2026-11-22T16:40:00.123456789Z hello world").unwrap();
        assert_eq!(ts % 1_000_000_000, 123_456_789);
        assert_eq!(msg, "hello world");
        assert!(parse_rfc3339_nanos("yesterday").is_none());
    }
}
