//! Releases (immutable compose files per fleet) and what each device should run.

use protocol::DeviceUuid;
use sqlx::Row;

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

fn release_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ReleaseRecord, sqlx::Error> {
    Ok(ReleaseRecord {
        id: r.try_get("id")?,
        fleet: r.try_get("fleet")?,
        seq: r.try_get("seq")?,
        hash: r.try_get("hash")?,
        compose: r.try_get("compose")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
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
    pub async fn create_release(
        &self,
        fleet: &str,
        compose: &str,
        hash: &str,
        actor: &str,
    ) -> Result<(ReleaseRecord, bool), StoreError> {
        if self.fleet(fleet).await?.is_none() {
            return Err(StoreError::NoSuchFleet(fleet.to_string()));
        }
        let id = certs::sha256_hex(format!("{fleet}\0{hash}").as_bytes())[..12].to_string();
        let mut tx = self.write_tx().await?;
        if let Some(r) = sqlx::query(&format!("SELECT {COLS} FROM releases WHERE id = $1"))
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?
        {
            return Ok((release_from_row(&r)?, false));
        }
        let seq: i64 =
            sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 FROM releases WHERE fleet = $1")
                .bind(fleet)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let rec = ReleaseRecord {
            id,
            fleet: fleet.to_string(),
            seq,
            hash: hash.to_string(),
            compose: compose.to_string(),
            created_at: now_unix(),
            created_by: actor.to_string(),
        };
        sqlx::query(&format!(
            "INSERT INTO releases ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&rec.id)
        .bind(&rec.fleet)
        .bind(rec.seq)
        .bind(&rec.hash)
        .bind(&rec.compose)
        .bind(rec.created_at)
        .bind(&rec.created_by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((rec, true))
    }

    /// One release by id.
    pub async fn release(&self, id: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM releases WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| release_from_row(&r)).transpose()?)
    }

    /// A fleet's releases, newest first.
    pub async fn releases(&self, fleet: &str) -> Result<Vec<ReleaseRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM releases WHERE fleet = $1 ORDER BY seq DESC"
        ))
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(release_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// The release a fleet is pinned to, if any.
    pub async fn fleet_pin(&self, fleet: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query("SELECT pinned_release FROM fleets WHERE name = $1")
                .bind(fleet)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get::<Option<String>, _>(0))
                .transpose()?
                .flatten(),
        )
    }

    /// Pins a fleet to a release (or back to tracking its latest with `None`).
    pub async fn pin_fleet(&self, fleet: &str, release: Option<&str>) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("UPDATE fleets SET pinned_release = $1 WHERE name = $2")
                .bind(release)
                .bind(fleet)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    /// Pins a device to a release (or back to following its fleet with `None`).
    pub async fn pin_device(
        &self,
        uuid: DeviceUuid,
        release: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("UPDATE devices SET pinned_release = $1 WHERE uuid = $2")
                .bind(release)
                .bind(uuid.as_str())
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    /// The release `uuid` should run, and why; `None` when its fleet has no release.
    pub async fn target_release(
        &self,
        uuid: DeviceUuid,
    ) -> Result<Option<(ReleaseRecord, TargetSource)>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT d.pinned_release AS dpin, d.fleet AS fleet, f.pinned_release AS fpin
             FROM devices d LEFT JOIN fleets f ON f.name = d.fleet WHERE d.uuid = $1",
        )
        .bind(uuid.as_str())
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let dpin: Option<String> = row.try_get("dpin")?;
        let fpin: Option<String> = row.try_get("fpin")?;
        let fleet: Option<String> = row.try_get("fleet")?;
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
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM releases WHERE fleet = $1 ORDER BY seq DESC LIMIT 1"
        ))
        .bind(&fleet)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| release_from_row(&r))
            .transpose()?
            .map(|r| (r, TargetSource::FleetLatest)))
    }
}
