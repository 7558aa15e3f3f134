//! The dashboard end to end: a real gateway and agents, users made with the `gateway user`
//! CLI, hyper as the browser where headers and cookies are asserted, and headless Chromium
//! over WebDriver for what a person sees (sign-in, live presence, filters, blink, the
//! screenshots, kept in docs/dashboard/ when run with `DASHBOARD_SCREENSHOTS=docs`).
//! This file: the tour, sign-in and session security, the demo link, the page benchmark.
//! The devices table's group actions are in `dashboard_devices.rs`, the device page in
//! `dashboard_device.rs`, fleets and releases in `dashboard_releases.rs`.

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_tests::browser::Browser;
use e2e_tests::dashboard::*;
use e2e_tests::*;
use http::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sign_in_live_presence_filters_blink_and_screenshots() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    api_ok(
        &api,
        &admin,
        "POST",
        "/v1/fleets",
        json!({"name": "kiosks"}),
    )
    .await;
    let kiosk = Device::new(&gw).await;
    let cam = Device::new(&gw).await;
    let (k, c) = (kiosk.cfg.uuid.clone(), cam.cfg.uuid.clone());
    api_ok(
        &api,
        &admin,
        "PATCH",
        &format!("/v1/devices/{k}"),
        json!({"name": "lobby-kiosk", "fleet": "kiosks"}),
    )
    .await;
    api_ok(
        &api,
        &admin,
        "PUT",
        &format!("/v1/devices/{k}/tags"),
        json!({"room": "lobby"}),
    )
    .await;
    api_ok(
        &api,
        &admin,
        "PATCH",
        &format!("/v1/devices/{c}"),
        json!({"name": "warehouse-cam"}),
    )
    .await;
    // A few more, so that the screenshots show a fleet.
    api_ok(
        &api,
        &admin,
        "POST",
        "/v1/fleets",
        json!({"name": "warehouse"}),
    )
    .await;
    for name in ["dock-sensor-1", "dock-sensor-2", "forklift-7"] {
        let cfg = gw.add_device(false).await;
        api_ok(
            &api,
            &admin,
            "PATCH",
            &format!("/v1/devices/{}", cfg.uuid),
            json!({"name": name, "fleet": "warehouse"}),
        )
        .await;
    }
    user_add(&gw, "ann", "operator", "correct-horse-battery");

    let Some(b) = Browser::start_sized(1280, 860).await else {
        assert!(!in_ci(), "chromedriver is missing and CI=true");
        println!("SKIPPED: chromedriver not installed (apt-get install chromium chromium-driver)");
        return;
    };
    let base = format!("http://{}", gw.api_addr);
    // Not signed in: the devices page sends the browser to the sign-in form.
    b.goto(&format!("{base}/devices")).await;
    let href = b.script("return location.pathname + location.search").await;
    assert_eq!(href, "/login?next=/devices");
    let user = b.find("input[name=user]").await;
    b.type_into(&user, "ann").await;
    let pw = b.find("input[name=password]").await;
    b.type_into(&pw, "correct-horse-battery").await;
    let submit = b.find("button[type=submit]").await;
    b.click(&submit).await;
    eventually(Duration::from_secs(10), || async {
        (b.script("return location.pathname").await == "/devices").then_some(())
    })
    .await
    .expect("signed in and on the devices page");
    let rows = b
        .script("return document.querySelectorAll('table.devices tbody tr').length")
        .await;
    assert_eq!(rows, 5);
    let who = b
        .script("return document.querySelector('.who-name').textContent")
        .await;
    assert_eq!(who, "ann");

    // The session cookie is HttpOnly and SameSite=Strict (and not Secure over http).
    let cookies = b.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "gw_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(session["secure"], false, "{session}");
    assert_eq!(b.script("return document.cookie").await, "", "HttpOnly");

    // Live presence: the agent starts after the page is open; the row turns online
    // without a reload (the marker set on this document survives).
    eventually(Duration::from_secs(10), || async {
        (b.script("return document.body.dataset.live").await == "open").then_some(())
    })
    .await
    .expect("the page's event stream opened");
    b.script("window.__sameDocument = true; return 1").await;
    let presence = |uuid: &str| {
        format!(
            "return document.querySelector('tr[data-uuid=\"{uuid}\"] [data-presence]').textContent"
        )
    };
    assert_eq!(b.script(&presence(&k)).await, "offline");
    let logs_dir = tempfile::tempdir().unwrap();
    let pipeline = edge_agent::logs::LogPipeline::start(logs_dir.path(), 1 << 20).unwrap();
    let mut agent = kiosk.start(pipeline.clone());
    agent.connected().await;
    eventually(Duration::from_secs(10), || async {
        (b.script(&presence(&k)).await == "online").then_some(())
    })
    .await
    .expect("the kiosk's row turned online live");
    assert_eq!(
        b.script("return window.__sameDocument === true").await,
        true
    );
    assert_eq!(b.script(&presence(&c)).await, "offline");
    let transport = b
        .script(&format!(
            "return document.querySelector('tr[data-uuid=\"{k}\"] [data-field=transport]').textContent"
        ))
        .await;
    assert!(
        matches!(transport.as_str(), Some("quic" | "tcp")),
        "{transport}"
    );
    // Reloaded, the row also shows what the agent reported (status, address).
    b.goto(&format!("{base}/devices")).await;
    eventually(Duration::from_secs(10), || async {
        let ip = b
            .script(&format!(
                "return document.querySelector('tr[data-uuid=\"{k}\"] td:last-child').textContent"
            ))
            .await;
        ip.as_str()?.contains("127.0.0.1").then_some(())
    })
    .await;
    b.screenshot(&docs_dir().join("devices-desktop.png")).await;

    // Filters: the search box, then the fleet select; each view is a link.
    let q = b.find("input[name=q]").await;
    b.type_into(&q, "cam").await;
    let filter = b.find("form.filters button[type=submit]").await;
    b.click(&filter).await;
    eventually(Duration::from_secs(10), || async {
        (b.script("return new URLSearchParams(location.search).get('q')")
            .await
            == "cam")
            .then_some(())
    })
    .await
    .expect("the search is in the address");
    let shown = b
        .script("return [...document.querySelectorAll('table.devices tbody tr')].map(r => r.dataset.uuid)")
        .await;
    assert_eq!(shown, json!([c]));
    b.goto(&format!("{base}/devices?fleet=kiosks&online=online"))
        .await;
    let shown = b
        .script("return [...document.querySelectorAll('table.devices tbody tr')].map(r => r.dataset.uuid)")
        .await;
    assert_eq!(shown, json!([k]));
    b.goto(&format!("{base}/devices?tag=room%3Dlobby")).await;
    let shown = b
        .script("return [...document.querySelectorAll('table.devices tbody tr')].map(r => r.dataset.uuid)")
        .await;
    assert_eq!(shown, json!([k]));

    // The fleets page counts the online kiosk.
    b.goto(&format!("{base}/fleets")).await;
    let online = b
        .script(
            "return document.querySelector('tr[data-fleet=kiosks] td:nth-child(3)').textContent",
        )
        .await;
    assert_eq!(online, "1 online");

    // Blink from the device page: the recent-actions table reaches "succeeded" by itself.
    b.goto(&format!("{base}/devices/{k}")).await;
    let blink = b.find("button[data-action=blink]").await;
    b.click(&blink).await;
    let status = eventually(Duration::from_secs(20), || async {
        let s = b
            .script("return document.querySelector('tbody[data-refresh] tr [data-status]')?.dataset.status")
            .await;
        (s == "succeeded").then_some(s)
    })
    .await;
    assert!(status.is_some(), "blink never showed succeeded");
    assert!(
        matches!(
            std::fs::read_to_string(kiosk.led())
                .unwrap_or_default()
                .as_str(),
            "0" | "1"
        ),
        "the LED file was not written"
    );
    // Audited as the user.
    let (_, audit) = api
        .call("GET", "/v1/audit?limit=50", Some(&admin), None)
        .await;
    let entries = audit.as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["action"] == "action.blink"
            && e["actor"] == "user:ann"
            && e["target"] == k.as_str()),
        "{audit}"
    );
    assert!(entries
        .iter()
        .any(|e| e["action"] == "dashboard.sign_in" && e["actor"] == "user:ann"));
    // The live log view shows the agent's lines as they come.
    b.goto(&format!("{base}/devices/{k}")).await;
    eventually(Duration::from_secs(10), || async {
        (b.script("return document.querySelector('[data-log-state]').textContent")
            .await
            == "live")
            .then_some(())
    })
    .await
    .expect("the log stream opened");
    pipeline
        .sink()
        .push(log_line("kiosk-ui", "served the lobby page".to_string()));
    eventually(Duration::from_secs(20), || async {
        let text = b
            .script("return document.querySelector('pre.logs').textContent")
            .await;
        text.as_str()?
            .contains("[kiosk-ui] served the lobby page")
            .then_some(())
    })
    .await
    .expect("a new log line in the live view");
    // The text filter re-opens the view with only the matching lines.
    pipeline
        .sink()
        .push(log_line("kiosk-cam", "rotated the camera".to_string()));
    let view = "return document.querySelector('pre.logs').textContent";
    eventually(Duration::from_secs(20), || async {
        let text = b.script(view).await;
        text.as_str()?.contains("rotated the camera").then_some(())
    })
    .await
    .expect("the camera's line in the live view");
    let q = b.find("form[data-log-filter] input[name=q]").await;
    b.type_into(&q, "lobby").await;
    eventually(Duration::from_secs(20), || async {
        let text = b.script(view).await;
        let text = text.as_str()?;
        (text.contains("served the lobby page") && !text.contains("rotated the camera"))
            .then_some(())
    })
    .await
    .expect("the filtered view shows only the lobby line");
    b.screenshot(&docs_dir().join("device-desktop.png")).await;

    // Phone width.
    b.resize(390, 844).await;
    let width = b.script("return window.innerWidth").await;
    assert!(width.as_i64().unwrap() <= 420, "{width}");
    b.screenshot(&docs_dir().join("device-phone.png")).await;
    b.goto(&format!("{base}/devices")).await;
    let overflow = b
        .script("return document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(
        overflow, true,
        "the devices page scrolls sideways at 390 px"
    );
    b.screenshot(&docs_dir().join("devices-phone.png")).await;

    // Signing out ends the session.
    let out = b.find("form.signout button").await;
    b.click(&out).await;
    eventually(Duration::from_secs(10), || async {
        (b.script("return location.pathname").await == "/login").then_some(())
    })
    .await
    .expect("signed out");
    b.goto(&format!("{base}/devices")).await;
    assert_eq!(b.script("return location.pathname").await, "/login");
    agent.stop().await;
}

#[tokio::test]
async fn api_tokens_sign_in_too_and_removed_users_lose_their_sessions() {
    let gw = TestGateway::spawn().await;
    let (viewer, _, _) = tokens(&gw).await;
    let (s, h) = post_login(&gw, &format!("token={viewer}")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let cookie = format!(
        "gw_session={}",
        cookie_value(set_cookie(&h, "gw_session").unwrap())
    );
    let (s, _, page) = http(&gw, "GET", "/fleets", Some(&cookie), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("viewer"), "{page}");

    // A support grant (scoped, expiring) is for the API only: the pages are not scoped.
    let device = gw.add_device(false).await.uuid;
    let o = Command::new(bin("gateway"))
        .args([
            "support", "grant", "--device", &device, "--role", "viewer", "--for", "1h",
        ])
        .arg("--data-dir")
        .arg(&gw.data_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let grant = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let (s, h) = post_login(&gw, &format!("token={grant}")).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a support grant signed in to the dashboard"
    );
    assert!(set_cookie(&h, "gw_session").is_none());

    user_add(&gw, "tmp", "admin", "temporary-pass");
    let set = sign_in(&gw, "tmp", "temporary-pass").await;
    let cookie = format!("gw_session={}", cookie_value(&set));
    let (s, _, _) = http(&gw, "GET", "/devices", Some(&cookie), None).await;
    assert_eq!(s, StatusCode::OK);
    let out = Command::new(bin("gateway"))
        .args(["user", "remove", "tmp", "--data-dir"])
        .arg(&gw.data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (s, _, _) = http(&gw, "GET", "/devices", Some(&cookie), None).await;
    assert_eq!(
        s,
        StatusCode::SEE_OTHER,
        "a removed user's session still works"
    );
    // Bad input to the CLI gets a specific error.
    let out = Command::new(bin("gateway"))
        .args(["user", "add", "x y", "--role", "viewer", "--data-dir"])
        .arg(&gw.data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not valid"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_session_cookie_is_secure() {
    let pki = tempfile::tempdir().unwrap();
    let ca = certs::Ca::load_or_create(pki.path()).unwrap();
    let server = ca.issue_server(&["localhost".to_string()]).unwrap();
    let (cert, key) = (pki.path().join("api.pem"), pki.path().join("api.key"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let gw = TestGateway::spawn_custom(|c| {
        c.api_tls_cert = Some(cert.clone());
        c.api_tls_key = Some(key.clone());
    })
    .await;
    user_add(&gw, "ann", "operator", "over-tls-password");
    let jar = pki.path().join("jar");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10", "--cacert"])
            .arg(pki.path().join("ca.pem"))
            .arg("-c")
            .arg(&jar)
            .arg("-b")
            .arg(&jar)
            .args(args)
            .output()
            .expect("curl (apt-get install curl)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = format!("https://localhost:{}", gw.api_addr.port());
    let form = curl(&[&format!("{base}/login")]);
    let nonce = csrf_in(&form);
    let signed = curl(&[
        "-d",
        &format!("csrf={nonce}&user=ann&password=over-tls-password"),
        &format!("{base}/login"),
    ]);
    let session = signed
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: gw_session=")
        })
        .unwrap_or_else(|| panic!("no session cookie: {signed}"));
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(session.contains(attr), "{attr} missing: {session}");
    }
}

#[tokio::test]
async fn repeated_wrong_passwords_get_429() {
    let gw = TestGateway::spawn_custom(|c| c.auth_failures_before_backoff = 3).await;
    user_add(&gw, "ann", "operator", "the-right-one");
    for _ in 0..3 {
        let (s, _) = post_login(&gw, "user=ann&password=wrong-guess").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, h, _) = http(&gw, "GET", "/login", None, None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(h.contains_key("retry-after"));
    // Even the right password waits out the window.
    let (s, _, _) = http(
        &gw,
        "POST",
        "/login",
        None,
        Some("user=ann&password=the-right-one"),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_demo_prints_a_one_time_sign_in_link() {
    use std::io::{BufRead, BufReader};
    let mut child = Proc::spawn(
        Command::new(bin("gateway"))
            .args(["demo", "--http-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("dashboard: ") {
                let _ = tx.send(rest.split(' ').next().unwrap().to_string());
            }
        }
    });
    let link = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo printed no dashboard link");
    let rest = link.strip_prefix("http://").expect(&link);
    let (addr, path) = rest.split_once('/').unwrap();
    assert!(path.starts_with("login/once?t="), "{link}");
    let get = |cookie: Option<String>, path: String| async move {
        let mut req = http::Request::builder().uri(format!("http://{addr}/{path}"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let resp = http_client()
            .request(req.body(empty()).unwrap())
            .await
            .unwrap();
        (resp.status(), resp.headers().clone())
    };
    let (s, h) = get(None, path.to_string()).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let session = cookie_value(set_cookie(&h, "gw_session").expect("signed in"));
    let (s, _) = get(Some(format!("gw_session={session}")), "devices".into()).await;
    assert_eq!(s, StatusCode::OK);
    // Single use.
    let (s, h) = get(None, path.to_string()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(set_cookie(&h, "gw_session").is_none());
}

// ---- benchmark (run by bench/dashboard/run.sh) ----

/// Time to serve a devices page of 50 with `BENCH_DEVICES` (default 10,000) devices in
/// the store: sequential requests on loopback, each timed from sending to the last byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/dashboard/run.sh"]
async fn bench_devices_page() {
    let n: usize = std::env::var("BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rounds: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let gw = TestGateway::spawn().await;
    let store = gateway::store::Store::open(&gw.data_dir).await.unwrap();
    for f in 0..10 {
        store
            .create_fleet(&format!("fleet-{f}"), false)
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    for i in 0..n {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        bytes[8..].copy_from_slice(&(i as u64).to_be_bytes());
        let uuid = protocol::DeviceUuid::from_bytes(bytes);
        store
            .register_device(uuid, Some(&format!("fleet-{}", i % 10)))
            .await
            .unwrap();
        if i % 3 == 0 {
            store.set_online(uuid, true).await.unwrap();
        }
    }
    eprintln!("{n} devices stored in {:?}", started.elapsed());
    let (viewer, _, _) = tokens(&gw).await;
    let (s, h) = post_login(&gw, &format!("token={viewer}")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let cookie = format!(
        "gw_session={}",
        cookie_value(set_cookie(&h, "gw_session").unwrap())
    );
    let last = n.div_ceil(50);
    let cases = [
        ("first page".to_string(), "/devices".to_string()),
        (
            format!("last page ({last})"),
            format!("/devices?page={last}"),
        ),
        (
            "fleet filter, page 1".into(),
            "/devices?fleet=fleet-3".into(),
        ),
        (
            "online filter, page 10".into(),
            "/devices?online=online&page=10".into(),
        ),
        ("text search".into(), "/devices?q=9e37".into()),
    ];
    println!("| page | p50 ms | p90 ms | max ms | rows | bytes |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, path) in cases {
        let mut samples = Vec::with_capacity(rounds);
        let mut size = 0;
        let mut rows = 0;
        for i in 0..rounds + 5 {
            let t = std::time::Instant::now();
            let (s, _, page) = http(&gw, "GET", &path, Some(&cookie), None).await;
            let took = t.elapsed();
            assert_eq!(s, StatusCode::OK, "{path}");
            if i >= 5 {
                samples.push(took);
            }
            size = page.len();
            rows = page.matches("<tr data-uuid=").count();
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {rows} | {size} |",
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() * 9 / 10]),
            ms(*samples.last().unwrap()),
        );
    }
}
