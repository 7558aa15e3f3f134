//! The fleet page: releases listed with their status, a compose file published (its
//! error shown with line and key, then a good one), the fleet pinned, a device pinned
//! from its page, fleet variables for admins. Headless Chromium for what a person does;
//! hyper for the role and CSRF refusals.

use std::time::Duration;

use e2e_tests::dashboard::*;
use e2e_tests::*;
use http::StatusCode;
use serde_json::json;

const GOOD_V1: &str =
    "services:\n  web:\n    image: edge-test/web:v1\n    ports:\n      - \"8080:80\"\n";
const GOOD_V2: &str =
    "services:\n  web:\n    image: edge-test/web:v2\n    ports:\n      - \"8080:80\"\n";
/// Line 5 is the bad port, at key `services.web.ports[0]`.
const BAD: &str = "services:\n  web:\n    image: edge-test/web:v1\n    ports:\n      - \"80x\"\n";

/// Puts `text` in the publish box and submits it.
async fn publish(b: &browser::Browser, text: &str) {
    b.script(&format!(
        "document.querySelector('form.publish textarea[name=compose]').value = {}; return 1",
        json!(text)
    ))
    .await;
    let go = b.find("form.publish button[type=submit]").await;
    b.click(&go).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_publishes_a_release_after_an_error_and_pins_the_fleet_and_a_device() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    api_ok(&api, &admin, "POST", "/v1/fleets", json!({"name": "signs"})).await;
    let uuid = gw.add_device(false).await.uuid;
    api_ok(
        &api,
        &admin,
        "PATCH",
        &format!("/v1/devices/{uuid}"),
        json!({"name": "sign-1", "fleet": "signs"}),
    )
    .await;
    user_add(&gw, "ann", "operator", "releases-password");
    let Some(b) = browser(1280, 900).await else {
        return;
    };
    let base = format!("http://{}", gw.api_addr);
    browser_sign_in(&b, &base, "ann", "releases-password").await;
    b.goto(&format!("{base}/fleets")).await;
    let link = b.find("a[href=\"/fleets/signs\"]").await;
    b.click(&link).await;
    wait_for(
        &b,
        "return location.pathname",
        json!("/fleets/signs"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        b.script("return document.querySelectorAll('table.releases').length")
            .await,
        0,
        "no release yet"
    );

    // A compose file with an error: shown with its line and key, the text kept.
    publish(&b, BAD).await;
    wait_for(
        &b,
        "return document.querySelector('[data-refused=compose] [data-error-line]')?.dataset.errorLine ?? null",
        json!("5"),
        Duration::from_secs(10),
    )
    .await;
    let alert = b
        .script("return document.querySelector('[data-refused=compose]').textContent")
        .await;
    let alert = alert.as_str().unwrap();
    assert!(
        alert.starts_with("Line 5, key services.web.ports[0]: "),
        "{alert}"
    );
    assert!(alert.contains("invalid port \"80x\""), "{alert}");
    assert_eq!(
        b.script("return document.querySelector('textarea[name=compose]').value")
            .await,
        BAD
    );
    let (_, list) = api
        .call("GET", "/v1/fleets/signs/releases", Some(&admin), None)
        .await;
    assert_eq!(list["releases"], json!([]), "a bad file was stored");

    // Two good ones: listed newest first, the newest marked, the device counted on it.
    publish(&b, GOOD_V1).await;
    wait_for(
        &b,
        "return document.querySelectorAll('[data-published]').length",
        json!(1),
        Duration::from_secs(10),
    )
    .await;
    // The second one from a file: the script reads it into the box.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, GOOD_V2).unwrap();
    let pick = b.find("input[data-compose-file]").await;
    b.type_into(&pick, file.to_str().unwrap()).await;
    wait_for(
        &b,
        "return document.querySelector('form.publish textarea[name=compose]').value",
        json!(GOOD_V2),
        Duration::from_secs(10),
    )
    .await;
    let go = b.find("form.publish button[type=submit]").await;
    b.click(&go).await;
    wait_for(
        &b,
        "return document.querySelectorAll('table.releases tbody tr').length",
        json!(2),
        Duration::from_secs(10),
    )
    .await;
    let (_, list) = api
        .call("GET", "/v1/fleets/signs/releases", Some(&admin), None)
        .await;
    let ids: Vec<String> = list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    let (v2, v1) = (&ids[0], &ids[1]);
    let status = |id: &str| {
        format!("return [...document.querySelectorAll('tr[data-release=\"{id}\"] [data-release-status]')].map(s => s.dataset.releaseStatus)")
    };
    let devices = |id: &str| {
        format!("return document.querySelector('tr[data-release=\"{id}\"] [data-release-devices]').dataset.releaseDevices")
    };
    assert_eq!(b.script(&status(v2)).await, json!(["newest"]));
    assert_eq!(b.script(&devices(v2)).await, "1");
    assert_eq!(b.script(&devices(v1)).await, "0");

    // Pin the fleet to the first (the page asks first; say yes).
    b.script("window.confirm = () => true; return 1").await;
    let pin = b.find(&format!("button[data-pin=\"{v1}\"]")).await;
    b.click(&pin).await;
    wait_for(&b, &status(v1), json!(["pinned"]), Duration::from_secs(10)).await;
    assert_eq!(b.script(&devices(v1)).await, "1");
    let (_, list) = api
        .call("GET", "/v1/fleets/signs/releases", Some(&admin), None)
        .await;
    assert_eq!(list["pinned_release"], v1.as_str(), "{list}");

    // Pin the device to the second, from its page.
    b.goto(&format!("{base}/devices/{uuid}")).await;
    b.script(&format!(
        "document.querySelector('form.pin-device select').value = '{v2}'; return 1"
    ))
    .await;
    // Marks this document, to see the next one come (the select already shows v2 here).
    b.script("window.__before = true; return 1").await;
    let save = b.find("form.pin-device button[type=submit]").await;
    b.click(&save).await;
    wait_for(
        &b,
        "return window.__before === undefined && document.querySelector('form.pin-device select').value",
        json!(v2),
        Duration::from_secs(10),
    )
    .await;
    let (_, target) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/target"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(target["source"], "device_pin", "{target}");
    assert_eq!(target["target"]["release"], v2.as_str(), "{target}");
    let page = b.script("return document.body.innerText").await;
    assert!(
        page.as_str().unwrap().contains("pinned on the device"),
        "{page}"
    );
    b.goto(&format!("{base}/fleets/signs")).await;
    b.screenshot(&docs_dir().join("releases-desktop.png")).await;
    // At phone width neither page scrolls sideways (tables scroll inside their card).
    b.resize(390, 844).await;
    for path in ["/fleets/signs".to_string(), format!("/devices/{uuid}")] {
        b.goto(&format!("{base}{path}")).await;
        assert_eq!(
            b.script("return document.documentElement.scrollWidth <= window.innerWidth")
                .await,
            true,
            "{path} scrolls sideways at 390 px"
        );
    }
    b.goto(&format!("{base}/fleets/signs")).await;
    b.screenshot(&docs_dir().join("releases-phone.png")).await;
    let (_, audit) = api
        .call("GET", "/v1/audit?limit=50", Some(&admin), None)
        .await;
    for action in ["release.create", "fleet.pin", "device.pin"] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action && e["actor"] == "user:ann"),
            "{action}: {audit}"
        );
    }
}

#[tokio::test]
async fn release_pin_and_fleet_env_forms_need_their_roles_and_the_csrf_token() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    for f in ["signs", "other"] {
        api_ok(&api, &admin, "POST", "/v1/fleets", json!({"name": f})).await;
    }
    let uuid = gw.add_device(false).await.uuid;
    api_ok(
        &api,
        &admin,
        "PATCH",
        &format!("/v1/devices/{uuid}"),
        json!({"fleet": "signs"}),
    )
    .await;
    let elsewhere = api_ok(
        &api,
        &admin,
        "POST",
        "/v1/fleets/other/releases",
        json!({"compose": GOOD_V1}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    user_add(&gw, "vic", "viewer", "viewer-password");
    user_add(&gw, "ann", "operator", "operator-password");
    user_add(&gw, "bob", "admin", "admin-password");
    let vcookie = session(&gw, "vic", "viewer-password").await;
    let ocookie = session(&gw, "ann", "operator-password").await;
    let acookie = session(&gw, "bob", "admin-password").await;
    let (vpage, vcsrf) = page_and_csrf(&gw, &vcookie, "/fleets/signs").await;
    let (opage, ocsrf) = page_and_csrf(&gw, &ocookie, "/fleets/signs").await;
    let (apage, acsrf) = page_and_csrf(&gw, &acookie, "/fleets/signs").await;
    assert!(!vpage.contains("form class=\"act publish\""), "{vpage}");
    assert!(opage.contains("form class=\"act publish\""), "{opage}");
    // Fleet variables: the admin's form only.
    assert!(
        !opage.contains("env-set"),
        "an operator sees the fleet env form"
    );
    assert!(opage.contains("Read-only for you (operator)"), "{opage}");
    assert!(apage.contains("env-set"), "{apage}");

    let publish = |csrf: &str, text: &str| form_body(&[("csrf", csrf), ("compose", text)]);
    let env = |csrf: &str| {
        form_body(&[
            ("csrf", csrf),
            ("op", "set"),
            ("name", "REGION"),
            ("value", "eu"),
            ("service", ""),
        ])
    };
    let pin_device = format!("/devices/{uuid}/pin");
    for (what, cookie, path, form) in [
        (
            "viewer publishes",
            &vcookie,
            "/fleets/signs/releases",
            publish(&vcsrf, GOOD_V1),
        ),
        (
            "viewer pins",
            &vcookie,
            "/fleets/signs/pin",
            form_body(&[("csrf", &vcsrf), ("release", "")]),
        ),
        (
            "viewer pins a device",
            &vcookie,
            pin_device.as_str(),
            form_body(&[("csrf", &vcsrf), ("release", "")]),
        ),
        (
            "operator without CSRF",
            &ocookie,
            "/fleets/signs/releases",
            publish("", GOOD_V1),
        ),
        (
            "operator with another's CSRF",
            &ocookie,
            "/fleets/signs/releases",
            publish(&vcsrf, GOOD_V1),
        ),
        (
            "operator sets fleet env",
            &ocookie,
            "/fleets/signs/env",
            env(&ocsrf),
        ),
        ("admin without CSRF", &acookie, "/fleets/signs/env", env("")),
    ] {
        let (s, _, _) = http(&gw, "POST", path, Some(cookie), Some(&form)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{what}");
    }
    let (_, list) = api
        .call("GET", "/v1/fleets/signs/releases", Some(&admin), None)
        .await;
    assert_eq!(list["releases"], json!([]), "{list}");

    // An empty box, and the same file twice: said so.
    let (s, _, page) = http(
        &gw,
        "POST",
        "/fleets/signs/releases",
        Some(&ocookie),
        Some(&publish(&ocsrf, "  \n")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("paste a compose file"), "{page}");
    let (s, _, page) = http(
        &gw,
        "POST",
        "/fleets/signs/releases",
        Some(&ocookie),
        Some(&publish(&ocsrf, BAD)),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("data-error-line=\"5\""), "{page}");
    let mut first = String::new();
    for again in [false, true] {
        let (s, h, _) = http(
            &gw,
            "POST",
            "/fleets/signs/releases",
            Some(&ocookie),
            Some(&publish(&ocsrf, GOOD_V1)),
        )
        .await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        let to = h["location"].to_str().unwrap().to_string();
        assert_eq!(to.contains("&same=1"), again, "{to}");
        if !again {
            first = to;
        }
    }
    let (_, _, page) = http(&gw, "GET", &first, Some(&ocookie), None).await;
    assert!(page.contains("Published release"), "{page}");

    // A device pinned to another fleet's release: the API's 409, beside the pin form.
    let (s, _, page) = http(
        &gw,
        "POST",
        &pin_device,
        Some(&ocookie),
        Some(&form_body(&[("csrf", &ocsrf), ("release", &elsewhere)])),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(page.contains("data-refused=\"pin\""), "{page}");
    assert!(page.contains("belongs to fleet"), "{page}");
    // A fleet that does not exist: 404.
    let (s, _, _) = http(&gw, "GET", "/fleets/nope", Some(&ocookie), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The admin sets a fleet variable, through the API's handler.
    let (s, h, _) = http(
        &gw,
        "POST",
        "/fleets/signs/env",
        Some(&acookie),
        Some(&env(&acsrf)),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/fleets/signs#env");
    let (_, vars) = api
        .call("GET", "/v1/fleets/signs/env", Some(&admin), None)
        .await;
    assert_eq!(vars["vars"], json!({"REGION": "eu"}), "{vars}");
    let (_, audit) = api
        .call("GET", "/v1/audit?limit=50", Some(&admin), None)
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "fleet.env" && e["actor"] == "user:bob"),
        "{audit}"
    );
}

// ---- benchmark (run by bench/dashboard/fleet.sh) ----

/// Time to serve a fleet page (`/fleets/{name}`) whose fleet has `BENCH_DEVICES` (default
/// 10,000) devices and `BENCH_RELEASES` (default 20) releases: the page counts, per
/// release, the devices that should run it. Then one of its devices' pages (which lists
/// the releases for the pin form). Sequential requests on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/dashboard/fleet.sh"]
async fn bench_fleet_page() {
    let var = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, releases, rounds) = (
        var("BENCH_DEVICES", 10_000),
        var("BENCH_RELEASES", 20),
        var("BENCH_ITERATIONS", 50),
    );
    let gw = TestGateway::spawn().await;
    let store = gateway::store::Store::open(&gw.data_dir).await.unwrap();
    store.create_fleet("big", false).await.unwrap();
    let started = std::time::Instant::now();
    let mut last = None;
    for i in 0..n {
        let mut bytes = [0u8; 16];
        bytes[8..].copy_from_slice(&(i as u64).to_be_bytes());
        let uuid = protocol::DeviceUuid::from_bytes(bytes);
        store.register_device(uuid, Some("big")).await.unwrap();
        last = Some(uuid);
    }
    for r in 0..releases {
        let text = GOOD_V1.replace(":v1", &format!(":v{r}"));
        // The content hash, as compose::release_hash makes it (SHA-256 hex of the text).
        let hash = certs::sha256_hex(text.as_bytes());
        store
            .create_release("big", &text, &hash, "bench")
            .await
            .unwrap();
    }
    eprintln!(
        "{n} devices and {releases} releases stored in {:?}",
        started.elapsed()
    );
    let (_, operator, _) = tokens(&gw).await;
    let (s, h) = post_login(&gw, &format!("token={operator}")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let cookie = format!(
        "gw_session={}",
        cookie_value(set_cookie(&h, "gw_session").unwrap())
    );
    let device = last.unwrap();
    println!("| page | p50 ms | p90 ms | max ms | bytes |");
    println!("|---|---:|---:|---:|---:|");
    for (name, path) in [
        (
            format!("fleet page ({n} devices, {releases} releases)"),
            "/fleets/big".to_string(),
        ),
        ("device page".to_string(), format!("/devices/{device}")),
    ] {
        let mut samples = Vec::with_capacity(rounds);
        let mut size = 0;
        for i in 0..rounds + 5 {
            let t = std::time::Instant::now();
            let (s, _, page) = http(&gw, "GET", &path, Some(&cookie), None).await;
            let took = t.elapsed();
            assert_eq!(s, StatusCode::OK, "{path}");
            if i >= 5 {
                samples.push(took);
            }
            size = page.len();
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {size} |",
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() * 9 / 10]),
            ms(*samples.last().unwrap()),
        );
    }
}
