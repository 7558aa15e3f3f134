//! Fleets: their public-URL default, pins, and deletion.

use super::*;

/// A fleet as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRecord {
    /// Unique name.
    pub name: String,
    /// Public-URL setting devices inherit when they join the fleet.
    pub public_url_default: bool,
    /// Creation time, unix seconds.
    pub created_at: i64,
}

/// What [`Store::delete_fleet`] removed along with the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetDeletion {
    /// Provisioning keys of the fleet.
    pub keys: u64,
    /// Releases of the fleet.
    pub releases: u64,
    /// Fleet-level environment variables (fleet-wide and per service).
    pub env_vars: u64,
}

impl Store {
    pub(super) async fn fleet_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        name: &str,
    ) -> Result<Option<FleetRecord>, StoreError> {
        let row =
            sqlx::query("SELECT name, public_url_default, created_at FROM fleets WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
        row.map(|r| fleet_from_row(&r)).transpose()
    }

    /// Creates a fleet.
    pub async fn create_fleet(
        &self,
        name: &str,
        public_url_default: bool,
    ) -> Result<FleetRecord, StoreError> {
        let created_at = now_unix();
        let res = sqlx::query(
            "INSERT INTO fleets (name, public_url_default, created_at) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(public_url_default)
        .bind(created_at)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(FleetRecord {
                name: name.to_string(),
                public_url_default,
                created_at,
            }),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::FleetExists(name.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Looks a fleet up.
    pub async fn fleet(&self, name: &str) -> Result<Option<FleetRecord>, StoreError> {
        let row =
            sqlx::query("SELECT name, public_url_default, created_at FROM fleets WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| fleet_from_row(&r)).transpose()
    }

    /// All fleets with their device counts, by name.
    pub async fn fleets(&self) -> Result<Vec<(FleetRecord, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT f.name, f.public_url_default, f.created_at,
                    (SELECT COUNT(*) FROM devices d WHERE d.fleet = f.name AND NOT d.revoked) AS devices
             FROM fleets f ORDER BY f.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((fleet_from_row(r)?, r.try_get("devices")?)))
            .collect()
    }

    /// Switches the public URL of every device in `fleet` now, and sets the default that
    /// devices added to the fleet later inherit. Returns the devices switched, or `None`
    /// if the fleet does not exist.
    pub async fn set_fleet_public_url(
        &self,
        fleet: &str,
        on: bool,
    ) -> Result<Option<Vec<DeviceUuid>>, StoreError> {
        let mut tx = self.write_tx().await?;
        let r = sqlx::query("UPDATE fleets SET public_url_default = $1 WHERE name = $2")
            .bind(on)
            .bind(fleet)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        let rows = sqlx::query("SELECT uuid FROM devices WHERE fleet = $1 AND NOT revoked")
            .bind(fleet)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query("UPDATE devices SET public_url = $1 WHERE fleet = $2 AND NOT revoked")
            .bind(on)
            .bind(fleet)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let u: String = r.try_get("uuid")?;
                u.parse()
                    .map_err(|e: protocol::InvalidUuid| StoreError::Corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Deletes a fleet that has no devices, and with it its provisioning keys, its
    /// releases and its fleet-level environment variables (all meaningless without the
    /// fleet). Devices block it ([`StoreError::FleetNotEmpty`]): moving or deleting a
    /// device is a decision of its own. Devices deleted earlier keep their (revoked) rows
    /// but leave the fleet. Returns what went with it, or `None` if there is no such
    /// fleet.
    pub async fn delete_fleet(&self, name: &str) -> Result<Option<FleetDeletion>, StoreError> {
        let mut tx = self.write_tx().await?;
        if self.fleet_in(&mut tx, name).await?.is_none() {
            return Ok(None);
        }
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM devices WHERE fleet = $1 AND NOT revoked")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if n > 0 {
            return Err(StoreError::FleetNotEmpty(name.to_string(), n));
        }
        sqlx::query(
            "UPDATE devices SET pinned_release = NULL
             WHERE pinned_release IN (SELECT id FROM releases WHERE fleet = $1)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE devices SET fleet = NULL WHERE fleet = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let keys = sqlx::query("DELETE FROM provisioning_keys WHERE fleet = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let releases = sqlx::query("DELETE FROM releases WHERE fleet = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let env_vars = sqlx::query("DELETE FROM env_vars WHERE scope = 'fleet' AND owner = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM fleets WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(FleetDeletion {
            keys,
            releases,
            env_vars,
        }))
    }
}

pub(super) fn fleet_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<FleetRecord, StoreError> {
    Ok(FleetRecord {
        name: r.try_get("name")?,
        public_url_default: r.try_get("public_url_default")?,
        created_at: r.try_get("created_at")?,
    })
}
