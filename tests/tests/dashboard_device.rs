//! The device page: viewers see no forms and their POSTs are refused; CSRF on every form;
//! environment variables edited per service; the terminal inside the page on the
//! dashboard session, with its WebSocket refused without the page's own Origin and CSRF
//! token. Headless Chromium for what a person does, hyper and tungstenite for refusals.

use std::time::Duration;

use e2e_tests::dashboard::*;
use e2e_tests::terminal::{read_until, type_line, Ws};
use e2e_tests::*;
use http::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn viewers_see_no_forms_and_posts_need_the_role_and_the_csrf_token() {
    let gw = TestGateway::spawn().await;
    let dev = Device::new(&gw).await;
    let uuid = dev.cfg.uuid.clone();
    user_add(&gw, "vic", "viewer", "viewer-password");
    user_add(&gw, "ann", "operator", "operator-password");

    let viewer = sign_in(&gw, "vic", "viewer-password").await;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(viewer.contains(attr), "{attr} missing: {viewer}");
    }
    assert!(!viewer.contains("Secure"), "plain http: {viewer}");
    let vcookie = format!("gw_session={}", cookie_value(&viewer));
    let (s, _, page) = http(
        &gw,
        "GET",
        &format!("/devices/{uuid}"),
        Some(&vcookie),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !page.contains("data-action="),
        "a viewer sees action buttons"
    );
    // Signing out and the log view's filters (a GET form) are all a viewer gets.
    assert_eq!(
        page.matches("<form").count() - page.matches("data-log-filter").count(),
        1,
        "a viewer sees forms besides signing out and the log filters: {page}"
    );
    assert!(!page.contains("/terminal"), "a viewer sees the terminal");
    assert!(
        page.contains("Read-only for you (viewer)"),
        "the env section says why it is read-only"
    );
    // A replayed action POST with the viewer's own cookie and CSRF token is refused.
    let vcsrf = csrf_in(&page);
    let (s, _, _) = http(
        &gw,
        "POST",
        &format!("/devices/{uuid}/actions"),
        Some(&vcookie),
        Some(&format!("csrf={vcsrf}&action=blink")),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let op = sign_in(&gw, "ann", "operator-password").await;
    let ocookie = format!("gw_session={}", cookie_value(&op));
    let (_, _, page) = http(
        &gw,
        "GET",
        &format!("/devices/{uuid}"),
        Some(&ocookie),
        None,
    )
    .await;
    assert!(page.contains("data-action=\"blink\""));
    let ocsrf = csrf_in(&page);
    assert_ne!(ocsrf, vcsrf, "CSRF tokens are per session");
    // Without the token, with another session's token: 403, nothing queued.
    for form in [
        "action=blink".to_string(),
        format!("csrf={vcsrf}&action=blink"),
    ] {
        let (s, _, _) = http(
            &gw,
            "POST",
            &format!("/devices/{uuid}/actions"),
            Some(&ocookie),
            Some(&form),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{form}");
    }
    let (_, _, admin) = tokens(&gw).await;
    let api = Api::new(&gw);
    let (_, actions) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/actions"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(actions, json!([]));
    // With it: queued (the device is offline), as the user.
    let (s, h, _) = http(
        &gw,
        "POST",
        &format!("/devices/{uuid}/actions"),
        Some(&ocookie),
        Some(&format!("csrf={ocsrf}&action=blink")),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], format!("/devices/{uuid}#actions").as_str());
    let (_, actions) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/actions"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(actions[0]["requested_by"], "user:ann", "{actions}");
    assert_eq!(actions[0]["status"], "pending", "{actions}");
    // Tags: edited by the operator (through the API's handler), refused to the viewer.
    let (s, _, _) = http(
        &gw,
        "POST",
        &format!("/devices/{uuid}/tags"),
        Some(&vcookie),
        Some(&format!("csrf={vcsrf}&tags=room%3Da1")),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = http(
        &gw,
        "POST",
        &format!("/devices/{uuid}/tags"),
        Some(&ocookie),
        Some(&format!(
            "csrf={ocsrf}&tags=room%3Da1%0D%0Afloor+%3D+2%0D%0A"
        )),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, tags) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/tags"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(tags, json!({"room": "a1", "floor": "2"}));
    let (s, _, page) = http(
        &gw,
        "POST",
        &format!("/devices/{uuid}/tags"),
        Some(&ocookie),
        Some(&format!("csrf={ocsrf}&tags=no-equals-sign")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("is not name=value"), "{page}");
    // Logging out needs the token too, and then the cookie is worthless.
    let (s, _, _) = http(&gw, "POST", "/logout", Some(&ocookie), Some("")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = http(
        &gw,
        "POST",
        "/logout",
        Some(&ocookie),
        Some(&format!("csrf={ocsrf}")),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (s, h, _) = http(&gw, "GET", "/devices", Some(&ocookie), None).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/login?next=/devices");
    // A sign-in form posted without its nonce is refused as well.
    let (s, _, _) = http(
        &gw,
        "POST",
        "/login",
        None,
        Some("user=ann&password=operator-password"),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The JSON API is unchanged: unknown paths are its JSON not_found.
    let (s, v) = api.call("GET", "/v1/nope", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
}

/// Opens the dashboard's terminal WebSocket with these headers; the upgrade's refusal as
/// its status.
async fn session_terminal(
    gw: &TestGateway,
    uuid: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    query: &str,
) -> Result<Ws, StatusCode> {
    let url = format!("ws://{}/devices/{uuid}/terminal?{query}", gw.api_addr);
    let mut req = url.into_client_request().unwrap();
    if let Some(c) = cookie {
        req.headers_mut().insert("cookie", c.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_terminal_needs_the_pages_origin_its_csrf_token_and_an_operator() {
    let gw = TestGateway::spawn().await;
    let dev = Device::new(&gw).await;
    let uuid = dev.cfg.uuid.clone();
    let mut agent = dev.start_with_shell();
    agent.connected().await;
    user_add(&gw, "vic", "viewer", "viewer-password");
    user_add(&gw, "ann", "operator", "operator-password");
    let vcookie = session(&gw, "vic", "viewer-password").await;
    let ocookie = session(&gw, "ann", "operator-password").await;
    let (page, ocsrf) = page_and_csrf(&gw, &ocookie, &format!("/devices/{uuid}")).await;
    assert!(
        page.contains(&format!("data-terminal=\"/devices/{uuid}/terminal\"")),
        "{page}"
    );
    let (_, vcsrf) = page_and_csrf(&gw, &vcookie, &format!("/devices/{uuid}")).await;
    let own = format!("http://{}", gw.api_addr);
    let other_port = format!("http://127.0.0.1:{}", gw.api_addr.port() ^ 1);
    let with = |csrf: &str| format!("cols=90&rows=20&csrf={csrf}");
    for (what, cookie, origin, query) in [
        ("no Origin", Some(&ocookie), None, with(&ocsrf)),
        (
            "another site",
            Some(&ocookie),
            Some("http://evil.example"),
            with(&ocsrf),
        ),
        (
            "another port of the same host",
            Some(&ocookie),
            Some(other_port.as_str()),
            with(&ocsrf),
        ),
        (
            "no CSRF token",
            Some(&ocookie),
            Some(own.as_str()),
            "cols=90&rows=20".to_string(),
        ),
        (
            "another session's CSRF token",
            Some(&ocookie),
            Some(own.as_str()),
            with(&vcsrf),
        ),
        ("a viewer", Some(&vcookie), Some(own.as_str()), with(&vcsrf)),
    ] {
        let got = session_terminal(&gw, &uuid, cookie.map(String::as_str), origin, &query).await;
        assert_eq!(got.err(), Some(StatusCode::FORBIDDEN), "{what}");
    }
    // No session at all: sent to sign in, no socket.
    let got = session_terminal(&gw, &uuid, None, Some(&own), &with(&ocsrf)).await;
    assert_eq!(got.err(), Some(StatusCode::SEE_OTHER));
    // The cookie is not an API credential: the token endpoint still wants a token.
    let url = format!("ws://{}/v1/devices/{uuid}/terminal", gw.api_addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("cookie", ocookie.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("the API terminal opened on a cookie: {:?}", other.is_ok()),
    }

    // All three right: a shell, as the user.
    let mut ws = session_terminal(&gw, &uuid, Some(&ocookie), Some(&own), &with(&ocsrf))
        .await
        .expect("the session terminal opens");
    type_line(&mut ws, "stty size; echo $((6*7))").await;
    read_until(&mut ws, Duration::from_secs(10), |s| {
        s.output.contains("20 90") && s.output.contains("42")
    })
    .await;
    type_line(&mut ws, "exit 5").await;
    let seen = read_until(&mut ws, Duration::from_secs(10), |s| s.exit.is_some()).await;
    assert_eq!(seen.exit, Some(5));
    let (_, _, admin) = tokens(&gw).await;
    let api = Api::new(&gw);
    let audit = eventually(Duration::from_secs(10), || async {
        let (_, audit) = api
            .call("GET", "/v1/audit?limit=50", Some(&admin), None)
            .await;
        let entries = audit.as_array()?.clone();
        entries
            .iter()
            .any(|e| e["action"] == "terminal.close" && e["actor"] == "user:ann")
            .then_some(entries)
    })
    .await
    .expect("terminal.close audited as the user");
    assert!(audit.iter().any(|e| e["action"] == "terminal.open"
        && e["actor"] == "user:ann"
        && e["target"] == uuid.as_str()));
    agent.stop().await;
}

#[tokio::test]
async fn env_edits_need_the_role_and_the_csrf_token_and_bad_names_are_shown() {
    let gw = TestGateway::spawn().await;
    let uuid = gw.add_device(false).await.uuid;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    user_add(&gw, "vic", "viewer", "viewer-password");
    user_add(&gw, "ann", "operator", "operator-password");
    let vcookie = session(&gw, "vic", "viewer-password").await;
    let ocookie = session(&gw, "ann", "operator-password").await;
    let path = format!("/devices/{uuid}/env");
    let (_, vcsrf) = page_and_csrf(&gw, &vcookie, &format!("/devices/{uuid}")).await;
    let (_, ocsrf) = page_and_csrf(&gw, &ocookie, &format!("/devices/{uuid}")).await;
    let set = |csrf: &str, name: &str, service: &str| {
        form_body(&[
            ("csrf", csrf),
            ("op", "set"),
            ("name", name),
            ("value", "on"),
            ("service", service),
        ])
    };
    for (cookie, form) in [
        (&vcookie, set(&vcsrf, "DEBUG", "")),
        (&ocookie, set("", "DEBUG", "")),
        (&ocookie, set(&vcsrf, "DEBUG", "")),
    ] {
        let (s, _, _) = http(&gw, "POST", &path, Some(cookie), Some(&form)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{form}");
    }
    assert_eq!(
        device_env(&api, &admin, &uuid).await,
        json!({"vars": {}, "services": {}})
    );
    // The API's own check refuses a bad name; the page says so beside the form, 400.
    let (s, _, page) = http(
        &gw,
        "POST",
        &path,
        Some(&ocookie),
        Some(&set(&ocsrf, "2FAST", "")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("data-refused=\"env\""), "{page}");
    assert!(page.contains("is not a variable name"), "{page}");
    assert!(
        page.contains("value=\"2FAST\""),
        "the typed name is kept: {page}"
    );
    // Set for all and for one service, then unset one: through the API's handler.
    for (name, service) in [("DEBUG", ""), ("PORT", "web")] {
        let (s, h, _) = http(
            &gw,
            "POST",
            &path,
            Some(&ocookie),
            Some(&set(&ocsrf, name, service)),
        )
        .await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        assert_eq!(h["location"], format!("/devices/{uuid}#env").as_str());
    }
    assert_eq!(
        device_env(&api, &admin, &uuid).await,
        json!({"vars": {"DEBUG": "on"}, "services": {"web": {"PORT": "on"}}})
    );
    let unset = |name: &str, service: &str| {
        form_body(&[
            ("csrf", &ocsrf),
            ("op", "unset"),
            ("name", name),
            ("service", service),
        ])
    };
    let (s, _, _) = http(
        &gw,
        "POST",
        &path,
        Some(&ocookie),
        Some(&unset("DEBUG", "")),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (s, _, page) = http(
        &gw,
        "POST",
        &path,
        Some(&ocookie),
        Some(&unset("PORT", "db")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        page.contains("there is no variable &quot;PORT&quot; for service &quot;db&quot;"),
        "{page}"
    );
    assert_eq!(
        device_env(&api, &admin, &uuid).await,
        json!({"vars": {}, "services": {"web": {"PORT": "on"}}})
    );
    let (_, audit) = api
        .call("GET", "/v1/audit?limit=50", Some(&admin), None)
        .await;
    let edits = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "device.env" && e["actor"] == "user:ann")
        .count();
    assert_eq!(edits, 3, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_edits_env_and_runs_a_command_in_the_embedded_terminal() {
    let gw = TestGateway::spawn().await;
    let dev = Device::new(&gw).await;
    let uuid = dev.cfg.uuid.clone();
    let mut agent = dev.start_with_shell();
    agent.connected().await;
    user_add(&gw, "ann", "operator", "embedded-terminal-pw");
    let Some(b) = browser(1280, 900).await else {
        return;
    };
    let base = format!("http://{}", gw.api_addr);
    browser_sign_in(&b, &base, "ann", "embedded-terminal-pw").await;
    b.goto(&format!("{base}/devices/{uuid}")).await;

    // Env: a bad name is refused beside the form, then a good one is listed.
    let name = b.find("form.env-set input[name=name]").await;
    b.type_into(&name, "9LIVES").await;
    let set = b.find("form.env-set button[type=submit]").await;
    b.click(&set).await;
    wait_for(
        &b,
        "return document.querySelector('[data-refused=env]')?.textContent.includes('is not a variable name') ?? false",
        json!(true),
        Duration::from_secs(10),
    )
    .await;
    b.script("document.querySelector('form.env-set input[name=name]').value = ''; return 1")
        .await;
    let name = b.find("form.env-set input[name=name]").await;
    b.type_into(&name, "LOG_LEVEL").await;
    let value = b.find("form.env-set input[name=value]").await;
    b.type_into(&value, "debug").await;
    let service = b.find("form.env-set input[name=service]").await;
    b.type_into(&service, "web").await;
    let set = b.find("form.env-set button[type=submit]").await;
    b.click(&set).await;
    wait_for(
        &b,
        "return document.querySelector('tr[data-env-name=LOG_LEVEL]')?.dataset.envService ?? null",
        json!("web"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        b.script("return document.querySelector('[data-refused]') === null")
            .await,
        true
    );

    // The terminal opens inside the page, on the session: no token asked for.
    let open = b.find("[data-term-open]").await;
    b.click(&open).await;
    wait_for(
        &b,
        "return document.querySelector('[data-terminal]').dataset.termState",
        json!("open"),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        b.script("return location.pathname").await,
        format!("/devices/{uuid}")
    );
    let input = b.find("#terminal .xterm-helper-textarea").await;
    b.type_into(&input, "echo $((6*7))\u{E007}").await;
    eventually(Duration::from_secs(20), || async {
        let text = b
            .script("return document.querySelector('#terminal .xterm-rows').innerText")
            .await;
        text.as_str()?
            .lines()
            .any(|l| l.trim() == "42")
            .then_some(())
    })
    .await
    .expect("the command's output in the embedded terminal");
    b.screenshot(&docs_dir().join("device-terminal.png")).await;
    b.type_into(&input, "exit 3\u{E007}").await;
    wait_for(
        &b,
        "return document.querySelector('[data-terminal]').dataset.termExit ?? null",
        json!("3"),
        Duration::from_secs(20),
    )
    .await;
    agent.stop().await;
}

async fn device_env(api: &Api, admin: &str, uuid: &str) -> serde_json::Value {
    let (s, v) = api
        .call("GET", &format!("/v1/devices/{uuid}/env"), Some(admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

#[tokio::test]
async fn the_log_download_takes_the_pages_filters() {
    let gw = TestGateway::spawn().await;
    let dev = Device::new(&gw).await;
    let uuid = dev.cfg.uuid.clone();
    user_add(&gw, "vic", "viewer", "viewer-password");
    let cookie = session(&gw, "vic", "viewer-password").await;
    let logs = tempfile::tempdir().unwrap();
    let pipeline = edge_agent::logs::LogPipeline::start(logs.path(), 1 << 20).unwrap();
    let mut agent = dev.start(pipeline.clone());
    agent.connected().await;
    for (svc, msg) in [
        ("web", "GET / 200"),
        ("web", "GET /x 404"),
        ("db", "checkpoint"),
    ] {
        pipeline.sink().push(log_line(svc, msg.to_string()));
    }
    let download = |query: &'static str| {
        let (gw, cookie, uuid) = (&gw, cookie.clone(), uuid.clone());
        async move {
            let path = format!("/devices/{uuid}/logs/download{query}");
            let (s, h, body) = http(gw, "GET", &path, Some(&cookie), None).await;
            assert_eq!(s, StatusCode::OK, "{path}: {body}");
            let lines: Vec<serde_json::Value> = body
                .lines()
                .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
                .collect();
            (h, lines)
        }
    };
    let messages = |lines: &[serde_json::Value], svc: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["serviceName"] == svc)
            .map(|l| l["message"].as_str().unwrap().to_string())
            .collect()
    };
    eventually(Duration::from_secs(20), || async {
        let (_, lines) = download("").await;
        (messages(&lines, "web").len() == 2 && messages(&lines, "db").len() == 1).then_some(())
    })
    .await
    .expect("the three lines were stored and downloaded");

    let (h, lines) = download("?service=web&q=404&stderr=").await;
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment"),
        "{h:?}"
    );
    assert_eq!(messages(&lines, "web"), ["GET /x 404"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // Only stderr: none of these lines.
    let (_, lines) = download("?service=web&stderr=on").await;
    assert!(lines.is_empty(), "{lines:?}");
    // The agent's own lines: no service's.
    let (_, lines) = download("?service=%40agent").await;
    assert!(
        lines.iter().all(|l| l["serviceName"].is_null()),
        "{lines:?}"
    );

    // No session: to the sign-in page; an unknown device: 404.
    let path = format!("/devices/{uuid}/logs/download");
    let (s, h, _) = http(&gw, "GET", &path, None, None).await;
    assert!(s.is_redirection(), "{s}");
    assert!(h["location"].to_str().unwrap().starts_with("/login"));
    let (s, _, _) = http(
        &gw,
        "GET",
        "/devices/00000000000000000000000000000000/logs/download",
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    agent.stop().await;
}
