//! Operator commands for releases and device update progress: `gateway release ...`,
//! `gateway fleet pin`, `gateway device pin`, `gateway device show --watch`.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http::Method;
use protocol::DeviceUuid;
use serde_json::{json, Value};

use crate::client::ApiClient;

/// `gateway release create --fleet F FILE`.
pub async fn create(client: &ApiClient, fleet: &str, file: &Path) -> anyhow::Result<()> {
    let compose =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // Validate here too, so the operator sees the file name with the line and key.
    if let Err(e) = compose::parse_compose(&compose) {
        anyhow::bail!("{}: {e}", file.display());
    }
    let v = client
        .call(
            Method::POST,
            &format!("/v1/fleets/{fleet}/releases"),
            Some(json!({ "compose": compose })),
        )
        .await?;
    let services = v["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if v["created"] == true {
        println!(
            "release {} (#{} of fleet {fleet}) created: {services}",
            v["id"].as_str().unwrap_or("?"),
            v["seq"]
        );
    } else {
        println!(
            "release {} (#{} of fleet {fleet}) already has this content; nothing changed",
            v["id"].as_str().unwrap_or("?"),
            v["seq"]
        );
    }
    Ok(())
}

/// `gateway release list --fleet F`.
pub async fn list(client: &ApiClient, fleet: &str) -> anyhow::Result<()> {
    let v = client
        .call(Method::GET, &format!("/v1/fleets/{fleet}/releases"), None)
        .await?;
    let pinned = v["pinned_release"].as_str();
    println!(
        "{:<14} {:>4}  {:<20}  {:<10}  NOTE",
        "RELEASE", "#", "CREATED BY", "HASH"
    );
    for (i, r) in v["releases"].as_array().into_iter().flatten().enumerate() {
        let id = r["id"].as_str().unwrap_or("?");
        let mut note = Vec::new();
        if i == 0 {
            note.push("latest");
        }
        if Some(id) == pinned {
            note.push("pinned");
        }
        println!(
            "{id:<14} {:>4}  {:<20}  {:<10}  {}",
            r["seq"],
            r["created_by"].as_str().unwrap_or("?"),
            &r["hash"].as_str().unwrap_or("?")[..10.min(r["hash"].as_str().unwrap_or("?").len())],
            note.join(", ")
        );
    }
    Ok(())
}

/// `gateway fleet pin F [RELEASE]` / `gateway device pin UUID [RELEASE]`.
pub async fn pin(client: &ApiClient, path: &str, release: Option<&str>) -> anyhow::Result<()> {
    client
        .call(Method::PUT, path, Some(json!({ "release": release })))
        .await?;
    Ok(())
}

/// `gateway device show UUID --watch`: the device's update progress, redrawn until the
/// device runs its target (or forever with `forever`).
pub async fn watch(client: &ApiClient, uuid: DeviceUuid, forever: bool) -> anyhow::Result<()> {
    let mut drawn = 0usize;
    loop {
        let v = client
            .call(Method::GET, &format!("/v1/devices/{uuid}/state"), None)
            .await?;
        let text = render_state(&v);
        // Redraw in place.
        let mut out = std::io::stdout().lock();
        if drawn > 0 {
            write!(out, "\x1b[{drawn}A\x1b[J")?;
        }
        write!(out, "{text}")?;
        out.flush()?;
        drawn = text.lines().count();
        let r = &v["reported"]["reconciler"];
        let done = v["target_release"].is_string()
            && r["release"] == v["target_release"]
            && r["update_status"] == "idle";
        let failed = r["update_status"] == "failed";
        if !forever && (done || failed) {
            if failed {
                anyhow::bail!(
                    "update failed: {}",
                    r["error"].as_str().unwrap_or("no reason given")
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn bar(pct: u64) -> String {
    let filled = (pct.min(100) * 20 / 100) as usize;
    format!(
        "[{}{}] {pct:>3}%",
        "#".repeat(filled),
        ".".repeat(20 - filled)
    )
}

/// The device's update state as text (also used by tests).
pub fn render_state(v: &Value) -> String {
    let mut s = String::new();
    let r = &v["reported"]["reconciler"];
    let online = if v["online"] == true {
        "online"
    } else {
        "offline"
    };
    s.push_str(&format!(
        "device {}  {online}\nrelease {} -> target {}  ({})\n",
        v["uuid"].as_str().unwrap_or("?"),
        r["release"].as_str().unwrap_or("none"),
        v["target_release"].as_str().unwrap_or("none"),
        r["update_status"].as_str().unwrap_or("unknown"),
    ));
    if let Some(p) = r["overall_progress"].as_u64() {
        s.push_str(&format!("download {}\n", bar(p)));
    }
    for svc in r["services"].as_array().into_iter().flatten() {
        let progress = svc["download_progress"]
            .as_u64()
            .map(bar)
            .unwrap_or_default();
        let health = svc["health"]
            .as_str()
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        s.push_str(&format!(
            "  {:<16} {:<12}{health} {progress}\n",
            svc["name"].as_str().unwrap_or("?"),
            svc["status"].as_str().unwrap_or("?"),
        ));
    }
    if let Some(e) = r["error"].as_str() {
        s.push_str(&format!("  ! {e}\n"));
    }
    s
}
