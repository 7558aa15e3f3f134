//! Who may visit a device's public URL: access settings per device and per fleet (table
//! `public_access`, migration 0012), and the secret that signs share links.
//!
//! The store keeps what the API was given, already checked and with the password hashed;
//! what a mode means is [`crate::proxy::access`]'s.

use super::devices::parse_uuid;
use super::*;

/// Whose setting: one device's own, or a fleet's default for its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessScope<'a> {
    /// A device's own setting (wins over its fleet's).
    Device(DeviceUuid),
    /// The default of a fleet's devices.
    Fleet(&'a str),
}

impl AccessScope<'_> {
    fn key(&self) -> (&'static str, String) {
        match self {
            AccessScope::Device(u) => ("device", u.to_string()),
            AccessScope::Fleet(f) => ("fleet", f.to_string()),
        }
    }
}

/// One stored access setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    /// `public`, `basic` or `link` (the API refuses anything else; `login` is reserved).
    pub mode: String,
    /// The user of `basic`.
    pub basic_user: Option<String>,
    /// The argon2 PHC string of `basic`'s password (never shown by the API).
    pub basic_hash: Option<String>,
    /// Allowed client addresses (`10.0.0.0/8`, `::1`); empty: anyone.
    pub allow: Vec<String>,
    /// Unix seconds.
    pub updated_at: i64,
}

/// The setting a device's public URL follows, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectiveAccess {
    /// The device's own setting.
    Device(AccessRecord),
    /// Its fleet's default (the fleet's name).
    Fleet(String, AccessRecord),
    /// Neither: public.
    Default,
}

impl EffectiveAccess {
    /// The record in force, if any (`None`: public, nobody restricted it).
    pub fn record(&self) -> Option<&AccessRecord> {
        match self {
            EffectiveAccess::Device(r) | EffectiveAccess::Fleet(_, r) => Some(r),
            EffectiveAccess::Default => None,
        }
    }
}

/// The `gateway_meta` key of the share-link secret.
const SECRET_KEY: &str = "share_secret";

impl Store {
    /// The setting stored for `scope` itself (not inherited).
    pub async fn access(&self, scope: AccessScope<'_>) -> Result<Option<AccessRecord>, StoreError> {
        let (kind, owner) = scope.key();
        on_pool!(self, |p| sqlx::query(
            "SELECT mode, basic_user, basic_hash, allow, updated_at FROM public_access
             WHERE scope = $1 AND owner = $2"
        )
        .bind(kind)
        .bind(&owner)
        .fetch_optional(p)
        .await?
        .map(|r| access_from_row(&r))
        .transpose())
    }

    /// Stores `record` as `scope`'s setting, or with `None` removes it (a device then
    /// follows its fleet again, a fleet's devices are public again).
    pub async fn set_access(
        &self,
        scope: AccessScope<'_>,
        record: Option<&AccessRecord>,
    ) -> Result<(), StoreError> {
        let (kind, owner) = scope.key();
        match record {
            Some(r) => on_write!(self, |p| {
                sqlx::query(
                "INSERT INTO public_access (scope, owner, mode, basic_user, basic_hash, allow, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (scope, owner) DO UPDATE SET mode = excluded.mode,
                   basic_user = excluded.basic_user, basic_hash = excluded.basic_hash,
                   allow = excluded.allow, updated_at = excluded.updated_at"
            )
            .bind(kind)
            .bind(&owner)
            .bind(&r.mode)
            .bind(&r.basic_user)
            .bind(&r.basic_hash)
            .bind(r.allow.join(","))
            .bind(r.updated_at)
            .execute(p)
            .await
            .map(drop)
            })?,
            None => on_write!(self, |p| sqlx::query(
                "DELETE FROM public_access WHERE scope = $1 AND owner = $2"
            )
            .bind(kind)
            .bind(&owner)
            .execute(p)
            .await
            .map(drop))?,
        }
        Ok(())
    }

    /// What `uuid`'s public URL follows: its own setting, else its fleet's, else public.
    /// One query (the proxy caches the answer, see `proxy::access`).
    pub async fn effective_access(&self, uuid: DeviceUuid) -> Result<EffectiveAccess, StoreError> {
        let rows = on_pool!(self, |p| {
            sqlx::query(
                "SELECT scope, owner, mode, basic_user, basic_hash, allow, updated_at FROM public_access
                 WHERE (scope = 'device' AND owner = $1)
                    OR (scope = 'fleet' AND owner = (SELECT fleet FROM devices WHERE uuid = $1))",
            )
            .bind(uuid.to_string())
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.col::<String>("scope")?,
                    r.col::<String>("owner")?,
                    access_from_row(r)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?
        });
        let mut fleet = None;
        for (scope, owner, record) in rows {
            if scope == "device" {
                // Checked, as every row read: a corrupt owner is an error, not a match.
                parse_uuid(&owner)?;
                return Ok(EffectiveAccess::Device(record));
            }
            fleet = Some(EffectiveAccess::Fleet(owner, record));
        }
        Ok(fleet.unwrap_or(EffectiveAccess::Default))
    }

    /// The secret that signs share links and their cookies: 32 random bytes made by the
    /// first node that needs it and shared through the database by every node after.
    pub async fn share_secret(&self) -> Result<Vec<u8>, StoreError> {
        let read = || async {
            on_pool!(self, |p| sqlx::query(
                "SELECT value FROM gateway_meta WHERE key = $1"
            )
            .bind(SECRET_KEY)
            .fetch_optional(p)
            .await?
            .map(|r| r.at::<String>(0))
            .transpose())
        };
        let hex = match read().await? {
            Some(hex) => hex,
            None => {
                // Two nodes racing: `DO NOTHING` keeps the first, and both read it back.
                let fresh = certs::random_hex(32);
                on_write!(self, |p| {
                    sqlx::query(
                    "INSERT INTO gateway_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                )
                .bind(SECRET_KEY)
                .bind(&fresh)
                .execute(p)
                .await
                .map(drop)
                })?;
                read().await?.unwrap_or(fresh)
            }
        };
        unhex(&hex).ok_or_else(|| StoreError::Corrupt(format!("{SECRET_KEY} is not hex")))
    }
}

fn access_from_row(r: &impl DbRow) -> Result<AccessRecord, StoreError> {
    let allow: String = r.col("allow")?;
    Ok(AccessRecord {
        mode: r.col("mode")?,
        basic_user: r.col("basic_user")?,
        basic_hash: r.col("basic_hash")?,
        allow: allow
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        updated_at: r.col("updated_at")?,
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_pg::both_backends;
    use super::*;

    fn rec(mode: &str, allow: &[&str]) -> AccessRecord {
        AccessRecord {
            mode: mode.into(),
            basic_user: (mode == "basic").then(|| "u".into()),
            basic_hash: (mode == "basic").then(|| "$argon2id$x".into()),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            updated_at: 5,
        }
    }

    both_backends! {
        async fn a_device_setting_wins_over_its_fleets_and_unset_is_public(store) {
            let u = DeviceUuid::from_bytes([3; 16]);
            let other = DeviceUuid::from_bytes([4; 16]);
            store.create_fleet("f", false).await.unwrap();
            store.register_device(u, Some("f")).await.unwrap();
            store.register_device(other, None).await.unwrap();
            assert_eq!(store.effective_access(u).await.unwrap(), EffectiveAccess::Default);

            let fleet = rec("link", &["10.0.0.0/8", "::1"]);
            store.set_access(AccessScope::Fleet("f"), Some(&fleet)).await.unwrap();
            assert_eq!(
                store.effective_access(u).await.unwrap(),
                EffectiveAccess::Fleet("f".into(), fleet.clone())
            );
            // A device outside the fleet is not touched.
            assert_eq!(store.effective_access(other).await.unwrap(), EffectiveAccess::Default);

            let own = rec("basic", &[]);
            store.set_access(AccessScope::Device(u), Some(&own)).await.unwrap();
            assert_eq!(store.effective_access(u).await.unwrap(), EffectiveAccess::Device(own.clone()));
            assert_eq!(store.access(AccessScope::Device(u)).await.unwrap(), Some(own));
            // An upsert replaces the row.
            let public = rec("public", &["127.0.0.0/8"]);
            store.set_access(AccessScope::Device(u), Some(&public)).await.unwrap();
            assert_eq!(store.access(AccessScope::Device(u)).await.unwrap(), Some(public));

            store.set_access(AccessScope::Device(u), None).await.unwrap();
            assert_eq!(
                store.effective_access(u).await.unwrap(),
                EffectiveAccess::Fleet("f".into(), fleet)
            );
            store.set_access(AccessScope::Fleet("f"), None).await.unwrap();
            assert_eq!(store.effective_access(u).await.unwrap(), EffectiveAccess::Default);
        }

        async fn deleting_a_fleet_drops_its_access_default(store) {
            store.create_fleet("g", false).await.unwrap();
            store.set_access(AccessScope::Fleet("g"), Some(&rec("link", &[]))).await.unwrap();
            store.delete_fleet("g").await.unwrap().unwrap();
            store.create_fleet("g", false).await.unwrap();
            assert_eq!(store.access(AccessScope::Fleet("g")).await.unwrap(), None);
        }

        async fn the_share_secret_is_made_once(store) {
            let a = store.share_secret().await.unwrap();
            assert_eq!(a.len(), 32);
            assert_eq!(store.share_secret().await.unwrap(), a);
        }
    }
}
