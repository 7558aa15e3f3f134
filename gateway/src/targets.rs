//! What each device should run: its release (device pin, else fleet pin, else the fleet's
//! newest) with environment variables merged fleet < device, and telling connected agents
//! when that changes.

use protocol::release::{EnvVar, TargetState};
use protocol::DeviceUuid;

use crate::sessions::Sessions;
use crate::store::{Store, StoreError, TargetSource};

/// The numeric app id of a fleet (balena's `appId`): stable, derived from its name, so
/// every gateway node and every device agree without storing it.
pub fn app_id(fleet: &str) -> u32 {
    let d = certs::sha256_hex(fleet.as_bytes());
    (u32::from_str_radix(&d[..8], 16).expect("hex") % 999_999_999) + 1
}

/// The device's target state and where its release came from; `None` when the device has
/// no fleet or its fleet has no release yet.
pub async fn target_for(
    store: &Store,
    uuid: DeviceUuid,
) -> Result<Option<(TargetState, TargetSource)>, StoreError> {
    let Some((rel, source)) = store.target_release(uuid).await? else {
        return Ok(None);
    };
    let device_env = env_vars(store, "device", uuid.as_str()).await?;
    Ok(Some((target_of(store, &rel, &device_env).await?, source)))
}

/// The target a release gives every device of its fleet that sets no variables of its
/// own (what an offline bundle carries).
pub async fn release_target(
    store: &Store,
    rel: &crate::store::ReleaseRecord,
) -> Result<TargetState, StoreError> {
    target_of(store, rel, &[]).await
}

/// `rel`'s services with the fleet's variables and then `device_env` merged in.
async fn target_of(
    store: &Store,
    rel: &crate::store::ReleaseRecord,
    device_env: &[EnvVar],
) -> Result<TargetState, StoreError> {
    let compose = compose::parse_compose(&rel.compose)
        .map_err(|e| StoreError::Corrupt(format!("release {}: {e}", rel.id)))?;
    let fleet_env = env_vars(store, "fleet", &rel.fleet).await?;
    Ok(compose::target_state(
        app_id(&rel.fleet),
        &rel.fleet,
        &rel.id,
        &compose,
        &fleet_env,
        device_env,
    ))
}

async fn env_vars(store: &Store, scope: &str, owner: &str) -> Result<Vec<EnvVar>, StoreError> {
    Ok(store
        .env(scope, owner)
        .await?
        .into_iter()
        .map(|(service, name, value)| EnvVar {
            service,
            name,
            value,
        })
        .collect())
}

/// Wakes the control loop of `uuid`'s session (if connected) to re-send its target.
pub fn retarget(sessions: &Sessions, uuid: DeviceUuid) {
    if let Some(s) = sessions.get(&uuid) {
        s.retarget.notify_one();
    }
}

/// Wakes every connected device of `fleet`.
pub async fn retarget_fleet(store: &Store, sessions: &Sessions, fleet: &str) {
    match store.devices().await {
        Ok(devices) => {
            for d in devices.iter().filter(|d| d.fleet.as_deref() == Some(fleet)) {
                retarget(sessions, d.uuid);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, %fleet, "cannot list the fleet's devices to notify them")
        }
    }
}
