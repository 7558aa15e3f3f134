//! Access control on public URLs (`docs/access.md`): a real gateway and real agents, a
//! real HTTP backend on the device side that records what it received, and hyper as the
//! visitor. Basic, share links and their cookie, allow-lists, the fleet default, live
//! changes, and the 400s of malformed settings (API and CLI).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::procs;
use e2e_tests::*;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// What the device's web server received: URI and headers of each request.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, HeaderMap)>>>);

impl Seen {
    fn last(&self) -> (String, HeaderMap) {
        self.0
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the backend saw a request")
    }

    fn all(&self) -> Vec<(String, HeaderMap)> {
        self.0.lock().unwrap().clone()
    }
}

/// A device web server that records every request and answers `ok <uri>`.
async fn recording_backend() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let uri = req.uri().to_string();
                        record
                            .0
                            .lock()
                            .unwrap()
                            .push((uri.clone(), req.headers().clone()));
                        Ok::<_, Infallible>(http::Response::new(body(format!("ok {uri}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// One visitor request to `host` with extra headers: status, headers, body text.
async fn visit(
    gw: &TestGateway,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    visit_at(gw.http_addr, host, path, headers).await
}

/// [`visit`] to the public listener at `addr`.
async fn visit_at(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = http::Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = http_client()
        .request(req.body(empty()).unwrap())
        .await
        .expect("visitor request");
    let status = resp.status();
    let h = resp.headers().clone();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (status, h, String::from_utf8_lossy(&b).into_owned())
}

/// A gateway with one connected device whose backend records; and the API with tokens.
struct Setup {
    gw: TestGateway,
    api: Api,
    operator: String,
    admin: String,
    viewer: String,
    devices: Vec<(String, Seen, TestAgent)>,
}

impl Setup {
    async fn new(devices: usize) -> Self {
        Self::with(devices, |_| {}).await
    }

    /// As [`Setup::new`], with the gateway's configuration adjusted by `f`.
    async fn with(devices: usize, f: impl FnOnce(&mut gateway::ServeConfig)) -> Self {
        let gw = TestGateway::spawn_custom(f).await;
        let (viewer, operator, admin) = tokens(&gw).await;
        let api = Api::new(&gw);
        let mut out = Vec::new();
        for _ in 0..devices {
            let (addr, seen) = recording_backend().await;
            let cfg = gw.add_device(true).await;
            let uuid = cfg.uuid.clone();
            let mut agent = TestAgent::spawn(cfg, addr);
            agent.connected().await;
            out.push((uuid, seen, agent));
        }
        Self {
            gw,
            api,
            operator,
            admin,
            viewer,
            devices: out,
        }
    }

    fn uuid(&self, i: usize) -> &str {
        &self.devices[i].0
    }

    fn host(&self, i: usize) -> String {
        device_host(self.uuid(i))
    }

    fn seen(&self, i: usize) -> &Seen {
        &self.devices[i].1
    }

    fn session_id(&self, i: usize) -> u64 {
        let uuid = self.uuid(i).parse().unwrap();
        self.gw.sessions.get(&uuid).expect("device online").id
    }

    async fn set_device(&self, i: usize, settings: Value) -> (StatusCode, Value) {
        let path = format!("/v1/devices/{}/access", self.uuid(i));
        self.api
            .call("PUT", &path, Some(&self.operator), Some(settings))
            .await
    }

    async fn share(&self, i: usize, for_secs: i64) -> (StatusCode, Value) {
        let path = format!("/v1/devices/{}/share-links", self.uuid(i));
        self.api
            .call(
                "POST",
                &path,
                Some(&self.operator),
                Some(json!({ "for_secs": for_secs })),
            )
            .await
    }
}

/// The path and query of a share link's URL (the visitor reaches the gateway by address).
fn path_of(url: &str) -> String {
    let after_scheme = url.split_once("://").unwrap().1;
    let slash = after_scheme.find('/').unwrap();
    after_scheme[slash..].to_string()
}

fn basic(user: &str, password: &str) -> String {
    // Base64 by hand: the tests take no base64 dependency.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

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
        (json!({"mode": "login"}), "mode_not_available"),
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
    let (_, v) = s.set_device(0, json!({"mode": "login"})).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not available yet"),
        "{v}"
    );
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

/// Runs `gateway ARGS` against the test gateway's API; (success, stdout, stderr).
fn cli(s: &Setup, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin("gateway"))
        .args(args)
        .env("GATEWAY_API", format!("http://{}", s.gw.api_addr))
        .env("GATEWAY_TOKEN", &s.admin)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
