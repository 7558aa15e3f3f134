//! The management API's request and response bodies: one serde struct per JSON shape, used
//! by the handlers to build answers, by the operator CLI ([`crate::client`]) to read them,
//! and later by the dashboard.
//!
//! Renaming or retyping a field here changes the server and every reader at once, and a
//! reader that still uses the old name no longer compiles. `openapi.json` stays written by
//! hand (it carries patterns, limits and prose a derive cannot); the test in
//! `api::openapi` compares each struct's derived JSON Schema with the document's
//! component of the same name: property names, the `required` list and the JSON types.
//!
//! Conventions, which the wire format depends on:
//! - An `Option` field without `skip_serializing_if` is always sent, as `null` when empty
//!   (required and nullable in the document); one with it is left out when empty, never
//!   null (not required; `#[schemars(with = "T")]` tells the schema so).
//! - Request bodies deny unknown fields; responses do not, so an older CLI reads a newer
//!   gateway's answers.
//!
//! This module holds data only: no store, no HTTP. The conversions from store records live
//! beside the handlers that make them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Error")]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `forbidden`, `invalid_json`, ...
    pub code: String,
    /// For people.
    pub message: String,
}

// ---------------------------------------------------------------------------------------
// Fleets

/// `POST /v1/fleets`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFleet {
    /// 1-64 characters of `A-Z a-z 0-9 - _ .`.
    pub name: String,
    /// Devices that join the fleet get their public URL switched on. Default is off.
    #[serde(default)]
    pub public_url_default: bool,
}

/// A fleet in `GET /v1/fleets` and from `POST /v1/fleets`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Fleet {
    /// Name.
    pub name: String,
    /// Whether joining devices get a public URL.
    pub public_url_default: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// How many devices it has.
    pub devices: i64,
}

/// `GET /v1/fleets/{name}`: the fleet with its devices.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FleetDetail {
    /// Name.
    pub name: String,
    /// Whether joining devices get a public URL.
    pub public_url_default: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Its devices.
    pub devices: Vec<Device>,
}

/// `PUT .../public-url`: on or off.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Switch {
    /// On.
    pub enabled: bool,
}

/// `PUT /v1/fleets/{name}/public-url`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FleetSwitched {
    /// The fleet.
    pub fleet: String,
    /// The new setting.
    pub enabled: bool,
    /// How many of its devices were switched.
    pub devices_switched: u64,
}

// ---------------------------------------------------------------------------------------
// Devices

/// Query of `GET /v1/devices`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    /// Only devices of this fleet.
    pub fleet: Option<String>,
    /// Only devices with (or without) a tunnel up.
    pub online: Option<bool>,
    /// `NAME` or `NAME=VALUE`.
    pub tag: Option<String>,
}

/// A device, as every device endpoint answers it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Device {
    /// 32 lower-case hex characters.
    pub uuid: String,
    /// Its name, or the first 7 characters of its uuid.
    pub name: String,
    /// Its fleet, if any.
    pub fleet: Option<String>,
    /// A tunnel is up right now.
    pub online: bool,
    /// The live tunnel's transport (`quic`, `tcp`); null while offline.
    pub transport: Option<String>,
    /// The live tunnel's smoothed round-trip time in milliseconds; null while offline.
    pub rtt_ms: Option<f64>,
    /// Unix seconds.
    pub last_seen: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
    /// Whether its web UI is served at its public URL.
    pub public_url: bool,
    /// That URL, while switched on.
    pub url: Option<String>,
    /// The address its tunnel last came from.
    pub public_address: Option<String>,
    /// From the last reported state.
    pub agent_version: Option<Value>,
    /// From the last reported state.
    pub os_version: Option<Value>,
    /// From the last reported state.
    pub ip_addresses: Option<Value>,
    /// From the last reported state.
    pub status: Option<Value>,
    /// The last state the agent reported, or null.
    pub state: Option<Value>,
    /// Only in `GET /v1/devices/{uuid}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Tags")]
    pub tags: Option<Tags>,
}

/// `PATCH /v1/devices/{uuid}`: absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// A new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Some(None)` (`"fleet": null`) takes the device out of its fleet.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub fleet: Option<Option<String>>,
}

/// `POST /v1/devices`: register a device ahead of provisioning.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// Default is a random uuid.
    pub uuid: Option<String>,
    /// Its fleet, if any.
    pub fleet: Option<String>,
}

/// Device tags, name → value; `GET`/`PUT /v1/devices/{uuid}/tags`.
pub type Tags = BTreeMap<String, String>;

/// Environment variables of a device or fleet, for all services and per service;
/// `GET`/`PUT .../env`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Env {
    /// For every service.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Service name → its own variables.
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<String, String>>,
}

// ---------------------------------------------------------------------------------------
// Provisioning keys

/// `POST /v1/fleets/{name}/keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Seconds until the key expires. Default is never.
    #[serde(default, deserialize_with = "whole_number")]
    pub expires_in_secs: Option<i64>,
    /// How many devices may provision with it. Default is unlimited.
    #[serde(default, deserialize_with = "whole_number")]
    pub max_uses: Option<i64>,
}

/// A provisioning key in `GET /v1/fleets/{name}/keys` (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Key {
    /// Public id.
    pub id: String,
    /// The fleet devices join with it.
    pub fleet: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; null is never.
    pub expires_at: Option<i64>,
    /// Null is unlimited.
    pub max_uses: Option<i64>,
    /// Devices provisioned with it so far.
    pub uses: i64,
    /// Revoked.
    pub revoked: bool,
}

/// From `POST /v1/fleets/{name}/keys`: the key itself, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CreatedKey {
    /// Public id.
    pub id: String,
    /// The fleet devices join with it.
    pub fleet: String,
    /// Unix seconds; null is never.
    pub expires_at: Option<i64>,
    /// Null is unlimited.
    pub max_uses: Option<i64>,
    /// The provisioning key for `edge-agent provision --key`.
    pub key: String,
}

// ---------------------------------------------------------------------------------------
// Actions

/// `POST /v1/devices/{uuid}/actions`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAction {
    /// One of the API's actions (`blink`, `restart`, `reboot`, …; `api::ACTIONS`).
    pub action: String,
    /// The action's parameters (`appId`, `serviceName`, `patch`, ...).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Override update locks.
    #[serde(default)]
    pub force: bool,
    /// How long it waits for an offline device. Default is a day.
    #[serde(default, deserialize_with = "whole_number")]
    pub ttl_secs: Option<i64>,
}

/// An action and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Action {
    /// `act_...`.
    pub id: String,
    /// Device uuid.
    pub device: String,
    /// The action's name.
    pub action: String,
    /// Its parameters.
    pub params: Map<String, Value>,
    /// `pending`, `delivered`, `succeeded`, `failed` or `expired`.
    pub status: String,
    /// What the device answered, when it did.
    pub detail: Option<Value>,
    /// The audit actor that asked for it.
    pub requested_by: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds.
    pub delivered_at: Option<i64>,
    /// Unix seconds.
    pub finished_at: Option<i64>,
    /// Only when queued: whether it was sent at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "bool")]
    pub device_online: Option<bool>,
}

impl Action {
    /// Whether the action is over (succeeded, failed or expired).
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "expired")
    }
}

// ---------------------------------------------------------------------------------------
// Tokens and audit

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A label.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
}

/// A token in `GET /v1/tokens` (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Token {
    /// Public id.
    pub id: String,
    /// Label.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_used: Option<i64>,
    /// A support grant's expiry (unix seconds); null: never.
    pub expires_at: Option<i64>,
    /// What a support grant reaches: `fleet:<name>` or `device:<uuid>`; null: everything
    /// its role allows.
    pub scope: Option<String>,
}

/// From `POST /v1/tokens`: the token itself, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CreatedToken {
    /// Public id.
    pub id: String,
    /// Label.
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The bearer token.
    pub token: String,
}

/// `POST /v1/support-grants`: a token for one fleet (and its devices) or one device that
/// expires by itself. Exactly one of `fleet` and `device`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSupportGrant {
    /// The fleet the grant reaches (its paths and its devices'). Absent, not null.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    #[schemars(with = "String")]
    pub fleet: Option<String>,
    /// The device the grant reaches (32 hex). Absent, not null.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    #[schemars(with = "String")]
    pub device: Option<String>,
    /// `viewer` or `operator` (not `admin`).
    pub role: String,
    /// How long it lasts, 1..=2592000 seconds (30 days).
    #[serde(deserialize_with = "whole")]
    pub valid_for_secs: i64,
    /// A label (who it is for, the ticket). Default is `support`. Absent, not null.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "not_null"
    )]
    #[schemars(with = "String")]
    pub name: Option<String>,
}

/// `POST /v1/support-grants` answered: the token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CreatedSupportGrant {
    /// Public id (revoke by it).
    pub id: String,
    /// Label.
    pub name: String,
    /// `viewer` or `operator`.
    pub role: String,
    /// `fleet:<name>` or `device:<uuid>`.
    pub scope: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The bearer token.
    pub token: String,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries before this sequence number.
    pub before: Option<i64>,
    /// How many, 1..=1000. Default is 100.
    pub limit: Option<i64>,
    /// Only this actor (`user:ann`, `token:<id>`, `cli:root`).
    pub actor: Option<String>,
    /// Only this action; one ending in `.` is a prefix (`support.`).
    pub action: Option<String>,
    /// Only this target (a device uuid, a fleet name, a token id).
    pub target: Option<String>,
}

/// One audit-log entry.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    /// Sequence number.
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    /// `token:<id>`, or who acted offline.
    pub actor: String,
    /// `device.update`, `fleet.create`, ...
    pub action: String,
    /// What it acted on.
    pub target: String,
    /// Details, as JSON.
    pub detail: Value,
}

// ---------------------------------------------------------------------------------------
// Releases

/// `POST /v1/fleets/{name}/releases`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRelease {
    /// The compose file's text.
    pub compose: String,
}

/// A release of a fleet.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Release {
    /// Release id.
    pub id: String,
    /// Its fleet.
    pub fleet: String,
    /// Its number within the fleet.
    pub seq: i64,
    /// Content hash of the compose file.
    pub hash: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The audit actor that published it.
    pub created_by: String,
    /// Only in `GET /v1/releases/{id}`: the compose file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub compose: Option<String>,
    /// Only from `POST`: false when the same content existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "bool")]
    pub created: Option<bool>,
    /// Only from `POST`: its services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<String>")]
    pub services: Option<Vec<String>>,
}

/// `GET /v1/fleets/{name}/releases`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseList {
    /// The fleet.
    pub fleet: String,
    /// The release it is pinned to, if any.
    pub pinned_release: Option<String>,
    /// Its releases.
    pub releases: Vec<Release>,
}

/// `PUT .../pin`: a release id, or null to follow the fleet (device) / its newest release
/// (fleet).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// Release id.
    pub release: Option<String>,
}

/// `PUT /v1/fleets/{name}/pin`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FleetPin {
    /// The fleet.
    pub fleet: String,
    /// The pin; null tracks the newest release.
    pub pinned_release: Option<String>,
}

/// `PUT /v1/devices/{uuid}/pin`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DevicePin {
    /// Device uuid.
    pub uuid: String,
    /// The pin; null follows the fleet.
    pub pinned_release: Option<String>,
}

/// Where a device's target release comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetSource {
    /// The device is pinned to a release.
    DevicePin,
    /// Its fleet is pinned to a release.
    FleetPin,
    /// Its fleet's newest release.
    FleetLatest,
}

/// `GET /v1/devices/{uuid}/target`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeviceTarget {
    /// Why this release.
    pub source: TargetSource,
    /// What the device should run.
    #[schemars(with = "Map<String, Value>")]
    pub target: protocol::release::TargetState,
}

/// `GET /v1/devices/{uuid}/state`: what the device last reported beside what it should
/// run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeviceState {
    /// Device uuid.
    pub uuid: String,
    /// A tunnel is up right now.
    pub online: bool,
    /// The release it should run.
    pub target_release: Option<String>,
    /// Why that release.
    pub target_source: Option<TargetSource>,
    /// The device's last report, as it sent it (see [`DeviceState::update`]).
    pub reported: Option<Value>,
}

impl DeviceState {
    /// The update progress in the device's report (`reported.reconciler`), read leniently:
    /// the report is the agent's, and an older agent may lack fields.
    pub fn update(&self) -> ReportedUpdate {
        self.reported
            .as_ref()
            .and_then(|r| r.get("reconciler"))
            .and_then(|r| ReportedUpdate::deserialize(r).ok())
            .unwrap_or_default()
    }
}

/// The part of a device's report that says how its update goes: the agent's reconciler
/// status, as far as the gateway's commands read it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportedUpdate {
    /// `idle`, `downloading`, `updating`, `waiting_for_lock`, `rolling_back`, `failed`.
    pub update_status: Option<String>,
    /// The release running now.
    pub release: Option<String>,
    /// Why the last update failed or waits.
    pub error: Option<String>,
    /// Overall download percent.
    pub overall_progress: Option<u64>,
    /// Per service.
    pub services: Vec<ReportedService>,
}

/// One service in [`ReportedUpdate`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportedService {
    /// Service name.
    pub name: Option<String>,
    /// `Downloading`, `Running`, ...
    pub status: Option<String>,
    /// Image download percent.
    pub download_progress: Option<u64>,
    /// `starting`, `healthy` or `unhealthy`.
    pub health: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Logs

/// Query of every `/v1/devices/{uuid}/logs...` endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Lines at or after: unix milliseconds, or a duration ago (`90s`, `1h`, `7d`).
    pub since: Option<String>,
    /// Lines before: unix milliseconds, or a duration ago.
    pub until: Option<String>,
    /// Only this service (empty: only the agent's own lines).
    pub service: Option<String>,
    /// Only stderr (`true`) or only stdout (`false`).
    pub stderr: Option<bool>,
    /// Only system lines (`true`) or only service output (`false`).
    pub system: Option<bool>,
    /// Only lines containing this text (ASCII case-insensitive).
    pub q: Option<String>,
    /// Only lines with an id above this (paging, resuming a tail).
    pub after: Option<i64>,
    /// The newest N lines (a tail) instead of the oldest.
    pub tail: Option<i64>,
    /// Page size, 1..=10000. Default is 1000.
    pub limit: Option<i64>,
}

/// A stored log line: balena's field names (`timestamp`, `isStdErr`, ...) plus the
/// gateway's `id` (its order across all lines) and the device. Also each NDJSON line of
/// an export and each live-tail event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// Gateway-wide, increasing id.
    pub id: i64,
    /// Device uuid.
    pub device: String,
    /// Per-device sequence number.
    pub seq: u64,
    /// Unix milliseconds, when the device produced it.
    pub timestamp: i64,
    /// The text.
    pub message: String,
    /// From stderr (or an agent warning).
    #[serde(default)]
    pub is_std_err: bool,
    /// Written by the agent itself.
    #[serde(default)]
    pub is_system: bool,
    /// The service that printed it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub service_name: Option<String>,
    /// balena's numeric service id, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u32")]
    pub service_id: Option<u32>,
}

/// `GET /v1/devices/{uuid}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct LogPage {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Pass as `after` for the next page; null on the last.
    pub next_after: Option<i64>,
}

// ---------------------------------------------------------------------------------------
// Terminal

/// Query of `GET /v1/devices/{uuid}/terminal` (a WebSocket).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalQuery {
    /// A shell in this service's container instead of the host.
    pub service: Option<String>,
    /// Columns. Default is 80.
    pub cols: Option<u16>,
    /// Rows. Default is 24.
    pub rows: Option<u16>,
    /// `TERM` for the shell.
    pub term: Option<String>,
    /// A token for browsers, which cannot set `Authorization` on a WebSocket.
    pub token: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Access to public URLs

/// `PUT /v1/devices/{uuid}/access` and `PUT /v1/fleets/{name}/access`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessSettings {
    /// `public`, `basic`, `link` or `login`; for a device also `inherit` (follow its fleet
    /// again).
    pub mode: String,
    /// `basic`: the user name (no `:`).
    #[serde(default)]
    pub user: Option<String>,
    /// `basic`: the password, stored hashed and never shown.
    #[serde(default)]
    pub password: Option<String>,
    /// Client addresses allowed (`10.0.0.0/8`, `2001:db8::/32`, `::1`), checked before
    /// the mode; empty: any address.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// The access setting of a device's public URL (the one in force) or of a fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Access {
    /// `public`, `basic`, `link` or `login`.
    pub mode: String,
    /// Where it comes from: `device` (its own), `fleet` (its fleet's default) or
    /// `default` (nobody set one: public).
    pub source: String,
    /// The fleet whose default it is, when `source` is `fleet`.
    pub fleet: Option<String>,
    /// `basic`'s user name (the password is never shown).
    pub user: Option<String>,
    /// Allowed client addresses; empty: any.
    pub allow: Vec<String>,
}

/// `POST /v1/devices/{uuid}/share-links`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewShareLink {
    /// How long the link (and the cookie it leaves) is valid, in seconds: 1 to 31536000.
    #[serde(deserialize_with = "whole_seconds")]
    pub for_secs: i64,
}

/// A required integer that may be written as a whole float, as [`whole_number`].
fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    whole_number(d)?.ok_or_else(|| serde::de::Error::custom("expected an integer, got null"))
}

/// From `POST /v1/devices/{uuid}/share-links`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ShareLink {
    /// `http://<uuid>.<domain>/?gw_share=<token>`.
    pub url: String,
    /// Unix seconds.
    pub expires_at: i64,
}

// ---------------------------------------------------------------------------------------
// Field helpers

/// A field that is present is `Some`, even when `null` (with `#[serde(default)]` for
/// absent): `Some(None)` is "set to nothing", `None` is "leave alone".
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// An optional string that, when present, is a string: `null` is refused (the document
/// says "absent", not "nullable").
fn not_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// An integer, also written as a whole float (`5.0`), as [`whole_number`]; never null.
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    whole_number(d)?.ok_or_else(|| serde::de::Error::custom("expected an integer, got null"))
}

/// An optional integer that may also be written as a whole float (`5.0`): JSON Schema, and
/// so the OpenAPI document, counts those as integers. `5.5` is still an error.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_i64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(f))
                .map(|f| f as i64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("expected an integer, got {n}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_tells_null_from_absent() {
        let p: DevicePatch = serde_json::from_str(r#"{"fleet": null}"#).unwrap();
        assert_eq!(p.fleet, Some(None));
        let p: DevicePatch = serde_json::from_str("{}").unwrap();
        assert_eq!(p.fleet, None);
        assert_eq!(serde_json::to_string(&p).unwrap(), "{}");
        let p = DevicePatch {
            fleet: Some(None),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"fleet":null}"#);
    }

    #[test]
    fn a_support_grant_refuses_null_and_takes_whole_floats() {
        let g: NewSupportGrant =
            serde_json::from_str(r#"{"fleet": "f", "role": "viewer", "valid_for_secs": 60.0}"#)
                .unwrap();
        assert_eq!(
            (g.fleet.as_deref(), g.device, g.valid_for_secs),
            (Some("f"), None, 60)
        );
        for bad in [
            r#"{"fleet": "f", "device": null, "role": "viewer", "valid_for_secs": 60}"#,
            r#"{"fleet": "f", "role": "viewer", "valid_for_secs": null}"#,
            r#"{"fleet": "f", "role": "viewer", "valid_for_secs": 1.5}"#,
            r#"{"fleet": "f", "name": null, "role": "viewer", "valid_for_secs": 60}"#,
        ] {
            assert!(
                serde_json::from_str::<NewSupportGrant>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn whole_floats_count_as_integers() {
        let k: NewKey = serde_json::from_str(r#"{"max_uses": 5.0}"#).unwrap();
        assert_eq!(k.max_uses, Some(5));
        assert!(serde_json::from_str::<NewKey>(r#"{"max_uses": 5.5}"#).is_err());
    }

    #[test]
    fn optional_fields_are_null_or_absent_as_documented() {
        let line = LogLine {
            id: 1,
            device: "d".into(),
            seq: 2,
            timestamp: 3,
            message: "m".into(),
            is_std_err: false,
            is_system: true,
            service_name: None,
            service_id: None,
        };
        assert_eq!(
            serde_json::to_value(&line).unwrap(),
            serde_json::json!({"id": 1, "device": "d", "seq": 2, "timestamp": 3, "message": "m",
                "isStdErr": false, "isSystem": true})
        );
        let page = LogPage {
            lines: vec![],
            next_after: None,
        };
        assert_eq!(
            serde_json::to_string(&page).unwrap(),
            r#"{"lines":[],"next_after":null}"#
        );
    }
}
