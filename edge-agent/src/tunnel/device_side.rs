//! What the tunnel hands to the device: gateway targets to the reconciler, actions to
//! the [`Device`], and the state report the gateway shows.

use super::*;

impl Agent {
    /// Hands a target state from the gateway to the reconciler (or keeps it for when the
    /// reconciler starts). A target pinned on the device (preload, local mode) wins.
    pub(super) async fn apply_gateway_target(&self, target: serde_json::Value) {
        let target: protocol::release::TargetState = match serde_json::from_value(target) {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "ignoring a malformed target state from the gateway");
                return;
            }
        };
        info!(release = %target.release, "target state received");
        *self.gateway_target.lock().expect("target lock") = Some(target.clone());
        let Some(r) = self.device.as_ref().and_then(|(d, _)| d.reconciler()) else {
            return;
        };
        if r.pinned().await {
            warn!(release = %target.release, "this device runs a locally pinned release; ignoring the gateway's target (edge-agent unpin)");
            return;
        }
        if let Err(e) = r.set_target(target, false).await {
            warn!(error = %e, "cannot apply the target state");
        }
    }

    /// Records an agent event in the device's logs (when logs are collected).
    pub(super) fn log_event(&self, message: String) {
        if let Some(logs) = &self.opts.logs {
            logs.sink().system(message);
        }
    }

    pub(super) fn state_report(&self, gateway: SocketAddr) -> serde_json::Value {
        use crate::local_api::DeviceInfo;
        // The address this device uses to reach the gateway (no packet is sent).
        let local_ip = std::net::UdpSocket::bind(if gateway.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        })
        .and_then(|s| s.connect(gateway).and_then(|_| s.local_addr()))
        .map(|a| vec![a.ip().to_string()])
        .unwrap_or_default();
        let os_version = self
            .device
            .as_ref()
            .map(|(d, _)| {
                d.set_ip_addresses(local_ip.clone());
                d.os_version()
            })
            .unwrap_or_default();
        serde_json::json!({
            "agent_version": crate::VERSION,
            "os_version": os_version,
            "ip_addresses": local_ip,
            "status": "Idle",
            "local_api": self.opts.local_api.map(|a| a.to_string()),
        })
    }
}

/// Runs one action exactly once (per the persisted log) and reports its result.
pub(super) async fn run_action(
    device: Option<(Arc<Device>, Arc<ActionLog>)>,
    id: String,
    name: String,
    params: serde_json::Value,
    results: tokio::sync::mpsc::UnboundedSender<ControlMessage>,
    logs: &crate::logs::LogSink,
) {
    let reply = |ok: bool, detail: serde_json::Value| {
        if ok {
            logs.system(format!("Action {name} done"));
        } else {
            logs.warning(format!("Action {name} failed: {detail}"));
        }
        ControlMessage::ActionResult {
            id: id.clone(),
            ok,
            detail,
        }
    };
    logs.system(format!("Action {name} received"));
    let Some((device, log)) = device else {
        let _ = results.send(reply(
            false,
            "this agent runs without a data dir; actions need one".into(),
        ));
        return;
    };
    let result = match log.lookup(&id) {
        // Delivered again (a reconnect before the gateway saw the result): never re-run.
        Some(Some((ok, detail))) => reply(ok, detail),
        Some(None) => reply(
            true,
            "already executed; the agent restarted before recording its result".into(),
        ),
        None => {
            info!(action = %name, %id, "running action");
            // Recorded before it runs: a reboot in the middle must not run it again.
            if let Err(e) = log.record(&id, None) {
                let _ = results.send(reply(false, format!("cannot record action: {e}").into()));
                return;
            }
            let (ok, detail) = match device.run_action(&name, &params).await {
                Ok(v) => (true, v),
                Err(e) => {
                    let reason = e.to_string();
                    warn!(action = %name, %id, %reason, "action failed");
                    (false, serde_json::Value::String(reason))
                }
            };
            if let Err(e) = log.record(&id, Some((ok, detail.clone()))) {
                warn!(error = %e, "cannot record action result");
            }
            reply(ok, detail)
        }
    };
    let _ = results.send(result);
}

/// Starts the reconciler, retrying while the engine is unreachable, then applies the
/// newest gateway target it missed.
pub(super) async fn start_reconciler(
    cfg: crate::reconciler::ReconcilerConfig,
    device: Arc<Device>,
    logs: crate::logs::LogSink,
    gateway_target: Arc<std::sync::Mutex<Option<protocol::release::TargetState>>>,
    shutdown: CancellationToken,
) {
    let mut warned = false;
    let r = loop {
        match crate::reconciler::Reconciler::start_with_shutdown(
            cfg.clone(),
            logs.clone(),
            shutdown.clone(),
        )
        .await
        {
            Ok(r) => break r,
            Err(e) => {
                if !warned {
                    warn!(engine = %cfg.engine_socket, error = %e, "container engine unreachable; containers are managed once it answers");
                    warned = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    info!(engine = %cfg.engine_socket, "reconciler running");
    device.set_reconciler(r.clone());
    let missed = gateway_target.lock().expect("target lock").clone();
    if let Some(t) = missed {
        if !r.pinned().await {
            if let Err(e) = r.set_target(t, false).await {
                warn!(error = %e, "cannot apply the target state");
            }
        }
    }
}
