//! `login` mode on public URLs (`docs/access.md`) and users limited to fleets
//! (`docs/dashboard.md`): a real gateway and agents, users made with the `gateway user`
//! CLI, a recording backend on the device side, hyper as the visitor (the sign-in page on
//! the bare domain, the ticket, the device host's cookie), and one headless Chromium run
//! of the whole flow.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e_tests::access::*;
use e2e_tests::browser::Browser;
use e2e_tests::*;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

const BARE: &str = "devices.localhost";

/// `gateway user add NAME --role R [--fleet F]...`, the password on stdin.
fn user_add(gw: &TestGateway, name: &str, role: &str, fleets: &[&str], password: &str) {
    let mut cmd = Command::new(bin("gateway"));
    cmd.args(["user", "add", name, "--role", role, "--data-dir"])
        .arg(&gw.data_dir);
    for f in fleets {
        cmd.args(["--fleet", f]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `gateway user ARGS --data-dir …`: (success, stdout, stderr).
fn user_cli(gw: &TestGateway, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("gateway"))
        .arg("user")
        .args(args)
        .arg("--data-dir")
        .arg(&gw.data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One request to the public listener (`host`), with a method, cookies and a form body.
async fn public(
    gw: &TestGateway,
    method: &str,
    host: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.http_addr))
        .header("host", host)
        .header("accept", "text/html");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if form.is_some() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let resp = http_client()
        .request(req.body(body(form.unwrap_or("").to_string())).unwrap())
        .await
        .unwrap();
    let (parts, b) = resp.into_parts();
    let bytes = b.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// The `Set-Cookie` header that sets `name`.
fn set_cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(String::from)
}

/// `name=value` of a `Set-Cookie` header.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

fn location(h: &HeaderMap) -> String {
    h["location"].to_str().unwrap().to_string()
}

/// The path and query of an absolute URL, and its host.
fn split_url(url: &str) -> (String, String) {
    let rest = url.split_once("://").unwrap().1;
    let slash = rest.find('/').unwrap();
    (rest[..slash].to_string(), rest[slash..].to_string())
}

/// Percent-encodes a form value.
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn csrf_in(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Loads the bare domain's sign-in form at `path` and posts `user`/`password` with its
/// CSRF nonce: the answer to the post.
async fn sign_in(
    gw: &TestGateway,
    path: &str,
    user: &str,
    password: &str,
) -> (StatusCode, HeaderMap, String) {
    let (st, h, page) = public(gw, "GET", BARE, path, None, None).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    let nonce = pair(&set_cookie(&h, "gw_portal_form").expect("the form's cookie"));
    let csrf = csrf_in(&page);
    assert_eq!(nonce, format!("gw_portal_form={csrf}"));
    let device = page
        .split("name=\"device\" value=\"")
        .nth(1)
        .map(|r| r[..r.find('"').unwrap()].to_string())
        .unwrap_or_default();
    let next = page
        .split("name=\"next\" value=\"")
        .nth(1)
        .map(|r| r[..r.find('"').unwrap()].replace("&amp;", "&"))
        .unwrap_or_default();
    let form = format!(
        "csrf={csrf}&device={device}&next={}&user={user}&password={password}",
        enc(&next)
    );
    public(gw, "POST", BARE, "/login", Some(&nonce), Some(&form)).await
}

/// Two fleets, a device in each (in login mode: the first by its own setting, the second
/// by its fleet's default), and users `ann` (kiosks only) and `root` (every fleet).
async fn login_setup() -> Setup {
    let s = Setup::new(2).await;
    for (i, fleet) in ["kiosks", "cams"].into_iter().enumerate() {
        let (st, _) = s
            .api
            .call(
                "POST",
                "/v1/fleets",
                Some(&s.admin),
                Some(json!({"name": fleet})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        let (st, _) = s
            .api
            .call(
                "PATCH",
                &format!("/v1/devices/{}", s.uuid(i)),
                Some(&s.operator),
                Some(json!({"fleet": fleet})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, v) = s.set_device(0, json!({"mode": "login"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["mode"].as_str(), v["source"].as_str()),
        (Some("login"), Some("device"))
    );
    let (st, v) = s
        .api
        .call(
            "PUT",
            "/v1/fleets/cams/access",
            Some(&s.admin),
            Some(json!({"mode": "login"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    user_add(&s.gw, "ann", "viewer", &["kiosks"], "ann-password-1");
    user_add(&s.gw, "root", "admin", &[], "root-password-1");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_in_on_the_bare_domain_then_a_ticket_for_that_device_only() {
    let s = login_setup().await;
    let (a, b) = (s.host(0), s.host(1));
    let u0 = s.uuid(0).to_string();

    // No cookie: a browser's GET goes to the sign-in page with the device and path; any
    // other method gets a 401 page that links there. Nothing reaches the device.
    let (st, h, _) = public(&s.gw, "GET", &a, "/page?q=1", None, None).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let to_sign_in = location(&h);
    assert_eq!(
        to_sign_in,
        format!("http://{BARE}/login?device={u0}&next=/page%3Fq%3D1")
    );
    let (st, _, page) = public(&s.gw, "POST", &a, "/form", None, Some("x=1")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(
        page.contains("Sign in") && page.contains("/login?device="),
        "{page}"
    );
    assert!(s.seen(0).all().is_empty());

    // The form: a wrong password is a 401 and no session; no CSRF token is a 403.
    let sign_in_path = split_url(&to_sign_in).1;
    let (st, h, page) = sign_in(&s.gw, &sign_in_path, "ann", "wrong-password").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(page.contains("Wrong user or password"), "{page}");
    assert!(set_cookie(&h, "gw_portal").is_none());
    let (st, _, _) = public(
        &s.gw,
        "POST",
        BARE,
        "/login",
        None,
        Some("user=ann&password=ann-password-1"),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "a form without its CSRF token");

    // The right password: a session on the bare domain, and back to the device with a
    // ticket.
    let (st, h, _) = sign_in(&s.gw, &sign_in_path, "ann", "ann-password-1").await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let portal = set_cookie(&h, "gw_portal").expect("a sign-in session");
    for attr in ["; HttpOnly", "; SameSite=Lax", "; Path=/"] {
        assert!(portal.contains(attr), "{portal} lacks {attr}");
    }
    assert!(!portal.contains("Secure") && !portal.to_ascii_lowercase().contains("domain="));
    let (to_host, with_ticket) = split_url(&location(&h));
    assert_eq!(to_host, a);
    assert!(
        with_ticket.starts_with("/page?q=1&gw_ticket="),
        "{with_ticket}"
    );

    // The ticket on another device's host is refused, and so is a tampered one.
    let (st, _, page) = public(&s.gw, "GET", &b, &with_ticket, None, None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(page.contains("not valid for this device"), "{page}");
    let (st, _, _) = public(&s.gw, "GET", &a, &format!("{with_ticket}0"), None, None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // On its own host it becomes a host-only cookie, and the ticket leaves the URL.
    let (st, h, _) = public(&s.gw, "GET", &a, &with_ticket, None, None).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(location(&h), "/page?q=1");
    let device_cookie = set_cookie(&h, "gw_login").expect("the device host's cookie");
    for attr in ["; HttpOnly", "; SameSite=Lax", "; Path=/", "; Max-Age="] {
        assert!(device_cookie.contains(attr), "{device_cookie} lacks {attr}");
    }
    assert!(!device_cookie.to_ascii_lowercase().contains("domain="));
    // Used once: a replay is refused.
    let (st, _, page) = public(&s.gw, "GET", &a, &with_ticket, None, None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(page.contains("used already"), "{page}");

    // The cookie lets ann in; the device sees the visitor's own cookies only.
    let jar = format!("theirs=1; {}", pair(&device_cookie));
    let (st, _, text) = public(&s.gw, "GET", &a, "/page?q=1", Some(&jar), None).await;
    assert_eq!((st, text.as_str()), (StatusCode::OK, "ok /page?q=1"));
    assert_eq!(s.seen(0).last().1["cookie"], "theirs=1");
    // The device's cookie is no pass to another device.
    let (st, _, _) = public(&s.gw, "GET", &b, "/", Some(&pair(&device_cookie)), None).await;
    assert_eq!(st, StatusCode::SEE_OTHER);

    // Signed in on the bare domain already: straight back with a ticket, no form.
    let (st, h, _) = public(
        &s.gw,
        "GET",
        BARE,
        &sign_in_path,
        Some(&pair(&portal)),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert!(location(&h).contains("&gw_ticket="));

    // ann does not see fleet cams: a 403 page on the bare domain, before any ticket.
    let other = format!("/login?device={}&next=/", s.uuid(1));
    let (st, _, page) = public(&s.gw, "GET", BARE, &other, Some(&pair(&portal)), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(page.contains("ann") && page.contains("cams"), "{page}");
    // root sees every fleet.
    let (st, h, _) = sign_in(&s.gw, &other, "root", "root-password-1").await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let (host, path) = split_url(&location(&h));
    assert_eq!(host, b);
    let (st, h, _) = public(&s.gw, "GET", &b, &path, None, None).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let root_b = pair(&set_cookie(&h, "gw_login").unwrap());
    let (st, _, text) = public(&s.gw, "GET", &b, "/", Some(&root_b), None).await;
    assert_eq!((st, text.as_str()), (StatusCode::OK, "ok /"));

    // Nothing of the gateway's own reached either device.
    for (uri, headers) in s.seen(0).all().into_iter().chain(s.seen(1).all()) {
        assert!(!uri.contains("gw_ticket"), "{uri}");
        for c in headers.get_all("cookie") {
            let c = c.to_str().unwrap();
            assert!(!c.contains("gw_login") && !c.contains("gw_portal"), "{c}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_users_and_other_fleets_are_refused_and_the_allow_list_still_applies() {
    let s = login_setup().await;
    let a = s.host(0);
    // ann through the whole flow to device 0.
    let to = format!("/login?device={}&next=/", s.uuid(0));
    let (st, h, _) = sign_in(&s.gw, &to, "ann", "ann-password-1").await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let (_, with_ticket) = split_url(&location(&h));
    let (_, h, _) = public(&s.gw, "GET", &a, &with_ticket, None, None).await;
    let cookie = pair(&set_cookie(&h, "gw_login").expect("a cookie"));
    let (st, _, _) = public(&s.gw, "GET", &a, "/", Some(&cookie), None).await;
    assert_eq!(st, StatusCode::OK);

    // Device 0 moves to fleet cams: ann's cookie now gets a 403 page (the move drops the
    // cached setting at once).
    let (st, _) = s
        .api
        .call(
            "PATCH",
            &format!("/v1/devices/{}", s.uuid(0)),
            Some(&s.operator),
            Some(json!({"fleet": "cams"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let forbidden = eventually(Duration::from_secs(30), || {
        let (gw, a, cookie) = (&s.gw, a.clone(), cookie.clone());
        async move {
            let (st, _, page) = public(gw, "GET", &a, "/", Some(&cookie), None).await;
            (st == StatusCode::FORBIDDEN).then_some(page)
        }
    })
    .await
    .expect("ann is refused on a device of another fleet");
    assert!(
        forbidden.contains("ann") && forbidden.contains("fleet cams"),
        "{forbidden}"
    );
    let (st, _) = s
        .api
        .call(
            "PATCH",
            &format!("/v1/devices/{}", s.uuid(0)),
            Some(&s.operator),
            Some(json!({"fleet": "kiosks"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let back = eventually(Duration::from_secs(30), || {
        let (gw, a, cookie) = (&s.gw, a.clone(), cookie.clone());
        async move {
            let (st, _, _) = public(gw, "GET", &a, "/", Some(&cookie), None).await;
            (st == StatusCode::OK).then_some(())
        }
    })
    .await;
    assert!(
        back.is_some(),
        "ann is let in again once the device is back"
    );

    // The allow-list comes first, cookie or not.
    let (st, _) = s
        .set_device(0, json!({"mode": "login", "allow": ["192.0.2.0/24"]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, page) = public(&s.gw, "GET", &a, "/", Some(&cookie), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(page.contains("address is not allowed"), "{page}");
    let (st, _) = s
        .set_device(0, json!({"mode": "login", "allow": ["127.0.0.0/8"]}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = public(&s.gw, "GET", &a, "/", Some(&cookie), None).await;
    assert_eq!(st, StatusCode::OK);

    // Removing the user ends the access (within the few seconds of the session cache).
    let (ok, _, err) = user_cli(&s.gw, &["remove", "ann"]);
    assert!(ok, "{err}");
    let seen_before = s.seen(0).all().len();
    let refused = eventually(Duration::from_secs(30), || {
        let (gw, a, cookie) = (&s.gw, a.clone(), cookie.clone());
        async move {
            let (st, h, _) = public(gw, "GET", &a, "/", Some(&cookie), None).await;
            (st == StatusCode::SEE_OTHER).then(|| location(&h))
        }
    })
    .await
    .expect("a removed user's cookie stops working");
    assert!(refused.contains("/login?device="), "{refused}");
    let after = s.seen(0).all().len();
    let (st, _, _) = public(&s.gw, "GET", &a, "/", Some(&cookie), None).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(
        s.seen(0).all().len(),
        after,
        "nothing more reached the device"
    );
    assert!(after >= seen_before);

    // Wrong passwords on the sign-in page back off per address with a 429.
    let mut refused = None;
    for i in 1..=15 {
        let (st, h, _) = sign_in(&s.gw, "/login", "root", "not-the-password").await;
        if st == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((i, h));
            break;
        }
        assert_eq!(st, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let (i, h) = refused.expect("no 429 after 15 wrong passwords");
    assert!(i > 10, "refused after {i}");
    assert!(h.contains_key("retry-after"), "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_limited_to_fleets_sees_only_their_devices_on_the_dashboard() {
    let s = login_setup().await;
    let (u0, u1) = (s.uuid(0).to_string(), s.uuid(1).to_string());
    let (ok, out, err) = user_cli(&s.gw, &["list"]);
    assert!(ok, "{err}");
    let ann = out
        .lines()
        .find(|l| l.starts_with("ann"))
        .unwrap_or_default();
    assert!(ann.contains("kiosks"), "{out}");
    let root = out
        .lines()
        .find(|l| l.starts_with("root"))
        .unwrap_or_default();
    assert!(root.contains("(all)"), "{out}");
    // A fleet that does not exist is refused by name, and nothing is added.
    let mut child = Command::new(bin("gateway"))
        .args([
            "user",
            "add",
            "bob",
            "--role",
            "viewer",
            "--fleet",
            "nope",
            "--data-dir",
        ])
        .arg(&s.gw.data_dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "bob-password-1").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("\"nope\""), "{err}");
    assert!(!user_cli(&s.gw, &["list"]).1.contains("bob"));

    // ann signs in to the dashboard (the management listener).
    let dash =
        |method: &'static str, path: String, cookie: Option<String>, form: Option<String>| {
            let addr = s.gw.api_addr;
            async move {
                let mut req = http::Request::builder()
                    .method(method)
                    .uri(format!("http://{addr}{path}"));
                if let Some(c) = cookie {
                    req = req.header("cookie", c);
                }
                if form.is_some() {
                    req = req.header("content-type", "application/x-www-form-urlencoded");
                }
                let resp = http_client()
                    .request(req.body(body(form.unwrap_or_default())).unwrap())
                    .await
                    .unwrap();
                let (parts, b) = resp.into_parts();
                let text =
                    String::from_utf8_lossy(&b.collect().await.unwrap().to_bytes()).into_owned();
                (parts.status, parts.headers, text)
            }
        };
    let (_, h, page) = dash("GET", "/login".into(), None, None).await;
    let nonce = pair(&set_cookie(&h, "gw_login").unwrap());
    let form = format!("csrf={}&user=ann&password=ann-password-1", csrf_in(&page));
    let (st, h, _) = dash("POST", "/login".into(), Some(nonce), Some(form)).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let session = pair(&set_cookie(&h, "gw_session").unwrap());
    let get = |path: &str| dash("GET", path.to_string(), Some(session.clone()), None);

    // The devices list is held to ann's fleet; another fleet, another fleet's device and
    // the overview of every fleet are refused.
    let (st, h, _) = get("/devices?online=online").await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(location(&h), "/devices?fleet=kiosks&online=online");
    let (st, _, page) = get("/devices?fleet=kiosks").await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains(&u0) && !page.contains(&u1), "{page}");
    for path in [
        "/devices?fleet=cams".to_string(),
        format!("/devices/{u1}"),
        format!("/devices/{u1}/logs"),
        "/fleets".to_string(),
        "/events".to_string(),
    ] {
        let (st, _, page) = get(&path).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}");
        assert!(page.contains("kiosks"), "{path}: {page}");
    }
    let (st, _, page) = get(&format!("/devices/{u0}")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains(&u0));
    // A form post on the other fleet's device is refused before its handler runs.
    let csrf = csrf_in(&page);
    let (st, _, _) = dash(
        "POST",
        format!("/devices/{u1}/tags"),
        Some(session.clone()),
        Some(format!("csrf={csrf}&tags=a%3Db")),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn browser_switches_a_device_to_login_and_signs_in_to_reach_it() {
    let s = login_setup().await;
    let Some(b) = Browser::start().await else {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "chromedriver is missing and CI=true"
        );
        println!("SKIPPED: chromedriver not installed (apt-get install chromium chromium-driver)");
        return;
    };
    // `*.localhost` resolves to loopback in Chromium: the real device URL, port and all.
    let port = s.gw.http_addr.port();
    let url = format!("http://{}:{port}/welcome?from=browser", s.host(0));
    b.goto(&url).await;
    let at = b.script("return location.host + location.pathname").await;
    assert_eq!(at, format!("{BARE}:{port}/login"));
    let user = b.find("input[name=user]").await;
    b.type_into(&user, "ann").await;
    let pw = b.find("input[name=password]").await;
    b.type_into(&pw, "ann-password-1").await;
    let submit = b.find("button[type=submit]").await;
    b.click(&submit).await;
    let landed = eventually(Duration::from_secs(20), || async {
        let text = b
            .script("return document.body ? document.body.innerText : ''")
            .await;
        (text.as_str() == Some("ok /welcome?from=browser")).then_some(())
    })
    .await;
    assert!(landed.is_some(), "the device's page after sign-in");
    assert_eq!(b.script("return location.href").await, url.as_str());
    let cookies = b.cookies().await;
    let c = cookies
        .iter()
        .find(|c| c["name"] == "gw_login")
        .unwrap_or_else(|| panic!("{cookies:?}"));
    assert_eq!(c["httpOnly"], true);
    assert_eq!(c["sameSite"], "Lax");
    // The device's backend saw the page load (and the favicon), none of the gateway's own.
    let seen = s.seen(0).all();
    assert!(
        seen.iter().any(|(uri, _)| uri == "/welcome?from=browser"),
        "{seen:?}"
    );
    for (uri, headers) in &seen {
        assert!(!uri.contains("gw_"), "{uri}");
        for c in headers.get_all("cookie") {
            assert!(!c.to_str().unwrap().contains("gw_"), "{c:?}");
        }
    }
}
