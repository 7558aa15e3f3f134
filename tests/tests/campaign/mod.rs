//! What the campaign tests (`bad_links.rs`, `kill_storms.rs`) share: how long each bad
//! condition lasts, visitors that fetch known bodies and sort every answer, and the
//! resources of a gateway process.
//!
//! Each test is short by default (a few seconds of the bad condition, for CI) and runs
//! at full length with `CAMPAIGN=full`: 60 s of loss, a 2-minute blackhole, 2 minutes
//! of flapping (5 s), 10 kills. `CAMPAIGN_SECS=N` sets every test's length to N seconds
//! and `CAMPAIGN_KILLS=N` the number of kills, whatever `CAMPAIGN` says.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_tests::TestBody;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use tokio_util::sync::CancellationToken;

/// Whether this is the full-length run (`CAMPAIGN=full`).
pub fn full() -> bool {
    std::env::var("CAMPAIGN").as_deref() == Ok("full")
}

/// How long a test's bad condition lasts: `CAMPAIGN_SECS` if set, else `full` in the
/// full-length run and `ci` otherwise.
pub fn length(ci: Duration, full_length: Duration) -> Duration {
    if let Some(s) = env_u64("CAMPAIGN_SECS") {
        return Duration::from_secs(s);
    }
    if full() {
        full_length
    } else {
        ci
    }
}

/// How many times a storm kills: `CAMPAIGN_KILLS` if set, else `full` or `ci`.
pub fn kills(ci: usize, full_count: usize) -> usize {
    if let Some(n) = env_u64("CAMPAIGN_KILLS") {
        return n as usize;
    }
    if full() {
        full_count
    } else {
        ci
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// `len` bytes that differ from any shifted, repeated or truncated copy of themselves:
/// 8-byte words, each a scrambled (seed, index) pair.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while out.len() < len {
        let w = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        out.extend_from_slice(&w.to_be_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// How one visitor request ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// 200 with exactly the expected body.
    Ok,
    /// An error page the gateway is allowed to give on a bad link (502, 503, 504), and
    /// what it said, in a word (`offline`, `busy`, `lost`, `timeout`, ...).
    Clean(u16, &'static str),
    /// The gateway was not reachable (refused, reset before an answer): a gateway that
    /// is down, which a client sees and can retry.
    Unreachable,
    /// The answer started (with its status) and then broke off with an error: the
    /// client knows the body is incomplete.
    CutMidBody(u16),
    /// Any other status.
    Unexpected(u16),
    /// 200 with a body other than the expected one, ended as if complete: the one
    /// outcome that must never happen.
    Corrupt,
    /// Nothing came back within the client's own deadline.
    Hung,
}

impl Outcome {
    /// Whether a visitor could tell this failure apart from a success.
    pub fn is_clean(&self) -> bool {
        !matches!(
            self,
            Outcome::Corrupt | Outcome::Unexpected(_) | Outcome::Hung
        )
    }
}

/// The plain HTTP/1.1 client the visitors use.
pub type HttpClient = Client<HttpConnector, TestBody>;

/// What a visitor sends.
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Bytes,
}

impl Request {
    pub fn new(method: &str, path: &str, body: Bytes) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            body,
        }
    }
}

/// Sends `req` to the gateway's public port for `host` and sorts the answer against
/// `expected` (the whole body a 200 must carry). `deadline` bounds the whole exchange.
pub async fn visit(
    client: &HttpClient,
    gw: std::net::SocketAddr,
    host: &str,
    req: Request,
    expected: &[u8],
    deadline: Duration,
) -> Outcome {
    let Request { method, path, body } = req;
    let req = http::Request::builder()
        .method(method.as_str())
        .uri(format!("http://{gw}{path}"))
        .header("host", host)
        .body(e2e_tests::body(body))
        .unwrap();
    let exchange = async {
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(_) => return Outcome::Unreachable,
        };
        let status = resp.status();
        let got = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Outcome::CutMidBody(status.as_u16()),
        };
        match status {
            StatusCode::OK if got[..] == expected[..] => Outcome::Ok,
            StatusCode::OK => {
                eprintln!(
                    "CORRUPT: {method} {path}: {} bytes, expected {}; first difference at {:?}",
                    got.len(),
                    expected.len(),
                    got.iter().zip(expected).position(|(a, b)| a != b)
                );
                Outcome::Corrupt
            }
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Outcome::Clean(status.as_u16(), why(&got)),
            s => Outcome::Unexpected(s.as_u16()),
        }
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .unwrap_or(Outcome::Hung)
}

/// The gist of an error page: which of the gateway's reasons it gives.
fn why(page: &[u8]) -> &'static str {
    let text = String::from_utf8_lossy(page);
    [
        ("went offline while answering", "lost"),
        ("is offline", "offline"),
        ("too many concurrent requests", "busy"),
        ("did not answer in time", "timeout"),
        ("did not accept the connection in time", "target-timeout"),
        ("nothing is listening", "refused"),
        ("closed the connection", "closed"),
    ]
    .into_iter()
    .find(|(needle, _)| text.contains(needle))
    .map_or("other", |(_, w)| w)
}

/// Counts of outcomes, and the slowest success.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub counts: BTreeMap<Outcome, u64>,
    pub slowest_ok: Duration,
}

impl Tally {
    pub fn add(&mut self, o: Outcome, took: Duration) {
        if o == Outcome::Ok {
            self.slowest_ok = self.slowest_ok.max(took);
        }
        *self.counts.entry(o).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (k, v) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += v;
        }
        self.slowest_ok = self.slowest_ok.max(other.slowest_ok);
    }

    pub fn get(&self, o: &Outcome) -> u64 {
        self.counts.get(o).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Requests that ended in a way a visitor cannot tell from a success, or not at all.
    pub fn unclean(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(o, _)| !o.is_clean())
            .map(|(_, n)| n)
            .sum()
    }

    /// One line for the report: `ok=…, 502=…, …`.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        for (o, n) in &self.counts {
            let k = match o {
                Outcome::Ok => "ok".to_string(),
                Outcome::Clean(s, why) => format!("{s}({why})"),
                Outcome::Unreachable => "unreachable".to_string(),
                Outcome::CutMidBody(s) => format!("cut-mid-body({s})"),
                Outcome::Unexpected(s) => format!("UNEXPECTED-{s}"),
                Outcome::Corrupt => "CORRUPT".to_string(),
                Outcome::Hung => "HUNG".to_string(),
            };
            parts.push(format!("{k}={n}"));
        }
        format!(
            "{} requests: {} (slowest ok {:?})",
            self.total(),
            parts.join(", "),
            self.slowest_ok
        )
    }
}

/// Runs `visitors` loops against `host` until `until`, each alternating a GET of
/// `/bytes/{size}` and a POST of a `size`-byte pattern to `/echo`, every answer sorted.
pub async fn visitor_load(
    gw: std::net::SocketAddr,
    host: String,
    visitors: usize,
    size: usize,
    until: Instant,
    deadline: Duration,
) -> Tally {
    let stop = CancellationToken::new();
    let load = visitor_load_until(gw, host, visitors, size, stop.clone(), deadline);
    tokio::spawn(async move {
        tokio::time::sleep_until(until.into()).await;
        stop.cancel();
    });
    load.await
}

/// [`visitor_load`] until `stop` is cancelled.
pub async fn visitor_load_until(
    gw: std::net::SocketAddr,
    host: String,
    visitors: usize,
    size: usize,
    stop: CancellationToken,
    deadline: Duration,
) -> Tally {
    let mut tasks = Vec::new();
    for v in 0..visitors {
        let (host, stop) = (host.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = e2e_tests::http_client();
            let xs = vec![b'x'; size];
            let mut tally = Tally::default();
            let mut i = 0u64;
            while !stop.is_cancelled() {
                i += 1;
                let t = Instant::now();
                let o = if i.is_multiple_of(2) {
                    let p = pattern(((v as u64) << 32) | i, size);
                    let req = Request::new("POST", "/echo", Bytes::from(p.clone()));
                    visit(&client, gw, &host, req, &p, deadline).await
                } else {
                    let req = Request::new("GET", &format!("/bytes/{size}"), Bytes::new());
                    visit(&client, gw, &host, req, &xs, deadline).await
                };
                // A gateway that is down refuses at once, and an offline device's page
                // comes at once: do not spin on either (so a count of failures is about a
                // tenth of a second each).
                if !matches!(o, Outcome::Ok) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tally.add(o, t.elapsed());
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        all.merge(&t.await.unwrap());
    }
    all
}

/// Open file descriptors of process `pid`.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `p`-th percentile (0..=1) of `samples`.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// A shell script at `path` that appends `word` to `log` when run (a reboot command
/// whose every run can be counted).
pub fn counting_script(path: &std::path::Path, log: &std::path::Path, word: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        path,
        format!("#!/bin/sh\necho {word} >> '{}'\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
