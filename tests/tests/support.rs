//! Time-limited support access: `gateway support grant (--fleet F | --device U) --role R
//! --for D` makes a token that reaches only that fleet (and its devices) or that device,
//! works until it expires and not after, is listed and revoked with `gateway support
//! list|revoke`, and has every use audited (docs/support.md). The `gateway` binary runs
//! as its own process; the grant is used against the management API. Grants made,
//! listed and revoked through the API itself (`/v1/support-grants`), with hyper.

use std::time::Duration;

use e2e_tests::*;
use http::StatusCode;
use serde_json::{json, Value};

/// `gateway ARGS` against `gw` (its data dir for `grant`, its API with `token` for the
/// rest): success, stdout, stderr.
async fn gateway(gw: &TestGateway, token: &str, args: &[&str]) -> (bool, String, String) {
    let o = tokio::process::Command::new(bin("gateway"))
        .args(args)
        .env("GATEWAY_API", format!("http://{}", gw.api_addr))
        .env("GATEWAY_TOKEN", token)
        .env_remove("GATEWAY_API_CA")
        .output()
        .await
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A grant made with `gateway support grant ARGS`: its token (stdout's last line).
async fn grant(gw: &TestGateway, args: &[&str]) -> String {
    let data = gw.data_dir.to_str().unwrap().to_string();
    let mut all = vec!["support", "grant", "--data-dir", &data];
    all.extend_from_slice(args);
    let (ok, out, err) = gateway(gw, "", &all).await;
    assert!(ok, "gateway {all:?} failed: {out}{err}");
    out.lines().last().unwrap().trim().to_string()
}

async fn status(
    api: &Api,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    api.call(method, path, Some(token), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_support_grant_reaches_only_its_scope_until_it_expires_or_is_revoked() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    let (st, v) = status(
        &api,
        &admin,
        "POST",
        "/v1/fleets",
        Some(json!({"name": "kiosks", "public_url_default": false})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let a = gw.add_device(false).await.uuid;
    let b = gw.add_device(false).await.uuid;
    let (st, v) = status(
        &api,
        &admin,
        "PATCH",
        &format!("/v1/devices/{a}"),
        Some(json!({"fleet": "kiosks"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // A device grant: that device's paths, nothing else.
    let dg = grant(&gw, &["--device", &a, "--role", "operator", "--for", "1h"]).await;
    assert!(dg.starts_with("gw_"), "{dg}");
    let (st, v) = status(&api, &dg, "GET", &format!("/v1/devices/{a}"), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = status(
        &api,
        &dg,
        "POST",
        &format!("/v1/devices/{a}/actions"),
        Some(json!({"action": "blink"})),
    )
    .await;
    assert!(
        st.is_success(),
        "an operator grant could not queue an action: {st} {v}"
    );
    for path in [
        format!("/v1/devices/{b}"),
        "/v1/devices".to_string(),
        "/v1/fleets/kiosks".to_string(),
        "/v1/tokens".to_string(),
        "/v1/audit".to_string(),
    ] {
        let (st, v) = status(&api, &dg, "GET", &path, None).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "GET {path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("reaches only device"),
            "{v}"
        );
    }

    // A fleet grant as a viewer: the fleet and its devices, read only.
    let fg = grant(
        &gw,
        &["--fleet", "kiosks", "--role", "viewer", "--for", "1h"],
    )
    .await;
    let (st, _) = status(&api, &fg, "GET", "/v1/fleets/kiosks", None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = status(&api, &fg, "GET", &format!("/v1/devices/{a}"), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = status(&api, &fg, "GET", &format!("/v1/devices/{b}"), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "a device outside the fleet");
    let (st, _) = status(
        &api,
        &fg,
        "POST",
        &format!("/v1/devices/{a}/actions"),
        Some(json!({"action": "blink"})),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "a viewer grant acted");

    // Every use is in the audit log, with the path; the grants too.
    let (_, audit) = status(&api, &admin, "GET", "/v1/audit", None).await;
    let entries = audit.as_array().cloned().unwrap_or_default();
    let uses: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "support.use")
        .collect();
    assert!(
        uses.iter()
            .any(|e| e["target"] == format!("/v1/devices/{b}") && e["detail"]["refused"] == true),
        "a refused use is not audited: {audit}"
    );
    assert!(
        uses.iter()
            .any(|e| e["target"] == format!("/v1/devices/{a}/actions")),
        "{audit}"
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["action"] == "support.grant")
            .count(),
        2,
        "{audit}"
    );

    // Listed with scope and expiry; revoked, it stops at once.
    let (ok, list, err) = gateway(&gw, &admin, &["support", "list"]).await;
    assert!(ok, "{err}");
    assert!(
        list.contains(&format!("device:{a}")) && list.contains("fleet:kiosks"),
        "{list}"
    );
    assert!(list.contains("in 1h") || list.contains("in 59m"), "{list}");
    let id = dg.trim_start_matches("gw_").split('.').next().unwrap();
    let (ok, _, err) = gateway(&gw, &admin, &["support", "revoke", id]).await;
    assert!(ok, "{err}");
    let (st, _) = status(&api, &dg, "GET", &format!("/v1/devices/{a}"), None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "a revoked grant still works");

    // A short grant works, then expires by itself.
    let short = grant(&gw, &["--device", &a, "--role", "viewer", "--for", "10s"]).await;
    let (st, _) = status(&api, &short, "GET", &format!("/v1/devices/{a}"), None).await;
    assert_eq!(st, StatusCode::OK, "a fresh 10 s grant was refused");
    let expired = eventually(Duration::from_secs(60), || async {
        let (st, v) = status(&api, &short, "GET", &format!("/v1/devices/{a}"), None).await;
        (st == StatusCode::UNAUTHORIZED).then_some(v)
    })
    .await;
    assert!(expired.is_some(), "the grant did not expire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grants_are_refused_with_the_reason() {
    let gw = TestGateway::spawn().await;
    let a = gw.add_device(false).await.uuid;
    let data = gw.data_dir.to_str().unwrap().to_string();
    let refused = |args: Vec<String>| {
        let (gw, data) = (&gw, data.clone());
        async move {
            let mut all: Vec<&str> = vec!["support", "grant", "--data-dir", &data];
            all.extend(args.iter().map(String::as_str));
            let (ok, out, err) = gateway(gw, "", &all).await;
            assert!(!ok, "{all:?} made a grant: {out}");
            err
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let err = refused(s(&["--device", &a, "--role", "admin", "--for", "1h"])).await;
    assert!(err.contains("not for support grants"), "{err}");
    let err = refused(s(&["--device", &"ab".repeat(16), "--for", "1h"])).await;
    assert!(err.contains("no device"), "{err}");
    let err = refused(s(&["--fleet", "nosuch", "--for", "1h"])).await;
    assert!(err.contains("no fleet"), "{err}");
    let err = refused(s(&["--device", "not-a-uuid", "--for", "1h"])).await;
    assert!(err.contains("--device"), "{err}");
    let err = refused(s(&["--device", &a, "--for", "31d"])).await;
    assert!(err.contains("--for"), "{err}");
    let err = refused(s(&["--for", "1h"])).await;
    assert!(err.contains("--fleet") || err.contains("--device"), "{err}");
}

/// The id of an API token (`gw_<id>.<secret>`).
fn token_id(token: &str) -> String {
    token
        .strip_prefix("gw_")
        .and_then(|t| t.split_once('.'))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("not a token: {token}"))
}

/// The audit entries the API lists for `query` (`actor=…&action=…`).
async fn audit(api: &Api, admin: &str, query: &str) -> Vec<Value> {
    let (s, v) = api
        .call("GET", &format!("/v1/audit?{query}"), Some(admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_grants_through_the_api_are_created_listed_used_and_revoked() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, operator, admin) = tokens(&gw).await;
    api.call(
        "POST",
        "/v1/fleets",
        Some(&admin),
        Some(json!({"name": "kiosks"})),
    )
    .await;
    let device = gw.add_device(false).await.uuid;
    let other = gw.add_device(false).await.uuid;
    let (s, v) = api
        .call(
            "PATCH",
            &format!("/v1/devices/{device}"),
            Some(&admin),
            Some(json!({"fleet": "kiosks"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Only an admin creates them.
    let body = json!({"fleet": "kiosks", "role": "viewer", "valid_for_secs": 3600, "name": "t-1"});
    let (s, v) = api
        .call(
            "POST",
            "/v1/support-grants",
            Some(&operator),
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, g) = api
        .call("POST", "/v1/support-grants", Some(&admin), Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    assert_eq!(g["scope"], "fleet:kiosks");
    assert_eq!(g["role"], "viewer");
    assert_eq!(g["name"], "t-1");
    let fleet_grant = g["token"].as_str().unwrap().to_string();
    let left = g["expires_at"].as_i64().unwrap() - now();
    assert!((3500..=3600).contains(&left), "{g}");
    let (s, _) = api
        .call(
            "GET",
            &format!("/v1/devices/{device}"),
            Some(&fleet_grant),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the fleet grant does not reach its device"
    );
    let (s, _) = api
        .call(
            "GET",
            &format!("/v1/devices/{other}"),
            Some(&fleet_grant),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api
        .call(
            "POST",
            &format!("/v1/devices/{device}/actions"),
            Some(&fleet_grant),
            Some(json!({"action": "blink"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a viewer grant queued an action");

    // Bad requests say what is wrong.
    for (bad, status, says) in [
        (
            json!({"role": "operator", "valid_for_secs": 60}),
            400,
            "exactly one",
        ),
        (
            json!({"fleet": "kiosks", "device": device, "role": "operator", "valid_for_secs": 60}),
            400,
            "exactly one",
        ),
        (
            json!({"device": device, "role": "admin", "valid_for_secs": 60}),
            400,
            "admin role",
        ),
        (
            json!({"device": device, "role": "root", "valid_for_secs": 60}),
            400,
            "viewer or operator",
        ),
        (
            json!({"device": device, "role": "viewer", "valid_for_secs": 0}),
            400,
            "the minimum is 1s",
        ),
        (
            json!({"device": device, "role": "viewer", "valid_for_secs": -5}),
            400,
            "between 1",
        ),
        (
            json!({"device": device, "role": "viewer", "valid_for_secs": 2_592_001}),
            400,
            "the maximum is 30d",
        ),
        (
            json!({"device": "xyz", "role": "viewer", "valid_for_secs": 60}),
            400,
            "uuid",
        ),
        (
            json!({"fleet": "nope", "role": "viewer", "valid_for_secs": 60}),
            404,
            "no fleet",
        ),
        (
            json!({"device": "0123456789abcdef0123456789abcdef", "role": "viewer", "valid_for_secs": 60}),
            404,
            "no device",
        ),
        (
            json!({"device": device, "role": "viewer", "valid_for_secs": 60, "extra": 1}),
            400,
            "extra",
        ),
    ] {
        let (s, v) = api
            .call(
                "POST",
                "/v1/support-grants",
                Some(&admin),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(s.as_u16(), status, "{bad}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(says), "{bad}: {msg:?} does not say {says:?}");
    }

    // A short one works until it expires, then not (waited for, not slept).
    let (s, g) = api
        .call(
            "POST",
            "/v1/support-grants",
            Some(&admin),
            Some(json!({"device": device, "role": "operator", "valid_for_secs": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let short = g["token"].as_str().unwrap().to_string();
    let short_id = g["id"].as_str().unwrap().to_string();
    assert_eq!(g["name"], "support");
    let path = format!("/v1/devices/{device}");
    let (s, _) = api.call("GET", &path, Some(&short), None).await;
    assert_eq!(s, StatusCode::OK, "a fresh grant was refused");
    let expired = eventually(Duration::from_secs(10), || async {
        let (s, _) = api.call("GET", &path, Some(&short), None).await;
        (s == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    assert!(expired.is_some(), "a 2 s grant still worked after 10 s");

    // Listed (grants only, the expired one too), revoked by id; a token that is no
    // grant is not revoked here.
    let (s, list) = api
        .call("GET", "/v1/support-grants", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    let fleet_id = token_id(&fleet_grant);
    assert_eq!(ids.len(), 2, "{list}");
    assert!(
        ids.contains(&fleet_id.as_str()) && ids.contains(&short_id.as_str()),
        "{list}"
    );
    let (s, _) = api
        .call("GET", "/v1/support-grants", Some(&operator), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = api
        .call(
            "DELETE",
            &format!("/v1/support-grants/{}", token_id(&operator)),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = api.call("GET", "/v1/fleets", Some(&operator), None).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "DELETE /v1/support-grants revoked a plain token"
    );
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/v1/support-grants/{fleet_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.call("GET", &path, Some(&fleet_grant), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a revoked grant still works");
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/v1/support-grants/{fleet_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Audited: who granted what, and who revoked it.
    let actor = format!("token:{}", token_id(&admin));
    let grants = audit(&api, &admin, "action=support.grant").await;
    assert_eq!(grants.len(), 2, "{grants:?}");
    assert!(
        grants.iter().all(|e| e["actor"] == actor.as_str()),
        "{grants:?}"
    );
    assert_eq!(grants[1]["detail"]["scope"], "fleet:kiosks");
    let revoked = audit(
        &api,
        &admin,
        &format!("action=support.revoke&target={fleet_id}"),
    )
    .await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
