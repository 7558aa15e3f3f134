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
        let res = on_write!(self, |p| sqlx::query(
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
        on_write!(self, |p| sqlx::query(
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
        on_pool!(self, |p| {
            sqlx::query(
            "SELECT service, name, value FROM env_vars WHERE scope = $1 AND owner = $2 ORDER BY service, name",
        )
        .bind(scope)
        .bind(owner)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| Ok((r.col("service")?, r.col("name")?, r.col("value")?)))
        .collect()
        })
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
        on_write!(self, |p| sqlx::query(
            "UPDATE devices SET state = $1 WHERE uuid = $2"
        )
        .bind(state.to_string())
        .bind(uuid.as_str())
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Records the address a device connected from.
    pub async fn set_public_address(&self, uuid: DeviceUuid, addr: &str) -> Result<(), StoreError> {
        on_write!(self, |p| sqlx::query(
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
        on_write!(self, |p| sqlx::query(
            "UPDATE devices SET online = FALSE WHERE online"
        )
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
        let res = on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO devices (uuid, public_url, created_at, fleet, provisioned) VALUES ($1, $2, $3, $4, FALSE)",
        )
        .bind(uuid.as_str())
        .bind(public_url)
        .bind(now_unix())
        .bind(fleet)
        .execute(&mut *c)
        .await
        .map(drop)
        });
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
        let n = on_write!(self, |p| sqlx::query(
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
            on_tx!(tx, |c| sqlx::query(
                "UPDATE devices SET name = $1 WHERE uuid = $2"
            )
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
            on_tx!(tx, |c| sqlx::query(
                "UPDATE devices SET fleet = $1 WHERE uuid = $2"
            )
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
        let n = on_write!(self, |p| {
            sqlx::query(
            "UPDATE devices SET revoked = TRUE, online = FALSE, public_url = FALSE WHERE uuid = $1 AND NOT revoked",
        )
        .bind(uuid.as_str())
        .execute(p)
        .await?
        .rows_affected()
        });
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

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;
    use super::*;

    fn uuid(n: u8) -> DeviceUuid {
        DeviceUuid::from_bytes([n; 16])
    }

    both_backends! {
        async fn tags_env_state_and_revocation(store) {
            let (a, b) = (uuid(1), uuid(2));
            store.add_device(a, false).await.unwrap();
            store.add_device(b, false).await.unwrap();
            let tags = |v: &[(&str, &str)]| -> Vec<(String, String)> {
                v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
            };
            store.set_tags(a, &tags(&[("site", "north"), ("hw", "pi4")])).await.unwrap();
            store.set_tags(b, &tags(&[("site", "south")])).await.unwrap();
            assert_eq!(store.tags(a).await.unwrap(), tags(&[("hw", "pi4"), ("site", "north")]));
            // Replacing drops what is not given again.
            store.set_tags(a, &tags(&[("site", "north")])).await.unwrap();
            assert_eq!(store.tags(a).await.unwrap(), tags(&[("site", "north")]));
            let mut all = store.devices_with_tag("site", None).await.unwrap();
            all.sort_by_key(|u| u.to_string());
            assert_eq!(all, vec![a, b]);
            assert_eq!(store.devices_with_tag("site", Some("south")).await.unwrap(), vec![b]);
            assert!(store.devices_with_tag("hw", None).await.unwrap().is_empty());

            let vars = vec![
                ("".to_string(), "A".to_string(), "1".to_string()),
                ("web".to_string(), "B".to_string(), "2".to_string()),
            ];
            store.set_env("device", a.as_str(), &vars).await.unwrap();
            assert_eq!(store.env("device", a.as_str()).await.unwrap(), vars);
            store.set_env("device", a.as_str(), &vars[1..]).await.unwrap();
            assert_eq!(store.env("device", a.as_str()).await.unwrap(), vars[1..].to_vec());
            assert!(store.env("fleet", a.as_str()).await.unwrap().is_empty());

            let state = serde_json::json!({"os": "debian", "n": 3});
            store.set_state(a, &state).await.unwrap();
            store.set_public_address(a, "203.0.113.9:4433").await.unwrap();
            let d = store.device(a).await.unwrap().unwrap();
            assert_eq!(d.state, Some(state));
            assert_eq!(d.public_address.as_deref(), Some("203.0.113.9:4433"));
            assert!(d.last_seen.is_none());

            assert!(store.set_public_url(a, true).await.unwrap());
            assert!(store.device(a).await.unwrap().unwrap().public_url);
            assert!(store.revoke_device(a).await.unwrap());
            assert!(!store.revoke_device(a).await.unwrap());
            assert!(!store.set_public_url(a, true).await.unwrap());
            let d = store.device(a).await.unwrap().unwrap();
            assert!(d.revoked && !d.public_url);
            assert_eq!(store.devices().await.unwrap().len(), 1, "revoked devices leave listings");
        }

        async fn register_and_update_devices(store) {
            store.create_fleet("f", true).await.unwrap();
            let d = store.register_device(uuid(3), Some("f")).await.unwrap();
            assert_eq!(d.fleet.as_deref(), Some("f"));
            assert!(d.public_url, "inherits the fleet's default");
            assert!(matches!(
                store.register_device(uuid(3), None).await,
                Err(StoreError::DeviceExists(_))
            ));
            assert!(matches!(
                store.register_device(uuid(4), Some("nope")).await,
                Err(StoreError::NoSuchFleet(_))
            ));
            let d = store.register_device(uuid(4), None).await.unwrap();
            assert!(!d.public_url && d.fleet.is_none());

            assert!(store.update_device(uuid(4), Some("kiosk"), Some(Some("f"))).await.unwrap());
            let d = store.device(uuid(4)).await.unwrap().unwrap();
            assert_eq!((d.name.as_deref(), d.fleet.as_deref()), (Some("kiosk"), Some("f")));
            assert!(matches!(
                store.update_device(uuid(4), None, Some(Some("nope"))).await,
                Err(StoreError::NoSuchFleet(_))
            ));
            assert!(store.update_device(uuid(4), None, Some(None)).await.unwrap());
            assert_eq!(store.device(uuid(4)).await.unwrap().unwrap().fleet, None);
            assert!(!store.update_device(uuid(9), Some("x"), None).await.unwrap());
        }
    }
}
