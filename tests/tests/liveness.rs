//! How fast a tunnel comes back, with the shipped binaries and their default timings:
//! after a gateway `kill -9` and restart, after an agent `kill -9`, and with two agents
//! holding one identity.

use std::fs::File;
use std::time::{Duration, Instant};

use e2e_tests::procs::{self, device_add, try_get, wait_for_data_dir, wait_status};
use e2e_tests::*;
use http::StatusCode;

/// A gateway and one agent, both on default keep-alive and idle timeouts, with the
/// device's URL answering.
struct Fleet {
    dir: tempfile::TempDir,
    gw: procs::ServeProc,
    cfg: std::path::PathBuf,
    host: String,
    backend: Backend,
}

async fn fleet() -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let backend = Backend::spawn("lively").await;
    // Ports that stay free across a restart.
    let (http, tunnel) = (stable_port(false), stable_port(true));
    let gw = procs::serve(&data, http, tunnel, &[]);
    wait_for_data_dir(&data).await;
    let cfg = dir.path().join("device.toml");
    let uuid = device_add(&data, tunnel, &cfg);
    Fleet {
        host: device_host(&uuid),
        dir,
        gw,
        cfg,
        backend,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_urls_are_back_within_seconds_of_a_gateway_kill9_and_restart() {
    let mut f = fleet().await;
    let _agent = procs::agent(&f.cfg, f.backend.addr, &[]);
    assert!(
        wait_status(f.gw.http, &f.host, StatusCode::OK, Duration::from_secs(30)).await,
        "device never became reachable"
    );

    f.gw.proc.kill9();
    assert!(try_get(f.gw.http, &f.host).await.is_none());
    let data = f.dir.path().join("gw");
    let _gw2 = procs::serve(&data, f.gw.http, f.gw.tunnel, &[]);
    // From the moment the restarted gateway answers at all...
    let up = eventually(Duration::from_secs(30), || async {
        try_get(f.gw.http, &f.host).await.map(|_| Instant::now())
    })
    .await
    .expect("the gateway did not come back");
    // ...until the device's URL works again. The persisted stateless-reset key makes the
    // agent's next keep-alive (1 s) end its old connection at once; without it the agent
    // waits out its 15 s idle timeout. Target 2 s; asserted with margin for a slow host.
    assert!(
        wait_status(f.gw.http, &f.host, StatusCode::OK, Duration::from_secs(30)).await,
        "device did not come back after the gateway restart"
    );
    let dark = up.elapsed();
    eprintln!("public URL back {dark:?} after the restarted gateway answered");
    assert!(
        dark < Duration::from_secs(6),
        "public URL came back only after {dark:?} (the agent waited out its idle timeout?)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_noticed_within_seconds() {
    let f = fleet().await;
    let mut agent = procs::agent(&f.cfg, f.backend.addr, &[]);
    assert!(wait_status(f.gw.http, &f.host, StatusCode::OK, Duration::from_secs(30)).await);

    // No goodbye: the process and its UDP socket vanish.
    agent.kill9();
    let killed = Instant::now();
    assert!(
        wait_status(
            f.gw.http,
            &f.host,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30)
        )
        .await,
        "the dead tunnel was never noticed"
    );
    let noticed = killed.elapsed();
    eprintln!("dead agent noticed after {noticed:?}");
    // Three missed 1 s keep-alives plus a second: about 4 s, against the 15 s idle timeout.
    assert!(
        noticed < Duration::from_secs(9),
        "the gateway noticed the dead agent only after {noticed:?}"
    );
}

/// `path` opened for appending: stdout and stderr of one process can share it.
fn log_file(path: &std::path::Path) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// A real `gateway serve` logging at INFO to a file, one device added, and a backend
/// for it: what the identity tests read the gateway's words from.
struct LoggedGateway {
    dir: tempfile::TempDir,
    _gw: Proc,
    http: u16,
    gw_log: std::path::PathBuf,
    /// The device's agent configuration.
    cfg: std::path::PathBuf,
    /// The device's public host.
    host: String,
    backend: Backend,
}

async fn logged_gateway(backend: &str) -> LoggedGateway {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let backend = Backend::spawn(backend).await;
    let (http, tunnel) = (free_port_tcp(), free_port_udp());
    let gw_log = dir.path().join("gateway.log");
    let gw = Proc::spawn(
        procs::serve_command(&data, http, tunnel, &[])
            .env("RUST_LOG", "info")
            .stderr(log_file(&gw_log))
            .stdout(log_file(&gw_log)),
    );
    wait_for_data_dir(&data).await;
    let cfg = dir.path().join("device.toml");
    let uuid = device_add(&data, tunnel, &cfg);
    LoggedGateway {
        host: device_host(&uuid),
        dir,
        _gw: gw,
        http,
        gw_log,
        cfg,
        backend,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_one_identity_are_told_apart_and_stop_flapping() {
    let LoggedGateway {
        dir,
        _gw,
        http,
        gw_log,
        cfg,
        host,
        backend,
    } = logged_gateway("twin").await;
    // The same data (a cloned SD card): one certificate, two processes.
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let _agents: Vec<Proc> = logs
        .iter()
        .map(|l| {
            let card = l.with_extension("card");
            std::fs::create_dir(&card).unwrap();
            std::fs::copy(&cfg, card.join("device.toml")).unwrap();
            Proc::spawn(
                procs::agent_command(&card.join("device.toml"), backend.addr, &[])
                    .stderr(log_file(l))
                    .stdout(log_file(l)),
            )
        })
        .collect();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();

    // The gateway names both addresses in one warning.
    let warning = eventually(Duration::from_secs(60), || async {
        read(&gw_log)
            .lines()
            .find(|l| l.contains("two agents share this device's identity"))
            .map(str::to_string)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no duplicate-identity warning; gateway log:\n{}\nagents:\n{}\n{}",
            read(&gw_log),
            read(&logs[0]),
            read(&logs[1])
        )
    });
    assert!(
        warning.matches("127.0.0.1:").count() >= 2,
        "both addresses named: {warning}"
    );
    // The refused agent says why it backs off.
    assert!(
        eventually(Duration::from_secs(10), || async {
            logs.iter()
                .any(|l| read(l).contains("another agent uses this device's identity"))
                .then_some(())
        })
        .await
        .is_some(),
        "neither agent reported backing off:\n{}\n{}",
        read(&logs[0]),
        read(&logs[1])
    );

    // From then on the survivor keeps its session: no more replacements while the loser
    // retries now and then (and is refused each time), and the URL answers throughout.
    let replacements = || {
        read(&gw_log)
            .matches("replacing older session of this device")
            .count()
    };
    let before = replacements();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let (status, _) = try_get(http, &host).await.expect("gateway answers");
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        replacements(),
        before,
        "sessions kept replacing each other after the duplicate was detected:\n{}",
        read(&gw_log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_again_and_again_is_never_taken_for_a_copy_of_itself() {
    let LoggedGateway {
        dir: _dir,
        _gw,
        http,
        gw_log,
        cfg,
        host,
        backend,
    } = logged_gateway("restarted").await;
    let mut agent = procs::agent(&cfg, backend.addr, &[]);
    assert!(wait_status(http, &host, StatusCode::OK, Duration::from_secs(30)).await);
    // Killed and started again at once, five times within a minute: each time the old
    // session is still live at the gateway (heard within its window) when the new
    // process replaces it. A new process is a new instance, not a second agent.
    for i in 1..=5 {
        agent.kill9();
        let restarted = Instant::now();
        agent = procs::agent(&cfg, backend.addr, &[]);
        assert!(
            wait_status(http, &host, StatusCode::OK, Duration::from_secs(30)).await,
            "restart {i}: the device did not come back"
        );
        println!("restart {i}: serving again after {:?}", restarted.elapsed());
    }
    let log = std::fs::read_to_string(&gw_log).unwrap();
    assert!(
        !log.contains("two agents share this device's identity"),
        "a restarted agent was refused as a copy of itself:\n{log}"
    );
    assert!(
        log.matches("replacing older session of this device")
            .count()
            >= 1,
        "no restart replaced a live session, so the test proved nothing:\n{log}"
    );
}
