//! Devices: registration, identity state (online, revoked, public URL), names and fleets,
//! tags, environment variables and state reports.

use super::*;

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device uuid.
    pub uuid: DeviceUuid,
    /// Whether `http://<uuid>.<domain>/` is served.
    pub public_url: bool,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Last connect or disconnect, unix seconds.
    pub last_seen: Option<i64>,
    /// Whether a tunnel is up (as last recorded by a gateway).
    pub online: bool,
    /// Revoked devices are refused at the handshake.
    pub revoked: bool,
    /// Display name (defaults to the first 7 characters of the uuid when unset).
    pub name: Option<String>,
    /// The fleet the device belongs to, if any.
    pub fleet: Option<String>,
    /// The last state the agent reported (versions, addresses, status).
    pub state: Option<serde_json::Value>,
    /// The address the device last connected from, as the gateway saw it.
    pub public_address: Option<String>,
}

impl Store {
    /// Registers a new device.
    pub async fn add_device(&self, uuid: DeviceUuid, public_url: bool) -> Result<(), StoreError> {
        let res =
            sqlx::query("INSERT INTO devices (uuid, public_url, created_at) VALUES ($1, $2, $3)")
                .bind(uuid.as_str())
                .bind(public_url)
                .bind(now_unix())
                .execute(&self.pool)
                .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::DeviceExists(uuid))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Looks a device up.
    pub async fn device(&self, uuid: DeviceUuid) -> Result<Option<DeviceRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT uuid, public_url, created_at, last_seen, online, revoked, name, fleet, state, public_address FROM devices WHERE uuid = $1",
        )
        .bind(uuid.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| device_from_row(&r)).transpose()
    }

    /// All devices, oldest first.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT uuid, public_url, created_at, last_seen, online, revoked, name, fleet, state, public_address FROM devices WHERE NOT revoked ORDER BY created_at, uuid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// Records a tunnel coming up or going down.
    pub async fn set_online(&self, uuid: DeviceUuid, online: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET online = $1, last_seen = $2 WHERE uuid = $3")
            .bind(online)
            .bind(now_unix())
            .bind(uuid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A device's tags, by name.
    pub async fn tags(&self, uuid: DeviceUuid) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT name, value FROM device_tags WHERE device = $1 ORDER BY name")
                .bind(uuid.as_str())
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect()
    }

    /// Devices carrying tag `name` (with `value`, if given).
    pub async fn devices_with_tag(
        &self,
        name: &str,
        value: Option<&str>,
    ) -> Result<Vec<DeviceUuid>, StoreError> {
        let rows = sqlx::query(
            "SELECT device FROM device_tags WHERE name = $1 AND ($2 IS NULL OR value = $2)",
        )
        .bind(name)
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let u: String = r.try_get("device")?;
                u.parse()
                    .map_err(|e: protocol::InvalidUuid| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// Replaces a device's tags.
    pub async fn set_tags(
        &self,
        uuid: DeviceUuid,
        tags: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM device_tags WHERE device = $1")
            .bind(uuid.as_str())
            .execute(&mut *tx)
            .await?;
        for (k, v) in tags {
            sqlx::query("INSERT INTO device_tags (device, name, value) VALUES ($1, $2, $3)")
                .bind(uuid.as_str())
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Environment variables of a fleet (`scope` = `fleet`) or device (`device`), as
    /// `(service, name, value)` with service `""` for all services.
    pub async fn env(
        &self,
        scope: &str,
        owner: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT service, name, value FROM env_vars WHERE scope = $1 AND owner = $2 ORDER BY service, name",
        )
        .bind(scope)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("service")?,
                    r.try_get("name")?,
                    r.try_get("value")?,
                ))
            })
            .collect()
    }

    /// Replaces the environment variables of a fleet or device.
    pub async fn set_env(
        &self,
        scope: &str,
        owner: &str,
        vars: &[(String, String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM env_vars WHERE scope = $1 AND owner = $2")
            .bind(scope)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        for (service, name, value) in vars {
            sqlx::query("INSERT INTO env_vars (scope, owner, service, name, value) VALUES ($1, $2, $3, $4, $5)")
                .bind(scope)
                .bind(owner)
                .bind(service)
                .bind(name)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores the state an agent reported.
    pub async fn set_state(
        &self,
        uuid: DeviceUuid,
        state: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET state = $1 WHERE uuid = $2")
            .bind(state.to_string())
            .bind(uuid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the address a device connected from.
    pub async fn set_public_address(&self, uuid: DeviceUuid, addr: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET public_address = $1 WHERE uuid = $2")
            .bind(addr)
            .bind(uuid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks every device offline (at start-up, before any tunnel is accepted).
    pub async fn mark_all_offline(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET online = FALSE WHERE online")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Registers a device ahead of provisioning (balena's `device register`): it exists,
    /// has no certificate yet, and a provisioning key of any fleet may claim it.
    pub async fn register_device(
        &self,
        uuid: DeviceUuid,
        fleet: Option<&str>,
    ) -> Result<DeviceRecord, StoreError> {
        let mut tx = self.write_tx().await?;
        let public_url = match fleet {
            Some(f) => {
                self.fleet_in(&mut tx, f)
                    .await?
                    .ok_or_else(|| StoreError::NoSuchFleet(f.to_string()))?
                    .public_url_default
            }
            None => false,
        };
        let res = sqlx::query(
            "INSERT INTO devices (uuid, public_url, created_at, fleet, provisioned) VALUES ($1, $2, $3, $4, FALSE)",
        )
        .bind(uuid.as_str())
        .bind(public_url)
        .bind(now_unix())
        .bind(fleet)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::DeviceExists(uuid))
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        self.device(uuid)
            .await?
            .ok_or_else(|| StoreError::Corrupt("registered device vanished".into()))
    }

    /// Sets a device's public-URL flag. Returns `false` if the device does not exist.
    pub async fn set_public_url(&self, uuid: DeviceUuid, on: bool) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE devices SET public_url = $1 WHERE uuid = $2 AND NOT revoked")
            .bind(on)
            .bind(uuid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Renames a device and/or moves it to another fleet (`Some(None)` removes it from its
    /// fleet). Returns `false` if the device does not exist.
    pub async fn update_device(
        &self,
        uuid: DeviceUuid,
        name: Option<&str>,
        fleet: Option<Option<&str>>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT 1 FROM devices WHERE uuid = $1 AND NOT revoked")
            .bind(uuid.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            return Ok(false);
        }
        if let Some(name) = name {
            sqlx::query("UPDATE devices SET name = $1 WHERE uuid = $2")
                .bind(name)
                .bind(uuid.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(fleet) = fleet {
            if let Some(f) = fleet {
                if self.fleet_in(&mut tx, f).await?.is_none() {
                    return Err(StoreError::NoSuchFleet(f.to_string()));
                }
            }
            sqlx::query("UPDATE devices SET fleet = $1 WHERE uuid = $2")
                .bind(fleet)
                .bind(uuid.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Revokes a device: its certificate is refused from now on and it leaves every
    /// listing. Returns `false` if the device does not exist.
    pub async fn revoke_device(&self, uuid: DeviceUuid) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE devices SET revoked = TRUE, online = FALSE, public_url = FALSE WHERE uuid = $1 AND NOT revoked",
        )
        .bind(uuid.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}

pub(super) fn device_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<DeviceRecord, StoreError> {
    let uuid: String = r.try_get("uuid")?;
    Ok(DeviceRecord {
        uuid: uuid
            .parse()
            .map_err(|e: protocol::InvalidUuid| StoreError::Corrupt(e.to_string()))?,
        public_url: r.try_get("public_url")?,
        created_at: r.try_get("created_at")?,
        last_seen: r.try_get("last_seen")?,
        online: r.try_get("online")?,
        revoked: r.try_get("revoked")?,
        name: r.try_get("name")?,
        fleet: r.try_get("fleet")?,
        state: r
            .try_get::<Option<String>, _>("state")?
            .and_then(|s| serde_json::from_str(&s).ok()),
        public_address: r.try_get("public_address")?,
    })
}
