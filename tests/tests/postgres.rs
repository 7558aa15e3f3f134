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
        eventually(Duration::from_secs(30), || try_get(
            http,
            "nobody.devices.localhost"
        ))
        .await
        .is_some(),
        "gateway serve --database did not start listening"
    );

    let token = offline(&data, &url, &["token", "create", "--role", "admin"]);
    let token = token.trim();
    let out = dir.path().join("device.toml");
    let added = offline(
        &data,
        &url,
        &[
            "device",
            "add",
            "--public-url",
            "--gateway",
            &format!("127.0.0.1:{tunnel}"),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let uuid = added.lines().last().unwrap().trim().to_string();
    assert_eq!(uuid.len(), 32, "{added}");
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
