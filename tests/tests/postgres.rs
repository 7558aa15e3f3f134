//! A gateway on PostgreSQL, as an operator runs one: `gateway serve --database URL`, and
//! the offline commands (`token create`, `device add`, `device list`) with the same
//! `--database`. The server is a real `postgres` that the test set-up starts in a temp
//! dir (`gateway::store::test_pg`); without PostgreSQL installed the test is skipped,
//! and under `CI=true` it fails.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::cluster::{node, offline, psql, psql_value, serving, share_ca, token_and_device};
use e2e_tests::procs::{self, api_json, try_get, wait_status};
use e2e_tests::*;
use http::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_offline_commands_share_one_postgres_database() {
    let Some(url) = gateway::store::test_pg::database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let backend = Backend::spawn("pg-device").await;
    let (http, tunnel, api) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let api_listen = format!("127.0.0.1:{api}");
    let extra = [
        "--database",
        url.as_str(),
        "--api-listen",
        api_listen.as_str(),
    ];
    let mut gw = procs::serve(&data, http, tunnel, &extra);
    // Listening means the data dir and the database are ready for the offline commands.
    assert!(
        serving(http).await,
        "gateway serve --database did not start listening"
    );

    let out = dir.path().join("device.toml");
    let (token, uuid) = token_and_device(&data, &url, tunnel, &out);
    let token = token.as_str();
    // The database holds the state; the data dir only the certificates.
    assert!(
        !data.join(gateway::store::DB_FILE).exists(),
        "a gateway on PostgreSQL wrote a SQLite file into its data dir"
    );

    // Registered through the database, the device is accepted by the running gateway.
    let _agent = procs::agent(&out, backend.addr, &[]);
    let host = device_host(&uuid);
    assert!(
        wait_status(http, &host, StatusCode::OK, Duration::from_secs(30)).await,
        "the device added with --database never became reachable"
    );
    let (_, body) = try_get(http, &host).await.unwrap();
    assert_eq!(body, "hello from pg-device");
    let api_addr = api_listen.parse().unwrap();
    let (status, v) = api_json(api_addr, token, "GET", &format!("/v1/devices/{uuid}"), None)
        .await
        .expect("the API answers");
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["online"], true, "{v}");

    // `device list` reads the same database offline, beside the running gateway.
    let listed = offline(&data, &url, &["device", "list"]);
    assert!(listed.contains(&uuid), "device list --database: {listed}");

    // Everything survives a restart: it is in PostgreSQL, not in the process.
    gw.proc.kill9();
    let _gw2 = procs::serve(&data, http, tunnel, &extra);
    assert!(
        wait_status(http, &host, StatusCode::OK, Duration::from_secs(30)).await,
        "the device did not come back after a restart on the same database"
    );
    let (status, _) = eventually(Duration::from_secs(10), || {
        api_json(api_addr, token, "GET", "/v1/devices", None)
    })
    .await
    .expect("the restarted gateway's API answers");
    assert_eq!(
        status,
        StatusCode::OK,
        "the token stored in PostgreSQL still works"
    );
}

/// The device's `online` as the API at `api` reports it; `None` when it does not answer.
async fn online_on(api: std::net::SocketAddr, token: &str, uuid: &str) -> Option<bool> {
    let (status, v) = api_json(api, token, "GET", &format!("/v1/devices/{uuid}"), None).await?;
    (status == StatusCode::OK).then(|| v["online"] == true)
}

/// Waits until the API at `api` reports the device `online == want`, for at most `limit`.
async fn wait_online(
    api: std::net::SocketAddr,
    token: &str,
    uuid: &str,
    want: bool,
    limit: Duration,
) -> bool {
    eventually(limit, || async {
        (online_on(api, token, uuid).await == Some(want)).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_device_state_and_a_node_cut_off_from_the_database_fences_itself() {
    let Some(url) = gateway::store::test_pg::database_url().await else {
        return;
    };
    // Node a logs in as a role of its own, so that the test can cut only a off.
    let db = url.rsplit('/').next().unwrap().to_string();
    let role = format!("r_{db}");
    psql(&url, &format!("CREATE ROLE {role} LOGIN SUPERUSER"));
    let url_a = url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let backend = Backend::spawn("node-a-device").await;
    let (http_a, tunnel_a, api_a) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let api_a_listen = format!("127.0.0.1:{api_a}");
    let _a = procs::serve(
        &data_a,
        http_a,
        tunnel_a,
        &[
            "--database",
            &url_a,
            "--node-id",
            "a",
            "--api-listen",
            &api_a_listen,
        ],
    );
    assert!(serving(http_a).await, "node a did not start");
    let out = dir.path().join("device.toml");
    let (token, uuid) = token_and_device(&data_a, &url, tunnel_a, &out);
    let token = token.as_str();
    let host = device_host(&uuid);
    let _agent = procs::agent(&out, backend.addr, &[]);
    assert!(wait_status(http_a, &host, StatusCode::OK, Duration::from_secs(30)).await);

    // Node b joins with a copy of the fleet CA (docs/cluster.md).
    share_ca(&data_a, &data_b);
    let (http_b, tunnel_b, api_b) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let api_b_listen = format!("127.0.0.1:{api_b}");
    let _b = procs::serve(
        &data_b,
        http_b,
        tunnel_b,
        &[
            "--database",
            &url,
            "--node-id",
            "b",
            "--api-listen",
            &api_b_listen,
        ],
    );
    let (api_a, api_b) = (api_a_listen.parse().unwrap(), api_b_listen.parse().unwrap());
    // Node b's start leaves a's device online, and b's API says so.
    assert!(
        wait_online(api_b, token, &uuid, true, Duration::from_secs(30)).await,
        "node b does not show the device held by node a as online"
    );
    assert_eq!(online_on(api_a, token, &uuid).await, Some(true));

    // Cut node a off the database: it can no longer renew its lease.
    psql(
        &url,
        &format!(
            "ALTER ROLE {role} NOLOGIN;              SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        ),
    );
    let cut = std::time::Instant::now();
    // It fences itself: its tunnels close and it takes none, so the URL stops working
    // there (lease 10 s, renewed every 2.5 s).
    assert!(
        eventually(Duration::from_secs(40), || async {
            match try_get(http_a, &host).await {
                Some((s, _)) if s == StatusCode::OK => None,
                _ => Some(()),
            }
        })
        .await
        .is_some(),
        "node a kept serving the device without its database lease"
    );
    println!("node a fenced itself {:?} after the cut", cut.elapsed());
    // Node b counts a dead and clears its routes: the device shows offline.
    assert!(
        wait_online(api_b, token, &uuid, false, Duration::from_secs(40)).await,
        "node b still shows the device of a dead node online"
    );
    println!(
        "node b shows the device offline {:?} after the cut",
        cut.elapsed()
    );

    // Node a gets its database back: it renews, takes tunnels again, the device returns.
    psql(&url, &format!("ALTER ROLE {role} LOGIN"));
    let back = std::time::Instant::now();
    assert!(
        wait_status(http_a, &host, StatusCode::OK, Duration::from_secs(60)).await,
        "the device did not come back to node a after its lease was renewed"
    );
    assert!(wait_online(api_b, token, &uuid, true, Duration::from_secs(30)).await);
    println!(
        "device back on node a {:?} after the database returned",
        back.elapsed()
    );
}

#[test]
fn serve_refuses_a_database_url_that_is_not_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let o = procs::serve_command(&data, free_port_tcp(), free_port_udp(), &[])
        .args(["--database", "mysql://root@localhost/gw"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a PostgreSQL URL"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Refused before anything is created: a mistyped flag must not mint a CA.
    assert!(!data.exists(), "the refused serve created its data dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_a_device_whose_tunnel_another_node_holds() {
    let Some(url) = gateway::store::test_pg::database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let backend = Backend::spawn("held-by-node-a").await;
    let (http_a, tunnel_a) = (free_port_tcp(), free_port_udp());
    let _a = node(
        &data_a,
        &url,
        "a",
        (http_a, tunnel_a, free_port_udp()),
        Some(free_port_tcp()),
    );
    assert!(serving(http_a).await, "node a did not start");
    let out = dir.path().join("device.toml");
    let (token, uuid) = token_and_device(&data_a, &url, tunnel_a, &out);
    let host = device_host(&uuid);
    let mut agent = procs::agent(&out, backend.addr, &[]);
    assert!(wait_status(http_a, &host, StatusCode::OK, Duration::from_secs(30)).await);

    share_ca(&data_a, &data_b);
    let (http_b, api_b) = (free_port_tcp(), free_port_tcp());
    let _b = node(
        &data_b,
        &url,
        "b",
        (http_b, free_port_udp(), free_port_udp()),
        Some(api_b),
    );
    let api_b: std::net::SocketAddr = format!("127.0.0.1:{api_b}").parse().unwrap();
    // Node b holds no tunnel of the device, yet its URL answers there, through a's peer
    // link, with the device's own page.
    assert!(
        wait_status(http_b, &host, StatusCode::OK, Duration::from_secs(30)).await,
        "node b does not serve the device whose tunnel node a holds"
    );
    let (_, body) = try_get(http_b, &host).await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("held-by-node-a"),
        "node b answered with another page: {body:?}"
    );
    // Many requests in a row, each a stream through the peer link or a pooled one.
    for i in 0..50 {
        let (s, _) = try_get(http_b, &host).await.expect("node b answers");
        assert_eq!(s, StatusCode::OK, "request {i} through node b");
    }
    // An unknown device is still a 404 on b, not a peer error.
    let (s, _) = try_get(http_b, &device_host("0123456789abcdef0123456789abcdef"))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);

    // An action queued through node b is delivered by node a, which holds the tunnel,
    // and its result is visible on b.
    let (s, v) = api_json(
        api_b,
        &token,
        "POST",
        &format!("/v1/devices/{uuid}/actions"),
        Some(serde_json::json!({"action": "blink"})),
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = eventually(Duration::from_secs(30), || async {
        let (_, v) = api_json(api_b, &token, "GET", &format!("/v1/actions/{id}"), None).await?;
        matches!(v["status"].as_str(), Some("succeeded" | "failed")).then_some(v)
    })
    .await;
    assert!(
        done.is_some(),
        "an action queued through node b never reached the device on node a"
    );

    // The device goes away: b says offline (from the cleared route, or from a's "not
    // here"), not a peer failure.
    agent.kill9();
    assert!(
        wait_status(
            http_b,
            &host,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(60)
        )
        .await,
        "node b does not report the device offline once it left node a"
    );
}

/// How many of `log`'s lines contain every one of `words`.
fn count(log: &Mutex<Vec<String>>, words: &[&str]) -> usize {
    let log = log.lock().unwrap();
    log.iter()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_through_another_node_reaches_the_device_at_once() {
    let Some(url) = gateway::store::test_pg::database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let backend = Backend::spawn("woken-on-node-a").await;
    // Node a logs in as a role of its own, so that the test can keep only a's listener
    // from reconnecting.
    let role = format!("r_{}", url.rsplit('/').next().unwrap());
    psql(&url, &format!("CREATE ROLE {role} LOGIN SUPERUSER"));
    let url_a = url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let node = |data: &Path, url: &str, id: &str, http: u16, tunnel: u16, api: u16| {
        let api = format!("127.0.0.1:{api}");
        procs::serve(
            data,
            http,
            tunnel,
            &["--database", url, "--node-id", id, "--api-listen", &api],
        )
    };
    let (http_a, tunnel_a, api_a) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let _a = node(&data_a, &url_a, "a", http_a, tunnel_a, api_a);
    assert!(serving(http_a).await, "node a did not start");
    let out = dir.path().join("device.toml");
    let (token, uuid) = token_and_device(&data_a, &url, tunnel_a, &out);
    let token = token.as_str();
    let host = device_host(&uuid);
    let (_agent, log) = procs::logged_agent(&out, backend.addr);
    assert!(wait_status(http_a, &host, StatusCode::OK, Duration::from_secs(30)).await);

    share_ca(&data_a, &data_b);
    let (http_b, api_b) = (free_port_tcp(), free_port_tcp());
    let _b = node(&data_b, &url, "b", http_b, free_port_udp(), api_b);
    assert!(serving(http_b).await, "node b did not start");
    let api_a: std::net::SocketAddr = format!("127.0.0.1:{api_a}").parse().unwrap();
    let api_b: std::net::SocketAddr = format!("127.0.0.1:{api_b}").parse().unwrap();
    let call = |api, method: &'static str, path: String, body| async move {
        api_json(api, token, method, &path, Some(body))
            .await
            .expect("the API answers")
    };

    // The fleet and the device's move into it go through node a; no release yet, so no
    // target either.
    let (s, v) = call(api_a, "POST", "/v1/fleets".into(), json!({"name": "wake"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call(
        api_a,
        "PATCH",
        format!("/v1/devices/{uuid}"),
        json!({"fleet": "wake"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let sessions = || count(&log, &[": connected"]);
    assert_eq!(sessions(), 1, "{:?}", log.lock().unwrap());
    let received = |release: &str| count(&log, &["target state received", release]);

    // A release published through node b (a fleet-wide wake-up) reaches the device on
    // node a over its open tunnel. Before wake-ups, it came only with the next reconnect.
    let publish = |compose: &'static str| async move {
        let (s, r) = call(
            api_b,
            "POST",
            "/v1/fleets/wake/releases".into(),
            json!({ "compose": compose }),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{r}");
        r["id"].as_str().unwrap().to_string()
    };
    let wait_for = |release: String, times: usize, what: &'static str| {
        let log = Arc::clone(&log);
        async move {
            let start = std::time::Instant::now();
            let got = eventually(Duration::from_secs(15), || async {
                (received(&release) >= times).then_some(())
            })
            .await;
            assert!(
                got.is_some(),
                "{what} through node b never reached the device on node a; agent log:\n{}",
                log.lock().unwrap().join("\n")
            );
            println!(
                "{what} through node b reached the device in {:?}",
                start.elapsed()
            );
        }
    };
    let r1 = publish("services:\n  web:\n    image: edge-test/web:v1\n").await;
    wait_for(r1.clone(), 1, "a release published").await;
    let r2 = publish("services:\n  web:\n    image: edge-test/web:v2\n").await;
    wait_for(r2.clone(), 1, "a second release").await;

    // A device pin through node b (a wake-up for one device): back to r1.
    let (s, v) = call(
        api_b,
        "PUT",
        format!("/v1/devices/{uuid}/pin"),
        json!({"release": r1}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_for(r1, 2, "a device pin").await;

    // Node a's listener is cut and cannot come back for a while: the unpin through node
    // b is notified to nobody on a. PostgreSQL does not replay it; a's catch-up after
    // the listener reconnects delivers it.
    psql(&url, &format!("ALTER ROLE {role} NOLOGIN"));
    let listener = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE usename = '{role}' AND query LIKE 'LISTEN %'"
    );
    assert_eq!(
        psql_value(&url, &listener),
        "1",
        "node a's listener connection"
    );
    let (s, v) = call(
        api_b,
        "PUT",
        format!("/v1/devices/{uuid}/pin"),
        json!({ "release": null }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        received(&r2),
        1,
        "the unpin arrived while node a could not listen"
    );
    psql(&url, &format!("ALTER ROLE {role} LOGIN"));
    wait_for(r2.clone(), 2, "an unpin missed by a's listener").await;

    // The public URL switched off through node b: node a, which holds the tunnel, stops
    // serving it.
    let (s, v) = call(
        api_b,
        "PUT",
        format!("/v1/devices/{uuid}/public-url"),
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let start = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || async {
            match try_get(http_a, &host).await {
                Some((s, _)) if s == StatusCode::NOT_FOUND => Some(()),
                _ => None,
            }
        })
        .await
        .is_some(),
        "node a still serves a public URL switched off through node b"
    );
    println!(
        "the public-URL switch through node b reached node a in {:?}",
        start.elapsed()
    );

    // An action queued through node b is delivered by node a.
    let (s, v) = call(
        api_b,
        "POST",
        format!("/v1/devices/{uuid}/actions"),
        json!({"action": "blink"}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = eventually(Duration::from_secs(15), || async {
        let (_, v) = api_json(api_b, token, "GET", &format!("/v1/actions/{id}"), None).await?;
        (v["status"] != "pending").then_some(v)
    })
    .await;
    assert!(
        done.is_some(),
        "the action queued through node b stayed pending"
    );

    // All of it over the tunnel the device opened first: no reconnect carried it.
    assert_eq!(
        sessions(),
        1,
        "the device reconnected; agent log:\n{}",
        log.lock().unwrap().join("\n")
    );
}

/// Three nodes on one database, six devices spread over them (each device file lists all
/// three nodes, starting at a different one). Every node serves every device's URL, each
/// with its own backend. Node a is killed with SIGKILL: its devices move to the
/// survivors, and every device is served again through both of them. Then node b is
/// stopped the way a rolling restart stops a node (SIGTERM): its devices move to c, and
/// node a, started again on its data dir, serves them all once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_keep_every_device_served_through_a_kill_and_a_rolling_restart() {
    let Some(url) = gateway::store::test_pg::database_url().await else {
        return;
    };
    const DEVICES: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    struct NodePorts {
        data: std::path::PathBuf,
        id: &'static str,
        http: u16,
        tunnel: u16,
        peer: u16,
    }
    let ports: Vec<NodePorts> = ["a", "b", "c"]
        .into_iter()
        .map(|id| NodePorts {
            data: dir.path().join(id),
            id,
            http: free_port_tcp(),
            tunnel: free_port_udp(),
            peer: free_port_udp(),
        })
        .collect();
    let start = |n: &NodePorts| node(&n.data, &url, n.id, (n.http, n.tunnel, n.peer), None);
    let mut nodes = vec![start(&ports[0])];
    assert!(serving(ports[0].http).await, "node a did not start");
    for n in &ports[1..] {
        share_ca(&ports[0].data, &n.data);
        nodes.push(start(n));
    }
    for n in &ports[1..] {
        assert!(serving(n.http).await, "node {} did not start", n.id);
    }

    // Device i lists the nodes starting at node i % 3.
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let list: Vec<String> = (0..3)
            .map(|k| format!("127.0.0.1:{}", ports[(i + k) % 3].tunnel))
            .collect();
        // One dir per device: an agent keeps its state beside its device file.
        let out = dir.path().join(format!("device-{i}")).join("device.toml");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let added = offline(
            &ports[0].data,
            &url,
            &[
                "device",
                "add",
                "--public-url",
                "--gateway",
                &list.join(","),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        let uuid = added.lines().last().unwrap().trim().to_string();
        let name = format!("device-{i}-page");
        let backend = Backend::spawn(&name).await;
        let agent = procs::agent(&out, backend.addr, &["--engine", "none"]);
        devices.push((device_host(&uuid), name, backend, agent));
    }

    // Every device answers with its own page through `http`, within `limit`.
    async fn all_served(
        devices: &[(String, String, Backend, Proc)],
        http: u16,
        limit: Duration,
    ) -> Result<(), String> {
        for (host, name, _, _) in devices {
            let got = eventually(limit, || async {
                let (s, body) = try_get(http, host).await?;
                (s == StatusCode::OK && String::from_utf8_lossy(&body).contains(name.as_str()))
                    .then_some(())
            })
            .await;
            if got.is_none() {
                let last = try_get(http, host).await.map(|(s, _)| s);
                return Err(format!(
                    "{host} ({name}) through port {http}: last answer {last:?}"
                ));
            }
        }
        Ok(())
    }
    let limit = Duration::from_secs(60);
    for n in &ports {
        if let Err(e) = all_served(&devices, n.http, limit).await {
            let listed = offline(&ports[0].data, &url, &["device", "list"]);
            panic!("before any failure, node {}: {e}\n{listed}", n.id);
        }
    }

    // kill -9 of node a: the survivors serve every device (a's devices reconnect to the
    // next node in their list once a's silence is noticed; its routes are cleared when
    // its lease runs out).
    nodes[0].proc.kill9();
    for n in &ports[1..] {
        all_served(&devices, n.http, limit)
            .await
            .unwrap_or_else(|e| panic!("after kill -9 of node a, node {}: {e}", n.id));
    }

    // Rolling restart: a comes back on its data dir and ports, then b is stopped
    // gracefully. c and a serve every device.
    nodes[0] = start(&ports[0]);
    assert!(serving(ports[0].http).await, "node a did not start again");
    // SIGTERM, as a service manager stops a node.
    let pid = nodes[1].proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let _ = nodes[1].proc.0.wait();
    for n in [&ports[2], &ports[0]] {
        all_served(&devices, n.http, limit)
            .await
            .unwrap_or_else(|e| panic!("with node b stopped, node {}: {e}", n.id));
    }
    for (_, _, _, agent) in &mut devices {
        agent.kill9();
    }
}
