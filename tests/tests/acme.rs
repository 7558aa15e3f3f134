//! ACME for public HTTPS, against Debian's `pebble` (the ACME test server) and its
//! `pebble-challtestsrv` (a DNS server whose TXT records the gateway's DNS-01 hook sets):
//! `gateway serve --acme-directory` gets the wildcard certificate for `*.<domain>` by
//! itself, curl trusting only pebble's root reaches a device over HTTPS, a certificate
//! close to its expiry is renewed, and a refused challenge is logged with the CA's reason
//! while the gateway keeps serving (docs/https.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_tests::procs::{self};
use e2e_tests::*;

/// pebble, its DNS server and what a test needs to reach them.
struct Pebble {
    _procs: Vec<Proc>,
    /// The ACME directory URL.
    directory: String,
    /// The root pebble's own HTTPS listener is signed by (for `--acme-root`).
    https_root: PathBuf,
    /// pebble's management listener (serves the issuing root at `/roots/0`).
    management: u16,
    /// pebble-challtestsrv's management API (`/set-txt`, `/clear-txt`).
    dns_management: u16,
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts pebble and pebble-challtestsrv in `dir`; `None` (the test skips) when pebble is
/// not installed, except under CI, where that fails.
async fn pebble(dir: &Path) -> Option<Pebble> {
    if !have("pebble") || !have("pebble-challtestsrv") {
        assert!(
            std::env::var_os("CI").is_none(),
            "pebble is missing and CI=true (apt-get install pebble)"
        );
        println!("SKIPPED: pebble not installed (apt-get install pebble)");
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    // pebble's own HTTPS certificate, for `localhost`, from a CA of the test's.
    let ca = certs::Ca::load_or_create(&dir.join("ca")).unwrap();
    let id = ca.issue_server(&["localhost".into()]).unwrap();
    std::fs::write(dir.join("pebble.pem"), &id.cert_pem).unwrap();
    std::fs::write(dir.join("pebble.key"), &id.key_pem).unwrap();
    let (listen, management, dns, dns_management) = (
        free_port_tcp(),
        free_port_tcp(),
        free_port_udp(),
        free_port_tcp(),
    );
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": dir.join("pebble.pem"),
        "privateKey": dir.join("pebble.key"),
        "httpPort": 5002,
        "tlsPort": 5001,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let challtestsrv = Proc::spawn(
        Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null()),
    );
    let pebble = Proc::spawn(
        Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random waits before validating, no randomly refused nonces.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null()),
    );
    let p = Pebble {
        _procs: vec![challtestsrv, pebble],
        directory: format!("https://localhost:{listen}/dir"),
        https_root: dir.join("ca").join("ca.pem"),
        management,
        dns_management,
    };
    let up = eventually(Duration::from_secs(30), || async {
        let dir_ok = curl_ok(&p.https_root, &p.directory);
        let dns_ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{dns_management}/"))
            .status()
            .is_ok_and(|s| s.code() != Some(7)); // 7: connection refused
        (dir_ok && dns_ok).then_some(())
    })
    .await;
    assert!(up.is_some(), "pebble did not start");
    Some(p)
}

fn curl_ok(ca: &Path, url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(url)
        .status()
        .is_ok_and(|s| s.success())
}

impl Pebble {
    /// The root pebble issues certificates under (a new one each pebble start).
    fn issuing_root(&self, to: &Path) -> PathBuf {
        let o = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(&self.https_root)
            .arg(format!("https://localhost:{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(o.status.success(), "pebble's root: {o:?}");
        std::fs::write(to, &o.stdout).unwrap();
        to.to_path_buf()
    }

    /// A DNS-01 hook that publishes the record in pebble-challtestsrv, or (when `honest`
    /// is false) says it did while publishing nothing.
    fn hook(&self, dir: &Path, honest: bool) -> PathBuf {
        let path = dir.join(if honest { "hook.sh" } else { "liar.sh" });
        let api = format!("http://127.0.0.1:{}", self.dns_management);
        let body = if honest {
            format!(
                r#"case "$1" in
  set) curl -sf -d "{{\"host\":\"$2\",\"value\":\"$3\"}}" {api}/set-txt ;;
  clear) curl -sf -d "{{\"host\":\"$2\"}}" {api}/clear-txt ;;
  *) exit 2 ;;
esac
"#
            )
        } else {
            "exit 0\n".to_string()
        };
        std::fs::write(&path, format!("#!/bin/sh\nset -e\n{body}")).unwrap();
        std::process::Command::new("chmod")
            .args(["+x"])
            .arg(&path)
            .status()
            .unwrap();
        path
    }
}

/// `curl` over HTTPS to `host` on `port` (resolved to loopback) trusting only `ca`: the
/// status and body, or `None` when the TLS handshake or the request failed.
fn curl_https(ca: &Path, host: &str, port: u16) -> Option<(String, String)> {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{host}:{port}/"))
        .output()
        .unwrap();
    if !o.status.success() {
        return None;
    }
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n')?;
    Some((code.to_string(), body.to_string()))
}

/// `gateway serve` with ACME from `pebble`, its stderr in `log`.
fn serve_acme(
    data: &Path,
    (http, tunnel, https): (u16, u16, u16),
    p: &Pebble,
    hook: &Path,
    extra: &[&str],
    log: &Path,
) -> Proc {
    let https_listen = format!("127.0.0.1:{https}");
    let mut args = vec![
        "--https-listen",
        &https_listen,
        "--acme-directory",
        &p.directory,
        "--acme-dns-hook",
        hook.to_str().unwrap(),
        "--acme-root",
        p.https_root.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut cmd = procs::serve_command(data, http, tunnel, &args);
    cmd.env("RUST_LOG", "info")
        .stderr(std::fs::File::create(log).unwrap());
    Proc::spawn(&mut cmd)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_gets_renews_and_serves_a_wildcard_certificate_from_acme() {
    let dir = tempfile::tempdir().unwrap();
    let Some(p) = pebble(&dir.path().join("pebble")).await else {
        return;
    };
    let hook = p.hook(dir.path(), true);
    let data = dir.path().join("gw");
    let ports = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let log = dir.path().join("gw.log");
    let mut gw = serve_acme(&data, ports, &p, &hook, &[], &log);
    procs::wait_for_data_dir(&data).await;
    let out = dir.path().join("device").join("device.toml");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let uuid = procs::device_add(&data, ports.1, &out);
    let host = device_host(&uuid);
    let backend = Backend::spawn("acme").await;
    let _agent = procs::agent(&out, backend.addr, &["--engine", "none"]);

    // Trusting only pebble's issuing root, the device answers over HTTPS.
    let root = p.issuing_root(&dir.path().join("root.pem"));
    let page = eventually(Duration::from_secs(120), || async {
        curl_https(&root, &host, ports.2).filter(|(code, _)| code == "200")
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no HTTPS with an ACME certificate; gateway log:\n{}",
            read(&log)
        )
    });
    assert_eq!(page.1, "hello from acme");
    let cert_file = data.join("acme").join("cert.pem");
    let first = read(&cert_file);
    assert!(first.contains("BEGIN CERTIFICATE"), "{first}");
    let key_mode = std::fs::metadata(data.join("acme").join("key.pem"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(
        key_mode, 0o600,
        "the certificate's key is readable by others"
    );

    // Renewal: a cached certificate with a day left (within the default 30-day window)
    // is replaced at the next start, by a new order, and the new one is served.
    gw.kill9();
    let key = data.join("acme").join("key.pem");
    let mut params = rcgen::CertificateParams::new(vec!["*.devices.localhost".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    // 80 days old with one left: past the window, and past a third of its lifetime.
    params.not_before = now - time::Duration::days(80);
    params.not_after = now + time::Duration::days(1);
    let pair = rcgen::KeyPair::generate().unwrap();
    let expiring = params.self_signed(&pair).unwrap();
    std::fs::write(&key, pair.serialize_pem()).unwrap();
    std::fs::write(&cert_file, expiring.pem()).unwrap();
    let first = read(&cert_file);
    let log2 = dir.path().join("gw2.log");
    let _gw = serve_acme(&data, ports, &p, &hook, &[], &log2);
    let renewed = eventually(Duration::from_secs(120), || async {
        let now = read(&cert_file);
        (now.contains("BEGIN CERTIFICATE") && now != first).then_some(now)
    })
    .await
    .unwrap_or_else(|| panic!("the certificate was not renewed; log:\n{}", read(&log2)));
    assert!(
        read(&log2).contains("it expires within acme_renew_before"),
        "{}",
        read(&log2)
    );
    assert!(certs::not_after(&renewed).unwrap() > certs::not_after(&first).unwrap());
    let page = eventually(Duration::from_secs(120), || async {
        curl_https(&root, &host, ports.2).filter(|(code, _)| code == "200")
    })
    .await;
    assert!(
        page.is_some(),
        "no HTTPS after the renewal; log:\n{}",
        read(&log2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_challenge_is_logged_with_the_reason_and_the_gateway_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let Some(p) = pebble(&dir.path().join("pebble")).await else {
        return;
    };
    // The hook says it published the record, and did not: pebble finds no TXT record.
    let liar = p.hook(dir.path(), false);
    let data = dir.path().join("gw");
    let ports = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let log = dir.path().join("gw.log");
    let _gw = serve_acme(&data, ports, &p, &liar, &[], &log);
    procs::wait_for_data_dir(&data).await;
    let refused = eventually(Duration::from_secs(120), || async {
        let l = read(&log);
        l.contains("ACME: could not get a certificate").then_some(l)
    })
    .await
    .unwrap_or_else(|| panic!("no refusal logged:\n{}", read(&log)));
    assert!(refused.contains("the CA refused the order"), "{refused}");
    // pebble's reason names the missing TXT record (its problem type is unauthorized).
    assert!(
        refused.contains("unauthorized") || refused.contains("TXT"),
        "the CA's reason is not in the log: {refused}"
    );
    assert!(!data.join("acme").join("cert.pem").exists());

    // Devices are still served over plain HTTP.
    let out = dir.path().join("device").join("device.toml");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let uuid = procs::device_add(&data, ports.1, &out);
    let backend = Backend::spawn("no-acme").await;
    let _agent = procs::agent(&out, backend.addr, &["--engine", "none"]);
    assert!(
        procs::wait_status(
            ports.0,
            &device_host(&uuid),
            http::StatusCode::OK,
            Duration::from_secs(30)
        )
        .await,
        "plain HTTP stopped when ACME failed"
    );
}

#[test]
fn acme_flags_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let run = |extra: &[&str]| {
        let o = procs::serve_command(&data, free_port_tcp(), free_port_udp(), extra)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // A directory without the DNS hook.
    let err = run(&[
        "--https-listen",
        "127.0.0.1:0",
        "--acme-directory",
        "https://acme.example/dir",
    ]);
    assert!(err.contains("--acme-dns-hook"), "{err}");
    // ACME without HTTPS.
    let err = run(&[
        "--acme-directory",
        "https://acme.example/dir",
        "--acme-dns-hook",
        "/bin/true",
    ]);
    assert!(err.contains("--https-listen"), "{err}");
    // Not a URL.
    let err = run(&[
        "--https-listen",
        "127.0.0.1:0",
        "--acme-directory",
        "acme.example",
        "--acme-dns-hook",
        "/bin/true",
    ]);
    assert!(
        err.contains("acme_directory") && err.contains("not an http(s)://"),
        "{err}"
    );
}
