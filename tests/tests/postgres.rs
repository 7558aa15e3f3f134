//! A gateway on PostgreSQL, as an operator runs one: `gateway serve --database URL`, and
//! the offline commands (`token create`, `device add`, `device list`) with the same
//! `--database`. The server is a real `postgres` that the test set-up starts in a temp
//! dir (`gateway::store::test_pg`); without PostgreSQL installed the test is skipped,
//! and under `CI=true` it fails.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e_tests::procs::{self, api_json, try_get, wait_status};
use e2e_tests::*;
use http::StatusCode;

/// `gateway ARGS --data-dir DATA --database URL`, which must succeed; its stdout.
fn offline(data: &Path, database: &str, args: &[&str]) -> String {
    let o = Command::new(bin("gateway"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .args(["--database", database])
        .output()
        .unwrap();
    assert!(o.status.success(), "gateway {args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// Whether a `serve` answers on its public port within 30 s (any answer: it is up).
async fn serving(http: u16) -> bool {
    eventually(Duration::from_secs(30), || {
        try_get(http, "nobody.devices.localhost")
    })
    .await
    .is_some()
}

/// `token create --role admin` and `device add --public-url` with `--database`, offline:
/// the admin token and the new device's uuid (its agent configuration written to `out`).
fn token_and_device(data: &Path, url: &str, tunnel: u16, out: &Path) -> (String, String) {
    let token = offline(data, url, &["token", "create", "--role", "admin"]);
    let gateway = format!("127.0.0.1:{tunnel}");
    let added = offline(
        data,
        url,
        &[
            "device",
            "add",
            "--public-url",
            "--gateway",
            &gateway,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let uuid = added.lines().last().unwrap().trim().to_string();
    assert_eq!(uuid.len(), 32, "{added}");
    (token.trim().to_string(), uuid)
}

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

/// Runs `sql` on `url` with psql (Debian's `postgresql-client`, installed with the server).
fn psql(url: &str, sql: &str) {
    let o = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql (apt-get install postgresql-client)");
    assert!(o.status.success(), "psql {sql:?}: {o:?}");
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
    std::fs::create_dir_all(&data_b).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(data_a.join(f), data_b.join(f)).unwrap();
    }
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
    let node = |data: &Path, id: &str, http: u16, tunnel: u16, api: u16| {
        let peer = format!("127.0.0.1:{}", free_port_udp());
        let api = format!("127.0.0.1:{api}");
        procs::serve(
            data,
            http,
            tunnel,
            &[
                "--database",
                &url,
                "--node-id",
                id,
                "--peer-listen",
                &peer,
                "--api-listen",
                &api,
            ],
        )
    };
    let (http_a, tunnel_a) = (free_port_tcp(), free_port_udp());
    let _a = node(&data_a, "a", http_a, tunnel_a, free_port_tcp());
    assert!(serving(http_a).await, "node a did not start");
    let out = dir.path().join("device.toml");
    let (token, uuid) = token_and_device(&data_a, &url, tunnel_a, &out);
    let host = device_host(&uuid);
    let mut agent = procs::agent(&out, backend.addr, &[]);
    assert!(wait_status(http_a, &host, StatusCode::OK, Duration::from_secs(30)).await);

    std::fs::create_dir_all(&data_b).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(data_a.join(f), data_b.join(f)).unwrap();
    }
    let (http_b, api_b) = (free_port_tcp(), free_port_tcp());
    let _b = node(&data_b, "b", http_b, free_port_udp(), api_b);
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
