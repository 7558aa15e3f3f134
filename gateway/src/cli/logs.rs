//! `gateway logs UUID [-f]`: prints a device's stored lines, then (with `-f`) follows new
//! ones over Server-Sent Events, reconnecting after any interruption from the last line
//! it printed, so nothing is skipped or printed twice.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use protocol::DeviceUuid;

use crate::api::types::{LogLine, LogPage, LogParams};
use crate::client::{with_query, ApiClient, ClientError};

/// Why a live log stream ended (the command then reconnects).
#[derive(Debug, thiserror::Error)]
pub(super) enum StreamError {
    /// The gateway ended the response.
    #[error("the gateway closed the stream")]
    Closed,
    /// The connection broke.
    #[error("{0}")]
    Body(#[from] hyper::Error),
    /// One event grew past the limit without ending.
    #[error("an event larger than 1 MiB")]
    TooLarge,
}

/// What to print.
#[derive(Debug, Clone, Default)]
pub(super) struct LogsArgs {
    /// Keep printing new lines.
    pub follow: bool,
    /// Only this service.
    pub service: Option<String>,
    /// Lines newer than this (`1h`, `30m`, `7d`, or unix milliseconds), as
    /// [`parse_since`] returns it.
    pub since: Option<String>,
    /// Only lines containing this text.
    pub grep: Option<String>,
    /// Print each line as JSON.
    pub json: bool,
    /// Without `--since`: how many of the newest lines to print first.
    pub tail: u32,
}

/// Checks a `--since` value (unix milliseconds, or a duration ago within
/// [`bounds::LOGS_AGO`](crate::config::bounds::LOGS_AGO)) and returns it in the form the
/// API takes.
pub(super) fn parse_since(s: &str) -> Result<String, protocol::duration::DurationError> {
    let s = s.trim();
    // A bare integer is a unix time in milliseconds, as the API reads it.
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms.to_string());
    }
    let ago = crate::config::bounds::LOGS_AGO.parse(s)?;
    Ok(protocol::duration::display(ago))
}

/// The query of every request the command makes: its filters, plus what each request adds.
fn filters(a: &LogsArgs) -> LogParams {
    LogParams {
        service: a.service.clone(),
        q: a.grep.clone(),
        ..LogParams::default()
    }
}

/// Runs the command. Returns when the printed history ends (or never, with `follow`).
pub(super) async fn run(client: &ApiClient, uuid: DeviceUuid, a: &LogsArgs) -> anyhow::Result<()> {
    let f = filters(a);
    let lines = format!("/v1/devices/{uuid}/logs");
    let mut last: Option<i64> = None;
    // History: a time window page by page, or the newest lines.
    match &a.since {
        Some(since) => {
            let mut after = None;
            loop {
                let q = LogParams {
                    since: Some(since.clone()),
                    limit: Some(5000),
                    after,
                    ..f.clone()
                };
                let page: LogPage = client.get_query(&lines, &q).await?;
                for l in &page.lines {
                    print_line(l, a.json);
                    last = Some(l.id);
                }
                match page.next_after {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        None if a.tail > 0 => {
            let q = LogParams {
                tail: Some(i64::from(a.tail)),
                ..f.clone()
            };
            let page: LogPage = client.get_query(&lines, &q).await?;
            for l in &page.lines {
                print_line(l, a.json);
                last = Some(l.id);
            }
        }
        None => {}
    }
    if !a.follow {
        return Ok(());
    }
    // With no history printed, following starts at the newest stored line.
    let mut after = match last {
        Some(id) => id,
        None => {
            let q = LogParams {
                tail: Some(1),
                ..LogParams::default()
            };
            let page: LogPage = client.get_query(&lines, &q).await?;
            page.lines.first().map_or(0, |l| l.id)
        }
    };
    let mut delay = Duration::from_millis(250);
    let mut warned = false;
    loop {
        let q = LogParams {
            after: Some(after),
            ..f.clone()
        };
        let path = with_query(&format!("/v1/devices/{uuid}/logs/stream"), &q)?;
        match client.get_stream(&path, "text/event-stream").await {
            Ok(body) => {
                if warned {
                    eprintln!("-- reconnected --");
                    warned = false;
                }
                delay = Duration::from_millis(250);
                if let Err(e) = read_events(body, &mut after, a.json).await {
                    eprintln!("-- log stream interrupted ({e}); reconnecting --");
                    warned = true;
                }
            }
            // A token or device problem does not fix itself: stop with the API's words.
            Err(e @ ClientError::Api { .. }) | Err(e @ ClientError::NoToken) => {
                return Err(e.into())
            }
            Err(e) => {
                if !warned {
                    eprintln!("-- {e}; retrying --");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Reads Server-Sent Events until the stream ends, printing each line and advancing
/// `after` to its id.
async fn read_events(
    mut body: hyper::body::Incoming,
    after: &mut i64,
    json: bool,
) -> Result<(), StreamError> {
    let mut buf = BytesMut::new();
    let mut data = String::new();
    let mut id: Option<i64> = None;
    loop {
        let frame = match body.frame().await {
            None => return Err(StreamError::Closed),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(f)) => f,
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let raw = buf.split_to(nl + 1);
            let line = String::from_utf8_lossy(&raw[..nl]);
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                // End of one event.
                if !data.is_empty() {
                    if let Ok(l) = serde_json::from_str::<LogLine>(&data) {
                        let this = id.unwrap_or(l.id);
                        if this > *after {
                            print_line(&l, json);
                            *after = this;
                        }
                    }
                }
                data.clear();
                id = None;
            } else if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            } else if let Some(i) = line.strip_prefix("id:") {
                id = i.trim().parse().ok();
            }
        }
        if buf.remaining() > 1024 * 1024 {
            return Err(StreamError::TooLarge);
        }
    }
}

fn print_line(l: &LogLine, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(l).expect("a log line serializes")
        );
        return;
    }
    let ts = format_ms(l.timestamp);
    let who = l.service_name.as_deref().unwrap_or("agent");
    let stream = if l.is_std_err { "!" } else { " " };
    println!("{ts} [{who}]{stream} {}", l.message);
}

/// `2026-11-22 16:40:00.123` (UTC) from unix milliseconds.
pub(super) fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::format_ms(0), "1970-01-01 00:00:00.000");
        assert_eq!(
            super::format_ms(1_709_208_000_500),
            "2024-02-29 12:00:00.500"
        );
    }
}
