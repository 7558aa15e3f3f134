//! How containers, images, volumes and networks are made: the one place that speaks
//! bollard. Why they are made is decided by the reconciler's planner (`plan.rs`), and
//! its steps are walked in `apply.rs`.
//!
//! Every object we create carries `io.edge.managed=1` and `io.edge.app-id`; containers
//! also carry the service name, service id, release and config hash, and get a
//! deterministic name (`<service>_<app_id>_<hash12>`) so a step repeated after a crash
//! finds its container instead of making a second one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, DeviceMapping, EndpointSettings, HealthConfig,
    HealthStatusEnum, HostConfig, NetworkCreateRequest, NetworkingConfig, PortBinding,
    RestartPolicy as DockerRestart, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
pub use bundle::engine::{connect, default_socket, has_image, is_not_found};
use futures_util::StreamExt;
use protocol::release::{NetworkSpec, RestartPolicy, ServiceSpec, TargetState};

/// Label every object we manage carries (`"1"`).
pub const LABEL_MANAGED: &str = "io.edge.managed";
/// Label: numeric app id.
pub const LABEL_APP_ID: &str = "io.edge.app-id";
/// Label: service name.
pub const LABEL_SERVICE_NAME: &str = "io.edge.service-name";
/// Label: numeric service id.
pub const LABEL_SERVICE_ID: &str = "io.edge.service-id";
/// Label: release the container was created for.
pub const LABEL_RELEASE: &str = "io.edge.release";
/// Label: [`ServiceSpec::config_hash`] of the spec the container was created from.
pub const LABEL_CONFIG_HASH: &str = "io.edge.config-hash";
/// Per-service stop grace period override, in seconds.
pub const LABEL_STOP_GRACE: &str = "io.edge.stop-grace-period";

/// One of our containers, as the engine sees it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Container id.
    pub id: String,
    /// Container name without the leading `/`.
    pub name: String,
    /// App id label.
    pub app_id: u32,
    /// Service name label.
    pub service: String,
    /// Config hash label.
    pub hash: String,
    /// Release label (the release it was created for).
    pub release: String,
    /// Image reference it was created from.
    pub image: String,
    /// Engine state.
    pub state: ContainerStateStatusEnum,
    /// Health, when the container has a healthcheck.
    pub health: Option<HealthStatusEnum>,
    /// Exit code of the last run.
    pub exit_code: Option<i64>,
    /// How often the engine restarted it.
    pub restart_count: i64,
    /// `StartedAt` as the engine reports it (RFC 3339).
    pub started_at: Option<String>,
}

impl Observed {
    /// Whether the engine reports it running (or restarting).
    pub fn is_running(&self) -> bool {
        matches!(
            self.state,
            ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING
        )
    }
}

/// The engine name of a container for `service` of `app_id` with `hash`.
pub fn container_name(app_id: u32, service: &str, hash: &str) -> String {
    format!("{service}_{app_id}_{}", &hash[..12.min(hash.len())])
}

/// The engine name of a named volume.
pub fn volume_name(app_id: u32, name: &str) -> String {
    format!("{app_id}_{name}")
}

/// The engine name of a network (`default` is the app's own bridge).
pub fn network_name(app_id: u32, name: &str) -> String {
    format!("{app_id}_{name}")
}

fn is_conflict(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

fn is_not_modified(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

/// Every container labelled as ours for one app (`Some`) or all apps (`None`), with
/// their inspected state.
pub async fn list_ours(
    docker: &Docker,
    app_id: Option<u32>,
) -> Result<Vec<Observed>, BollardError> {
    let mut labels = vec![format!("{LABEL_MANAGED}=1")];
    if let Some(app) = app_id {
        labels.push(format!("{LABEL_APP_ID}={app}"));
    }
    let filters: HashMap<&str, Vec<String>> = HashMap::from([("label", labels)]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let Some(id) = c.id else { continue };
        let info = match docker.inspect_container(&id, None).await {
            Ok(info) => info,
            // Removed between list and inspect.
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
        };
        let labels = c.labels.unwrap_or_default();
        let state = info.state.unwrap_or_default();
        out.push(Observed {
            id,
            name: info
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            app_id: labels
                .get(LABEL_APP_ID)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            service: labels.get(LABEL_SERVICE_NAME).cloned().unwrap_or_default(),
            hash: labels.get(LABEL_CONFIG_HASH).cloned().unwrap_or_default(),
            release: labels.get(LABEL_RELEASE).cloned().unwrap_or_default(),
            image: info
                .config
                .and_then(|c| c.image)
                .or(c.image)
                .unwrap_or_default(),
            state: state.status.unwrap_or(ContainerStateStatusEnum::EMPTY),
            health: state
                .health
                .and_then(|h| h.status)
                .filter(|s| !matches!(s, HealthStatusEnum::EMPTY | HealthStatusEnum::NONE)),
            exit_code: state.exit_code,
            restart_count: info.restart_count.unwrap_or(0),
            started_at: state.started_at.filter(|s| !s.starts_with("0001-")),
        });
    }
    Ok(out)
}

/// Splits `registry:5000/repo/name:tag` into (`registry:5000/repo/name`, `tag`).
pub fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], Some(&image[slash + i + 1..])),
        None => (image, Some("latest")),
    }
}

/// Pulls `image`, calling `progress(percent)` as layers arrive. One attempt; the
/// caller retries.
pub async fn pull(
    docker: &Docker,
    image: &str,
    mut progress: impl FnMut(u8),
) -> Result<(), BollardError> {
    let (repo, tag) = split_reference(image);
    let mut opts = CreateImageOptionsBuilder::new().from_image(repo);
    if let Some(tag) = tag {
        opts = opts.tag(tag);
    }
    let mut stream = docker.create_image(Some(opts.build()), None, None);
    // Per layer: (downloaded bytes, total bytes, done).
    let mut layers: BTreeMap<String, (i64, i64, bool)> = BTreeMap::new();
    let mut last = None;
    while let Some(info) = stream.next().await {
        let info = info?;
        let (Some(id), Some(status)) = (info.id, info.status) else {
            continue;
        };
        let entry = layers.entry(id).or_insert((0, 0, false));
        match status.as_str() {
            "Downloading" => {
                if let Some(d) = info.progress_detail {
                    entry.0 = d.current.unwrap_or(entry.0);
                    entry.1 = d.total.unwrap_or(entry.1);
                }
            }
            "Download complete" | "Pull complete" | "Already exists" | "Verifying Checksum"
            | "Extracting" => entry.2 = true,
            _ => {}
        }
        let (mut cur, mut tot, mut n_done) = (0i64, 0i64, 0usize);
        for (c, t, done) in layers.values() {
            if *done {
                n_done += 1;
            } else {
                cur += c;
                tot += t;
            }
        }
        // Finished layers count as whole layers; running ones by their bytes.
        let n = layers.len().max(1) as f64;
        let partial = if tot > 0 {
            cur as f64 / tot as f64
        } else {
            0.0
        };
        let running = (layers.len() - n_done) as f64;
        let pct = ((n_done as f64 + partial * running.min(1.0)) / n * 100.0).min(99.0) as u8;
        if last != Some(pct) {
            last = Some(pct);
            progress(pct);
        }
    }
    progress(100);
    Ok(())
}

/// Removes `image` if no container uses it (errors other than "in use" are returned).
pub async fn remove_image(docker: &Docker, image: &str) -> Result<(), BollardError> {
    match docker
        .remove_image(image, Some(RemoveImageOptionsBuilder::new().build()), None)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes sure the target's volumes and networks exist (idempotent).
pub async fn ensure_volumes_networks(docker: &Docker, t: &TargetState) -> Result<(), BollardError> {
    for (name, spec) in &t.volumes {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(LABEL_MANAGED.into(), "1".into());
        labels.insert(LABEL_APP_ID.into(), t.app_id.to_string());
        // Creating an existing volume returns it unchanged.
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(volume_name(t.app_id, name)),
                driver: spec.driver.clone(),
                driver_opts: Some(spec.driver_opts.clone().into_iter().collect()),
                labels: Some(labels),
                ..Default::default()
            })
            .await?;
    }
    let mut nets: Vec<(String, NetworkSpec)> = t
        .networks
        .iter()
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    if t.services
        .values()
        .any(|s| s.network_mode.is_none() && s.networks.is_empty())
    {
        nets.push(("default".into(), NetworkSpec::default()));
    }
    for (name, spec) in nets {
        let full = network_name(t.app_id, &name);
        match docker.inspect_network(&full, None).await {
            Ok(_) => continue,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
        let mut labels: HashMap<String, String> = spec.labels.into_iter().collect();
        labels.insert(LABEL_MANAGED.into(), "1".into());
        labels.insert(LABEL_APP_ID.into(), t.app_id.to_string());
        match docker
            .create_network(NetworkCreateRequest {
                name: full,
                driver: spec.driver,
                internal: Some(spec.internal),
                labels: Some(labels),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes and re-creates the app's named volumes (purge). Containers using them must
/// be gone already.
pub async fn purge_volumes(docker: &Docker, t: &TargetState) -> Result<(), BollardError> {
    let filters: HashMap<&str, Vec<String>> = HashMap::from([(
        "label",
        vec![
            format!("{LABEL_MANAGED}=1"),
            format!("{LABEL_APP_ID}={}", t.app_id),
        ],
    )]);
    let vols = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await?;
    for v in vols.volumes.unwrap_or_default() {
        match docker
            .remove_volume(
                &v.name,
                Some(RemoveVolumeOptionsBuilder::new().force(true).build()),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    ensure_volumes_networks(docker, t).await
}

/// Everything the container for `name` of `t` is created with.
pub fn create_body(
    t: &TargetState,
    name: &str,
    spec: &ServiceSpec,
    lock_dir: &Path,
) -> ContainerCreateBody {
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    labels.insert(LABEL_MANAGED.into(), "1".into());
    labels.insert(LABEL_APP_ID.into(), t.app_id.to_string());
    labels.insert(LABEL_SERVICE_NAME.into(), name.into());
    labels.insert(LABEL_SERVICE_ID.into(), spec.service_id.to_string());
    labels.insert(LABEL_RELEASE.into(), t.release.clone());
    labels.insert(LABEL_CONFIG_HASH.into(), spec.config_hash());

    let mut env: Vec<String> = spec
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for (k, v) in [
        ("EDGE_APP_ID", t.app_id.to_string()),
        ("EDGE_APP_NAME", t.app_name.clone()),
        ("EDGE_SERVICE_NAME", name.to_string()),
        ("EDGE_RELEASE", t.release.clone()),
    ] {
        if !spec.environment.contains_key(k) {
            env.push(format!("{k}={v}"));
        }
    }

    let lock = lock_dir.display().to_string();
    let mut binds = vec![format!("{lock}:/tmp/balena"), format!("{lock}:/tmp/resin")];
    for m in &spec.volumes {
        let src = if m.bind {
            m.source.clone()
        } else {
            volume_name(t.app_id, &m.source)
        };
        binds.push(format!(
            "{src}:{}{}",
            m.target,
            if m.read_only { ":ro" } else { "" }
        ));
    }

    let mut exposed = Vec::new();
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.container_port, p.protocol);
        exposed.push(key.clone());
        port_bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: p.host_port.map(|h| h.to_string()),
            });
    }

    let restart = match spec.restart {
        RestartPolicy::No => RestartPolicyNameEnum::NO,
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
    };

    let devices = spec
        .devices
        .iter()
        .map(|d| {
            let mut parts = d.splitn(3, ':');
            let host = parts.next().unwrap_or_default().to_string();
            let cont = parts
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| host.clone());
            DeviceMapping {
                path_on_host: Some(host),
                path_in_container: Some(cont),
                cgroup_permissions: Some(parts.next().unwrap_or("rwm").to_string()),
            }
        })
        .collect::<Vec<_>>();

    let (network_mode, endpoints) = match &spec.network_mode {
        Some(mode) => (Some(mode.clone()), None),
        None => {
            let net = spec
                .networks
                .first()
                .map(String::as_str)
                .unwrap_or("default");
            let full = network_name(t.app_id, net);
            let ep = EndpointSettings {
                aliases: Some(vec![name.to_string()]),
                ..Default::default()
            };
            (Some(full.clone()), Some(HashMap::from([(full, ep)])))
        }
    };

    let ms = |m: u64| (m as i64) * 1_000_000;
    let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(h.test.clone()).filter(|t| !t.is_empty()),
        interval: h.interval_ms.map(ms),
        timeout: h.timeout_ms.map(ms),
        retries: h.retries.map(i64::from),
        start_period: h.start_period_ms.map(ms),
        start_interval: None,
    });

    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: Some(exposed).filter(|e| !e.is_empty()),
        healthcheck,
        host_config: Some(HostConfig {
            binds: Some(binds),
            port_bindings: Some(port_bindings).filter(|p| !p.is_empty()),
            restart_policy: Some(DockerRestart {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            network_mode,
            privileged: Some(spec.privileged),
            cap_add: Some(spec.cap_add.clone()).filter(|c| !c.is_empty()),
            devices: Some(devices).filter(|d| !d.is_empty()),
            ..Default::default()
        }),
        networking_config: endpoints.map(|e| NetworkingConfig {
            endpoints_config: Some(e),
        }),
        ..Default::default()
    }
}

/// Creates the container (or finds the one a previous, interrupted run created under
/// the same deterministic name) and joins its extra networks. Returns its id.
pub async fn create(
    docker: &Docker,
    t: &TargetState,
    name: &str,
    spec: &ServiceSpec,
    lock_dir: &Path,
) -> Result<String, BollardError> {
    let cname = container_name(t.app_id, name, &spec.config_hash());
    let body = create_body(t, name, spec, lock_dir);
    let id = match docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&cname).build()),
            body,
        )
        .await
    {
        Ok(r) => r.id,
        Err(e) if is_conflict(&e) => {
            return Ok(docker
                .inspect_container(&cname, None)
                .await?
                .id
                .unwrap_or(cname));
        }
        Err(e) => return Err(e),
    };
    if spec.network_mode.is_none() {
        for net in spec.networks.iter().skip(1) {
            docker
                .connect_network(
                    &network_name(t.app_id, net),
                    bollard::models::NetworkConnectRequest {
                        container: id.clone(),
                        endpoint_config: Some(EndpointSettings {
                            aliases: Some(vec![name.to_string()]),
                            ..Default::default()
                        }),
                    },
                )
                .await?;
        }
    }
    Ok(id)
}

/// Starts a container; already running is fine.
///
/// A host port that the container being replaced held is released by the engine a moment
/// after that container stops (its userland proxy exits asynchronously), so a start that
/// fails with "port is already allocated" / "address already in use" is retried for up
/// to 10 s before the error counts.
pub async fn start(docker: &Docker, id: &str) -> Result<(), BollardError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match docker.start_container(id, None).await {
            Ok(()) => return Ok(()),
            Err(e) if is_not_modified(&e) => return Ok(()),
            Err(e) => {
                let msg = e.to_string();
                let port_busy = msg.contains("port is already allocated")
                    || msg.contains("address already in use");
                if !port_busy || std::time::Instant::now() >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Stops politely: SIGTERM, `grace`, then SIGKILL (the engine does the last two).
pub async fn stop(docker: &Docker, id: &str, grace: Duration) -> Result<(), BollardError> {
    let t = grace.as_secs().min(i32::MAX as u64) as i32;
    match docker
        .stop_container(id, Some(StopContainerOptionsBuilder::new().t(t).build()))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_modified(&e) || is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Stops (politely) and removes a container; already gone is fine.
pub async fn kill_and_remove(
    docker: &Docker,
    id: &str,
    grace: Duration,
) -> Result<(), BollardError> {
    stop(docker, id, grace).await?;
    remove(docker, id).await
}

/// Removes a (stopped) container; already gone is fine.
pub async fn remove(docker: &Docker, id: &str) -> Result<(), BollardError> {
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // "removal already in progress"
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag_not_the_registry_port() {
        assert_eq!(
            split_reference("127.0.0.1:5000/edge-test/web:v1"),
            ("127.0.0.1:5000/edge-test/web", Some("v1"))
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/edge-test/web"),
            ("127.0.0.1:5000/edge-test/web", Some("latest"))
        );
        assert_eq!(split_reference("busybox"), ("busybox", Some("latest")));
        assert_eq!(split_reference("a/b@sha256:00"), ("a/b@sha256:00", None));
    }
}
