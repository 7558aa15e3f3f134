//! Device log lines: durable ingest with de-duplication by sequence number, queries,
//! retention.

use protocol::{DeviceUuid, LogLine};
use serde::Serialize;
use sqlx::QueryBuilder;

use super::backend::{DbRow, Lock, Tx};
use super::{Store, StoreError};

/// Rows per multi-row INSERT (8 parameters each, far below SQLite's and PostgreSQL's
/// parameter limits).
const INSERT_CHUNK: usize = 200;

/// A stored line: the shipped fields plus the gateway's id (its order across all lines,
/// used for paging and live-tail resumption) and the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredLine {
    /// Gateway-wide, increasing id.
    pub id: i64,
    /// The device uuid.
    pub device: String,
    /// The line as shipped.
    #[serde(flatten)]
    pub line: LogLine,
}

/// Filters for [`Store::query_logs`]. Everything is optional; `limit` defaults to 1000.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Lines produced at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Lines produced before this time (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Only this service's lines (`""`: only the agent's own, system lines without service).
    pub service: Option<String>,
    /// Only stderr (`true`) or only stdout (`false`) lines.
    pub stderr: Option<bool>,
    /// Only system (`true`) or only service output (`false`).
    pub system: Option<bool>,
    /// Only lines containing this text (case-insensitive for ASCII).
    pub text: Option<String>,
    /// Only lines with a gateway id above this (paging forward, live-tail resumption).
    pub after_id: Option<i64>,
    /// The newest `limit` matching lines instead of the oldest (still returned oldest first).
    pub newest: bool,
    /// At most this many lines (1..=10000).
    pub limit: Option<i64>,
}

impl LogQuery {
    /// Whether a line passes the filters other than paging (for live subscribers).
    pub fn matches(&self, l: &StoredLine) -> bool {
        if let Some(s) = self.since_ms {
            if l.line.timestamp < s {
                return false;
            }
        }
        if let Some(u) = self.until_ms {
            if l.line.timestamp >= u {
                return false;
            }
        }
        if let Some(svc) = &self.service {
            if l.line.service_name.as_deref().unwrap_or("") != svc {
                return false;
            }
        }
        if self.stderr.is_some_and(|e| e != l.line.is_std_err) {
            return false;
        }
        if self.system.is_some_and(|e| e != l.line.is_system) {
            return false;
        }
        if let Some(t) = &self.text {
            if !l
                .line
                .message
                .to_ascii_lowercase()
                .contains(&t.to_ascii_lowercase())
            {
                return false;
            }
        }
        true
    }
}

/// Reads a device's log cursor.
const CURSOR: &str = "SELECT epoch, last_seq FROM log_cursors WHERE device = $1";

/// The highest sequence number a cursor row holds for spool `epoch`; 0 for none or for a
/// new epoch.
fn upto(row: Option<impl DbRow>, epoch: &str) -> Result<u64, StoreError> {
    Ok(match row {
        Some(r) if r.col::<String>("epoch")? == epoch => r.col::<i64>("last_seq")? as u64,
        _ => 0,
    })
}

/// The highest sequence number stored for `device`'s spool `epoch`, read in `tx`.
async fn stored_upto(tx: &mut Tx, device: DeviceUuid, epoch: &str) -> Result<u64, StoreError> {
    on_tx!(tx, |c| upto(
        sqlx::query(CURSOR)
            .bind(device.as_str())
            .fetch_optional(&mut *c)
            .await?,
        epoch
    ))
}

/// PostgreSQL's text cannot hold NUL; a device's line with one would fail its whole batch
/// (and the agent would resend it forever). There it is stored as U+FFFD instead.
fn without_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}").into()
    } else {
        s.into()
    }
}

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl Store {
    /// The highest sequence number stored for `device`'s spool `epoch` (0 when none or when
    /// the device's spool has a new epoch).
    pub async fn log_resume(&self, device: DeviceUuid, epoch: &str) -> Result<u64, StoreError> {
        on_pool!(self, |p| upto(
            sqlx::query(CURSOR)
                .bind(device.as_str())
                .fetch_optional(p)
                .await?,
            epoch
        ))
    }

    /// Stores the lines of a batch whose sequence numbers are above what is stored for
    /// `epoch`, in one transaction. Returns the highest stored sequence number (to
    /// acknowledge) and the lines newly stored, with their ids.
    pub async fn insert_logs(
        &self,
        device: DeviceUuid,
        epoch: &str,
        lines: &[LogLine],
    ) -> Result<(u64, Vec<StoredLine>), StoreError> {
        // A write transaction from the start: it reads the cursor, then writes (see
        // `Store::write_tx`); on PostgreSQL one batch per device at a time, so that the
        // device's line ids commit in increasing order.
        let mut tx = self.write_tx(&[Lock::Logs(device)]).await?;
        let last = stored_upto(&mut tx, device, epoch).await?;
        let fresh: Vec<LogLine> = lines
            .iter()
            .filter(|l| l.seq > last)
            .map(|l| {
                let mut l = l.clone();
                if tx.is_postgres() {
                    l.message = without_nul(&l.message).into_owned();
                    l.service_name = l
                        .service_name
                        .as_deref()
                        .map(|s| without_nul(s).into_owned());
                }
                l
            })
            .collect();
        let Some(upto) = fresh.last().map(|l| l.seq) else {
            return Ok((last, Vec::new()));
        };
        let mut stored = Vec::with_capacity(fresh.len());
        for chunk in fresh.chunks(INSERT_CHUNK) {
            let mut ids: Vec<(i64, i64)> = on_tx!(tx, |c| {
                let mut qb = QueryBuilder::new(
                "INSERT INTO logs (device, seq, ts, service, service_id, is_stderr, is_system, message) ",
            );
                qb.push_values(chunk, |mut b, l| {
                    b.push_bind(device.as_str())
                        .push_bind(l.seq as i64)
                        .push_bind(l.timestamp)
                        .push_bind(l.service_name.as_deref())
                        .push_bind(l.service_id.map(i64::from))
                        .push_bind(l.is_std_err)
                        .push_bind(l.is_system)
                        .push_bind(l.message.as_str());
                });
                qb.push(" RETURNING id, seq");
                qb.build()
                    .fetch_all(&mut *c)
                    .await?
                    .iter()
                    .map(|r| Ok((r.col("seq")?, r.col("id")?)))
                    .collect::<Result<_, sqlx::Error>>()?
            });
            ids.sort_unstable();
            for (l, (_, id)) in chunk.iter().zip(ids) {
                stored.push(StoredLine {
                    id,
                    device: device.to_string(),
                    line: l.clone(),
                });
            }
        }
        on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO log_cursors (device, epoch, last_seq) VALUES ($1, $2, $3)
             ON CONFLICT (device) DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq",
        )
        .bind(device.as_str())
        .bind(epoch)
        .bind(upto as i64)
        .execute(&mut *c)
        .await
        .map(drop)
        })?;
        tx.commit().await?;
        Ok((upto, stored))
    }

    /// Lines of `device` matching `q`, oldest first.
    pub async fn query_logs(
        &self,
        device: DeviceUuid,
        q: &LogQuery,
    ) -> Result<Vec<StoredLine>, StoreError> {
        let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
        // Built inside `on_pool!`: the builder numbers its placeholders the way the backend
        // wants them.
        let mut out: Vec<StoredLine> = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(
                "SELECT id, seq, ts, service, service_id, is_stderr, is_system, message FROM logs WHERE device = ",
            );
            qb.push_bind(device.as_str());
            if let Some(s) = q.since_ms {
                qb.push(" AND ts >= ").push_bind(s);
            }
            if let Some(u) = q.until_ms {
                qb.push(" AND ts < ").push_bind(u);
            }
            match q.service.as_deref() {
                Some("") => {
                    qb.push(" AND service IS NULL");
                }
                Some(s) => {
                    qb.push(" AND service = ").push_bind(s.to_string());
                }
                None => {}
            }
            if let Some(e) = q.stderr {
                qb.push(" AND is_stderr = ").push_bind(e);
            }
            if let Some(e) = q.system {
                qb.push(" AND is_system = ").push_bind(e);
            }
            if let Some(t) = &q.text {
                qb.push(" AND LOWER(message) LIKE ")
                    .push_bind(escape_like(&t.to_ascii_lowercase()))
                    .push(" ESCAPE '\\'");
            }
            if let Some(a) = q.after_id {
                qb.push(" AND id > ").push_bind(a);
            }
            qb.push(if q.newest {
                " ORDER BY id DESC LIMIT "
            } else {
                " ORDER BY id ASC LIMIT "
            })
            .push_bind(limit);
            qb.build()
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| {
                    Ok(StoredLine {
                        id: r.col("id")?,
                        device: device.to_string(),
                        line: LogLine {
                            seq: r.col::<i64>("seq")? as u64,
                            timestamp: r.col("ts")?,
                            message: r.col("message")?,
                            is_std_err: r.col("is_stderr")?,
                            is_system: r.col("is_system")?,
                            service_name: r.col("service")?,
                            service_id: r
                                .col::<Option<i64>>("service_id")?
                                .and_then(|v| u32::try_from(v).ok()),
                        },
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        if q.newest {
            out.reverse();
        }
        Ok(out)
    }

    /// Deletes lines produced before `older_than_ms`, then each device's oldest lines
    /// beyond `per_device_cap` (at least 1). Returns how many lines went.
    pub async fn prune_logs(
        &self,
        older_than_ms: i64,
        per_device_cap: i64,
    ) -> Result<u64, StoreError> {
        // A cap below 1 would make SQLite's OFFSET count from the newest line and delete
        // everything (a config of -5 once did): the config refuses it, and here it means
        // "keep at least the newest line" whatever a caller passes.
        let per_device_cap = per_device_cap.max(1);
        on_write!(self, |p| {
            let mut n = sqlx::query("DELETE FROM logs WHERE ts < $1")
                .bind(older_than_ms)
                .execute(p)
                .await?
                .rows_affected();
            let over = sqlx::query(
                "SELECT device, COUNT(*) AS n FROM logs GROUP BY device HAVING COUNT(*) > $1",
            )
            .bind(per_device_cap)
            .fetch_all(p)
            .await?;
            for r in over {
                let device: String = r.col("device")?;
                let cut: Option<i64> = sqlx::query(
                    "SELECT id FROM logs WHERE device = $1 ORDER BY id DESC LIMIT 1 OFFSET $2",
                )
                .bind(&device)
                .bind(per_device_cap)
                .fetch_optional(p)
                .await?
                .map(|r| r.col("id"))
                .transpose()?;
                if let Some(cut) = cut {
                    n += sqlx::query("DELETE FROM logs WHERE device = $1 AND id <= $2")
                        .bind(&device)
                        .bind(cut)
                        .execute(p)
                        .await?
                        .rows_affected();
                }
            }
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;
    use super::*;

    fn line(seq: u64, service: Option<&str>, stderr: bool, message: &str) -> LogLine {
        LogLine {
            seq,
            timestamp: 1_000 + seq as i64,
            message: message.to_string(),
            is_std_err: stderr,
            is_system: service.is_none(),
            service_name: service.map(str::to_string),
            service_id: service.map(|_| 7),
        }
    }

    both_backends! {
        async fn logs_are_deduplicated_queried_and_pruned(store) {
            let d = DeviceUuid::from_bytes([5; 16]);
            let batch = vec![
                line(1, Some("web"), false, "GET / 200"),
                line(2, Some("web"), true, "100% of_quota"),
                line(3, None, false, "agent started"),
            ];
            let (upto, stored) = store.insert_logs(d, "e1", &batch).await.unwrap();
            assert_eq!((upto, stored.len()), (3, 3));
            assert!(stored.windows(2).all(|w| w[0].id < w[1].id));
            // A resent batch stores nothing new; a longer one only what is new.
            assert_eq!(store.insert_logs(d, "e1", &batch).await.unwrap(), (3, vec![]));
            let more = vec![line(3, None, false, "agent started"), line(4, Some("db"), false, "Ready")];
            let (upto, stored) = store.insert_logs(d, "e1", &more).await.unwrap();
            assert_eq!((upto, stored.len(), stored[0].line.seq), (4, 1, 4));
            assert_eq!(store.log_resume(d, "e1").await.unwrap(), 4);
            assert_eq!(store.log_resume(d, "e2").await.unwrap(), 0, "a new spool epoch");

            let q = |f: fn(&mut LogQuery)| {
                let mut q = LogQuery::default();
                f(&mut q);
                q
            };
            let seqs = |v: Vec<StoredLine>| v.iter().map(|l| l.line.seq).collect::<Vec<_>>();
            assert_eq!(seqs(store.query_logs(d, &LogQuery::default()).await.unwrap()), [1, 2, 3, 4]);
            assert_eq!(seqs(store.query_logs(d, &q(|q| q.service = Some("web".into()))).await.unwrap()), [1, 2]);
            assert_eq!(seqs(store.query_logs(d, &q(|q| q.service = Some("".into()))).await.unwrap()), [3]);
            assert_eq!(seqs(store.query_logs(d, &q(|q| q.stderr = Some(true))).await.unwrap()), [2]);
            assert_eq!(seqs(store.query_logs(d, &q(|q| q.system = Some(false))).await.unwrap()), [1, 2, 4]);
            // LIKE's wildcards are matched literally, case-insensitively.
            assert_eq!(seqs(store.query_logs(d, &q(|q| q.text = Some("% OF_".into()))).await.unwrap()), [2]);
            assert_eq!(seqs(store.query_logs(d, &q(|q| q.text = Some("o_".into()))).await.unwrap()), Vec::<u64>::new());
            assert_eq!(seqs(store.query_logs(d, &q(|q| q.text = Some("ready".into()))).await.unwrap()), [4]);
            assert_eq!(seqs(store.query_logs(d, &q(|q| { q.since_ms = Some(1_002); q.until_ms = Some(1_004); })).await.unwrap()), [2, 3]);
            assert_eq!(seqs(store.query_logs(d, &q(|q| { q.newest = true; q.limit = Some(2); })).await.unwrap()), [3, 4]);
            let all = store.query_logs(d, &LogQuery::default()).await.unwrap();
            let after = all[1].id;
            let tail = store.query_logs(d, &LogQuery { after_id: Some(after), ..Default::default() }).await.unwrap();
            assert_eq!(seqs(tail), [3, 4]);
            assert_eq!(all[0].line.service_id, Some(7));
            assert_eq!(all[2].line.service_name, None);

            // Retention: by age, then a cap per device (never below one line).
            assert_eq!(store.prune_logs(1_002, 100).await.unwrap(), 1);
            assert_eq!(store.prune_logs(0, -5).await.unwrap(), 2);
            assert_eq!(seqs(store.query_logs(d, &LogQuery::default()).await.unwrap()), [4]);
        }

        async fn a_line_with_nul_is_stored(store) {
            let d = DeviceUuid::from_bytes([6; 16]);
            let (upto, stored) = store
                .insert_logs(d, "e", &[line(1, Some("w\0eb"), false, "a\0b")])
                .await
                .unwrap();
            assert_eq!(upto, 1);
            let got = store.query_logs(d, &LogQuery::default()).await.unwrap();
            assert_eq!(got, stored, "live subscribers see what queries return");
            let want = if store.is_postgres() { "a\u{FFFD}b" } else { "a\0b" };
            assert_eq!(got[0].line.message, want);
        }
    }
}
