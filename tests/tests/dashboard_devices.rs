//! The devices table's group actions: select rows (or the whole page), run an action or a
//! public-URL switch on them. Headless Chromium against real agents for what a person
//! sees; hyper for the refusals (role, CSRF, bad input).

use std::time::Duration;

use e2e_tests::dashboard::*;
use e2e_tests::*;
use http::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_selects_two_devices_and_blinks_both() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    let one = Device::new(&gw).await;
    let two = Device::new(&gw).await;
    let idle = Device::new(&gw).await;
    for (d, name) in [(&one, "door-1"), (&two, "door-2"), (&idle, "door-3")] {
        api_ok(
            &api,
            &admin,
            "PATCH",
            &format!("/v1/devices/{}", d.cfg.uuid),
            json!({"name": name}),
        )
        .await;
    }
    let logs = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for (i, d) in [&one, &two].into_iter().enumerate() {
        let p = edge_agent::logs::LogPipeline::start(&logs.path().join(i.to_string()), 1 << 20)
            .unwrap();
        let mut a = d.start(p);
        a.connected().await;
        agents.push(a);
    }
    user_add(&gw, "ann", "operator", "group-actions-pw");
    let Some(b) = browser(1280, 860).await else {
        return;
    };
    let base = format!("http://{}", gw.api_addr);
    browser_sign_in(&b, &base, "ann", "group-actions-pw").await;

    // Nothing selected: the buttons are off and the bar says so.
    wait_for(
        &b,
        "return document.querySelector('[data-bulk-action=blink]').disabled",
        json!(true),
        Duration::from_secs(10),
    )
    .await;
    // Select-all checks every row; unchecking one leaves the other two.
    let all = b.find("[data-select-all]").await;
    b.click(&all).await;
    let checked = "return [...document.querySelectorAll('input[name=uuid]:checked')].length";
    assert_eq!(b.script(checked).await, 3);
    assert_eq!(
        b.script("return document.querySelector('[data-bulk-count]').textContent")
            .await,
        "3 devices selected"
    );
    let third = b
        .find(&format!("input[name=uuid][value=\"{}\"]", idle.cfg.uuid))
        .await;
    b.click(&third).await;
    assert_eq!(b.script(checked).await, 2);
    assert_eq!(
        b.script("return document.querySelector('[data-select-all]').indeterminate")
            .await,
        true
    );
    let blink = b.find("[data-bulk-action=blink]").await;
    b.click(&blink).await;
    // The status page: one row a device, both reaching "succeeded" without a reload.
    wait_for(
        &b,
        "return location.pathname",
        json!("/devices/bulk"),
        Duration::from_secs(10),
    )
    .await;
    b.script("window.__sameDocument = true; return 1").await;
    let statuses = "return [...document.querySelectorAll('table.bulk-actions tbody tr')].map(r => [r.dataset.device, r.querySelector('[data-status]').dataset.status]).sort()";
    let mut want = vec![
        json!([one.cfg.uuid, "succeeded"]),
        json!([two.cfg.uuid, "succeeded"]),
    ];
    want.sort_by_key(|v| v[0].as_str().unwrap().to_string());
    wait_for(&b, statuses, Value::Array(want), Duration::from_secs(30)).await;
    assert_eq!(
        b.script("return window.__sameDocument === true").await,
        true,
        "the statuses came without a reload"
    );
    for d in [&one, &two] {
        assert!(
            matches!(
                std::fs::read_to_string(d.led())
                    .unwrap_or_default()
                    .as_str(),
                "0" | "1"
            ),
            "{} did not blink",
            d.cfg.uuid
        );
    }
    assert!(!idle.led().exists(), "the unselected device blinked");
    // One audit entry a device, as the user.
    let (_, audit) = api
        .call("GET", "/v1/audit?limit=50", Some(&admin), None)
        .await;
    for d in [&one, &two] {
        let n = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["action"] == "action.blink"
                    && e["actor"] == "user:ann"
                    && e["target"] == d.cfg.uuid.as_str()
            })
            .count();
        assert_eq!(n, 1, "{audit}");
    }
    b.screenshot(&docs_dir().join("bulk-desktop.png")).await;
    for mut a in agents {
        a.stop().await;
    }
}

#[tokio::test]
async fn group_actions_need_the_role_the_csrf_token_and_a_selection() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    let a = gw.add_device(false).await.uuid;
    let b = gw.add_device(false).await.uuid;
    user_add(&gw, "vic", "viewer", "viewer-password");
    user_add(&gw, "ann", "operator", "operator-password");
    let vcookie = session(&gw, "vic", "viewer-password").await;
    let ocookie = session(&gw, "ann", "operator-password").await;

    // A viewer sees no checkboxes or group buttons, and its POST is refused.
    let (page, vcsrf) = page_and_csrf(&gw, &vcookie, "/devices").await;
    assert!(!page.contains("name=\"uuid\""), "a viewer sees checkboxes");
    assert!(
        !page.contains("data-bulk-action"),
        "a viewer sees group buttons"
    );
    let blink_both = |csrf: &str| {
        form_body(&[
            ("csrf", csrf),
            ("uuid", &a),
            ("uuid", &b),
            ("action", "blink"),
        ])
    };
    let (s, _, _) = http(
        &gw,
        "POST",
        "/devices/bulk",
        Some(&vcookie),
        Some(&blink_both(&vcsrf)),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // An operator without the CSRF token, or with the viewer's: refused too.
    let (page, ocsrf) = page_and_csrf(&gw, &ocookie, "/devices").await;
    assert_eq!(page.matches("name=\"uuid\"").count(), 2, "{page}");
    for form in [
        form_body(&[("uuid", &a), ("action", "blink")]),
        blink_both(&vcsrf),
    ] {
        let (s, _, _) = http(&gw, "POST", "/devices/bulk", Some(&ocookie), Some(&form)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{form}");
    }
    let (_, audit) = api
        .call("GET", "/v1/audit?limit=50", Some(&admin), None)
        .await;
    assert!(
        !audit.to_string().contains("action.blink"),
        "a refused group action ran: {audit}"
    );
    // Bad input: a specific 400 each.
    for (form, says) in [
        (
            form_body(&[("csrf", &ocsrf), ("action", "blink")]),
            "select at least one device",
        ),
        (
            form_body(&[("csrf", &ocsrf), ("uuid", &a), ("action", "explode")]),
            "unknown group action",
        ),
        (
            form_body(&[
                ("csrf", &ocsrf),
                ("uuid", "not-a-uuid"),
                ("action", "blink"),
            ]),
            "is not a device uuid",
        ),
    ] {
        let (s, _, page) = http(&gw, "POST", "/devices/bulk", Some(&ocookie), Some(&form)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{form}");
        assert!(page.contains(says), "{says}: {page}");
    }
    // Queued on both (they are offline), then shown on the status page that the
    // redirect names; the page reloads without queueing again.
    let (s, h, _) = http(
        &gw,
        "POST",
        "/devices/bulk",
        Some(&ocookie),
        Some(&blink_both(&ocsrf)),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let to = h["location"].to_str().unwrap().to_string();
    assert!(to.starts_with("/devices/bulk?ids=act_"), "{to}");
    for _ in 0..2 {
        let (s, _, page) = http(&gw, "GET", &to, Some(&ocookie), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(page.matches("data-status=\"pending\"").count(), 2, "{page}");
    }
    for u in [&a, &b] {
        let (_, actions) = api
            .call(
                "GET",
                &format!("/v1/devices/{u}/actions"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(actions.as_array().unwrap().len(), 1, "{actions}");
        assert_eq!(actions[0]["requested_by"], "user:ann");
    }
    let (s, _, _) = http(&gw, "GET", "/devices/bulk?ids=act_x'", Some(&ocookie), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Public URLs on for both: switched through the API's handler, audited per device.
    let (s, _, page) = http(
        &gw,
        "POST",
        "/devices/bulk",
        Some(&ocookie),
        Some(&form_body(&[
            ("csrf", &ocsrf),
            ("uuid", &a),
            ("uuid", &b),
            ("action", "public-url-on"),
        ])),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page.matches("public URL on").count(), 2, "{page}");
    for u in [&a, &b] {
        let (_, d) = api
            .call("GET", &format!("/v1/devices/{u}"), Some(&admin), None)
            .await;
        assert_eq!(d["public_url"], true, "{d}");
    }
    let (_, audit) = api
        .call("GET", "/v1/audit?limit=50", Some(&admin), None)
        .await;
    let switched = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "device.public_url" && e["actor"] == "user:ann")
        .count();
    assert_eq!(switched, 2, "{audit}");
    // A device deleted meanwhile is named with its reason; the other still runs.
    let (s, _) = api
        .call("DELETE", &format!("/v1/devices/{b}"), Some(&admin), None)
        .await;
    assert!(s.is_success());
    let (s, _, page) = http(
        &gw,
        "POST",
        "/devices/bulk",
        Some(&ocookie),
        Some(&blink_both(&ocsrf)),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(
        page.contains(&format!("data-uuid-failed=\"{b}\"")),
        "{page}"
    );
    assert_eq!(page.matches("data-action-id=").count(), 1, "{page}");
}
