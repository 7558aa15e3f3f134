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
        let mut tx = self.write_tx().await?;
        if self.fleet_in(&mut tx, fleet).await?.is_none() {
            return Err(StoreError::NoSuchFleet(fleet.to_string()));
        }
        sqlx::query(
            "INSERT INTO provisioning_keys (id, fleet, secret_hash, created_at, expires_at, max_uses) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(fleet)
        .bind(secret_hash)
        .bind(now_unix())
        .bind(expires_at)
        .bind(max_uses)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The provisioning keys of a fleet (never their secrets).
    pub async fn keys(&self, fleet: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, fleet, created_at, expires_at, max_uses, uses, revoked FROM provisioning_keys WHERE fleet = $1 ORDER BY created_at, id",
        )
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    id: r.try_get("id")?,
                    fleet: r.try_get("fleet")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                    max_uses: r.try_get("max_uses")?,
                    uses: r.try_get("uses")?,
                    revoked: r.try_get("revoked")?,
                })
            })
            .collect()
    }

    /// Revokes a provisioning key. Returns `false` if it does not exist.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE provisioning_keys SET revoked = TRUE WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
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
        let mut tx = self.write_tx().await?;
        let Some(k) = sqlx::query(
            "SELECT fleet, secret_hash, expires_at, max_uses, uses, revoked FROM provisioning_keys WHERE id = $1",
        )
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Err(Refusal::InvalidKey));
        };
        let stored_hash: String = k.try_get("secret_hash")?;
        if stored_hash != secret_hash {
            return Ok(Err(Refusal::InvalidKey));
        }
        if k.try_get::<bool, _>("revoked")? {
            return Ok(Err(Refusal::KeyRevoked));
        }
        if let Some(exp) = k.try_get::<Option<i64>, _>("expires_at")? {
            if now >= exp {
                return Ok(Err(Refusal::KeyExpired(exp)));
            }
        }
        let uses: i64 = k.try_get("uses")?;
        if let Some(max) = k.try_get::<Option<i64>, _>("max_uses")? {
            if uses >= max {
                return Ok(Err(Refusal::KeyUsedUp(max)));
            }
        }
        let fleet: String = k.try_get("fleet")?;
        let existing =
            sqlx::query("SELECT provisioned, revoked, fleet FROM devices WHERE uuid = $1")
                .bind(uuid.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let device_fleet = match existing {
            Some(r) => {
                if r.try_get::<bool, _>("provisioned")? || r.try_get::<bool, _>("revoked")? {
                    return Ok(Err(Refusal::UuidUnavailable(uuid)));
                }
                let pre: Option<String> = r.try_get("fleet")?;
                let device_fleet = pre.unwrap_or_else(|| fleet.clone());
                sqlx::query("UPDATE devices SET provisioned = TRUE, fleet = $1 WHERE uuid = $2")
                    .bind(&device_fleet)
                    .bind(uuid.as_str())
                    .execute(&mut *tx)
                    .await?;
                device_fleet
            }
            None => {
                let public_url: bool =
                    sqlx::query("SELECT public_url_default FROM fleets WHERE name = $1")
                        .bind(&fleet)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get(0)?;
                sqlx::query(
                    "INSERT INTO devices (uuid, public_url, created_at, fleet, provisioned) VALUES ($1, $2, $3, $4, TRUE)",
                )
                .bind(uuid.as_str())
                .bind(public_url)
                .bind(now)
                .bind(&fleet)
                .execute(&mut *tx)
                .await?;
                fleet
            }
        };
        sqlx::query("UPDATE provisioning_keys SET uses = uses + 1 WHERE id = $1")
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(device_fleet))
    }
}
