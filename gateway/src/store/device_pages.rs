//! The dashboard's paged, filtered device listing and per-fleet online counts: one page
//! of rows per query, walked along the `devices_listing` index (created_at, uuid), so a
//! page costs the same at 10,000 devices as at 100.

use super::devices::device_from_row;
use super::*;

/// The columns `device_from_row` reads (as in `devices.rs`).
const DEVICE_COLUMNS: &str =
    "uuid, public_url, created_at, last_seen, online, revoked, name, fleet, state, public_address";

/// Filters of the devices page; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceListFilter {
    /// Only devices of this fleet.
    pub fleet: Option<String>,
    /// Only devices recorded online (or offline).
    pub online: Option<bool>,
    /// Only devices with this tag (and, when given, this value).
    pub tag: Option<(String, Option<String>)>,
    /// Only devices whose target release id starts with this.
    pub release: Option<String>,
    /// Text in the uuid, name, fleet or last address (ASCII case-insensitive).
    pub text: Option<String>,
}

/// One row of the devices page.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceListRow {
    /// The device.
    pub device: DeviceRecord,
    /// The release it should run (device pin, else fleet pin, else the fleet's newest).
    pub release: Option<String>,
}

/// The release a device should run, in SQL over `devices d` (as `Store::target_release`).
const TARGET_RELEASE: &str = "COALESCE(d.pinned_release,
    (SELECT f.pinned_release FROM fleets f WHERE f.name = d.fleet),
    (SELECT r.id FROM releases r WHERE r.fleet = d.fleet ORDER BY r.seq DESC LIMIT 1))";

/// A bound value of the built query.
enum Arg {
    Text(String),
    Bool(bool),
}

impl Store {
    /// One page of devices matching `f`, oldest first, and how many match in all.
    pub async fn device_page(
        &self,
        f: &DeviceListFilter,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<DeviceListRow>, i64), StoreError> {
        let mut conds = vec!["NOT d.revoked".to_string()];
        let mut args = Vec::new();
        let mut arg = |a: Arg| {
            args.push(a);
            format!("${}", args.len())
        };
        if let Some(fleet) = &f.fleet {
            conds.push(format!("d.fleet = {}", arg(Arg::Text(fleet.clone()))));
        }
        if let Some(on) = f.online {
            conds.push(format!("d.online = {}", arg(Arg::Bool(on))));
        }
        if let Some((name, value)) = &f.tag {
            let mut c = format!(
                "EXISTS (SELECT 1 FROM device_tags t WHERE t.device = d.uuid AND t.name = {}",
                arg(Arg::Text(name.clone()))
            );
            if let Some(v) = value {
                c += &format!(" AND t.value = {}", arg(Arg::Text(v.clone())));
            }
            conds.push(c + ")");
        }
        if let Some(r) = &f.release {
            conds.push(format!(
                "{TARGET_RELEASE} LIKE {} ESCAPE '\\'",
                arg(Arg::Text(format!("{}%", like_escape(r))))
            ));
        }
        if let Some(t) = &f.text {
            let p = arg(Arg::Text(format!(
                "%{}%",
                like_escape(&t.to_ascii_lowercase())
            )));
            conds.push(format!(
                "(LOWER(d.uuid) LIKE {p} ESCAPE '\\' OR LOWER(COALESCE(d.name, '')) LIKE {p} ESCAPE '\\'
                  OR LOWER(COALESCE(d.fleet, '')) LIKE {p} ESCAPE '\\'
                  OR LOWER(COALESCE(d.public_address, '')) LIKE {p} ESCAPE '\\')"
            ));
        }
        let filter = conds.join(" AND ");
        // The last two placeholders are the integers bound after the filter's.
        let (limit_p, offset_p) = (
            format!("${}", args.len() + 1),
            format!("${}", args.len() + 2),
        );
        let page_sql = format!(
            "SELECT {cols}, {TARGET_RELEASE} AS target_release FROM devices d WHERE {filter}
             ORDER BY d.created_at, d.uuid LIMIT {limit_p} OFFSET {offset_p}",
            cols = prefixed_columns()
        );
        let count_sql = format!("SELECT COUNT(*) FROM devices d WHERE {filter}");
        macro_rules! bind_all {
            ($q:expr) => {{
                let mut q = $q;
                for a in &args {
                    q = match a {
                        Arg::Text(s) => q.bind(s.as_str()),
                        Arg::Bool(b) => q.bind(*b),
                    };
                }
                q
            }};
        }
        let rows = on_pool!(self, |p| bind_all!(sqlx::query(&page_sql))
            .bind(limit)
            .bind(offset)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| {
                Ok(DeviceListRow {
                    device: device_from_row(r)?,
                    release: r.col("target_release")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>())?;
        let total: i64 = on_pool!(self, |p| bind_all!(sqlx::query(&count_sql))
            .fetch_one(p)
            .await?
            .at(0)?);
        Ok((rows, total))
    }

    /// Devices recorded online, per fleet.
    pub async fn online_per_fleet(&self) -> Result<Vec<(String, i64)>, StoreError> {
        on_pool!(self, |p| sqlx::query(
            "SELECT fleet, COUNT(*) AS n FROM devices
             WHERE online AND NOT revoked AND fleet IS NOT NULL GROUP BY fleet",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| Ok((r.col("fleet")?, r.col("n")?)))
        .collect())
    }

    /// How many of `fleet`'s devices are pinned to each release, and (`None`) how many
    /// follow the fleet: one pass along `devices_fleet`, where counting the devices that
    /// should run each release with [`Store::device_page`] took one pass per release.
    pub async fn pins_in_fleet(
        &self,
        fleet: &str,
    ) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        on_pool!(self, |p| sqlx::query(
            "SELECT pinned_release, COUNT(*) AS n FROM devices
             WHERE fleet = $1 AND NOT revoked GROUP BY pinned_release",
        )
        .bind(fleet)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| Ok((r.col("pinned_release")?, r.col("n")?)))
        .collect())
    }

    /// The query plan SQLite picks for an unfiltered page (`EXPLAIN QUERY PLAN`), for the
    /// test that the listing walks an index instead of sorting every device.
    #[cfg(test)]
    async fn device_page_plan(&self) -> String {
        let Pool::Sqlite { reads, .. } = &self.pool else {
            return String::new();
        };
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT {} FROM devices d WHERE NOT d.revoked
             ORDER BY d.created_at, d.uuid LIMIT 50 OFFSET 0",
            prefixed_columns()
        );
        sqlx::query(&sql)
            .fetch_all(reads)
            .await
            .unwrap()
            .iter()
            .map(|r| r.at::<String>(3).unwrap())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// [`DEVICE_COLUMNS`] qualified with `d.` (the subqueries name other tables).
fn prefixed_columns() -> String {
    DEVICE_COLUMNS
        .split(", ")
        .map(|c| format!("d.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s` with LIKE's wildcards (and the escape character) escaped by `\`.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;
    use super::*;

    fn uuid(n: u8) -> DeviceUuid {
        DeviceUuid::from_bytes([n; 16])
    }

    #[tokio::test]
    async fn an_unfiltered_page_walks_the_listing_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let plan = store.device_page_plan().await;
        assert!(plan.contains("devices_listing"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "sorts every row: {plan}");
    }

    both_backends! {
        async fn pages_and_filters(store) {
            store.create_fleet("f", false).await.unwrap();
            for n in 1..=5u8 {
                store.register_device(uuid(n), (n % 2 == 0).then_some("f")).await.unwrap();
            }
            store.update_device(uuid(2), Some("kiosk_2"), None).await.unwrap();
            store.set_online(uuid(4), true).await.unwrap();
            store.set_tags(uuid(4), &[("room".into(), "a1".into())]).await.unwrap();
            let (r, _) = store.create_release("f", "c", "h", "t").await.unwrap();

            let all = DeviceListFilter::default();
            let (page, total) = store.device_page(&all, 2, 0).await.unwrap();
            assert_eq!(total, 5);
            assert_eq!(page.len(), 2);
            let (rest, _) = store.device_page(&all, 10, 2).await.unwrap();
            assert_eq!(rest.len(), 3);
            assert!(rest.iter().all(|r| !page.iter().any(|p| p.device.uuid == r.device.uuid)));

            let q = |f: DeviceListFilter| {
                let store = store.clone();
                async move {
                    let (rows, total) = store.device_page(&f, 50, 0).await.unwrap();
                    assert_eq!(rows.len() as i64, total);
                    let mut u: Vec<_> = rows.iter().map(|r| r.device.uuid).collect();
                    u.sort();
                    u
                }
            };
            assert_eq!(q(DeviceListFilter { fleet: Some("f".into()), ..Default::default() }).await, [uuid(2), uuid(4)]);
            assert_eq!(q(DeviceListFilter { online: Some(true), ..Default::default() }).await, [uuid(4)]);
            assert_eq!(q(DeviceListFilter { tag: Some(("room".into(), None)), ..Default::default() }).await, [uuid(4)]);
            assert_eq!(q(DeviceListFilter { tag: Some(("room".into(), Some("b".into()))), ..Default::default() }).await, []);
            assert_eq!(q(DeviceListFilter { release: Some(r.id[..6].to_string()), ..Default::default() }).await, [uuid(2), uuid(4)]);
            assert_eq!(q(DeviceListFilter { text: Some("KIOSK".into()), ..Default::default() }).await, [uuid(2)]);
            // LIKE's wildcards are plain characters in the text.
            assert_eq!(q(DeviceListFilter { text: Some("k_o".into()), ..Default::default() }).await, []);
            let (rows, _) = store.device_page(&DeviceListFilter { fleet: Some("f".into()), ..Default::default() }, 50, 0).await.unwrap();
            assert!(rows.iter().all(|row| row.release.as_deref() == Some(r.id.as_str())));
            assert_eq!(store.online_per_fleet().await.unwrap(), [("f".to_string(), 1)]);
            let mut pins = store.pins_in_fleet("f").await.unwrap();
            pins.sort();
            assert_eq!(pins, [(None, 2)]);
            store.pin_device(uuid(4), Some(&r.id)).await.unwrap();
            let mut pins = store.pins_in_fleet("f").await.unwrap();
            pins.sort();
            assert_eq!(pins, [(None, 1), (Some(r.id.clone()), 1)]);
            assert_eq!(store.pins_in_fleet("nope").await.unwrap(), []);
        }
    }
}
