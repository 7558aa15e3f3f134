//! Share links on public URLs (`docs/access.md`): the link, its cookie for the device's
//! host only, expiry, the CLI, and a change made through one node of a cluster applying
//! on every node. Real gateways and agents, a recording backend, hyper as the visitor.

use std::net::SocketAddr;
use std::time::Duration;

use e2e_tests::access::*;
use e2e_tests::procs;
use e2e_tests::*;
use http::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn share_links_leave_a_cookie_for_their_device_only() {
    let s = Setup::new(2).await;
    let (a, b) = (s.host(0), s.host(1));
    for i in 0..2 {
        let (st, v) = s.set_device(i, json!({"mode": "link"})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let (st, link) = s.share(0, 7200).await;
    assert_eq!(st, StatusCode::CREATED, "{link}");
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "http://{}.devices.localhost/?gw_share=",
            s.uuid(0)
        )),
        "{url}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((link["expires_at"].as_i64().unwrap() - now - 7200).abs() <= 5);

    // Nothing: refused.
    let (st, _, body) = visit(&s.gw, &a, "/", &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(body.contains("share link"), "{body}");

    // The link: a redirect to the same URL without the token, and a cookie for this
    // host only.
    let with_query = format!("{}&keep=1", path_of(url));
    let (st, h, _) = visit(&s.gw, &a, &with_query, &[]).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/?keep=1");
    let set = h["set-cookie"].to_str().unwrap().to_string();
    assert!(set.starts_with("gw_access="), "{set}");
    for attr in ["; Path=/", "; HttpOnly", "; SameSite=Lax", "; Max-Age="] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let max_age: i64 = set
        .split("Max-Age=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((7190..=7200).contains(&max_age), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();

    // The cookie lets the visitor in; the device sees the visitor's own cookies only.
    let jar = format!("theirs=1; {cookie}; other=2");
    let (st, _, body) = visit(&s.gw, &a, "/?keep=1", &[("cookie", &jar)]).await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "ok /?keep=1"));
    let (_, headers) = s.seen(0).last();
    assert_eq!(headers["cookie"], "theirs=1; other=2");

    // A's link and A's cookie on B's host: refused.
    let (st, _, body) = visit(&s.gw, &b, &path_of(url), &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(body.contains("not valid for this device"), "{body}");
    let (st, _, _) = visit(&s.gw, &b, "/", &[("cookie", &cookie)]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(s.seen(1).all().is_empty());

    // A tampered token: refused.
    let tampered = format!("{}0", path_of(url));
    let (st, _, _) = visit(&s.gw, &a, &tampered, &[]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // A link of one second: once its second is over it is refused as expired (waited
    // for, not slept).
    let (st, short) = s.share(0, 1).await;
    assert_eq!(st, StatusCode::CREATED);
    let short = path_of(short["url"].as_str().unwrap());
    let expired = eventually(Duration::from_secs(10), || {
        let (gw, a, short) = (&s.gw, a.clone(), short.clone());
        async move {
            let (st, _, body) = visit(gw, &a, &short, &[]).await;
            (st == StatusCode::UNAUTHORIZED).then_some(body)
        }
    })
    .await
    .expect("the one-second link expires");
    assert!(expired.contains("expired"), "{expired}");

    // Nothing of the gateway's own reached any device.
    for (uri, headers) in s.seen(0).all().into_iter().chain(s.seen(1).all()) {
        assert!(!uri.contains("gw_share"), "{uri}");
        for c in headers.get_all("cookie") {
            assert!(!c.to_str().unwrap().contains("gw_access"), "{c:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_sets_modes_and_prints_share_links() {
    let s = Setup::new(1).await;
    let uuid = s.uuid(0).to_string();
    let host = s.host(0);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "hunter2\n").unwrap();
    let pw = pw.to_str().unwrap();

    let (ok, out, err) = cli(
        &s,
        &[
            "device",
            "access",
            &uuid,
            "basic",
            "--user",
            "ops",
            "--password-file",
            pw,
            "--allow",
            "127.0.0.0/8,::1",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("basic") && out.contains("ops") && out.contains("127.0.0.0/8, ::1/128"),
        "{out}"
    );
    let (st, _, _) = visit(
        &s.gw,
        &host,
        "/",
        &[("authorization", &basic("ops", "hunter2"))],
    )
    .await;
    assert_eq!(
        st,
        StatusCode::OK,
        "the trailing newline is not part of the password"
    );

    // Errors: the API's, and the CLI's own.
    let (ok, _, err) = cli(&s, &["device", "access", &uuid, "banana"]);
    assert!(!ok && err.contains("invalid_mode"), "{err}");
    let (ok, _, err) = cli(&s, &["device", "access", &uuid, "basic", "--user", "ops"]);
    assert!(!ok && err.contains("missing_credentials"), "{err}");
    let (ok, _, err) = cli(
        &s,
        &[
            "device",
            "access",
            &uuid,
            "public",
            "--allow",
            "10.0.0.0/40",
        ],
    );
    assert!(!ok && err.contains("invalid_cidr"), "{err}");
    let (ok, _, err) = cli(&s, &["device", "share", &uuid, "--for", "garbage"]);
    assert!(!ok && err.contains("--for"), "{err}");
    let (ok, _, err) = cli(&s, &["device", "share", &uuid, "--for", "2h"]);
    assert!(!ok && err.contains("not_link_mode"), "{err}");

    let (ok, out, err) = cli(&s, &["fleet", "access", "nope", "link"]);
    assert!(!ok && err.contains("not_found"), "{out}{err}");

    let (ok, _, err) = cli(&s, &["device", "access", &uuid, "link"]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&s, &["device", "share", &uuid, "--for", "2h"]);
    assert!(ok, "{err}");
    let url = out.trim();
    assert!(
        url.starts_with(&format!("http://{uuid}.devices.localhost/?gw_share=")),
        "{url}"
    );
    let (st, h, _) = visit(&s.gw, &host, &path_of(url), &[]).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert!(
        h["set-cookie"].to_str().unwrap().contains("Max-Age=7"),
        "{h:?}"
    );

    let (ok, out, err) = cli(&s, &["device", "access", &uuid]);
    assert!(ok, "{err}");
    assert!(out.contains("link (its own setting)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_one_node_applies_on_every_node() {
    use e2e_tests::cluster::{node, serving, share_ca, token_and_device};
    let Some(url) = gateway::store::test_pg::database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let (backend, seen) = recording_backend().await;
    let (http_a, tunnel_a, api_a) = (free_port_tcp(), free_port_udp(), free_port_tcp());
    let _a = node(
        &data_a,
        &url,
        "a",
        (http_a, tunnel_a, free_port_udp()),
        Some(api_a),
    );
    assert!(serving(http_a).await, "node a did not start");
    let out = dir.path().join("device.toml");
    let (token, uuid) = token_and_device(&data_a, &url, tunnel_a, &out);
    let host = device_host(&uuid);
    let _agent = procs::agent(&out, backend, &[]);
    share_ca(&data_a, &data_b);
    let (http_b, api_b) = (free_port_tcp(), free_port_tcp());
    let _b = node(
        &data_b,
        &url,
        "b",
        (http_b, free_port_udp(), free_port_udp()),
        Some(api_b),
    );
    assert!(serving(http_b).await, "node b did not start");
    let a: SocketAddr = format!("127.0.0.1:{http_a}").parse().unwrap();
    let b: SocketAddr = format!("127.0.0.1:{http_b}").parse().unwrap();
    let (api_a, api_b): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{api_a}").parse().unwrap(),
        format!("127.0.0.1:{api_b}").parse().unwrap(),
    );
    // Both nodes serve it (b over the peer link) and have its setting (public) cached.
    for at in [a, b] {
        let up = eventually(Duration::from_secs(30), || {
            let host = host.clone();
            async move { (visit_at(at, &host, "/", &[]).await.0 == StatusCode::OK).then_some(()) }
        })
        .await;
        assert!(up.is_some(), "{at} does not serve the device");
    }
    // Applied within 10 s: the wake-up, not the 30 s re-read.
    let within = Duration::from_secs(10);
    let refuses = |at: SocketAddr, want: StatusCode| {
        let host = host.clone();
        async move {
            eventually(within, || {
                let host = host.clone();
                async move { (visit_at(at, &host, "/", &[]).await.0 == want).then_some(()) }
            })
            .await
            .is_some()
        }
    };

    // Link mode set through node b: node a (which holds the tunnel) applies it.
    let (st, v) = procs::api_json(
        api_b,
        &token,
        "PUT",
        &format!("/v1/devices/{uuid}/access"),
        Some(json!({"mode": "link"})),
    )
    .await
    .unwrap();
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        refuses(a, StatusCode::UNAUTHORIZED).await,
        "node a still lets visitors in"
    );
    // A link made through b works on a (one secret for the cluster), and its cookie on b.
    let (st, link) = procs::api_json(
        api_b,
        &token,
        "POST",
        &format!("/v1/devices/{uuid}/share-links"),
        Some(json!({"for_secs": 600})),
    )
    .await
    .unwrap();
    assert_eq!(st, StatusCode::CREATED, "{link}");
    let (st, h, _) = visit_at(a, &host, &path_of(link["url"].as_str().unwrap()), &[]).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let cookie = h["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (st, _, _) = visit_at(b, &host, "/", &[("cookie", &cookie)]).await;
    assert_eq!(st, StatusCode::OK, "the cookie through the peer link");
    assert!(!seen.last().1.contains_key("cookie"), "{:?}", seen.last());

    // Basic set through node a: node b, which admits its own visitors, applies it.
    let (st, _) = procs::api_json(
        api_a,
        &token,
        "PUT",
        &format!("/v1/devices/{uuid}/access"),
        Some(json!({"mode": "basic", "user": "u", "password": "p"})),
    )
    .await
    .unwrap();
    assert_eq!(st, StatusCode::OK);
    let challenged = eventually(within, || {
        let host = host.clone();
        async move {
            let (st, h, _) = visit_at(b, &host, "/", &[]).await;
            (st == StatusCode::UNAUTHORIZED && h.contains_key("www-authenticate")).then_some(())
        }
    })
    .await;
    assert!(challenged.is_some(), "node b does not ask for the password");
    let (st, _, _) = visit_at(b, &host, "/", &[("cookie", &cookie)]).await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "the share cookie is no password"
    );
    let (st, _, _) = visit_at(b, &host, "/", &[("authorization", &basic("u", "p"))]).await;
    assert_eq!(st, StatusCode::OK);
    assert!(!seen.last().1.contains_key("authorization"));
}
