//! Access control on public URLs (`docs/access.md`): a real gateway and real agents, a
//! real HTTP backend on the device side that records what it received, and hyper as the
//! visitor. Basic, allow-lists, the fleet default, live changes, and the 400s of
//! malformed settings. Share links are in `access_links.rs`, login mode in
//! `access_login.rs`; the shared helpers in `tests/src/access.rs`.

use std::time::Duration;

use e2e_tests::access::*;
use e2e_tests::*;
use http::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basic_needs_the_password_and_the_device_never_sees_it() {
    let s = Setup::new(1).await;
    let host = s.host(0);
    let session = s.session_id(0);
    let (st, v) = s
        .set_device(
            0,
            json!({"mode": "basic", "user": "alice", "password": "s3cret: with colon"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["mode"], "basic");
    assert_eq!(v["source"], "device");
    assert_eq!(v["user"], "alice");
    let text = v.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("s3cret"),
        "{text}"
    );

    let (st, h, body) = visit(&s.gw, &host, "/", &[("accept", "text/html")]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h["www-authenticate"],
        format!("Basic realm=\"{}\"", s.uuid(0)).as_str()
    );
    assert!(body.contains("<h1>401 Unauthorized</h1>"), "{body}");

    let wrong = basic("alice", "nope");
    let (st, h, _) = visit(&s.gw, &host, "/", &[("authorization", &wrong)]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(h.contains_key("www-authenticate"));
    let other_user = basic("bob", "s3cret: with colon");
    let (st, _, _) = visit(&s.gw, &host, "/", &[("authorization", &other_user)]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(s.seen(0).all().is_empty(), "nothing reached the device");

    let right = basic("alice", "s3cret: with colon");
    // Twice: the second is answered from the cache of verified credentials.
    for _ in 0..2 {
        let (st, _, body) = visit(
            &s.gw,
            &host,
            "/page?q=1",
            &[("authorization", &right), ("x-visitor", "kept")],
        )
        .await;
        assert_eq!((st, body.as_str()), (StatusCode::OK, "ok /page?q=1"));
        let (_, headers) = s.seen(0).last();
        assert!(!headers.contains_key("authorization"), "{headers:?}");
        assert_eq!(headers["x-visitor"], "kept");
    }

    // The change came through a live tunnel: the device never reconnected.
    assert_eq!(s.session_id(0), session);
    // The audit log has the change, not the password.
    let (st, audit) = s.api.call("GET", "/v1/audit", Some(&s.admin), None).await;
    assert_eq!(st, StatusCode::OK);
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "device.access")
        .expect("an audit entry")
        .to_string();
    assert!(
        entry.contains("alice") && !entry.contains("s3cret"),
        "{entry}"
    );

    // Back to public, live: no credentials needed, and Authorization is the device's own
    // business again (not stripped).
    let (st, _) = s.set_device(0, json!({"mode": "public"})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = visit(&s.gw, &host, "/", &[("authorization", "Bearer theirs")]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(s.seen(0).last().1["authorization"], "Bearer theirs");
    assert_eq!(s.session_id(0), session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_passwords_from_one_address_are_refused_for_a_while() {
    let s = Setup::new(1).await;
    let host = s.host(0);
    let (st, _) = s
        .set_device(
            0,
            json!({"mode": "basic", "user": "u", "password": "right"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let wrong = basic("u", "wrong");
    // Ten are answered (and verified); from then on the address is refused for a
    // window that doubles per failure, without any argon2 work.
    for i in 1..=10 {
        let (st, _, _) = visit(&s.gw, &host, "/", &[("authorization", &wrong)]).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let mut refused = None;
    for i in 11..=15 {
        let (st, h, _) = visit(&s.gw, &host, "/", &[("authorization", &wrong)]).await;
        if st == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(h);
            break;
        }
        assert_eq!(st, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let h = refused.expect("no 429 after 15 wrong passwords");
    assert!(h.contains_key("retry-after"), "{h:?}");
    // Once the window is over, the right password gets in again.
    let right = basic("u", "right");
    let ok = eventually(Duration::from_secs(60), || {
        let (gw, host, right) = (&s.gw, host.clone(), right.clone());
        async move {
            let (st, _, _) = visit(gw, &host, "/", &[("authorization", &right)]).await;
            (st == StatusCode::OK).then_some(())
        }
    })
    .await;
    assert!(ok.is_some(), "the address stays refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_allow_list_is_checked_against_the_tcp_peer() {
    let s = Setup::new(1).await;
    let host = s.host(0);
    let (st, v) = s
        .set_device(0, json!({"mode": "public", "allow": ["10.0.0.0/8"]}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["allow"], json!(["10.0.0.0/8"]));
    // A forwarded-for header claiming an allowed address changes nothing.
    let (st, _, body) = visit(&s.gw, &host, "/", &[("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(body.contains("not allowed"), "{body}");
    assert!(s.seen(0).all().is_empty());

    let (st, _) = s
        .set_device(
            0,
            json!({"mode": "public", "allow": ["::1", "127.0.0.0/8"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = visit(&s.gw, &host, "/", &[]).await;
    assert_eq!(st, StatusCode::OK);

    // The list combines with a mode: allowed address, still a share link to show.
    let (st, _) = s
        .set_device(0, json!({"mode": "link", "allow": ["127.0.0.1"]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = visit(&s.gw, &host, "/", &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = s
        .set_device(0, json!({"mode": "link", "allow": ["192.0.2.0/24"]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, link) = s.share(0, 60).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _, _) = visit(&s.gw, &host, &path_of(link["url"].as_str().unwrap()), &[]).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "the allow-list comes first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_allow_list_matches_ipv6_visitors() {
    // A public listener on ::1: its visitors come from ::1.
    let s = Setup::with(1, |c| c.http_listen = "[::1]:0".parse().unwrap()).await;
    let host = s.host(0);
    let (st, _) = s
        .set_device(0, json!({"mode": "public", "allow": ["127.0.0.0/8"]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = visit(&s.gw, &host, "/", &[]).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "::1 is not in 127.0.0.0/8");
    let (st, _) = s
        .set_device(0, json!({"mode": "public", "allow": ["::1/128"]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = visit(&s.gw, &host, "/", &[]).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_default_applies_until_the_device_has_its_own() {
    let s = Setup::new(1).await;
    let host = s.host(0);
    let uuid = s.uuid(0).to_string();
    let session = s.session_id(0);
    let (st, _) = s
        .api
        .call(
            "POST",
            "/v1/fleets",
            Some(&s.admin),
            Some(json!({"name": "kiosks"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = s
        .api
        .call(
            "PATCH",
            &format!("/v1/devices/{uuid}"),
            Some(&s.operator),
            Some(json!({"fleet": "kiosks"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = visit(&s.gw, &host, "/", &[]).await;
    assert_eq!(st, StatusCode::OK, "no setting anywhere: public");

    // Fleet access is the admin's.
    let fleet_path = "/v1/fleets/kiosks/access";
    let link = json!({"mode": "link"});
    let (st, _) = s
        .api
        .call("PUT", fleet_path, Some(&s.operator), Some(link.clone()))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v) = s
        .api
        .call("PUT", fleet_path, Some(&s.admin), Some(link))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["mode"].as_str(), v["source"].as_str()),
        (Some("link"), Some("fleet"))
    );
    let (st, _, _) = visit(&s.gw, &host, "/", &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "the fleet's default applies");
    let (st, v) = s
        .api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/access"),
            Some(&s.viewer),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v,
        json!({"mode": "link", "source": "fleet", "fleet": "kiosks", "user": null, "allow": []})
    );

    // The device's own setting wins...
    let (st, _) = s.set_device(0, json!({"mode": "public"})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = visit(&s.gw, &host, "/", &[]).await;
    assert_eq!(st, StatusCode::OK);
    // ...until it inherits again.
    let (st, v) = s.set_device(0, json!({"mode": "inherit"})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["source"], "fleet");
    let (st, _, _) = visit(&s.gw, &host, "/", &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // The fleet back to public: the device follows, live.
    let (st, v) = s
        .api
        .call(
            "PUT",
            fleet_path,
            Some(&s.admin),
            Some(json!({"mode": "public"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["source"], "default");
    let (st, _, _) = visit(&s.gw, &host, "/", &[]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(s.session_id(0), session, "no reconnect needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_settings_get_specific_errors() {
    let s = Setup::new(1).await;
    let uuid = s.uuid(0).to_string();
    let cases = [
        (
            json!({"mode": "public", "allow": ["10.0.0.0/33"]}),
            "invalid_cidr",
        ),
        (
            json!({"mode": "public", "allow": ["banana"]}),
            "invalid_cidr",
        ),
        (json!({"mode": "open"}), "invalid_mode"),
        (
            json!({"mode": "login", "user": "u", "password": "p"}),
            "invalid_settings",
        ),
        (json!({"mode": "basic", "user": "u"}), "missing_credentials"),
        (
            json!({"mode": "basic", "password": "p"}),
            "missing_credentials",
        ),
        (
            json!({"mode": "basic", "user": "a:b", "password": "p"}),
            "invalid_user",
        ),
        (
            json!({"mode": "link", "user": "u", "password": "p"}),
            "invalid_settings",
        ),
        (
            json!({"mode": "inherit", "allow": ["::1"]}),
            "invalid_settings",
        ),
        (json!({"mode": "public", "extra": 1}), "invalid_request"),
    ];
    for (body, code) in cases {
        let (st, v) = s.set_device(0, body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }
    // A fleet has nothing to inherit from.
    s.api
        .call(
            "POST",
            "/v1/fleets",
            Some(&s.admin),
            Some(json!({"name": "f"})),
        )
        .await;
    let (st, v) = s
        .api
        .call(
            "PUT",
            "/v1/fleets/f/access",
            Some(&s.admin),
            Some(json!({"mode": "inherit"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_mode"))
    );
    // The viewer reads, never writes.
    let (st, _) = s
        .api
        .call(
            "PUT",
            &format!("/v1/devices/{uuid}/access"),
            Some(&s.viewer),
            Some(json!({"mode": "link"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Share links: a bad duration, and a device not in link mode.
    for secs in [0, -5, 365 * 86_400 + 1] {
        let (st, v) = s.share(0, secs).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_duration")),
            "{secs}"
        );
    }
    let (st, v) = s.share(0, 60).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_link_mode"))
    );
    // Nothing was stored by the refusals.
    let (_, v) = s
        .api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/access"),
            Some(&s.viewer),
            None,
        )
        .await;
    assert_eq!(v["source"], "default");
}
