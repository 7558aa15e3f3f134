//! The management API over real HTTP: tokens and roles, fleets, devices, public URLs acting
//! on live tunnels, revocation, bad input, persistence across restarts.

use std::time::Duration;

use e2e_tests::*;
use edge_agent::ConnState;
use gateway::api::auth::Role;
use http::StatusCode;
use serde_json::json;
use serde_json::Value;

fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn role_matrix() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (viewer, operator, admin) = tokens(&gw).await;
    let dev = gw.add_device(false).await;
    let uuid = dev.uuid.clone();
    let (s, _) = api
        .call(
            "POST",
            "/v1/fleets",
            Some(&admin),
            Some(json!({"name": "base"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // (method, path, body, least role that may do it)
    let cases: Vec<(&str, String, Option<Value>, Role)> = vec![
        ("GET", "/v1/fleets".into(), None, Role::Viewer),
        ("GET", "/v1/fleets/base".into(), None, Role::Viewer),
        (
            "POST",
            "/v1/fleets".into(),
            Some(json!({"name": "f-new"})),
            Role::Admin,
        ),
        (
            "PUT",
            "/v1/fleets/base/public-url".into(),
            Some(json!({"enabled": false})),
            Role::Admin,
        ),
        ("GET", "/v1/devices".into(), None, Role::Viewer),
        ("GET", format!("/v1/devices/{uuid}"), None, Role::Viewer),
        (
            "PATCH",
            format!("/v1/devices/{uuid}"),
            Some(json!({"name": "kiosk-1"})),
            Role::Operator,
        ),
        (
            "PUT",
            format!("/v1/devices/{uuid}/public-url"),
            Some(json!({"enabled": true})),
            Role::Operator,
        ),
        ("GET", "/v1/tokens".into(), None, Role::Admin),
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"name": "ci", "role": "viewer"})),
            Role::Admin,
        ),
        ("GET", "/v1/audit".into(), None, Role::Admin),
        (
            "POST",
            "/v1/fleets/base/keys".into(),
            Some(json!({"max_uses": 1})),
            Role::Admin,
        ),
        ("GET", "/v1/fleets/base/keys".into(), None, Role::Admin),
        (
            "POST",
            "/v1/devices".into(),
            Some(json!({"fleet": "base"})),
            Role::Admin,
        ),
        (
            "POST",
            format!("/v1/devices/{uuid}/actions"),
            Some(json!({"action": "blink"})),
            Role::Operator,
        ),
        (
            "GET",
            format!("/v1/devices/{uuid}/actions"),
            None,
            Role::Viewer,
        ),
        (
            "PUT",
            format!("/v1/devices/{uuid}/tags"),
            Some(json!({"floor": "2"})),
            Role::Operator,
        ),
        (
            "GET",
            format!("/v1/devices/{uuid}/tags"),
            None,
            Role::Viewer,
        ),
        (
            "PUT",
            format!("/v1/devices/{uuid}/env"),
            Some(json!({"vars": {"MODE": "kiosk"}})),
            Role::Operator,
        ),
        ("GET", format!("/v1/devices/{uuid}/env"), None, Role::Viewer),
        (
            "PUT",
            "/v1/fleets/base/env".into(),
            Some(json!({"services": {"web": {"PORT": "80"}}})),
            Role::Admin,
        ),
        ("GET", "/v1/fleets/base/env".into(), None, Role::Viewer),
    ];
    for (method, path, body, least) in &cases {
        let (s, v) = api.call(method, path, None, body.clone()).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        assert_error(&v, "unauthorized");
        let (s, v) = api
            .call(method, path, Some("gw_bogus.token"), body.clone())
            .await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a bogus token"
        );
        assert_error(&v, "unauthorized");
        for (role, token) in [
            (Role::Viewer, &viewer),
            (Role::Operator, &operator),
            (Role::Admin, &admin),
        ] {
            let (s, v) = api.call(method, path, Some(token), body.clone()).await;
            if role >= *least {
                assert!(s.is_success(), "{method} {path} as {role:?}: {s} {v}");
            } else {
                assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} as {role:?}: {v}");
                assert_error(&v, "forbidden");
            }
            // Creating the same fleet twice is a conflict, not a success: use a new name.
            if *method == "POST" && path == "/v1/fleets" && s.is_success() {
                let (s, v) = api.call(method, path, Some(token), body.clone()).await;
                assert_eq!(s, StatusCode::CONFLICT, "{v}");
            }
        }
    }
    // Destructive ones last: delete needs admin.
    for (role, token) in [(Role::Viewer, &viewer), (Role::Operator, &operator)] {
        let (s, _) = api
            .call("DELETE", &format!("/v1/devices/{uuid}"), Some(token), None)
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{role:?}");
        let (s, _) = api
            .call("DELETE", "/v1/fleets/f-new", Some(token), None)
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{role:?}");
    }
    let (s, _) = api
        .call("DELETE", "/v1/fleets/f-new", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .call("DELETE", &format!("/v1/devices/{uuid}"), Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Every change is in the audit log, attributed to the token that made it.
    let (_, log) = api.call("GET", "/v1/audit", Some(&admin), None).await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "fleet.create",
        "device.update",
        "device.public_url",
        "token.create",
        "fleet.delete",
        "device.delete",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert!(
        log[0]["actor"].as_str().unwrap().starts_with("token:"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn public_url_switches_act_on_live_tunnels() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, operator, admin) = tokens(&gw).await;
    let backend = Backend::spawn("switched").await;
    let a = gw.add_device(false).await;
    let b = gw.add_device(false).await;
    let mut agent_a = TestAgent::spawn(a.clone(), backend.addr);
    let mut agent_b = TestAgent::spawn(b.clone(), backend.addr);
    agent_a.connected().await;
    agent_b.connected().await;
    let c = http_client();
    let get = |uuid: String| {
        let c = c.clone();
        let addr = gw.http_addr;
        async move {
            request(&c, addr, &device_host(&uuid), "GET", "/", empty())
                .await
                .0
        }
    };
    assert_eq!(
        get(a.uuid.clone()).await,
        StatusCode::NOT_FOUND,
        "public URLs are off by default"
    );

    let (s, v) = api
        .call(
            "PUT",
            &format!("/v1/devices/{}/public-url", a.uuid),
            Some(&operator),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["url"], format!("http://{}.devices.localhost/", a.uuid));
    assert_eq!(
        get(a.uuid.clone()).await,
        StatusCode::OK,
        "switch on acts on the live session"
    );
    let (s, _) = api
        .call(
            "PUT",
            &format!("/v1/devices/{}/public-url", a.uuid),
            Some(&operator),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(get(a.uuid.clone()).await, StatusCode::NOT_FOUND);

    // Fleet-wide: acts on the devices in the fleet now.
    api.call(
        "POST",
        "/v1/fleets",
        Some(&admin),
        Some(json!({"name": "kiosks"})),
    )
    .await;
    for d in [&a, &b] {
        let (s, v) = api
            .call(
                "PATCH",
                &format!("/v1/devices/{}", d.uuid),
                Some(&operator),
                Some(json!({"fleet": "kiosks"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["fleet"], "kiosks");
    }
    let (s, v) = api
        .call(
            "PUT",
            "/v1/fleets/kiosks/public-url",
            Some(&admin),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["devices_switched"], 2);
    assert_eq!(get(a.uuid.clone()).await, StatusCode::OK);
    assert_eq!(get(b.uuid.clone()).await, StatusCode::OK);
    let (_, f) = api
        .call("GET", "/v1/fleets/kiosks", Some(&admin), None)
        .await;
    assert_eq!(f["public_url_default"], true);
    assert_eq!(f["devices"].as_array().unwrap().len(), 2);
    let (_, list) = api
        .call(
            "GET",
            "/v1/devices?fleet=kiosks&online=true",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    // A fleet with devices cannot be deleted.
    let (s, v) = api
        .call("DELETE", "/v1/fleets/kiosks", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "fleet_not_empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_device_is_disconnected_and_cannot_come_back() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    let backend = Backend::spawn("revoked").await;
    let dev = gw.add_device(true).await;
    let mut agent = TestAgent::spawn(dev.clone(), backend.addr);
    agent.connected().await;
    let (_, v) = api
        .call(
            "GET",
            &format!("/v1/devices/{}", dev.uuid),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(v["online"], true, "{v}");

    let (s, _) = api
        .call(
            "DELETE",
            &format!("/v1/devices/{}", dev.uuid),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // The live tunnel is closed, and every reconnect is refused.
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ConnState::BackingOff { reason } = agent.state.borrow().clone() {
                return reason;
            }
            agent.state.changed().await.unwrap();
        }
    })
    .await
    .expect("the deleted device's tunnel stayed up");
    assert!(reason.contains("device unknown or revoked"), "{reason}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gw.sessions.len(), 0, "a deleted device came back");
    let (s, v) = api
        .call(
            "GET",
            &format!("/v1/devices/{}", dev.uuid),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    let c = http_client();
    let (s, _, _) = request(
        &c,
        gw.http_addr,
        &device_host(&dev.uuid),
        "GET",
        "/",
        empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_json_4xx_never_a_500() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    let t = Some(admin.as_str());
    let json_ct = Some("application/json");

    let (s, v) = api
        .raw("POST", "/v1/fleets", t, json_ct, b"{\"name\": ".to_vec())
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_json");
    let (s, v) = api
        .raw(
            "POST",
            "/v1/fleets",
            t,
            json_ct,
            br#"{"name":"x","colour":"red"}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_request");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
    let (s, v) = api
        .raw(
            "POST",
            "/v1/fleets",
            t,
            json_ct,
            br#"{"name":"../etc"}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_name");
    let (s, v) = api
        .raw(
            "POST",
            "/v1/fleets",
            t,
            Some("text/plain"),
            br#"{"name":"x"}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&v, "unsupported_media_type");
    // A huge declared body is refused before the client sends it (raw socket: headers only).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(gw.api_addr).await.unwrap();
        let head = format!(
            "POST /v1/fleets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf))
            .await
            .expect("the gateway waited for the body")
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("\"payload_too_large\""), "{text}");
    }
    // A chunked body is cut off at the limit as it arrives.
    let huge = format!(r#"{{"name":"{}"}}"#, "a".repeat(100 * 1024));
    let frames: Vec<
        Result<hyper::body::Frame<bytes::Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    > = huge
        .into_bytes()
        .chunks(8192)
        .map(|c| Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    let chunked = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
        futures_util::stream::iter(frames),
    ));
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/v1/fleets", gw.api_addr))
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(chunked)
        .unwrap();
    // The server may close while the client still writes; a response, if it arrives, is 413.
    if let Ok(resp) = http_client().request(req).await {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    let (s, v) = api
        .call(
            "GET",
            "/v1/devices/0123456789abcdef0123456789abcdef",
            t,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    let (s, v) = api.call("GET", "/v1/devices/not-a-uuid", t, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_uuid");
    let (s, v) = api
        .call(
            "PATCH",
            "/v1/devices/0123456789abcdef0123456789abcdef",
            t,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    let dev = gw.add_device(false).await;
    let (s, v) = api
        .call(
            "PATCH",
            &format!("/v1/devices/{}", dev.uuid),
            t,
            Some(json!({"fleet": "nope"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    let (s, v) = api
        .call(
            "POST",
            "/v1/tokens",
            t,
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_role");
    let (s, v) = api.call("GET", "/v1/devices?online=maybe", t, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_query");
    let (s, v) = api.call("GET", "/v2/nothing", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    let (s, v) = api.call("PUT", "/v1/devices", t, None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&v, "method_not_allowed");

    // The OpenAPI document is public and names every endpoint family.
    let (s, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for p in [
        "/v1/fleets",
        "/v1/devices/{uuid}",
        "/v1/devices/{uuid}/public-url",
        "/v1/tokens",
        "/v1/audit",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_fleets_tokens_devices_and_audit() {
    let mut gw = TestGateway::spawn().await;
    let (_, operator, admin) = tokens(&gw).await;
    let dev = gw.add_device(false).await;
    {
        let api = Api::new(&gw);
        api.call(
            "POST",
            "/v1/fleets",
            Some(&admin),
            Some(json!({"name": "keep"})),
        )
        .await;
        let (s, _) = api
            .call(
                "PATCH",
                &format!("/v1/devices/{}", dev.uuid),
                Some(&operator),
                Some(json!({"name": "door", "fleet": "keep"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let tmp = gw.take_tmp();
    let data_dir = gw.data_dir.clone();
    gw.stop().await;
    let gw2 = TestGateway::spawn_with(test_config(data_dir)).await;
    let api = Api::new(&gw2);
    let (s, v) = api
        .call(
            "GET",
            &format!("/v1/devices/{}", dev.uuid),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "token or device lost: {v}");
    assert_eq!(
        (v["name"].as_str(), v["fleet"].as_str()),
        (Some("door"), Some("keep"))
    );
    let (_, fleets) = api.call("GET", "/v1/fleets", Some(&admin), None).await;
    assert_eq!(fleets[0]["name"], "keep");
    let (_, log) = api.call("GET", "/v1/audit", Some(&admin), None).await;
    assert!(log.as_array().unwrap().len() >= 5, "{log}");
    // Tags and environment variables (fleet < device, per service) are stored.
    let (s, v) = api
        .call(
            "PUT",
            &format!("/v1/devices/{}/tags", dev.uuid),
            Some(&operator),
            Some(json!({"floor": "2", "room": "lobby"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            "/v1/fleets/keep/env",
            Some(&admin),
            Some(json!({"vars": {"MODE": "fleet"}, "services": {"web": {"PORT": "80"}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            &format!("/v1/devices/{}/env", dev.uuid),
            Some(&operator),
            Some(json!({"vars": {"MODE": "device"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            &format!("/v1/devices/{}/env", dev.uuid),
            Some(&operator),
            Some(json!({"vars": {"1BAD": "x"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_env_name");
    let (_, d) = api
        .call(
            "GET",
            &format!("/v1/devices/{}", dev.uuid),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(d["tags"], json!({"floor": "2", "room": "lobby"}));
    let other = gw2.add_device(false).await;
    for (q, want) in [
        ("floor", vec![dev.uuid.clone()]),
        ("floor=2", vec![dev.uuid.clone()]),
        ("floor=3", vec![]),
    ] {
        let (_, list) = api
            .call(
                "GET",
                &format!("/v1/devices?tag={q}"),
                Some(&operator),
                None,
            )
            .await;
        let got: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["uuid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, want, "tag={q}");
    }
    let (_, all) = api.call("GET", "/v1/devices", Some(&operator), None).await;
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["uuid"] == other.uuid.as_str()));
    let (_, fe) = api
        .call("GET", "/v1/fleets/keep/env", Some(&operator), None)
        .await;
    assert_eq!(
        fe,
        json!({"vars": {"MODE": "fleet"}, "services": {"web": {"PORT": "80"}}})
    );
    let (_, de) = api
        .call(
            "GET",
            &format!("/v1/devices/{}/env", dev.uuid),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(de["vars"]["MODE"], "device");
    drop(tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_over_https_with_an_operator_certificate() {
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
    let (viewer, _, _) = tokens(&gw).await;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(pki.path().join("ca.pem"))
        .args(["-H", &format!("Authorization: Bearer {viewer}")])
        .arg(format!(
            "https://localhost:{}/v1/fleets",
            gw.api_addr.port()
        ))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]");
    // The operator CLI speaks https too, trusting the given CA.
    let api_url = format!("https://localhost:{}", gw.api_addr.port());
    let ca_file = pki.path().join("ca.pem");
    let cli = |with_ca: bool| {
        let mut c = std::process::Command::new(bin("gateway"));
        c.args(["fleet", "list", "--api", &api_url, "--token", &viewer])
            .env_remove("GATEWAY_API_CA");
        if with_ca {
            c.arg("--api-ca").arg(&ca_file);
        }
        c.output().unwrap()
    };
    let o = tokio::task::block_in_place(|| cli(true));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("NAME"));
    let o = tokio::task::block_in_place(|| cli(false));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--api-ca"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Plain HTTP on the TLS port gets nowhere.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-m", "5"])
        .arg(format!("http://127.0.0.1:{}/v1/fleets", gw.api_addr.port()))
        .output()
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).starts_with('['));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_fleet_takes_its_keys_releases_and_variables_along() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, operator, admin) = tokens(&gw).await;
    let t = Some(admin.as_str());
    let (s, _) = api
        .call("POST", "/v1/fleets", t, Some(json!({"name": "doomed"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, key) = api
        .call(
            "POST",
            "/v1/fleets/doomed/keys",
            t,
            Some(json!({"max_uses": 5})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{key}");
    let (s, rel) = api
        .call(
            "POST",
            "/v1/fleets/doomed/releases",
            Some(&operator),
            Some(json!({"compose": "services:\n  web:\n    image: edge-test/web:v1\n"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rel}");
    let (s, v) = api
        .call(
            "PUT",
            "/v1/fleets/doomed/pin",
            Some(&operator),
            Some(json!({"release": rel["id"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            "/v1/fleets/doomed/env",
            t,
            Some(json!({"vars": {"MODE": "old"}, "services": {"web": {"PORT": "80"}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Devices block the delete (a device must be moved or deleted on purpose), and the
    // answer says so; a device deleted earlier does not.
    let (s, dev) = api
        .call("POST", "/v1/devices", t, Some(json!({"fleet": "doomed"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{dev}");
    let (s, v) = api.call("DELETE", "/v1/fleets/doomed", t, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_error(&v, "fleet_not_empty");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1 device"),
        "{v}"
    );
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/v1/devices/{}", dev["uuid"].as_str().unwrap()),
            t,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Then the fleet goes, with its keys, releases and variables: never a 500.
    let (s, v) = api.call("DELETE", "/v1/fleets/doomed", t, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _) = api.call("GET", "/v1/fleets/doomed", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .call(
            "GET",
            &format!("/v1/releases/{}", rel["id"].as_str().unwrap()),
            t,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the release went with its fleet");
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/v1/keys/{}", key["id"].as_str().unwrap()),
            t,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the key went with its fleet");
    // A new fleet of the same name starts empty: nothing of the old one comes back.
    let (s, _) = api
        .call("POST", "/v1/fleets", t, Some(json!({"name": "doomed"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, env) = api.call("GET", "/v1/fleets/doomed/env", t, None).await;
    assert_eq!(env, json!({"vars": {}, "services": {}}));
    let (_, keys) = api.call("GET", "/v1/fleets/doomed/keys", t, None).await;
    assert_eq!(keys, json!([]));
    let (_, rels) = api.call("GET", "/v1/fleets/doomed/releases", t, None).await;
    assert_eq!(rels["releases"], json!([]));
    assert_eq!(rels["pinned_release"], Value::Null);
    let (_, log) = api.call("GET", "/v1/audit", t, None).await;
    let delete = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "fleet.delete")
        .expect("fleet.delete audited");
    assert_eq!(
        delete["detail"],
        json!({"keys": 1, "releases": 1, "env_vars": 2}),
        "{delete}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_bodies_must_be_json_objects() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    let t = Some(admin.as_str());
    let json_ct = Some("application/json");
    let (s, _) = api
        .call("POST", "/v1/fleets", t, Some(json!({"name": "base"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // serde reads a struct from an array too: `[null,null]` was an unlimited key.
    for body in [
        "[null,null]",
        "[1,1]",
        "\"x\"",
        "null",
        "7",
        r#"{"uses":-1}"#,
        r#"{"max_uses":-1}"#,
        r#"{"max_uses":0}"#,
        r#"{"expires_in_secs":0}"#,
        r#"{"max_uses":"5"}"#,
    ] {
        let (s, v) = api
            .raw(
                "POST",
                "/v1/fleets/base/keys",
                t,
                json_ct,
                body.as_bytes().to_vec(),
            )
            .await;
        assert!(s.is_client_error(), "{body}: {s} {v}");
        assert!(v["error"]["code"].is_string(), "{body}: {v}");
    }
    let (_, keys) = api.call("GET", "/v1/fleets/base/keys", t, None).await;
    assert_eq!(keys, json!([]), "no key was created");
    // A whole float is an integer (as JSON Schema has it); a fraction is not.
    let (s, v) = api
        .call(
            "POST",
            "/v1/fleets/base/keys",
            t,
            Some(json!({"max_uses": 2.5})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/v1/fleets/base/keys",
            t,
            Some(json!({"max_uses": 2.0})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["max_uses"], 2);
    // The same for every other body.
    for (method, path, body) in [
        ("POST", "/v1/fleets", r#"["other", true]"#),
        ("POST", "/v1/tokens", r#"["n", "admin"]"#),
        ("PUT", "/v1/fleets/base/public-url", "[true]"),
        ("POST", "/v1/devices", "[null, null]"),
        ("PUT", "/v1/fleets/base/env", "[]"),
        ("POST", "/v1/fleets/base/releases", r#"["services: {}"]"#),
        ("PUT", "/v1/fleets/base/pin", "[null]"),
    ] {
        let (s, v) = api
            .raw(method, path, t, json_ct, body.as_bytes().to_vec())
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path} {body}: {v}");
        assert_error(&v, "invalid_request");
    }
    let (_, fleets) = api.call("GET", "/v1/fleets", t, None).await;
    assert_eq!(fleets.as_array().unwrap().len(), 1, "{fleets}");
}

/// Opens a WebSocket on the API with these headers; the status of a refused upgrade.
async fn ws_open(
    url: String,
    headers: &[(&'static str, String)],
) -> Result<(), (StatusCode, Value)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(*k, http::HeaderValue::from_str(v).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => {
            let _ = ws.close(None).await;
            Ok(())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status(),
            resp.body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null),
        )),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websockets_refuse_foreign_origins() {
    let gw = TestGateway::spawn_custom(|c| {
        c.allowed_origins = vec!["https://console.example.com".into()];
    })
    .await;
    let (_, operator, _) = tokens(&gw).await;
    let cfg = gw.add_device(false).await;
    let uuid = cfg.uuid.clone();
    let mut opts = fast_agent_options("127.0.0.1:9".parse().unwrap());
    opts.terminal.shell = Some("/bin/sh".into());
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;
    let auth = ("authorization", format!("Bearer {operator}"));
    let own = format!("http://{}", gw.api_addr);
    for url in [
        format!("ws://{}/v1/devices/{uuid}/terminal", gw.api_addr),
        format!("ws://{}/v1/devices/{uuid}/logs/ws", gw.api_addr),
    ] {
        // A page on another site cannot use the operator's token in the browser.
        for evil in [
            "http://evil.example",
            "null",
            "http://127.0.0.1.evil.example",
        ] {
            let r = ws_open(url.clone(), &[auth.clone(), ("origin", evil.into())]).await;
            let (s, v) = r.expect_err(&format!("{url} with Origin {evil} was upgraded"));
            assert_eq!(s, StatusCode::FORBIDDEN, "{url} {evil}: {v}");
            assert_error(&v, "forbidden_origin");
        }
        // The gateway's own pages (terminal page on the API listener), a configured
        // console, and clients that send no Origin (gateway ssh, websocat) are let in.
        for origin in [
            Some(own.clone()),
            Some("https://console.example.com".into()),
            None,
        ] {
            let mut headers = vec![auth.clone()];
            if let Some(o) = &origin {
                headers.push(("origin", o.clone()));
            }
            if let Err((s, v)) = ws_open(url.clone(), &headers).await {
                panic!("{url} with Origin {origin:?}: {s} {v}");
            }
        }
    }
}
