//! Fleets: their public-URL default, pins, and deletion.

use super::devices::parse_uuid;
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
    /// A fleet, read inside a write transaction (which should hold a fleet lock on it).
    pub(super) async fn fleet_in(
        &self,
        tx: &mut Tx,
        name: &str,
    ) -> Result<Option<FleetRecord>, StoreError> {
        on_tx!(tx, |c| sqlx::query(
            "SELECT name, public_url_default, created_at FROM fleets WHERE name = $1"
        )
        .bind(name)
        .fetch_optional(&mut *c)
        .await?
        .map(|r| fleet_from_row(&r))
        .transpose())
    }

    /// Creates a fleet.
    pub async fn create_fleet(
        &self,
        name: &str,
        public_url_default: bool,
    ) -> Result<FleetRecord, StoreError> {
        let created_at = now_unix();
        let res = on_write!(self, |p| sqlx::query(
            "INSERT INTO fleets (name, public_url_default, created_at) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(public_url_default)
        .bind(created_at)
        .execute(p)
        .await
        .map(drop));
        match res {
            Ok(()) => Ok(FleetRecord {
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
        on_pool!(self, |p| sqlx::query(
            "SELECT name, public_url_default, created_at FROM fleets WHERE name = $1"
        )
        .bind(name)
        .fetch_optional(p)
        .await?
        .map(|r| fleet_from_row(&r))
        .transpose())
    }

    /// All fleets with their device counts, by name.
    pub async fn fleets(&self) -> Result<Vec<(FleetRecord, i64)>, StoreError> {
        on_pool!(self, |p| {
            sqlx::query(
            "SELECT f.name, f.public_url_default, f.created_at,
                    (SELECT COUNT(*) FROM devices d WHERE d.fleet = f.name AND NOT d.revoked) AS devices
             FROM fleets f ORDER BY f.name",
        )
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| Ok((fleet_from_row(r)?, r.col("devices")?)))
        .collect()
        })
    }

    /// Switches the public URL of every device in `fleet` now, and sets the default that
    /// devices added to the fleet later inherit. Returns the devices switched, or `None`
    /// if the fleet does not exist.
    pub async fn set_fleet_public_url(
        &self,
        fleet: &str,
        on: bool,
    ) -> Result<Option<Vec<DeviceUuid>>, StoreError> {
        // Exclusive: a device joining the fleet meanwhile reads the new default, or is
        // switched here.
        let mut tx = self.write_tx(&[Lock::FleetExclusive(fleet)]).await?;
        let switched = on_tx!(tx, |c| {
            let r = sqlx::query("UPDATE fleets SET public_url_default = $1 WHERE name = $2")
                .bind(on)
                .bind(fleet)
                .execute(&mut *c)
                .await?;
            if r.rows_affected() == 0 {
                return Ok(None);
            }
            let rows = sqlx::query("SELECT uuid FROM devices WHERE fleet = $1 AND NOT revoked")
                .bind(fleet)
                .fetch_all(&mut *c)
                .await?;
            sqlx::query("UPDATE devices SET public_url = $1 WHERE fleet = $2 AND NOT revoked")
                .bind(on)
                .bind(fleet)
                .execute(&mut *c)
                .await?;
            rows.iter()
                .map(|r| parse_uuid(&r.col::<String>("uuid")?))
                .collect::<Result<Vec<_>, _>>()?
        });
        tx.commit().await?;
        Ok(Some(switched))
    }

    /// Deletes a fleet that has no devices, and with it its provisioning keys, its
    /// releases and its fleet-level environment variables (all meaningless without the
    /// fleet). Devices block it ([`StoreError::FleetNotEmpty`]): moving or deleting a
    /// device is a decision of its own. Devices deleted earlier keep their (revoked) rows
    /// but leave the fleet. Returns what went with it, or `None` if there is no such
    /// fleet.
    pub async fn delete_fleet(&self, name: &str) -> Result<Option<FleetDeletion>, StoreError> {
        // Exclusive: nothing joins the fleet between the count and the delete.
        let mut tx = self.write_tx(&[Lock::FleetExclusive(name)]).await?;
        if self.fleet_in(&mut tx, name).await?.is_none() {
            return Ok(None);
        }
        let deletion = on_tx!(tx, |c| {
            let n: i64 =
                sqlx::query("SELECT COUNT(*) FROM devices WHERE fleet = $1 AND NOT revoked")
                    .bind(name)
                    .fetch_one(&mut *c)
                    .await?
                    .at(0)?;
            if n > 0 {
                return Err(StoreError::FleetNotEmpty(name.to_string(), n));
            }
            sqlx::query(
                "UPDATE devices SET pinned_release = NULL
             WHERE pinned_release IN (SELECT id FROM releases WHERE fleet = $1)",
            )
            .bind(name)
            .execute(&mut *c)
            .await?;
            sqlx::query("UPDATE devices SET fleet = NULL WHERE fleet = $1")
                .bind(name)
                .execute(&mut *c)
                .await?;
            let keys = sqlx::query("DELETE FROM provisioning_keys WHERE fleet = $1")
                .bind(name)
                .execute(&mut *c)
                .await?
                .rows_affected();
            let releases = sqlx::query("DELETE FROM releases WHERE fleet = $1")
                .bind(name)
                .execute(&mut *c)
                .await?
                .rows_affected();
            let env_vars = sqlx::query("DELETE FROM env_vars WHERE scope = 'fleet' AND owner = $1")
                .bind(name)
                .execute(&mut *c)
                .await?
                .rows_affected();
            // Its access default too: a new fleet of the same name starts public.
            sqlx::query("DELETE FROM public_access WHERE scope = 'fleet' AND owner = $1")
                .bind(name)
                .execute(&mut *c)
                .await?;
            sqlx::query("DELETE FROM fleets WHERE name = $1")
                .bind(name)
                .execute(&mut *c)
                .await?;
            FleetDeletion {
                keys,
                releases,
                env_vars,
            }
        });
        tx.commit().await?;
        Ok(Some(deletion))
    }
}

pub(super) fn fleet_from_row(r: &impl DbRow) -> Result<FleetRecord, StoreError> {
    Ok(FleetRecord {
        name: r.col("name")?,
        public_url_default: r.col("public_url_default")?,
        created_at: r.col("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;
    use super::*;

    both_backends! {
        async fn fleets_public_urls_and_deletion(store) {
            store.create_fleet("b", false).await.unwrap();
            store.create_fleet("a", true).await.unwrap();
            assert!(matches!(
                store.create_fleet("a", false).await,
                Err(StoreError::FleetExists(_))
            ));
            let u = DeviceUuid::from_bytes([7; 16]);
            store.register_device(u, Some("b")).await.unwrap();
            let fleets = store.fleets().await.unwrap();
            let names: Vec<(&str, i64)> = fleets.iter().map(|(f, n)| (f.name.as_str(), *n)).collect();
            assert_eq!(names, vec![("a", 0), ("b", 1)]);
            assert!(store.fleet("a").await.unwrap().unwrap().public_url_default);
            assert_eq!(store.fleet("zzz").await.unwrap(), None);

            assert_eq!(store.set_fleet_public_url("b", true).await.unwrap(), Some(vec![u]));
            assert!(store.device(u).await.unwrap().unwrap().public_url);
            assert!(store.fleet("b").await.unwrap().unwrap().public_url_default);
            assert_eq!(store.set_fleet_public_url("zzz", true).await.unwrap(), None);

            store.create_key("k1", "b", "hash", None, None).await.unwrap();
            store.create_release("b", "services: {}", "h", "t").await.unwrap();
            store
                .set_env("fleet", "b", &[("".into(), "X".into(), "1".into())])
                .await
                .unwrap();
            assert!(matches!(
                store.delete_fleet("b").await,
                Err(StoreError::FleetNotEmpty(_, 1))
            ));
            assert!(store.revoke_device(u).await.unwrap());
            let gone = store.delete_fleet("b").await.unwrap().unwrap();
            assert_eq!(
                gone,
                FleetDeletion {
                    keys: 1,
                    releases: 1,
                    env_vars: 1
                }
            );
            assert_eq!(store.device(u).await.unwrap().unwrap().fleet, None);
            assert_eq!(store.delete_fleet("b").await.unwrap(), None);
            // A fleet of the same name starts its release numbering afresh.
            store.create_fleet("b", false).await.unwrap();
            let (r, _) = store.create_release("b", "services: {}", "h", "t").await.unwrap();
            assert_eq!(r.seq, 1);
        }
    }
}
