//! `/v1/devices/{uuid}/access`, `/v1/fleets/{name}/access` and
//! `/v1/devices/{uuid}/share-links`: who may visit public URLs (`docs/access.md`).
//!
//! A change drops the setting cached by this node's proxy at once and tells the other
//! nodes to drop theirs (`access:` / `fleet-access:` wake-ups); passwords are hashed with
//! argon2 here, off the runtime's threads, and never shown again.

use super::*;
use crate::proxy::access::{hash_password, share_token, Cidr, Mode, ModeError};
use crate::store::{AccessRecord, AccessScope, EffectiveAccess};

/// Allow-list entries at most.
const MAX_ALLOW: usize = 64;
/// Share links last at most a year.
pub(crate) const MAX_SHARE_SECS: i64 = 365 * 24 * 3600;

fn view(access: &EffectiveAccess) -> Access {
    let (source, fleet) = match access {
        EffectiveAccess::Device(_) => ("device", None),
        EffectiveAccess::Fleet(f, _) => ("fleet", Some(f.clone())),
        EffectiveAccess::Default => ("default", None),
    };
    let r = access.record();
    Access {
        mode: r.map_or("public", |r| r.mode.as_str()).to_string(),
        source: source.to_string(),
        fleet,
        user: r.and_then(|r| r.basic_user.clone()),
        allow: r.map(|r| r.allow.clone()).unwrap_or_default(),
    }
}

/// Checks a request body; `None` means "no setting of its own" (`inherit` for a device,
/// an unrestricted `public` for a fleet, whose devices are then public by default).
async fn record_of(body: AccessSettings, device: bool) -> Result<Option<AccessRecord>, ApiError> {
    let mode = if device && body.mode == "inherit" {
        None
    } else {
        Some(body.mode.parse::<Mode>().map_err(|e| match e {
            ModeError::Unknown(_) => ApiError::bad_request(
                "invalid_mode",
                if device {
                    format!("{e} (or inherit, to follow the device's fleet)")
                } else {
                    e.to_string()
                },
            ),
        })?)
    };
    if body.allow.len() > MAX_ALLOW {
        return Err(ApiError::bad_request(
            "invalid_cidr",
            format!("at most {MAX_ALLOW} allow-list entries"),
        ));
    }
    let allow = body
        .allow
        .iter()
        .map(|a| a.trim().parse::<Cidr>().map(|c| c.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request("invalid_cidr", e))?;
    let credentials = body.user.is_some() || body.password.is_some();
    let Some(mode) = mode else {
        if credentials || !allow.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_settings",
                "inherit takes no user, password or allow-list: the fleet's setting applies as it is",
            ));
        }
        return Ok(None);
    };
    let (user, hash) = match mode {
        Mode::Basic => {
            let (Some(user), Some(password)) = (body.user, body.password) else {
                return Err(ApiError::bad_request(
                    "missing_credentials",
                    "basic needs a user and a password",
                ));
            };
            let user_ok = !user.is_empty()
                && user.chars().count() <= 128
                && !user.contains(':')
                && !user.chars().any(char::is_control);
            if !user_ok {
                return Err(ApiError::bad_request(
                    "invalid_user",
                    "the user is 1-128 characters, no ':' and no control characters",
                ));
            }
            if password.is_empty() || password.len() > 1024 {
                return Err(ApiError::bad_request(
                    "invalid_password",
                    "the password is 1-1024 bytes",
                ));
            }
            // argon2 takes tens of milliseconds: not on the runtime's threads.
            let hash = tokio::task::spawn_blocking(move || hash_password(&password))
                .await
                .map_err(|e| internal(e.to_string()))?
                .map_err(internal)?;
            (Some(user), Some(hash))
        }
        Mode::Public | Mode::Link | Mode::Login if credentials => {
            return Err(ApiError::bad_request(
                "invalid_settings",
                format!("a user and password are for basic, not {}", mode.as_str()),
            ))
        }
        Mode::Public if !device && allow.is_empty() => return Ok(None),
        Mode::Public | Mode::Link | Mode::Login => (None, None),
    };
    Ok(Some(AccessRecord {
        mode: mode.as_str().to_string(),
        basic_user: user,
        basic_hash: hash,
        allow,
        updated_at: crate::store::now_unix(),
    }))
}

fn internal(e: String) -> ApiError {
    tracing::error!(error = %e, "cannot hash a password");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the gateway log",
    )
}

/// What the audit log says of a setting (never the password or its hash).
fn audit_detail(r: Option<&AccessRecord>) -> String {
    match r {
        Some(r) => json!({"mode": r.mode, "user": r.basic_user, "allow": r.allow}),
        None => json!({"mode": "inherit"}),
    }
    .to_string()
}

pub(super) async fn get_device_access(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
) -> ApiResult<Access> {
    caller.require(Role::Viewer)?;
    device_or_404(&st, uuid).await?;
    Ok(Json(view(&st.store.effective_access(uuid).await?)))
}

pub(super) async fn put_device_access(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<AccessSettings>, ApiError>,
) -> ApiResult<Access> {
    caller.require(Role::Operator)?;
    let JsonObject(body) = body?;
    device_or_404(&st, uuid).await?;
    let record = record_of(body, true).await?;
    st.store
        .set_access(AccessScope::Device(uuid), record.as_ref())
        .await?;
    st.sessions.access.forget(&uuid);
    crate::wake::tell(&st.store, crate::store::Wake::Access(uuid)).await;
    st.store
        .audit(
            &caller.actor(),
            "device.access",
            uuid.as_str(),
            &audit_detail(record.as_ref()),
        )
        .await?;
    Ok(Json(view(&st.store.effective_access(uuid).await?)))
}

fn fleet_view(name: &str, r: Option<AccessRecord>) -> Access {
    view(&match r {
        Some(r) => EffectiveAccess::Fleet(name.to_string(), r),
        None => EffectiveAccess::Default,
    })
}

pub(super) async fn get_fleet_access(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Access> {
    caller.require(Role::Viewer)?;
    let Path(name) = name?;
    fleet_or_404(&st, &name).await?;
    let r = st.store.access(AccessScope::Fleet(&name)).await?;
    Ok(Json(fleet_view(&name, r)))
}

pub(super) async fn put_fleet_access(
    caller: Caller,
    State(st): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<AccessSettings>, ApiError>,
) -> ApiResult<Access> {
    caller.require(Role::Admin)?;
    let Path(name) = name?;
    let JsonObject(body) = body?;
    fleet_or_404(&st, &name).await?;
    let record = record_of(body, false).await?;
    st.store
        .set_access(AccessScope::Fleet(&name), record.as_ref())
        .await?;
    st.sessions.access.forget_all();
    crate::wake::tell(&st.store, crate::store::Wake::FleetAccess(name.clone())).await;
    st.store
        .audit(
            &caller.actor(),
            "fleet.access",
            &name,
            &audit_detail(record.as_ref()),
        )
        .await?;
    Ok(Json(fleet_view(&name, record)))
}

pub(super) async fn create_share_link(
    caller: Caller,
    State(st): State<ApiState>,
    DeviceParam(uuid): DeviceParam,
    body: Result<JsonObject<NewShareLink>, ApiError>,
) -> Result<(StatusCode, Json<ShareLink>), ApiError> {
    caller.require(Role::Operator)?;
    let JsonObject(body) = body?;
    if !(1..=MAX_SHARE_SECS).contains(&body.for_secs) {
        return Err(ApiError::bad_request(
            "invalid_duration",
            format!("for_secs is 1 to {MAX_SHARE_SECS} (a year)"),
        ));
    }
    device_or_404(&st, uuid).await?;
    let access = st.store.effective_access(uuid).await?;
    let mode = access.record().map_or("public", |r| r.mode.as_str());
    if mode != Mode::Link.as_str() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_link_mode",
            format!(
                "device {uuid}'s public URL is in {mode} mode; share links work in link mode \
                 (gateway device access {uuid} link)"
            ),
        ));
    }
    let secret = st.sessions.access.secret(&st.store).await?;
    let expires_at = crate::store::now_unix() + body.for_secs;
    let token = share_token(&secret, uuid, expires_at);
    let url = format!(
        "http://{uuid}.{}/?{}={token}",
        st.domain,
        crate::proxy::access::SHARE_PARAM
    );
    st.store
        .audit(
            &caller.actor(),
            "device.share",
            uuid.as_str(),
            &json!({"expires_at": expires_at}).to_string(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(ShareLink { url, expires_at })))
}
