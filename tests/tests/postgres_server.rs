//! A gateway on a PostgreSQL server of the test's own, for what the shared test server
//! must not see: TLS required by the server, and a restart of the server under running
//! nodes (`docs/cluster.md`). Skipped without PostgreSQL installed; under `CI=true` a
//! failure.

use std::path::Path;
use std::time::Duration;

use e2e_tests::cluster::{
    node, offline, offline_fails, psql_value, serving, share_ca, token_and_device,
};
use e2e_tests::procs::{self, api_json, try_get, wait_status};
use e2e_tests::*;
use gateway::store::test_pg::OwnServer;
use http::StatusCode;

/// A server that takes TLS connections only (`hostssl`), with a certificate for
/// 127.0.0.1 from a CA whose certificate is written to `ca_pem`.
async fn tls_only_server(ca_dir: &Path) -> Option<OwnServer> {
    let ca = certs::Ca::load_or_create(ca_dir).unwrap();
    let id = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\n";
    OwnServer::new(
        &[
            "ssl=on",
            "ssl_cert_file={dir}/server.crt",
            "ssl_key_file={dir}/server.key",
            "hba_file={dir}/pg_hba.conf",
        ],
        &[
            ("server.crt", id.cert_pem.as_bytes()),
            ("server.key", id.key_pem.as_bytes()),
            ("pg_hba.conf", hba.as_bytes()),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reaches_postgres_over_verified_tls_and_refuses_what_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("pg-ca");
    let Some(pg) = tls_only_server(&ca_dir).await else {
        return;
    };
    let ca_pem = ca_dir.join("ca.pem");
    let base = pg.url("postgres");
    let verified = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        ca_pem.display()
    );
    let data = dir.path().join("gw");

    // Verified TLS: the offline commands and `serve` work, and the device is served.
    let (http, tunnel, api) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let api_listen = format!("127.0.0.1:{api}");
    let _gw = procs::serve(
        &data,
        http,
        tunnel,
        &["--database", &verified, "--api-listen", &api_listen],
    );
    assert!(
        serving(http).await,
        "serve over TLS to PostgreSQL did not start"
    );
    let out = dir.path().join("device").join("device.toml");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let (token, uuid) = token_and_device(&data, &verified, tunnel, &out);
    let backend = Backend::spawn("over-tls-to-pg").await;
    let _agent = procs::agent(&out, backend.addr, &["--engine", "none"]);
    assert!(
        wait_status(
            http,
            &device_host(&uuid),
            StatusCode::OK,
            Duration::from_secs(30)
        )
        .await,
        "the device never became reachable"
    );
    let (s, v) = api_json(
        api_listen.parse().unwrap(),
        &token,
        "GET",
        "/v1/devices",
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    // Errors name the server (never a password).
    let server = format!("PostgreSQL database at 127.0.0.1:{}/postgres", pg.port);
    let server = server.as_str();
    // The server takes no plain connection (the data dir exists now)...
    let plain = offline_fails(
        &data,
        &format!("{base}?sslmode=disable"),
        &["device", "list"],
    );
    assert!(
        plain.contains(server) && plain.contains("no encryption"),
        "{plain}"
    );
    // ...and a certificate from another CA is refused by the gateway.
    let other_ca = dir.path().join("other-ca");
    certs::Ca::load_or_create(&other_ca).unwrap();
    let wrong = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        other_ca.join("ca.pem").display()
    );
    let refused = offline_fails(&data, &wrong, &["device", "list"]);
    assert!(
        refused.contains(server) && refused.contains("certificate"),
        "{refused}"
    );
    assert!(!refused.contains("panicked"), "{refused}");

    // Every connection the gateway holds is encrypted.
    let ssl = offline(&data, &verified, &["device", "list"]);
    assert!(ssl.contains(&uuid), "{ssl}");
    let plain_sessions = psql_value(
        &format!("{base}?sslmode=require"),
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.client_addr IS NOT NULL AND NOT s.ssl",
    );
    assert_eq!(plain_sessions, "0", "a connection without TLS was open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_recover_by_themselves_when_postgres_restarts() {
    let Some(pg) = OwnServer::new(&[], &[]).await else {
        return;
    };
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let (http_a, tunnel_a, api_a) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let mut a = node(
        &data_a,
        &url,
        "a",
        (http_a, tunnel_a, free_port_udp()),
        Some(api_a),
    );
    assert!(serving(http_a).await, "node a did not start");
    share_ca(&data_a, &data_b);
    let (http_b, tunnel_b, api_b) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let mut b = node(
        &data_b,
        &url,
        "b",
        (http_b, tunnel_b, free_port_udp()),
        Some(api_b),
    );
    assert!(serving(http_b).await, "node b did not start");

    // One device on each node.
    let mut devices = Vec::new();
    let mut token = String::new();
    for (name, tunnel) in [("on-a", tunnel_a), ("on-b", tunnel_b)] {
        let out = dir.path().join(name).join("device.toml");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let (t, uuid) = token_and_device(&data_a, &url, tunnel, &out);
        token = t;
        let backend = Backend::spawn(name).await;
        let agent = procs::agent(&out, backend.addr, &["--engine", "none"]);
        devices.push((device_host(&uuid), name, backend, agent));
    }
    // Every device through every node, with its own page.
    let all_served = |limit: Duration| {
        let hosts: Vec<(String, &str)> =
            devices.iter().map(|(h, n, _, _)| (h.clone(), *n)).collect();
        async move {
            for http in [http_a, http_b] {
                for (host, name) in &hosts {
                    let ok = eventually(limit, || async {
                        let (s, body) = try_get(http, host).await?;
                        (s == StatusCode::OK && body == format!("hello from {name}")).then_some(())
                    })
                    .await;
                    if ok.is_none() {
                        return Err(format!("{name} not served through port {http}"));
                    }
                }
            }
            Ok(())
        }
    };
    all_served(Duration::from_secs(30)).await.unwrap();

    // The server goes away for longer than a lease (10 s): both nodes fence themselves.
    pg.stop();
    // (Not served: an error status, or no answer in time while the node waits for
    // its database.)
    let fenced = eventually(Duration::from_secs(40), || async {
        match try_get(http_a, &devices[0].0).await {
            Some((StatusCode::OK, _)) => None,
            _ => Some(()),
        }
    })
    .await;
    assert!(fenced.is_some(), "node a kept serving without its database");
    pg.start().unwrap();

    // Nobody acts: the nodes reconnect, renew their leases, take the devices back,
    // and serve them through either node again; the API answers on both.
    all_served(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("after the restart: {e}\n{}", pg.log()));
    for api in [api_a, api_b] {
        let api = format!("127.0.0.1:{api}").parse().unwrap();
        let (s, v) = api_json(api, &token, "GET", "/v1/devices", None)
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    }
    assert!(a.proc.0.try_wait().unwrap().is_none(), "node a exited");
    assert!(b.proc.0.try_wait().unwrap().is_none(), "node b exited");
}
