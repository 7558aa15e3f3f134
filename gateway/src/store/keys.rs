//! Fleet provisioning keys and the provisioning of a device with one.

use super::*;

/// A provisioning key as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public id.
    pub id: String,
    /// The fleet devices provisioned with it join.
    pub fleet: String,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Expiry, unix seconds.
    pub expires_at: Option<i64>,
    /// Use limit.
    pub max_uses: Option<i64>,
    /// Devices provisioned with it so far.
    pub uses: i64,
    /// Revoked keys are refused.
    pub revoked: bool,
}

/// Why a provisioning attempt was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such key or wrong secret.
    InvalidKey,
    /// The key was revoked.
    KeyRevoked,
    /// The key expired at this unix time.
    KeyExpired(i64),
    /// The key reached this use limit.
    KeyUsedUp(i64),
    /// The uuid is already provisioned, or was deleted.
    UuidUnavailable(DeviceUuid),
}

impl Store {
    /// Stores a provisioning key (only the hash of its secret).
    pub async fn create_key(
        &self,
        id: &str,
        fleet: &str,
        secret_hash: &str,
        expires_at: Option<i64>,
        max_uses: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx(&[Lock::FleetShared(fleet)]).await?;
        if self.fleet_in(&mut tx, fleet).await?.is_none() {
            return Err(StoreError::NoSuchFleet(fleet.to_string()));
        }
        on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO provisioning_keys (id, fleet, secret_hash, created_at, expires_at, max_uses) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(fleet)
        .bind(secret_hash)
        .bind(now_unix())
        .bind(expires_at)
        .bind(max_uses)
        .execute(&mut *c)
        .await
        .map(drop)
        })?;
        tx.commit().await?;
        Ok(())
    }

    /// The provisioning keys of a fleet (never their secrets).
    pub async fn keys(&self, fleet: &str) -> Result<Vec<KeyRecord>, StoreError> {
        on_pool!(self, |p| {
            sqlx::query(
            "SELECT id, fleet, created_at, expires_at, max_uses, uses, revoked FROM provisioning_keys WHERE fleet = $1 ORDER BY created_at, id",
        )
        .bind(fleet)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| {
            Ok(KeyRecord {
                id: r.col("id")?,
                fleet: r.col("fleet")?,
                created_at: r.col("created_at")?,
                expires_at: r.col("expires_at")?,
                max_uses: r.col("max_uses")?,
                uses: r.col("uses")?,
                revoked: r.col("revoked")?,
            })
        })
        .collect()
        })
    }

    /// Revokes a provisioning key. Returns `false` if it does not exist.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let n = on_write!(self, |p| sqlx::query(
            "UPDATE provisioning_keys SET revoked = TRUE WHERE id = $1"
        )
        .bind(id)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Provisions a device with a key, atomically: checks the key (secret, expiry, use
    /// limit, revocation), claims `uuid` (a pre-registered one, or a new one), counts the
    /// use. Returns the device's fleet and whether a new row was created.
    pub async fn provision(
        &self,
        key_id: &str,
        secret_hash: &str,
        uuid: DeviceUuid,
        now: i64,
    ) -> Result<Result<String, Refusal>, StoreError> {
        // Locks in the order of `Lock`: the key (its use count), the uuid (claimed once),
        // then the fleet the device joins (shared, against its deletion).
        let mut tx = self
            .write_tx(&[Lock::Key(key_id), Lock::Device(uuid)])
            .await?;
        struct Key {
            fleet: String,
            secret_hash: String,
            expires_at: Option<i64>,
            max_uses: Option<i64>,
            uses: i64,
            revoked: bool,
        }
        let key = on_tx!(tx, |c| {
            sqlx::query(
            "SELECT fleet, secret_hash, expires_at, max_uses, uses, revoked FROM provisioning_keys WHERE id = $1",
        )
        .bind(key_id)
        .fetch_optional(&mut *c)
        .await?
        .map(|k| -> Result<Key, sqlx::Error> {
            Ok(Key {
                fleet: k.col("fleet")?,
                secret_hash: k.col("secret_hash")?,
                expires_at: k.col("expires_at")?,
                max_uses: k.col("max_uses")?,
                uses: k.col("uses")?,
                revoked: k.col("revoked")?,
            })
        })
        .transpose()?
        });
        let Some(k) = key else {
            return Ok(Err(Refusal::InvalidKey));
        };
        if k.secret_hash != secret_hash {
            return Ok(Err(Refusal::InvalidKey));
        }
        if k.revoked {
            return Ok(Err(Refusal::KeyRevoked));
        }
        if let Some(exp) = k.expires_at {
            if now >= exp {
                return Ok(Err(Refusal::KeyExpired(exp)));
            }
        }
        if let Some(max) = k.max_uses {
            if k.uses >= max {
                return Ok(Err(Refusal::KeyUsedUp(max)));
            }
        }
        let fleet = k.fleet;
        let existing: Option<(bool, bool, Option<String>)> = on_tx!(tx, |c| sqlx::query(
            "SELECT provisioned, revoked, fleet FROM devices WHERE uuid = $1"
        )
        .bind(uuid.as_str())
        .fetch_optional(&mut *c)
        .await?
        .map(|r| -> Result<_, sqlx::Error> {
            Ok((r.col("provisioned")?, r.col("revoked")?, r.col("fleet")?))
        })
        .transpose()?);
        let joins = match &existing {
            Some((_, _, Some(pre))) => pre.as_str(),
            _ => fleet.as_str(),
        };
        tx.lock(Lock::FleetShared(joins)).await?;
        let device_fleet = on_tx!(tx, |c| match existing {
            Some((provisioned, revoked, pre)) => {
                if provisioned || revoked {
                    return Ok(Err(Refusal::UuidUnavailable(uuid)));
                }
                let device_fleet = pre.unwrap_or_else(|| fleet.clone());
                sqlx::query("UPDATE devices SET provisioned = TRUE, fleet = $1 WHERE uuid = $2")
                    .bind(&device_fleet)
                    .bind(uuid.as_str())
                    .execute(&mut *c)
                    .await?;
                device_fleet
            }
            None => {
                let public_url: bool =
                    sqlx::query("SELECT public_url_default FROM fleets WHERE name = $1")
                        .bind(&fleet)
                        .fetch_one(&mut *c)
                        .await?
                        .at(0)?;
                sqlx::query(
                    "INSERT INTO devices (uuid, public_url, created_at, fleet, provisioned) VALUES ($1, $2, $3, $4, TRUE)",
                )
                .bind(uuid.as_str())
                .bind(public_url)
                .bind(now)
                .bind(&fleet)
                .execute(&mut *c)
                .await?;
                fleet.clone()
            }
        });
        on_tx!(tx, |c| sqlx::query(
            "UPDATE provisioning_keys SET uses = uses + 1 WHERE id = $1"
        )
        .bind(key_id)
        .execute(&mut *c)
        .await
        .map(drop))?;
        tx.commit().await?;
        Ok(Ok(device_fleet))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;
    use super::*;

    both_backends! {
        async fn provisioning_checks_every_limit(store) {
            store.create_fleet("f", true).await.unwrap();
            assert!(matches!(
                store.create_key("k0", "nope", "h", None, None).await,
                Err(StoreError::NoSuchFleet(_))
            ));
            store.create_key("k1", "f", "h1", None, Some(2)).await.unwrap();
            store.create_key("k2", "f", "h2", Some(1_000), None).await.unwrap();
            let keys = store.keys("f").await.unwrap();
            assert_eq!(keys.len(), 2);
            assert_eq!((keys[0].max_uses, keys[0].uses, keys[0].revoked), (Some(2), 0, false));

            let u = |n: u8| DeviceUuid::from_bytes([n; 16]);
            assert_eq!(store.provision("k1", "wrong", u(1), 10).await.unwrap(), Err(Refusal::InvalidKey));
            assert_eq!(store.provision("kx", "h1", u(1), 10).await.unwrap(), Err(Refusal::InvalidKey));
            assert_eq!(store.provision("k1", "h1", u(1), 10).await.unwrap(), Ok("f".to_string()));
            let d = store.device(u(1)).await.unwrap().unwrap();
            assert!(d.public_url && d.fleet.as_deref() == Some("f"));
            assert_eq!(
                store.provision("k1", "h1", u(1), 10).await.unwrap(),
                Err(Refusal::UuidUnavailable(u(1)))
            );
            // A pre-registered device keeps the fleet it was registered to.
            store.create_fleet("g", false).await.unwrap();
            store.register_device(u(2), Some("g")).await.unwrap();
            assert_eq!(store.provision("k1", "h1", u(2), 10).await.unwrap(), Ok("g".to_string()));
            assert_eq!(store.provision("k1", "h1", u(3), 10).await.unwrap(), Err(Refusal::KeyUsedUp(2)));
            assert_eq!(store.provision("k2", "h2", u(3), 1_000).await.unwrap(), Err(Refusal::KeyExpired(1_000)));
            assert!(store.revoke_key("k2").await.unwrap());
            assert!(!store.revoke_key("kx").await.unwrap());
            assert_eq!(store.provision("k2", "h2", u(3), 10).await.unwrap(), Err(Refusal::KeyRevoked));
            assert_eq!(store.keys("f").await.unwrap()[0].uses, 2);
        }

        async fn parallel_provisioning_respects_the_use_limit(store) {
            store.create_fleet("f", false).await.unwrap();
            store.create_key("k", "f", "h", None, Some(3)).await.unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..12u8 {
                let store = store.clone();
                tasks.spawn(async move {
                    store.provision("k", "h", DeviceUuid::from_bytes([n + 1; 16]), 0).await
                });
            }
            let mut ok = 0;
            while let Some(r) = tasks.join_next().await {
                match r.unwrap().expect("provision failed") {
                    Ok(_) => ok += 1,
                    Err(refusal) => assert_eq!(refusal, Refusal::KeyUsedUp(3)),
                }
            }
            assert_eq!(ok, 3);
            assert_eq!(store.keys("f").await.unwrap()[0].uses, 3);
        }
    }
}
