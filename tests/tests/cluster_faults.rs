//! Faults of a cluster of `gateway serve` nodes on one PostgreSQL (`docs/cluster.md`):
//! a node silently partitioned from the database, and a node killed under 30 devices.
//! Real processes on loopback: the shipped `gateway` and `edge-agent` binaries, a real
//! `postgres` started by the test set-up (`gateway::store::test_pg`; without PostgreSQL
//! installed the tests are skipped, under `CI=true` they fail), and a userspace TCP relay
//! between one node and the database (`e2e_tests::relay`).

use std::time::{Duration, Instant};

use e2e_tests::cluster::{
    add_device, all_served, blink_through, device_logs, lease_runs, offline, routed_to,
    server_addr, start_nodes, terminal_echo, token_and_device, via_port, ClusterDevice, NodeSpec,
};
use e2e_tests::procs::{self, api_json};
use e2e_tests::relay::UdpRelay;
use e2e_tests::*;
use futures_util::future::join_all;

/// Node a reaches PostgreSQL through a relay, b and c directly; three devices list a, b,
/// c in that order and so sit on a. The relay is then cut: no RST, no FIN, every byte in
/// either direction just vanishes, so each of a's connections looks alive and never
/// answers. Node a must fence itself within its lease (10 s, renewed every 2.5 s), its
/// devices must come back on b and answer through b and c; once the cut heals, a must
/// renew its lease by itself and serve a device that connects to it, through every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_silently_cut_off_from_postgres_fences_itself_and_rejoins_when_healed() {
    let Some(url) = gateway::store::test_pg::database_url().await else {
        return;
    };
    let relay = UdpRelay::start(server_addr(&url)).await;
    let url_a = via_port(&url, relay.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<NodeSpec> = ["a", "b", "c"]
        .iter()
        .map(|id| NodeSpec::new(dir.path(), id))
        .collect();
    let _nodes = start_nodes(&specs, &[&url_a, &url, &url]).await;
    let tunnels: Vec<u16> = specs.iter().map(|s| s.tunnel).collect();

    let mut devices = Vec::new();
    let mut agents = Vec::new();
    let mut backends = Vec::new();
    for i in 0..3 {
        let out = dir.path().join(format!("device-{i}")).join("device.toml");
        let uuid = add_device(&specs[0].data, &url, &tunnels, &out);
        let name = format!("partition-device-{i}");
        let backend = Backend::spawn(&name).await;
        agents.push(procs::agent(&out, backend.addr, &["--engine", "none"]));
        backends.push(backend);
        devices.push((device_host(&uuid), name));
    }
    let limit = Duration::from_secs(60);
    for s in &specs {
        all_served(&devices, s.http, limit)
            .await
            .unwrap_or_else(|e| panic!("before the cut, node {}: {e}", s.id));
    }
    assert_eq!(routed_to(&url, "a"), 3, "the devices are not all on node a");

    // The silent partition of node a from the database.
    relay.set_cut(true);
    let cut = Instant::now();
    // Fencing closes a's tunnels; the devices then move to b, the next in their list.
    // The lease is 10 s: a generous margin on top.
    let moved = eventually(Duration::from_secs(40), || async {
        (routed_to(&url, "b") == 3).then_some(())
    })
    .await;
    assert!(
        moved.is_some(),
        "node a, cut off from the database, kept its devices {:?} after the cut \
         (routes on a: {}, on b: {})",
        cut.elapsed(),
        routed_to(&url, "a"),
        routed_to(&url, "b")
    );
    let fenced_after = cut.elapsed();
    println!("node a's devices were on node b {fenced_after:?} after the cut");
    assert!(
        !lease_runs(&url, "a"),
        "node a's lease still runs while it cannot reach the database"
    );
    for s in &specs[1..] {
        all_served(&devices, s.http, limit)
            .await
            .unwrap_or_else(|e| panic!("with node a cut off, node {}: {e}", s.id));
    }

    // The cut heals: a renews its lease by itself and takes tunnels again.
    relay.set_cut(false);
    let healed = Instant::now();
    let renewed = eventually(Duration::from_secs(60), || async {
        lease_runs(&url, "a").then_some(())
    })
    .await;
    assert!(
        renewed.is_some(),
        "node a did not renew its lease within 60 s of the cut healing"
    );
    println!(
        "node a renewed its lease {:?} after the heal",
        healed.elapsed()
    );
    // A device that knows only node a connects to it, and every node serves it.
    let out = dir.path().join("device-a-only").join("device.toml");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let (_, uuid) = token_and_device(&specs[0].data, &url, specs[0].tunnel, &out);
    let name = "rejoined-device".to_string();
    let backend = Backend::spawn(&name).await;
    let _agent = procs::agent(&out, backend.addr, &["--engine", "none"]);
    let only = [(device_host(&uuid), name)];
    for s in &specs {
        all_served(&only, s.http, limit)
            .await
            .unwrap_or_else(|e| panic!("after the heal, node {}: {e}", s.id));
    }
    println!(
        "a device on node a answered through every node {:?} after the heal",
        healed.elapsed()
    );
    assert_eq!(routed_to(&url, "a"), 1, "the new device is not routed to a");
    // The moved devices are still served by the survivors, and now through a as well.
    for s in &specs {
        all_served(&devices, s.http, limit)
            .await
            .unwrap_or_else(|e| panic!("after the heal, node {}: {e}", s.id));
    }
}

/// Every device through every node: its page, a blink and its log lines through each
/// node's API, a terminal through each node's API.
async fn everything_everywhere(
    devices: &[ClusterDevice],
    nodes: &[&NodeSpec],
    token: &str,
    when: &str,
) {
    let pages: Vec<(String, String)> = devices.iter().map(ClusterDevice::page).collect();
    let limit = Duration::from_secs(60);
    for n in nodes {
        all_served(&pages, n.http, limit)
            .await
            .unwrap_or_else(|e| panic!("{when}, node {}: {e}", n.id));
    }
    // A blink queued through each node runs once on the device, whichever node holds it.
    let want: Vec<usize> = devices.iter().map(|d| d.blinks() + nodes.len()).collect();
    let runs = devices.iter().flat_map(|d| {
        nodes.iter().map(move |n| async move {
            let status = blink_through(n.api_addr(), token, &d.uuid).await;
            (status == "succeeded").then_some(()).ok_or_else(|| {
                format!(
                    "{when}: a blink through node {} on {}: {status}",
                    n.id, d.name
                )
            })
        })
    });
    for r in join_all(runs).await {
        r.unwrap_or_else(|e| panic!("{e}"));
    }
    for (d, &want) in devices.iter().zip(&want) {
        assert_eq!(
            d.blinks(),
            want,
            "{when}: {} ran a wrong number of blinks",
            d.name
        );
    }
    // The device's log lines, read through each node: all of them, once each.
    for n in nodes {
        let reads = devices.iter().zip(&want).map(|(d, &want)| async move {
            let got = eventually(Duration::from_secs(30), || async {
                let lines = device_logs(n.api_addr(), token, &d.uuid).await?;
                (count(&lines, "Action blink done") >= want).then_some(lines)
            })
            .await;
            let lines = got.ok_or_else(|| {
                format!(
                    "{when}: {}'s blinks are not all in its log through node {}",
                    d.name, n.id
                )
            })?;
            check_log(&lines, want)
                .map_err(|e| format!("{when}: {} through node {}: {e}", d.name, n.id))
        });
        for r in join_all(reads).await {
            r.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    // A terminal opened through each node runs a command on that very device.
    for n in nodes {
        let terms = devices.iter().map(|d| async move {
            let want = format!("on-{}-42", d.name);
            let out = terminal_echo(n.api_addr(), token, &d.uuid).await;
            out.contains(&want).then_some(()).ok_or_else(|| {
                format!(
                    "{when}: a terminal on {} through node {} printed {out:?}",
                    d.name, n.id
                )
            })
        });
        for r in join_all(terms).await {
            r.unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// How many of `lines` have exactly the message `message`.
fn count(lines: &[serde_json::Value], message: &str) -> usize {
    lines.iter().filter(|l| l["message"] == message).count()
}

/// A device's stored log: sequence numbers from the first on with no gap and none twice
/// (nothing lost, nothing stored twice), its start logged once and each of its `blinks`
/// logged as received and done. (An action can be delivered twice, by the wake-up and by
/// the lease loop's poll; the agent's action log runs it once but logs each delivery,
/// so those two lines may come more often than the blinks ran.)
fn check_log(lines: &[serde_json::Value], blinks: usize) -> Result<(), String> {
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    let first = seqs.first().copied().ok_or("no log line")?;
    let want: Vec<u64> = (first..first + seqs.len() as u64).collect();
    if first > 1 || seqs != want {
        return Err(format!("sequence numbers {seqs:?}"));
    }
    let starts = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Agent ") && m.ends_with(" starting"))
        })
        .count();
    let received = count(lines, "Action blink received");
    let done = count(lines, "Action blink done");
    if starts != 1 || received < blinks || done < blinks {
        return Err(format!(
            "{starts} starts, {received} blinks received, {done} done; want 1 and at least {blinks}"
        ));
    }
    Ok(())
}

/// Three nodes, 30 devices (device i lists the nodes from node i % 3 on, so ten sit on
/// each). Through every node, for every device: its page answers 200 naming the device,
/// a blink queued there runs exactly once (the agent's "blink requested" lines counted),
/// its log lines read there are all present once each (sequence numbers without gap or
/// repeat, its start logged once, every blink logged), and a terminal opened there runs a
/// command on that device (every device through every node, not a sample: 90 sessions,
/// then 60). A blink for each of a's devices is queued through b, then node a is killed
/// with SIGKILL: its ten devices are routed to the survivors within 60 s (about 10 s in
/// runs here, printed), that blink runs once, and everything above holds again through
/// b and c, with two more blinks each, no line lost or repeated and no blink run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_devices_are_served_through_every_node_and_through_a_kill_9() {
    let Some(url) = gateway::store::test_pg::database_url().await else {
        return;
    };
    const DEVICES: usize = 30;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<NodeSpec> = ["a", "b", "c"]
        .iter()
        .map(|id| NodeSpec::new(dir.path(), id))
        .collect();
    let mut nodes = start_nodes(&specs, &[&url, &url, &url]).await;
    let token = offline(
        &specs[0].data,
        &url,
        &["token", "create", "--role", "admin"],
    );
    let token = token.trim();
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let tunnels: Vec<u16> = (0..3).map(|k| specs[(i + k) % 3].tunnel).collect();
        let dir = dir.path().join(format!("device-{i:02}"));
        let name = format!("cluster-device-{i:02}");
        devices.push(ClusterDevice::start(&specs[0].data, &url, &tunnels, dir, &name).await);
    }
    let all: Vec<&NodeSpec> = specs.iter().collect();
    everything_everywhere(&devices, &all, token, "before the kill").await;
    assert_eq!(
        routed_to(&url, "a"),
        DEVICES / 3,
        "node a does not hold its ten devices"
    );
    println!(
        "30 devices through 3 nodes checked {:?} after the start",
        started.elapsed()
    );

    // A blink for each of a's devices, queued through b just before a dies: it runs once,
    // delivered by a or, after the move, by the device's new node.
    let mut pending = Vec::new();
    for d in devices.iter().step_by(3) {
        let path = format!("/v1/devices/{}/actions", d.uuid);
        let body = serde_json::json!({"action": "blink"});
        let before = d.blinks();
        let (s, v) = api_json(specs[1].api_addr(), token, "POST", &path, Some(body))
            .await
            .expect("node b answers");
        assert_eq!(s, http::StatusCode::ACCEPTED, "{v}");
        pending.push((d, before, v["id"].as_str().unwrap().to_string()));
    }
    nodes[0].proc.kill9();
    let killed = Instant::now();
    let back = eventually(Duration::from_secs(60), || async {
        let moved = routed_to(&url, "b") + routed_to(&url, "c");
        (moved == DEVICES && lease_runs(&url, "b") && lease_runs(&url, "c")).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "60 s after the kill: {} devices on b, {} on c, {} still on a",
        routed_to(&url, "b"),
        routed_to(&url, "c"),
        routed_to(&url, "a")
    );
    println!(
        "node a's devices were routed to b and c {:?} after its kill -9",
        killed.elapsed()
    );
    for (d, before, id) in &pending {
        let status = eventually(Duration::from_secs(60), || async {
            let (_, v) = api_json(
                specs[1].api_addr(),
                token,
                "GET",
                &format!("/v1/actions/{id}"),
                None,
            )
            .await?;
            (v["status"] == "succeeded").then_some(())
        })
        .await;
        assert!(
            status.is_some(),
            "the blink queued on {} as node a died never ran",
            d.name
        );
        // It ran before the kill or after it, once either way.
        assert_eq!(d.blinks(), before + 1, "{}: blinks run", d.name);
    }
    everything_everywhere(&devices, &all[1..], token, "after the kill of node a").await;
    println!("all checked again {:?} after the start", started.elapsed());
}
