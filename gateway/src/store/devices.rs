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
        let res = on_pool!(self, |p| sqlx::query(
            "INSERT INTO devices (uuid, public_url, created_at) VALUES ($1, $2, $3)"
        )
        .bind(uuid.as_str())
        .bind(public_url)
        .bind(now_unix())
        .execute(p)
        .await
        .map(drop));
        match res {
            Ok(()) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::DeviceExists(uuid))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Looks a device up.
    pub async fn device(&self, uuid: DeviceUuid) -> Result<Option<DeviceRecord>, StoreError> {
        on_pool!(self, |p| sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE uuid = $1"
        ))
        .bind(uuid.as_str())
        .fetch_optional(p)
        .await?
        .map(|r| device_from_row(&r))
        .transpose())
    }

    /// All devices, oldest first.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        on_pool!(self, |p| sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE NOT revoked ORDER BY created_at, uuid"
        ))
        .fetch_all(p)
        .await?
        .iter()
        .map(device_from_row)
        .collect())
    }

    /// Records a tunnel coming up or going down.
    pub async fn set_online(&self, uuid: DeviceUuid, online: bool) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(
            "UPDATE devices SET online = $1, last_seen = $2 WHERE uuid = $3"
        )
        .bind(online)
        .bind(now_unix())
        .bind(uuid.as_str())
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// A device's tags, by name.
    pub async fn tags(&self, uuid: DeviceUuid) -> Result<Vec<(String, String)>, StoreError> {
        on_pool!(self, |p| sqlx::query(
            "SELECT name, value FROM device_tags WHERE device = $1 ORDER BY name"
        )
        .bind(uuid.as_str())
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| Ok((r.col("name")?, r.col("value")?)))
        .collect())
    }

    /// Devices carrying tag `name` (with `value`, if given).
    pub async fn devices_with_tag(
        &self,
        name: &str,
        value: Option<&str>,
    ) -> Result<Vec<DeviceUuid>, StoreError> {
        on_pool!(self, |p| sqlx::query(
            "SELECT device FROM device_tags WHERE name = $1 AND ($2 IS NULL OR value = $2)",
        )
        .bind(name)
        .bind(value)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| parse_uuid(&r.col::<String>("device")?))
        .collect())
    }

    /// Replaces a device's tags.
    pub async fn set_tags(
        &self,
        uuid: DeviceUuid,
        tags: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx(&[Lock::Tags(uuid)]).await?;
        on_tx!(tx, |c| {
            sqlx::query("DELETE FROM device_tags WHERE device = $1")
                .bind(uuid.as_str())
                .execute(&mut *c)
                .await?;
            for (k, v) in tags {
                sqlx::query("INSERT INTO device_tags (device, name, value) VALUES ($1, $2, $3)")
                    .bind(uuid.as_str())
                    .bind(k)
                    .bind(v)
                    .execute(&mut *c)
                    .await?;
            }
        });
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
        on_pool!(self, |p| sqlx::query(
            "SELECT service, name, value FROM env_vars WHERE scope = $1 AND owner = $2 ORDER BY service, name",
        )
        .bind(scope)
        .bind(owner)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| Ok((r.col("service")?, r.col("name")?, r.col("value")?)))
        .collect())
    }

    /// Replaces the environment variables of a fleet or device.
    pub async fn set_env(
        &self,
        scope: &str,
        owner: &str,
        vars: &[(String, String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx(&[Lock::Env(scope, owner)]).await?;
        on_tx!(tx, |c| {
            sqlx::query("DELETE FROM env_vars WHERE scope = $1 AND owner = $2")
                .bind(scope)
                .bind(owner)
                .execute(&mut *c)
                .await?;
            for (service, name, value) in vars {
                sqlx::query("INSERT INTO env_vars (scope, owner, service, name, value) VALUES ($1, $2, $3, $4, $5)")
                    .bind(scope)
                    .bind(owner)
                    .bind(service)
                    .bind(name)
                    .bind(value)
                    .execute(&mut *c)
                    .await?;
            }
        });
        tx.commit().await?;
        Ok(())
    }

    /// Stores the state an agent reported.
    pub async fn set_state(
        &self,
        uuid: DeviceUuid,
        state: &serde_json::Value,
    ) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query("UPDATE devices SET state = $1 WHERE uuid = $2")
            .bind(state.to_string())
            .bind(uuid.as_str())
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Records the address a device connected from.
    pub async fn set_public_address(&self, uuid: DeviceUuid, addr: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(
            "UPDATE devices SET public_address = $1 WHERE uuid = $2"
        )
        .bind(addr)
        .bind(uuid.as_str())
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Marks every device offline (at start-up, before any tunnel is accepted).
    pub async fn mark_all_offline(&self) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query("UPDATE devices SET online = FALSE WHERE online")
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Registers a device ahead of provisioning (balena's `device register`): it exists,
    /// has no certificate yet, and a provisioning key of any fleet may claim it.
    pub async fn register_device(
        &self,
        uuid: DeviceUuid,
        fleet: Option<&str>,
    ) -> Result<DeviceRecord, StoreError> {
        let locks: &[Lock<'_>] = match fleet {
            Some(f) => &[Lock::FleetShared(f)],
            None => &[],
        };
        let mut tx = self.write_tx(locks).await?;
        let public_url = match fleet {
            Some(f) => {
                self.fleet_in(&mut tx, f)
                    .await?
                    .ok_or_else(|| StoreError::NoSuchFleet(f.to_string()))?
                    .public_url_default
            }
            None => false,
        };
        let res = on_tx!(tx, |c| sqlx::query(
            "INSERT INTO devices (uuid, public_url, created_at, fleet, provisioned) VALUES ($1, $2, $3, $4, FALSE)",
        )
        .bind(uuid.as_str())
        .bind(public_url)
        .bind(now_unix())
        .bind(fleet)
        .execute(&mut *c)
        .await
        .map(drop));
        match res {
            Ok(()) => {}
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
        let n = on_pool!(self, |p| sqlx::query(
            "UPDATE devices SET public_url = $1 WHERE uuid = $2 AND NOT revoked"
        )
        .bind(on)
        .bind(uuid.as_str())
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Renames a device and/or moves it to another fleet (`Some(None)` removes it from its
    /// fleet). Returns `false` if the device does not exist.
    pub async fn update_device(
        &self,
        uuid: DeviceUuid,
        name: Option<&str>,
        fleet: Option<Option<&str>>,
    ) -> Result<bool, StoreError> {
        let locks: &[Lock<'_>] = match fleet {
            Some(Some(f)) => &[Lock::FleetShared(f)],
            _ => &[],
        };
        let mut tx = self.write_tx(locks).await?;
        let exists = on_tx!(tx, |c| sqlx::query(
            "SELECT 1 FROM devices WHERE uuid = $1 AND NOT revoked"
        )
        .bind(uuid.as_str())
        .fetch_optional(&mut *c)
        .await?
        .is_some());
        if !exists {
            return Ok(false);
        }
        if let Some(name) = name {
            on_tx!(tx, |c| sqlx::query("UPDATE devices SET name = $1 WHERE uuid = $2")
                .bind(name)
                .bind(uuid.as_str())
                .execute(&mut *c)
                .await
                .map(drop))?;
        }
        if let Some(fleet) = fleet {
            if let Some(f) = fleet {
                if self.fleet_in(&mut tx, f).await?.is_none() {
                    return Err(StoreError::NoSuchFleet(f.to_string()));
                }
            }
            on_tx!(tx, |c| sqlx::query("UPDATE devices SET fleet = $1 WHERE uuid = $2")
                .bind(fleet)
                .bind(uuid.as_str())
                .execute(&mut *c)
                .await
                .map(drop))?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Revokes a device: its certificate is refused from now on and it leaves every
    /// listing. Returns `false` if the device does not exist.
    pub async fn revoke_device(&self, uuid: DeviceUuid) -> Result<bool, StoreError> {
        let n = on_pool!(self, |p| sqlx::query(
            "UPDATE devices SET revoked = TRUE, online = FALSE, public_url = FALSE WHERE uuid = $1 AND NOT revoked",
        )
        .bind(uuid.as_str())
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }
}

/// The columns [`device_from_row`] reads.
const DEVICE_COLUMNS: &str =
    "uuid, public_url, created_at, last_seen, online, revoked, name, fleet, state, public_address";

/// A stored uuid.
pub(super) fn parse_uuid(s: &str) -> Result<DeviceUuid, StoreError> {
    s.parse()
        .map_err(|e: protocol::InvalidUuid| StoreError::Corrupt(e.to_string()))
}

pub(super) fn device_from_row(r: &impl DbRow) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        uuid: parse_uuid(&r.col::<String>("uuid")?)?,
        public_url: r.col("public_url")?,
        created_at: r.col("created_at")?,
        last_seen: r.col("last_seen")?,
        online: r.col("online")?,
        revoked: r.col("revoked")?,
        name: r.col("name")?,
        fleet: r.col("fleet")?,
        state: r
            .col::<Option<String>>("state")?
            .and_then(|s| serde_json::from_str(&s).ok()),
        public_address: r.col("public_address")?,
    })
}
