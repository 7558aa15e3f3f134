//! Faults of a cluster of `gateway serve` nodes on one PostgreSQL (`docs/cluster.md`):
//! a node silently partitioned from the database, and a node killed under 30 devices.
//! Real processes on loopback: the shipped `gateway` and `edge-agent` binaries, a real
//! `postgres` started by the test set-up (`gateway::store::test_pg`; without PostgreSQL
//! installed the tests are skipped, under `CI=true` they fail), and a userspace TCP relay
//! between one node and the database (`e2e_tests::relay`).

use std::time::{Duration, Instant};

use e2e_tests::cluster::{
    add_device, all_served, lease_runs, routed_to, server_addr, start_nodes, token_and_device,
    via_port, NodeSpec,
};
use e2e_tests::procs;
use e2e_tests::relay::UdpRelay;
use e2e_tests::*;

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
