//! `login` mode on public URLs (`docs/access.md`): a real gateway and agents, users made
//! with the `gateway user` CLI, a recording backend on the device side, hyper as the
//! visitor (the sign-in page on the bare domain, the ticket, the device host's cookie),
//! curl over HTTPS for the Secure cookies, and one headless Chromium run of the whole
//! flow. The dashboard side of users limited to fleets is in `user_fleets.rs`.

use std::process::Command;
use std::time::Duration;

use e2e_tests::access::*;
use e2e_tests::browser::Browser;
use e2e_tests::*;
use http::StatusCode;
use serde_json::json;

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

/// `curl -i` over HTTPS to `host` (resolved to loopback) trusting `ca`: the response head
/// and body as one text.
fn curl_https(ca: &std::path::Path, host: &str, port: u16, args: &[&str], path: &str) -> String {
    let bare = host.split(':').next().unwrap();
    let o = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{bare}:{port}:127.0.0.1")])
        .args(args)
        .arg(format!("https://{bare}:{port}{path}"))
        .output()
        .expect("curl (apt-get install curl)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value of header `name` in a `curl -i` answer.
fn header_of(answer: &str, name: &str) -> Vec<String> {
    answer
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_https_the_sign_in_and_device_cookies_are_secure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("wild.pem"), dir.path().join("wild.key"));
    let ca = certs::Ca::load_or_create(&dir.path().join("ca")).unwrap();
    // The bare domain needs its own name in the certificate, beside the wildcard.
    let id = ca
        .issue_server(&["*.devices.localhost".into(), BARE.into()])
        .unwrap();
    std::fs::write(&cert, &id.cert_pem).unwrap();
    std::fs::write(&key, &id.key_pem).unwrap();
    let ca_pem = dir.path().join("ca").join("ca.pem");
    let port = free_port_tcp();
    let s = Setup::with(1, |c| {
        c.https_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
        c.https_cert = Some(cert.clone());
        c.https_key = Some(key.clone());
    })
    .await;
    let (st, _) = s.set_device(0, json!({"mode": "login"})).await;
    assert_eq!(st, StatusCode::OK);
    user_add(&s.gw, "ann", "viewer", &[], "ann-password-1");
    let host = s.host(0);

    let first = eventually(Duration::from_secs(30), || async {
        let a = curl_https(&ca_pem, &host, port, &[], "/x");
        a.starts_with("HTTP/2 303").then_some(a)
    })
    .await
    .expect("a 303 to the sign-in page over HTTPS");
    let to = header_of(&first, "location").remove(0);
    assert!(
        to.starts_with(&format!("https://{BARE}:{port}/login?device=")),
        "{to}"
    );
    let path = &to[to.find("/login").unwrap()..];
    let form = curl_https(&ca_pem, BARE, port, &[], path);
    let csrf = csrf_in(&form);
    let form_cookie = header_of(&form, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with("gw_portal_form="))
        .expect("the form's cookie");
    assert!(form_cookie.contains("; Secure"), "{form_cookie}");
    let post = curl_https(
        &ca_pem,
        BARE,
        port,
        &[
            "-H",
            &format!("cookie: {}", pair(&form_cookie)),
            "--data",
            &format!(
                "csrf={csrf}&device={}&next=/x&user=ann&password=ann-password-1",
                s.uuid(0)
            ),
        ],
        "/login",
    );
    let portal = header_of(&post, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with("gw_portal="))
        .unwrap_or_else(|| panic!("no session: {post}"));
    for attr in ["; Secure", "; HttpOnly", "; SameSite=Lax"] {
        assert!(portal.contains(attr), "{portal} lacks {attr}");
    }
    let back = header_of(&post, "location").remove(0);
    assert!(
        back.starts_with(&format!("https://{host}:{port}/x?gw_ticket=")),
        "{back}"
    );
    let exchanged = curl_https(&ca_pem, &host, port, &[], &back[back.find("/x").unwrap()..]);
    let device_cookie = header_of(&exchanged, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with("gw_login="))
        .unwrap_or_else(|| panic!("no device cookie: {exchanged}"));
    for attr in ["; Secure", "; HttpOnly", "; SameSite=Lax"] {
        assert!(device_cookie.contains(attr), "{device_cookie} lacks {attr}");
    }
    let page = curl_https(
        &ca_pem,
        &host,
        port,
        &["-H", &format!("cookie: {}", pair(&device_cookie))],
        "/x",
    );
    assert!(
        page.starts_with("HTTP/2 200") && page.ends_with("ok /x"),
        "{page}"
    );
}
