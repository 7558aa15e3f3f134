//! The local API's view of the device: [`DeviceControl`] (what it may ask the agent
//! to do) and [`DeviceInfo`] (what it reads) for [`Device`].

use super::host_config::{check_proxy, is_label, write_file, write_keeping_mode};
use super::*;

impl DeviceControl for Device {
    fn blink(&self) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            info!("blink requested");
            let Some(led) = self.hooks.led.clone() else {
                return Ok(());
            };
            let until = self.hooks.blink_for;
            // Blink in the background, as balena does: the request returns at once.
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let mut on = true;
                while start.elapsed() < until {
                    let _ = tokio::fs::write(&led, if on { "1" } else { "0" }).await;
                    on = !on;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let _ = tokio::fs::write(&led, "0").await;
            });
            // The first write happens now so a caller can observe it.
            std::fs::write(self.hooks.led.as_ref().expect("checked"), "1")
                .map_err(|e| ControlError::Internal(format!("LED: {e}")))
        })
    }

    fn reboot(&self, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_all_locks(force)?;
            warn!("rebooting on request");
            Self::run_command(&self.hooks.reboot, "reboot").await
        })
    }

    fn shutdown(&self, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_all_locks(force)?;
            warn!("shutting down on request");
            Self::run_command(&self.hooks.shutdown, "shutdown").await
        })
    }

    fn update(&self, force: bool) -> ControlFuture<'_, ()> {
        // Applies the current target again (with `force`, past update locks and a failed
        // release); the gateway pushes new targets by itself.
        Box::pin(async move {
            let Some(r) = self.reconciler.get() else {
                return Ok(());
            };
            if let Some(t) = r.target().await {
                r.set_target(t, force).await.map_err(rec_err)?;
            }
            Ok(())
        })
    }

    fn restart_app(&self, app_id: u32, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_locks(app_id, force)?;
            let r = self.app_reconciler(app_id)?;
            r.restart_app(force).await.map_err(rec_err)
        })
    }

    fn stop_app(&self, app_id: u32, force: bool) -> ControlFuture<'_, String> {
        Box::pin(async move {
            self.check_locks(app_id, force)?;
            let r = self.app_reconciler(app_id)?;
            r.stop_app(force).await.map_err(rec_err)?;
            Ok(first_container(r))
        })
    }

    fn start_app(&self, app_id: u32) -> ControlFuture<'_, String> {
        Box::pin(async move {
            let r = self.app_reconciler(app_id)?;
            r.start_app().await.map_err(rec_err)?;
            Ok(first_container(r))
        })
    }

    fn purge(&self, app_id: u32, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_locks(app_id, force)?;
            let r = self.app_reconciler(app_id)?;
            r.purge(force).await.map_err(rec_err)
        })
    }

    fn restart_service(
        &self,
        app_id: u32,
        service: ServiceRef,
        force: bool,
    ) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_locks(app_id, force)?;
            let r = self.app_reconciler(app_id)?;
            let name = Self::service_name(r, service).await?;
            r.restart_service(&name, force).await.map_err(rec_err)
        })
    }

    fn stop_service(&self, app_id: u32, service: ServiceRef, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            self.check_locks(app_id, force)?;
            let r = self.app_reconciler(app_id)?;
            let name = Self::service_name(r, service).await?;
            r.stop_service(&name, force).await.map_err(rec_err)
        })
    }

    fn start_service(&self, app_id: u32, service: ServiceRef) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            let r = self.app_reconciler(app_id)?;
            let name = Self::service_name(r, service).await?;
            r.start_service(&name).await.map_err(rec_err)
        })
    }

    fn regenerate_api_key(&self) -> ControlFuture<'_, String> {
        Box::pin(async move {
            let key = crate::provision::new_api_key();
            crate::provision::set_api_key(&self.data_dir, &key)
                .map_err(|e| ControlError::Internal(e.to_string()))?;
            *self.api_key.write().expect("api key lock") = key.clone();
            info!("local API key regenerated");
            Ok(key)
        })
    }

    fn host_config(&self) -> ControlFuture<'_, Value> {
        Box::pin(async move {
            let hostname = std::fs::read_to_string(&self.hooks.hostname_file)
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            let proxy = std::fs::read_to_string(&self.hooks.proxy_file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .unwrap_or_else(|| json!({}));
            Ok(json!({"network": {"hostname": hostname, "proxy": proxy}}))
        })
    }

    fn patch_host_config(&self, patch: Value, force: bool) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            let network = patch
                .get("network")
                .and_then(Value::as_object)
                .ok_or_else(|| ControlError::BadRequest("expected {\"network\": {...}}".into()))?;
            // Every value is checked before anything is written or a lock consulted, so a
            // bad patch changes nothing and says which field is wrong.
            let hostname = match network.get("hostname") {
                None => None,
                Some(h) => Some(h.as_str().filter(|h| is_label(h)).ok_or_else(|| {
                    ControlError::BadRequest(format!(
                        "network.hostname must be an RFC 1123 label (1-63 letters, digits or dashes, not starting or ending with a dash), got {h}"
                    ))
                })?),
            };
            let proxy = network.get("proxy");
            if let Some(p) = proxy {
                check_proxy(p)?;
            }
            self.check_all_locks(force)?;
            if let Some(h) = hostname {
                write_keeping_mode(&self.hooks.hostname_file, &format!("{h}\n"))?;
            }
            if let Some(p) = proxy {
                // Private: it may hold the proxy password.
                write_file(&self.hooks.proxy_file, &p.to_string())?;
            }
            info!("host config patched");
            Ok(())
        })
    }

    fn apps_state(&self) -> ControlFuture<'_, Value> {
        Box::pin(async move {
            let Some(r) = self.reconciler.get() else {
                return Ok(json!({}));
            };
            let st = r.status().borrow().clone();
            let Some(t) = r.target().await else {
                return Ok(json!({}));
            };
            // balena's shape: { appName: { appId, commit, services: { name: {...} } } }
            let mut services = serde_json::Map::new();
            for s in &st.services {
                services.insert(
                    s.name.clone(),
                    json!({
                        "status": s.status,
                        "releaseId": s.release,
                        "downloadProgress": s.download_progress,
                        "serviceId": s.service_id,
                        "containerId": s.container_id,
                        "image": s.image,
                        "health": s.health,
                        "exitCode": s.exit_code,
                    }),
                );
            }
            Ok(json!({ t.app_name.clone(): {
                "appId": t.app_id,
                "commit": st.release,
                "targetCommit": st.target_release,
                "updateStatus": st.update_status,
                "error": st.error,
                "services": services,
            }}))
        })
    }

    fn app(&self, app_id: u32) -> ControlFuture<'_, Option<Value>> {
        Box::pin(async move {
            let Ok(r) = self.app_reconciler(app_id) else {
                return Ok(None);
            };
            let st = r.status().borrow().clone();
            let target = r.target().await;
            // balena's v1 shape describes the app's (first) service.
            let first = st.services.first();
            Ok(Some(json!({
                "appId": app_id,
                "commit": st.release,
                "releaseId": st.release,
                "serviceName": first.map(|s| s.name.clone()),
                "containerId": first.and_then(|s| s.container_id.clone()),
                "imageId": first.map(|s| s.image.clone()),
                "env": target
                    .as_ref()
                    .and_then(|t| first.and_then(|f| t.services.get(&f.name)))
                    .map(|s| json!(s.environment))
                    .unwrap_or(json!({})),
            })))
        })
    }

    fn state_status(&self) -> ControlFuture<'_, crate::local_api::StateStatus> {
        Box::pin(async move {
            let Some(r) = self.reconciler.get() else {
                return Ok(Default::default());
            };
            let st = r.status().borrow().clone();
            let app_id = st.app_id;
            Ok(crate::local_api::StateStatus {
                containers: st
                    .services
                    .iter()
                    .map(|s| {
                        json!({
                            "status": s.status,
                            "serviceName": s.name,
                            "appId": app_id,
                            "imageId": s.image,
                            "serviceId": s.service_id,
                            "containerId": s.container_id,
                            "releaseId": s.release,
                        })
                    })
                    .collect(),
                images: st
                    .images
                    .iter()
                    .map(|i| {
                        json!({
                            "name": i.image,
                            "appId": app_id,
                            "status": i.status,
                            "downloadProgress": i.download_progress,
                        })
                    })
                    .collect(),
            })
        })
    }

    fn set_local_target(&self, target: Value) -> ControlFuture<'_, ()> {
        Box::pin(async move {
            let Some(r) = self.reconciler.get() else {
                return Err(ControlError::BadRequest(
                    "this agent runs no reconciler (no container engine)".into(),
                ));
            };
            let t: protocol::release::TargetState = serde_json::from_value(target)
                .map_err(|e| ControlError::BadRequest(format!("invalid target state: {e}")))?;
            r.set_pinned_target(t, false).await.map_err(rec_err)
        })
    }
}

impl DeviceInfo for Device {
    fn uuid(&self) -> String {
        self.uuid.clone()
    }

    fn name(&self) -> String {
        self.uuid[..7].to_string()
    }

    fn api_port(&self) -> u16 {
        48484
    }

    fn os_version(&self) -> String {
        std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "unknown".into())
    }

    fn supervisor_version(&self) -> String {
        crate::VERSION.to_string()
    }

    fn ip_addresses(&self) -> Vec<String> {
        self.ip_addresses.read().expect("ip lock").clone()
    }

    fn status(&self) -> String {
        use crate::reconciler::UpdateStatus as U;
        match self
            .reconciler
            .get()
            .map(|r| r.status().borrow().update_status)
        {
            Some(U::Downloading) => "Downloading".into(),
            Some(U::Updating | U::RollingBack) => "Installing".into(),
            Some(U::WaitingForLock) => "Waiting for update lock".into(),
            Some(U::Failed) => "Update failed".into(),
            Some(U::Idle) | None => "Idle".into(),
        }
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn tags(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn commit(&self) -> Option<String> {
        self.reconciler
            .get()
            .and_then(|r| r.status().borrow().release.clone())
    }

    fn update_status(&self) -> crate::local_api::UpdateStatus {
        use crate::reconciler::UpdateStatus as U;
        let Some(r) = self.reconciler.get() else {
            return Default::default();
        };
        let st = r.status().borrow().clone();
        let pending = st.target_release.is_some() && st.target_release != st.release;
        crate::local_api::UpdateStatus {
            pending,
            downloaded: pending && st.update_status != U::Downloading,
            failed: st.update_status == U::Failed,
            applying: matches!(
                st.update_status,
                U::Downloading | U::Updating | U::RollingBack | U::WaitingForLock
            ),
            download_progress: st.overall_progress,
        }
    }
}
