//! Releases (immutable compose files per fleet) and what each device should run.

use protocol::DeviceUuid;

use super::backend::{DbRow, Lock};
use super::{now_unix, Store, StoreError};

/// A stored release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseRecord {
    /// Release id: 12 hex digits derived from the fleet and the content.
    pub id: String,
    /// The fleet it belongs to.
    pub fleet: String,
    /// Order within the fleet (1, 2, ...).
    pub seq: i64,
    /// SHA-256 of the compose text.
    pub hash: String,
    /// The compose text as uploaded.
    pub compose: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

fn release_from_row(r: &impl DbRow) -> Result<ReleaseRecord, sqlx::Error> {
    Ok(ReleaseRecord {
        id: r.col("id")?,
        fleet: r.col("fleet")?,
        seq: r.col("seq")?,
        hash: r.col("hash")?,
        compose: r.col("compose")?,
        created_at: r.col("created_at")?,
        created_by: r.col("created_by")?,
    })
}

const COLS: &str = "id, fleet, seq, hash, compose, created_at, created_by";

/// Where a device's target release comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSource {
    /// The device is pinned to a release.
    DevicePin,
    /// Its fleet is pinned to a release.
    FleetPin,
    /// Its fleet's newest release.
    FleetLatest,
}

impl Store {
    /// Stores a release for `fleet`. Uploading the same content again returns the existing
    /// release (`false`) instead of making a second one.
    ///
    /// The release's `seq` comes from the fleet's counter, raised first in the same
    /// transaction: on PostgreSQL that row lock makes concurrent uploads to one fleet take
    /// turns (each then sees the releases committed before it), where `MAX(seq) + 1`
    /// would give two of them the same number; `(fleet, seq)` is unique besides.
    pub async fn create_release(
        &self,
        fleet: &str,
        compose: &str,
        hash: &str,
        actor: &str,
    ) -> Result<(ReleaseRecord, bool), StoreError> {
        let id = certs::sha256_hex(format!("{fleet}\0{hash}").as_bytes())[..12].to_string();
        let mut tx = self.write_tx(&[Lock::FleetShared(fleet)]).await?;
        let seq: Option<i64> = on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE fleets SET release_seq = release_seq + 1 WHERE name = $1 RETURNING release_seq"
        )
        .bind(fleet)
        .fetch_optional(&mut *c)
        .await?
        .map(|r| r.at(0))
        .transpose()?
        });
        let Some(seq) = seq else {
            return Err(StoreError::NoSuchFleet(fleet.to_string()));
        };
        // After the counter, so that an upload of the same content that committed while
        // this one waited for the row is found (and the counter rolls back with `tx`).
        let existing = on_tx!(tx, |c| sqlx::query(&format!(
            "SELECT {COLS} FROM releases WHERE id = $1"
        ))
        .bind(&id)
        .fetch_optional(&mut *c)
        .await?
        .map(|r| release_from_row(&r))
        .transpose()?);
        if let Some(r) = existing {
            return Ok((r, false));
        }
        let rec = ReleaseRecord {
            id,
            fleet: fleet.to_string(),
            seq,
            hash: hash.to_string(),
            compose: compose.to_string(),
            created_at: now_unix(),
            created_by: actor.to_string(),
        };
        on_tx!(tx, |c| sqlx::query(&format!(
            "INSERT INTO releases ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&rec.id)
        .bind(&rec.fleet)
        .bind(rec.seq)
        .bind(&rec.hash)
        .bind(&rec.compose)
        .bind(rec.created_at)
        .bind(&rec.created_by)
        .execute(&mut *c)
        .await
        .map(drop))?;
        tx.commit().await?;
        Ok((rec, true))
    }

    /// One release by id.
    pub async fn release(&self, id: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query(&format!(
            "SELECT {COLS} FROM releases WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(p)
        .await?
        .map(|r| release_from_row(&r))
        .transpose()?))
    }

    /// A fleet's releases, newest first.
    pub async fn releases(&self, fleet: &str) -> Result<Vec<ReleaseRecord>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query(&format!(
            "SELECT {COLS} FROM releases WHERE fleet = $1 ORDER BY seq DESC"
        ))
        .bind(fleet)
        .fetch_all(p)
        .await?
        .iter()
        .map(release_from_row)
        .collect::<Result<_, _>>()?))
    }

    /// The release a fleet is pinned to, if any.
    pub async fn fleet_pin(&self, fleet: &str) -> Result<Option<String>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query(
            "SELECT pinned_release FROM fleets WHERE name = $1"
        )
        .bind(fleet)
        .fetch_optional(p)
        .await?
        .map(|r| r.at::<Option<String>>(0))
        .transpose()?
        .flatten()))
    }

    /// Pins a fleet to a release (or back to tracking its latest with `None`).
    pub async fn pin_fleet(&self, fleet: &str, release: Option<&str>) -> Result<bool, StoreError> {
        let n = on_write!(self, |p| sqlx::query(
            "UPDATE fleets SET pinned_release = $1 WHERE name = $2"
        )
        .bind(release)
        .bind(fleet)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n > 0)
    }

    /// Pins a device to a release (or back to following its fleet with `None`).
    pub async fn pin_device(
        &self,
        uuid: DeviceUuid,
        release: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = on_write!(self, |p| sqlx::query(
            "UPDATE devices SET pinned_release = $1 WHERE uuid = $2"
        )
        .bind(release)
        .bind(uuid.as_str())
        .execute(p)
        .await?
        .rows_affected());
        Ok(n > 0)
    }

    /// The release `uuid` should run, and why; `None` when its fleet has no release.
    pub async fn target_release(
        &self,
        uuid: DeviceUuid,
    ) -> Result<Option<(ReleaseRecord, TargetSource)>, StoreError> {
        type Pins = (Option<String>, Option<String>, Option<String>);
        let pins: Option<Pins> = on_pool!(self, |p| sqlx::query(
            "SELECT d.pinned_release AS dpin, d.fleet AS fleet, f.pinned_release AS fpin
             FROM devices d LEFT JOIN fleets f ON f.name = d.fleet WHERE d.uuid = $1",
        )
        .bind(uuid.as_str())
        .fetch_optional(p)
        .await?
        .map(|r| -> Result<Pins, sqlx::Error> {
            Ok((r.col("dpin")?, r.col("fpin")?, r.col("fleet")?))
        })
        .transpose()?);
        let Some((dpin, fpin, fleet)) = pins else {
            return Ok(None);
        };
        if let Some(id) = dpin {
            return Ok(self
                .release(&id)
                .await?
                .map(|r| (r, TargetSource::DevicePin)));
        }
        if let Some(id) = fpin {
            return Ok(self
                .release(&id)
                .await?
                .map(|r| (r, TargetSource::FleetPin)));
        }
        let Some(fleet) = fleet else { return Ok(None) };
        Ok(on_pool!(self, |p| sqlx::query(&format!(
            "SELECT {COLS} FROM releases WHERE fleet = $1 ORDER BY seq DESC LIMIT 1"
        ))
        .bind(&fleet)
        .fetch_optional(p)
        .await?
        .map(|r| release_from_row(&r))
        .transpose()?
        .map(|r| (r, TargetSource::FleetLatest))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;
    use super::*;

    both_backends! {
        async fn releases_pins_and_targets(store) {
            assert!(matches!(
                store.create_release("f", "c", "h", "t").await,
                Err(StoreError::NoSuchFleet(_))
            ));
            store.create_fleet("f", false).await.unwrap();
            let u = DeviceUuid::from_bytes([3; 16]);
            store.register_device(u, Some("f")).await.unwrap();
            assert_eq!(store.target_release(u).await.unwrap(), None);
            let (r1, new) = store.create_release("f", "c1", "h1", "t").await.unwrap();
            assert!(new && r1.seq == 1);
            let (again, new) = store.create_release("f", "c1", "h1", "t").await.unwrap();
            assert!(!new);
            assert_eq!(again, r1);
            let (r2, _) = store.create_release("f", "c2", "h2", "t").await.unwrap();
            assert_eq!(r2.seq, 2, "an upload of known content uses no number");
            let seqs: Vec<i64> = store.releases("f").await.unwrap().iter().map(|r| r.seq).collect();
            assert_eq!(seqs, [2, 1]);
            assert_eq!(store.release(&r1.id).await.unwrap(), Some(r1.clone()));

            assert_eq!(store.target_release(u).await.unwrap(), Some((r2.clone(), TargetSource::FleetLatest)));
            assert!(store.pin_fleet("f", Some(&r1.id)).await.unwrap());
            assert_eq!(store.fleet_pin("f").await.unwrap(), Some(r1.id.clone()));
            assert_eq!(store.target_release(u).await.unwrap(), Some((r1.clone(), TargetSource::FleetPin)));
            assert!(store.pin_device(u, Some(&r2.id)).await.unwrap());
            assert_eq!(store.target_release(u).await.unwrap(), Some((r2.clone(), TargetSource::DevicePin)));
            assert!(store.pin_device(u, None).await.unwrap());
            assert!(store.pin_fleet("f", None).await.unwrap());
            assert_eq!(store.fleet_pin("f").await.unwrap(), None);
            assert!(!store.pin_fleet("nope", None).await.unwrap());
            assert_eq!(store.target_release(DeviceUuid::from_bytes([9; 16])).await.unwrap(), None);
        }
    }
}
