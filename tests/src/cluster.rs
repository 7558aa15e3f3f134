//! Gateway nodes on one PostgreSQL database, as an operator runs them: `gateway serve
//! --database URL --node-id ID --peer-listen ADDR`, and the offline commands with the same
//! `--database`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::procs::{self, try_get, ServeProc};
use crate::{bin, eventually};

/// `gateway ARGS --data-dir DATA --database URL`, run to its end.
fn run_offline(data: &Path, database: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("gateway"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .args(["--database", database])
        .output()
        .unwrap()
}

/// `gateway ARGS --data-dir DATA --database URL`, which must succeed; its stdout.
pub fn offline(data: &Path, database: &str, args: &[&str]) -> String {
    let o = run_offline(data, database, args);
    assert!(o.status.success(), "gateway {args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// `gateway ARGS --data-dir DATA --database URL`, which must fail; its stderr.
pub fn offline_fails(data: &Path, database: &str, args: &[&str]) -> String {
    let o = run_offline(data, database, args);
    assert!(!o.status.success(), "gateway {args:?} succeeded: {o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether a `serve` answers on its public port within 30 s (any answer: it is up).
pub async fn serving(http: u16) -> bool {
    eventually(Duration::from_secs(30), || {
        try_get(http, "nobody.devices.localhost")
    })
    .await
    .is_some()
}

/// `token create --role admin` and `device add --public-url` with `--database`, offline:
/// the admin token and the new device's uuid (its agent configuration written to `out`).
pub fn token_and_device(data: &Path, url: &str, tunnel: u16, out: &Path) -> (String, String) {
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

/// Gives the node with data dir `to` the fleet CA of the node in `from` (the files,
/// as `docs/cluster.md` says an operator shares them).
pub fn share_ca(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// One node of the cluster on `url`: `serve` with its node id, peer address and, when
/// given, management API port.
pub fn node(
    data: &Path,
    url: &str,
    id: &str,
    ports: (u16, u16, u16),
    api: Option<u16>,
) -> ServeProc {
    let (http, tunnel, peer) = ports;
    let peer = format!("127.0.0.1:{peer}");
    let api = api.map(|p| format!("127.0.0.1:{p}"));
    let mut args = vec!["--database", url, "--node-id", id, "--peer-listen", &peer];
    if let Some(api) = &api {
        args.extend(["--api-listen", api.as_str()]);
    }
    procs::serve(data, http, tunnel, &args)
}

/// Runs `sql` on `url` with psql (Debian's `postgresql-client`, installed with the server).
pub fn psql(url: &str, sql: &str) {
    let o = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql (apt-get install postgresql-client)");
    assert!(o.status.success(), "psql {sql:?}: {o:?}");
}

/// Runs `sql` on `url` with psql; its one value.
pub fn psql_value(url: &str, sql: &str) -> String {
    let o = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-t", "-A", "-c", sql])
        .output()
        .expect("psql (apt-get install postgresql-client)");
    assert!(o.status.success(), "psql {sql:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}
