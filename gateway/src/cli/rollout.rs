//! Operator commands for releases and device update progress: `gateway release ...`,
//! `gateway fleet pin`, `gateway device pin`, `gateway device show --watch`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http::Method;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use protocol::DeviceUuid;

use crate::api::types::{DeviceState, NewRelease, Pin, Release, ReleaseList};
use crate::client::ApiClient;

use super::output::Table;

/// `gateway release create --fleet F FILE`.
pub(super) async fn create(client: &ApiClient, fleet: &str, file: &Path) -> anyhow::Result<()> {
    let compose =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // Validate here too, so the operator sees the file name with the line and key.
    if let Err(e) = compose::parse_compose(&compose) {
        anyhow::bail!("{}: {e}", file.display());
    }
    let r: Release = client
        .send_json(
            Method::POST,
            &format!("/v1/fleets/{fleet}/releases"),
            &NewRelease { compose },
        )
        .await?;
    let services = r.services.unwrap_or_default().join(", ");
    if r.created == Some(true) {
        println!(
            "release {} (#{} of fleet {fleet}) created: {services}",
            r.id, r.seq
        );
    } else {
        println!(
            "release {} (#{} of fleet {fleet}) already has this content; nothing changed",
            r.id, r.seq
        );
    }
    Ok(())
}

/// `gateway release list --fleet F`.
pub(super) async fn list(client: &ApiClient, fleet: &str) -> anyhow::Result<()> {
    let list: ReleaseList = client.get(&format!("/v1/fleets/{fleet}/releases")).await?;
    let pinned = list.pinned_release.as_deref();
    let mut t = Table::new(["RELEASE", "#", "CREATED BY", "HASH", "NOTE"]);
    t.right(1);
    for (i, r) in list.releases.iter().enumerate() {
        let mut note = Vec::new();
        if i == 0 {
            note.push("latest");
        }
        if Some(r.id.as_str()) == pinned {
            note.push("pinned");
        }
        t.row([
            r.id.clone(),
            r.seq.to_string(),
            r.created_by.clone(),
            r.hash.get(..10).unwrap_or(&r.hash).to_string(),
            note.join(", "),
        ]);
    }
    t.print();
    Ok(())
}

/// `gateway fleet pin F [RELEASE]` / `gateway device pin UUID [RELEASE]`.
pub(super) async fn pin(
    client: &ApiClient,
    path: &str,
    release: Option<&str>,
) -> anyhow::Result<()> {
    let pin = Pin {
        release: release.map(str::to_string),
    };
    // The answer (FleetPin or DevicePin) says only what was asked.
    let _: serde::de::IgnoredAny = client.send_json(Method::PUT, path, &pin).await?;
    Ok(())
}

/// `gateway device show UUID --watch`: the device's update progress, redrawn until the
/// device runs its target (or forever with `forever`).
pub(super) async fn watch(
    client: &ApiClient,
    uuid: DeviceUuid,
    forever: bool,
) -> anyhow::Result<()> {
    // On a terminal the block is redrawn in place (indicatif); into a pipe or a file each
    // state that differs from the last is printed once, plain text, no escapes.
    let live = std::io::stdout().is_terminal().then(|| {
        let view = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        view.set_style(ProgressStyle::with_template("{msg}").expect("a valid template"));
        view
    });
    let mut last = String::new();
    loop {
        let v: DeviceState = client.get(&format!("/v1/devices/{uuid}/state")).await?;
        let text = render_state(&v);
        match &live {
            Some(view) => view.set_message(text.trim_end().to_string()),
            None if text != last => {
                let mut out = std::io::stdout().lock();
                write!(out, "{text}")?;
                out.flush()?;
            }
            None => {}
        }
        last = text;
        let r = v.update();
        let status = r.update_status.as_deref();
        let done =
            v.target_release.is_some() && r.release == v.target_release && status == Some("idle");
        let failed = status == Some("failed");
        if !forever && (done || failed) {
            if let Some(view) = &live {
                // Leaves the last state on the screen.
                view.finish();
            }
            if failed {
                anyhow::bail!(
                    "update failed: {}",
                    r.error.as_deref().unwrap_or("no reason given")
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
pub(super) fn render_state(v: &DeviceState) -> String {
    let mut s = String::new();
    let r = v.update();
    let online = if v.online { "online" } else { "offline" };
    s.push_str(&format!(
        "device {}  {online}\nrelease {} -> target {}  ({})\n",
        v.uuid,
        r.release.as_deref().unwrap_or("none"),
        v.target_release.as_deref().unwrap_or("none"),
        r.update_status.as_deref().unwrap_or("unknown"),
    ));
    if let Some(p) = r.overall_progress {
        s.push_str(&format!("download {}\n", bar(p)));
    }
    for svc in &r.services {
        let progress = svc.download_progress.map(bar).unwrap_or_default();
        let health = svc
            .health
            .as_deref()
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        s.push_str(&format!(
            "  {:<16} {:<12}{health} {progress}\n",
            svc.name.as_deref().unwrap_or("?"),
            svc.status.as_deref().unwrap_or("?"),
        ));
    }
    if let Some(e) = &r.error {
        s.push_str(&format!("  ! {e}\n"));
    }
    s
}
