//! Live presence across the nodes of a cluster on PostgreSQL: the dashboard's event
//! stream (`/events`) on node b reports a device coming online and going offline whose
//! tunnel node a holds (`docs/dashboard.md`, "Live updates"). Two real `gateway serve`
//! processes, an agent, and hyper reading the event stream. Without PostgreSQL installed
//! the test is skipped, and under `CI=true` it fails.

use std::time::Duration;

use e2e_tests::cluster::{two_nodes, TwoNodes};
use e2e_tests::dashboard::{enc, http_at, sign_in_with, sse, Sse};
use e2e_tests::*;
use serde_json::Value;

/// The next `presence` event for `uuid` within `limit`: whether it says online.
async fn next_presence(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Sse>,
    uuid: &str,
    limit: Duration,
) -> Option<(bool, Value)> {
    tokio::time::timeout(limit, async {
        while let Some(ev) = rx.recv().await {
            if ev.event != "presence" {
                continue;
            }
            let v: Value = serde_json::from_str(&ev.data).unwrap();
            if v["uuid"] == uuid {
                return Some((v["online"] == true, v));
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_on_one_node_sees_a_device_on_another_come_and_go() {
    let Some(url) = gateway::store::test_pg::database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let TwoNodes {
        a: _a,
        b: _b,
        api_b,
        token,
        uuid,
        device_file: out,
    } = two_nodes(dir.path(), &url).await;
    let api_b: std::net::SocketAddr = ([127, 0, 0, 1], api_b).into();

    // A dashboard session on node b, its event stream open before the device connects.
    let cookie = sign_in_with(api_b, &format!("token={}", enc(&token))).await;
    let mut events = sse(api_b, "/events", &cookie).await;

    // The device's tunnel goes to node a only.
    let cfg = edge_agent::AgentConfig::load(&out).unwrap();
    let mut agent = TestAgent::spawn_with(cfg, fast_agent_options("127.0.0.1:9".parse().unwrap()));
    agent.connected().await;
    eventually(Duration::from_secs(10), || async {
        (gateway_node_holding(&url, &uuid) == "a").then_some(())
    })
    .await
    .expect("the device's route names node a");
    let (online, v) = next_presence(&mut events, &uuid, Duration::from_secs(15))
        .await
        .expect("node b's event stream reported the device online (held by node a)");
    assert!(online, "{v}");
    // Node b holds no tunnel of it: no transport of its own to name.
    assert!(v["transport"].is_null(), "{v}");

    // The agent stops: node b's stream says offline.
    agent.stop().await;
    let (online, v) = next_presence(&mut events, &uuid, Duration::from_secs(15))
        .await
        .expect("node b's event stream reported the device offline");
    assert!(!online, "{v}");

    // The devices page on node b, loaded afresh, agrees (from the store).
    let (s, _, page) = http_at(api_b, "GET", "/devices", Some(&cookie), None).await;
    assert_eq!(s, 200);
    assert!(page.contains(&uuid), "the device is listed on node b");
}

/// The node whose route holds `uuid` now (psql).
fn gateway_node_holding(url: &str, uuid: &str) -> String {
    e2e_tests::cluster::psql_value(
        url,
        &format!("SELECT COALESCE(node, '') FROM device_routes WHERE device = '{uuid}'"),
    )
}
