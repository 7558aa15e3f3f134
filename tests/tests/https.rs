//! Public HTTPS: `gateway serve --https-listen` with an operator's wildcard certificate,
//! reached with curl (HTTP/1.1 and h2 by ALPN), the certificate swapped on SIGHUP and by a
//! change of its files, and plain HTTP redirected (docs in README "Deploy it for real").

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e_tests::procs::{self, wait_status};
use e2e_tests::*;
use http::StatusCode;

/// A wildcard certificate for `*.devices.localhost` from a CA of its own in `dir`,
/// written to `cert` and `key`; the CA's certificate path.
fn issue(dir: &Path, cert: &Path, key: &Path) -> std::path::PathBuf {
    let ca = certs::Ca::load_or_create(dir).unwrap();
    let id = ca.issue_server(&["*.devices.localhost".into()]).unwrap();
    // Written whole, then renamed: the gateway never reads half a file.
    for (path, pem) in [(cert, &id.cert_pem), (key, &id.key_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    dir.join("ca.pem")
}

/// `curl` over HTTPS to `host` on `port` (resolved to loopback), trusting `ca`: the HTTP
/// version, status and body, or `None` when the request failed (a certificate refused).
fn curl(ca: &Path, host: &str, port: u16, path: &str, extra: &[&str]) -> Option<(String, String)> {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl (apt-get install curl)");
    if !o.status.success() {
        return None;
    }
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, meta) = out.rsplit_once('\n')?;
    Some((meta.to_string(), body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_served_over_https_with_a_certificate_that_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("wild.pem"), dir.path().join("wild.key"));
    let ca1 = issue(&dir.path().join("ca1"), &cert, &key);
    let data = dir.path().join("gw");
    let (http, tunnel, https) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let https_listen = format!("127.0.0.1:{https}");
    let gw = procs::serve(
        &data,
        http,
        tunnel,
        &[
            "--https-listen",
            &https_listen,
            "--https-cert",
            cert.to_str().unwrap(),
            "--https-key",
            key.to_str().unwrap(),
            "--https-redirect",
        ],
    );
    procs::wait_for_data_dir(&data).await;
    let out = dir.path().join("device").join("device.toml");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let uuid = procs::device_add(&data, tunnel, &out);
    let host = device_host(&uuid);
    let backend = Backend::spawn("over-https").await;
    let _agent = procs::agent(&out, backend.addr, &["--engine", "none"]);

    // Plain HTTP is sent to the same URL over HTTPS.
    assert!(
        wait_status(
            http,
            &host,
            StatusCode::PERMANENT_REDIRECT,
            Duration::from_secs(30)
        )
        .await,
        "plain HTTP is not redirected"
    );
    let o = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{redirect_url}"])
        .args(["--resolve", &format!("{host}:{http}:127.0.0.1")])
        .arg(format!("http://{host}:{http}/a/b?c=1"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("https://{host}:{https}/a/b?c=1")
    );

    // The device's page over HTTPS, on HTTP/1.1 and on h2 (ALPN).
    let page = eventually(Duration::from_secs(30), || async {
        curl(&ca1, &host, https, "/", &["--http1.1"]).filter(|(m, _)| m == "1.1 200")
    })
    .await
    .expect("the device never answered over HTTPS");
    assert_eq!(page.1, "hello from over-https");
    let (meta, body) = curl(&ca1, &host, https, "/", &["--http2"]).expect("h2 request");
    assert_eq!(
        (meta.as_str(), body.as_str()),
        ("2 200", "hello from over-https")
    );
    // The device learns the visitor used HTTPS.
    let (_, headers) = curl(&ca1, &host, https, "/headers", &[]).unwrap();
    assert!(headers.contains("x-forwarded-proto: https"), "{headers}");
    assert!(headers.contains("proto=https"), "{headers}");
    // An unknown device is a 404 page over HTTPS too, not a TLS failure.
    let (meta, _) = curl(
        &ca1,
        &device_host("0123456789abcdef0123456789abcdef"),
        https,
        "/",
        &[],
    )
    .expect("an unknown device's host gets an answer");
    assert_eq!(meta.split(' ').nth(1), Some("404"));

    // A new certificate (another CA) and SIGHUP: new connections get it.
    let ca2 = issue(&dir.path().join("ca2"), &cert, &key);
    let hup = || {
        let st = Command::new("kill")
            .args(["-HUP", &gw.proc.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    // Whether the device answers over HTTPS with a certificate `ca` signed, soon.
    let serves_with = |ca: std::path::PathBuf| {
        let host = host.clone();
        async move {
            eventually(Duration::from_secs(20), || async {
                curl(&ca, &host, https, "/", &[]).filter(|(m, _)| m.ends_with(" 200"))
            })
            .await
            .is_some()
        }
    };
    hup();
    assert!(
        serves_with(ca2).await,
        "the certificate was not reloaded on SIGHUP"
    );
    assert!(
        curl(&ca1, &host, https, "/", &[]).is_none(),
        "the old certificate is still served"
    );

    // Without a signal: a change of the files is picked up by itself.
    let ca3 = issue(&dir.path().join("ca3"), &cert, &key);
    assert!(
        serves_with(ca3.clone()).await,
        "a changed certificate file was not reloaded"
    );

    // A broken file keeps the certificate in use (and the gateway up): every request
    // succeeds for longer than two file checks (2 s apart) after the SIGHUP...
    std::fs::write(&key, "not a key").unwrap();
    std::fs::write(&cert, "not a certificate").unwrap();
    hup();
    let hold = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < hold {
        assert!(
            curl(&ca3, &host, https, "/", &[]).is_some_and(|(m, _)| m.ends_with(" 200")),
            "a broken certificate file stopped HTTPS"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // ...and the watch survived it: a good file again is picked up.
    let ca4 = issue(&dir.path().join("ca4"), &cert, &key);
    assert!(
        serves_with(ca4).await,
        "a good certificate after a broken one was not reloaded"
    );
}

#[test]
fn https_flags_go_together_and_a_bad_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let o = procs::serve_command(
        &data,
        free_port_tcp(),
        free_port_udp(),
        &["--https-listen", "127.0.0.1:0"],
    )
    .output()
    .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--https-cert") && err.contains("--acme-directory"),
        "{err}"
    );

    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    issue(&dir.path().join("ca"), &cert, &key);
    // A key of another certificate.
    let (other_cert, other_key) = (dir.path().join("c2.pem"), dir.path().join("k2.pem"));
    issue(&dir.path().join("ca2"), &other_cert, &other_key);
    let o = procs::serve_command(
        &data,
        free_port_tcp(),
        free_port_udp(),
        &[
            "--https-listen",
            "127.0.0.1:0",
            "--https-cert",
            cert.to_str().unwrap(),
            "--https-key",
            other_key.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(!o.status.success(), "a mismatched key was accepted");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.to_lowercase().contains("key"), "{err}");
}

/// `--https-listen` on the tunnel's TCP address: one port serves visitors over HTTPS and a
/// device whose tunnel runs over TLS on TCP (UDP not used), told apart by ALPN. Bytes
/// that are not TLS are closed, and both keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnels_tcp_fallback_and_https_share_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("wild.pem"), dir.path().join("wild.key"));
    let ca = issue(&dir.path().join("ca"), &cert, &key);
    let data = dir.path().join("gw");
    let (http, port) = (free_port_tcp(), free_port_udp());
    let shared = format!("127.0.0.1:{port}");
    let _gw = procs::serve(
        &data,
        http,
        port,
        &[
            "--tunnel-tcp-listen",
            &shared,
            "--https-listen",
            &shared,
            "--https-cert",
            cert.to_str().unwrap(),
            "--https-key",
            key.to_str().unwrap(),
        ],
    );
    procs::wait_for_data_dir(&data).await;
    let out = dir.path().join("device").join("device.toml");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let uuid = procs::device_add(&data, port, &out);
    let host = device_host(&uuid);
    let backend = Backend::spawn("one-port").await;
    // TCP only: the tunnel reaches the gateway through the shared port or not at all.
    let _agent = procs::agent(
        &out,
        backend.addr,
        &["--engine", "none", "--transport", "tcp"],
    );

    let page = eventually(Duration::from_secs(30), || async {
        curl(&ca, &host, port, "/", &["--http1.1"]).filter(|(m, _)| m == "1.1 200")
    })
    .await
    .expect("the device was never served over HTTPS on the shared port");
    assert_eq!(page.1, "hello from one-port");
    let (meta, body) = curl(&ca, &host, port, "/", &["--http2"]).expect("h2 on the shared port");
    assert_eq!(
        (meta.as_str(), body.as_str()),
        ("2 200", "hello from one-port")
    );

    // Plain HTTP and garbage on the port get no answer: the connection is closed.
    for junk in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0u8; 64][..]] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(junk).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
            .await
            .expect("a connection sending no TLS was left open");
        assert!(matches!(read, Ok(0) | Err(_)), "it was answered: {read:?}");
    }
    // The device's tunnel and HTTPS visitors are unaffected.
    let (meta, body) = curl(&ca, &host, port, "/", &[]).expect("HTTPS after the junk");
    assert!(meta.ends_with(" 200"), "{meta}");
    assert_eq!(body, "hello from one-port");
}
