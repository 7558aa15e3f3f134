//! The dashboard's admin pages end to end on a real gateway: hyper as the browser for
//! roles, CSRF and each page's forms, headless Chromium over WebDriver for one flow a
//! person runs (create an API token, see it once, revoke it) (`docs/dashboard.md`). The
//! support-grant API is tested in `support.rs`.

use std::time::Duration;

use e2e_tests::browser::Browser;
use e2e_tests::dashboard::{enc, http_at, try_sign_in, Session};
use e2e_tests::*;
use http::StatusCode;
use serde_json::{json, Value};

/// Where the screenshots go: `docs/dashboard/` when `DASHBOARD_SCREENSHOTS=docs`, else a
/// temporary folder (as in dashboard.rs).
fn shots_dir() -> std::path::PathBuf {
    let dir = if std::env::var("DASHBOARD_SCREENSHOTS").as_deref() == Ok("docs") {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard")
    } else {
        std::env::temp_dir().join(format!("dashboard-admin-shots-{}", std::process::id()))
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The secret in a page's "shown once" card.
fn secret_in(page: &str) -> String {
    let at = page
        .find("data-secret>")
        .unwrap_or_else(|| panic!("no secret shown in {page}"));
    let rest = &page[at + "data-secret>".len()..];
    rest[..rest.find('<').unwrap()].to_string()
}

/// The audit entries the API lists for `query` (`actor=…&action=…`).
async fn audit(api: &Api, admin: &str, query: &str) -> Vec<Value> {
    let (s, v) = api
        .call("GET", &format!("/v1/audit?{query}"), Some(admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().unwrap().clone()
}

/// The id of an API token (`gw_<id>.<secret>`).
fn token_id(token: &str) -> String {
    token
        .strip_prefix("gw_")
        .and_then(|t| t.split_once('.'))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("not a token: {token}"))
}

/// Every POST of the admin pages, with a form that would succeed for an admin.
fn admin_posts(
    fleet: &str,
    device: &str,
    key: &str,
    token: &str,
    user: &str,
) -> Vec<(String, String)> {
    vec![
        ("/admin/tokens".into(), "name=sneaky&role=admin".into()),
        (format!("/admin/tokens/{token}/revoke"), String::new()),
        ("/admin/keys".into(), format!("fleet={fleet}")),
        (format!("/admin/keys/{key}/revoke"), String::new()),
        (
            "/admin/users".into(),
            "name=mallory&role=admin&password=long-enough-pw".into(),
        ),
        (
            format!("/admin/users/{user}/password"),
            "password=another-long-pw".into(),
        ),
        (format!("/admin/users/{user}/remove"), String::new()),
        (
            "/admin/support".into(),
            format!("device={device}&role=operator&for=1h&name=x"),
        ),
        ("/admin/support/nope/revoke".into(), String::new()),
    ]
}

const ADMIN_PAGES: &[&str] = &[
    "/admin/tokens",
    "/admin/keys",
    "/admin/users",
    "/admin/support",
    "/admin/audit",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_and_operators_see_no_admin_pages_and_every_admin_post_checks_role_and_csrf() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (viewer, operator, admin) = tokens(&gw).await;
    let (s, v) = api
        .call(
            "POST",
            "/v1/fleets",
            Some(&admin),
            Some(json!({"name": "kiosks"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let device = gw.add_device(false).await.uuid;
    let (_, key) = api
        .call(
            "POST",
            "/v1/fleets/kiosks/keys",
            Some(&admin),
            Some(json!({})),
        )
        .await;
    let key = key["id"].as_str().unwrap().to_string();
    let as_admin = Session::start(gw.api_addr, &format!("token={}", enc(&admin))).await;
    // A user to aim the user forms at, added by the admin's own page.
    let (s, _, page) = as_admin
        .post(
            "/admin/users",
            "name=bob&role=viewer&password=bobs-password",
        )
        .await;
    assert!(s == StatusCode::SEE_OTHER, "{s} {page}");
    let victim_token = token_id(&operator);
    let posts = admin_posts("kiosks", &device, &key, &victim_token, "bob");

    // The admin sees the Admin entry and every page.
    let (_, _, home) = as_admin.get("/devices").await;
    assert!(
        home.contains("href=\"/admin\""),
        "no Admin entry for an admin"
    );
    for p in ADMIN_PAGES {
        let (s, _, body) = as_admin.get(p).await;
        assert_eq!(s, StatusCode::OK, "GET {p} as admin: {body}");
    }

    let audit_before = audit(&api, &admin, "limit=1000").await.len();
    for token in [&viewer, &operator] {
        let who = Session::start(gw.api_addr, &format!("token={}", enc(token))).await;
        let (_, _, home) = who.get("/devices").await;
        assert!(
            !home.contains("href=\"/admin\""),
            "an Admin entry for a non-admin"
        );
        for p in ADMIN_PAGES {
            let (s, _, body) = who.get(p).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "GET {p}: {body}");
            assert!(body.contains("need the admin role"), "{body}");
        }
        // With the right CSRF token, the role is what refuses.
        for (path, form) in &posts {
            let (s, _, body) = who.post(path, form).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "POST {path} as non-admin: {body}");
            assert!(body.contains("needs the admin role"), "{body}");
        }
    }
    // The admin, without the CSRF token or with another one, is refused too.
    for (path, form) in &posts {
        for bad in ["", "csrf=0123456789abcdef0123456789abcdef&"] {
            let (s, _, body) = as_admin.post_raw(path, &format!("{bad}{form}")).await;
            assert_eq!(
                s,
                StatusCode::FORBIDDEN,
                "POST {path} with csrf {bad:?}: {body}"
            );
            assert!(body.contains("CSRF"), "{body}");
        }
    }
    // None of it changed anything: no token, user or grant made, nothing revoked.
    let (_, all) = api.call("GET", "/v1/tokens", Some(&admin), None).await;
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    let (s, _) = api.call("GET", "/v1/fleets", Some(&operator), None).await;
    assert_eq!(s, StatusCode::OK, "the operator's token still works");
    let (_, keys) = api
        .call("GET", "/v1/fleets/kiosks/keys", Some(&admin), None)
        .await;
    assert_eq!(keys[0]["revoked"], false, "{keys}");
    assert!(try_sign_in(gw.api_addr, "user=bob&password=bobs-password")
        .await
        .is_ok());
    assert!(
        try_sign_in(gw.api_addr, "user=mallory&password=long-enough-pw")
            .await
            .is_err()
    );
    let after = audit(&api, &admin, "limit=1000").await;
    let changes: Vec<&Value> = after[..after.len() - audit_before]
        .iter()
        .filter(|e| !e["action"].as_str().unwrap().starts_with("dashboard."))
        .collect();
    assert!(
        changes.is_empty(),
        "refused posts were audited as changes: {changes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_pages_manage_keys_users_grants_and_read_the_audit_log() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    api.call(
        "POST",
        "/v1/fleets",
        Some(&admin),
        Some(json!({"name": "kiosks"})),
    )
    .await;
    let device = gw.add_device(false).await.uuid;
    let other = gw.add_device(false).await.uuid;
    let root = Session::start(gw.api_addr, &format!("token={}", enc(&admin))).await;
    let actor = format!("token:{}", token_id(&admin));

    // Users: added with a role, signs in; a new password ends the old session and
    // replaces the old password; removed, the user's session ends.
    let (s, _, page) = root
        .post(
            "/admin/users",
            "name=ann&role=operator&password=ann-first-pw",
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{page}");
    let (_, _, list) = root.get("/admin/users").await;
    assert!(list.contains("data-user=\"ann\""), "{list}");
    let (s, _, page) = root
        .post("/admin/users", "name=ann&role=viewer&password=whatever-pw")
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("exists already"), "{page}");
    let (s, _, page) = root
        .post("/admin/users", "name=short&role=viewer&password=short")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("at least 8 characters"), "{page}");
    let (s, _, page) = root
        .post(
            "/admin/users",
            "name=bad%20name&role=viewer&password=long-enough",
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("is not valid"), "{page}");
    let ann = Session::start(gw.api_addr, "user=ann&password=ann-first-pw").await;
    let (s, _, page) = root
        .post("/admin/users/ann/password", "password=ann-second-pw")
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let (s, h, _) = ann.get("/devices").await;
    assert_eq!(
        s,
        StatusCode::SEE_OTHER,
        "the old session still works after a reset"
    );
    assert!(h["location"].to_str().unwrap().starts_with("/login"));
    assert_eq!(
        try_sign_in(gw.api_addr, "user=ann&password=ann-first-pw").await,
        Err(StatusCode::UNAUTHORIZED)
    );
    let ann = Session::start(gw.api_addr, "user=ann&password=ann-second-pw").await;
    let (s, _, _) = root.post("/admin/users/ann/remove", "").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (s, _, _) = ann.get("/devices").await;
    assert_eq!(
        s,
        StatusCode::SEE_OTHER,
        "a removed user's session still works"
    );
    let (s, _, page) = root.post("/admin/users/ann/remove", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{page}");

    // Provisioning keys: created with a limit (shown once), listed, revoked.
    let (s, _, page) = root
        .post("/admin/keys", "fleet=kiosks&expires=7d&max_uses=3")
        .await;
    assert_eq!(s, StatusCode::CREATED, "{page}");
    let key = secret_in(&page);
    assert!(key.len() > 40, "{key}");
    let (_, keys) = api
        .call("GET", "/v1/fleets/kiosks/keys", Some(&admin), None)
        .await;
    let key_id = keys[0]["id"].as_str().unwrap().to_string();
    assert_eq!(keys[0]["max_uses"], 3, "{keys}");
    assert!(keys[0]["expires_at"].is_i64(), "{keys}");
    let (_, _, again) = root.get("/admin/keys").await;
    assert!(again.contains(&format!("data-key=\"{key_id}\"")));
    assert!(!again.contains(&key), "the key was shown a second time");
    for bad in [
        "fleet=kiosks&expires=soon",
        "fleet=kiosks&max_uses=0",
        "fleet=nope",
    ] {
        let (s, _, page) = root.post("/admin/keys", bad).await;
        assert!(s.is_client_error(), "{bad}: {s}");
        assert!(page.contains("alert-error"), "{bad}: {page}");
    }
    let (s, _, _) = root.post(&format!("/admin/keys/{key_id}/revoke"), "").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, keys) = api
        .call("GET", "/v1/fleets/kiosks/keys", Some(&admin), None)
        .await;
    assert_eq!(keys[0]["revoked"], true, "{keys}");

    // Support grants: for one device, shown once, reach that device only; revoked.
    let (s, _, page) = root
        .post(
            "/admin/support",
            &format!("device={device}&role=operator&for=2h&name=ticket-7"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{page}");
    let grant = secret_in(&page);
    let (s, _) = api
        .call("GET", &format!("/v1/devices/{device}"), Some(&grant), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .call("GET", &format!("/v1/devices/{other}"), Some(&grant), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let gid = token_id(&grant);
    let (_, _, list) = root.get("/admin/support").await;
    assert!(list.contains(&format!("data-grant=\"{gid}\"")), "{list}");
    assert!(list.contains(&format!("device:{device}")), "{list}");
    for (bad, says) in [
        (format!("device={device}&role=operator&for=45d"), "For"),
        (format!("device={device}&role=admin&for=1h"), "admin role"),
        ("role=viewer&for=1h".to_string(), "exactly one"),
        ("fleet=nope&role=viewer&for=1h".to_string(), "no fleet"),
    ] {
        let (s, _, page) = root.post("/admin/support", &bad).await;
        assert!(s.is_client_error(), "{bad}: {s}");
        assert!(page.contains(says), "{bad}: {page}");
    }
    let (s, _, _) = root.post(&format!("/admin/support/{gid}/revoke"), "").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (s, _) = api
        .call("GET", &format!("/v1/devices/{device}"), Some(&grant), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a revoked grant still works");

    // The audit log: every change above, by this session's actor, filterable.
    let mine = audit(&api, &admin, &format!("actor={}", enc(&actor))).await;
    let actions: Vec<&str> = mine.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for want in [
        "user.add",
        "user.password",
        "user.remove",
        "key.create",
        "key.revoke",
        "support.grant",
        "support.revoke",
    ] {
        assert!(actions.contains(&want), "no {want} by {actor}: {actions:?}");
    }
    let (s, _, page) = root
        .get(&format!(
            "/admin/audit?actor={}&action=support.",
            enc(&actor)
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("support.grant") && page.contains("support.revoke"),
        "{page}"
    );
    assert!(
        !page.contains(">user.add<"),
        "the action filter let user.add through"
    );
    let (_, _, page) = root.get("/admin/audit?target=ann").await;
    assert!(
        page.contains("user.password") && !page.contains("key.create"),
        "{page}"
    );
    let (s, _, page) = root.get("/admin/audit?before=soon").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("not an entry number"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_an_admin_creates_an_api_token_sees_it_once_and_revokes_it() {
    let gw = TestGateway::spawn().await;
    let api = Api::new(&gw);
    let (_, _, admin) = tokens(&gw).await;
    let Some(b) = Browser::start_sized(1100, 900).await else {
        assert!(!in_ci(), "chromedriver is missing and CI=true");
        println!("SKIPPED: chromedriver not installed (apt-get install chromium chromium-driver)");
        return;
    };
    let base = format!("http://{}", gw.api_addr);
    b.goto(&format!("{base}/login?next=/admin/tokens")).await;
    let details = b.find("details summary").await;
    b.click(&details).await;
    let field = b.find("input[name=token]").await;
    b.type_into(&field, &admin).await;
    let submit = b.find("button[type=submit]").await;
    b.click(&submit).await;
    eventually(Duration::from_secs(10), || async {
        (b.script("return location.pathname").await == "/admin/tokens").then_some(())
    })
    .await
    .expect("signed in and on the tokens page");
    // The Admin entry is current in the navigation.
    assert_eq!(
        b.script("return document.querySelector('.nav-link.active').textContent")
            .await,
        "Admin"
    );

    // Create a viewer token named deploy-bot.
    let name = b
        .find("form[action='/admin/tokens'] input[name=name]")
        .await;
    b.type_into(&name, "deploy-bot").await;
    let create = b
        .find("form[action='/admin/tokens'] button[type=submit]")
        .await;
    b.click(&create).await;
    let secret = eventually(Duration::from_secs(10), || async {
        let v = b
            .script("const s = document.querySelector('[data-secret]'); return s ? s.textContent : null")
            .await;
        v.as_str().map(String::from)
    })
    .await
    .expect("the new token is shown");
    assert!(secret.starts_with("gw_"), "{secret}");
    let id = token_id(&secret);
    let (s, _) = api.call("GET", "/v1/fleets", Some(&secret), None).await;
    assert_eq!(s, StatusCode::OK, "the token shown does not work");
    let (s, _) = api
        .call(
            "POST",
            "/v1/fleets",
            Some(&secret),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the token is not a viewer's");
    let row = format!("tr[data-token=\"{id}\"]");
    assert_eq!(
        b.script(&format!(
            "return document.querySelector('{row} .role-badge').textContent"
        ))
        .await,
        "viewer"
    );

    b.screenshot(&shots_dir().join("admin-tokens-desktop.png"))
        .await;
    // Shown once: the list, loaded again, has the row but not the secret.
    b.goto(&format!("{base}/admin/tokens")).await;
    let html = b.script("return document.body.innerHTML").await;
    let html = html.as_str().unwrap();
    assert!(html.contains(&format!("data-token=\"{id}\"")));
    assert!(!html.contains(&secret), "the secret was shown again");

    // Revoke it (the page asks first: say yes).
    b.script("window.confirm = function () { return true; }; return 1")
        .await;
    let revoke = b.find(&format!("{row} button[type=submit]")).await;
    b.click(&revoke).await;
    eventually(Duration::from_secs(10), || async {
        let gone = b
            .script(&format!("return document.querySelector('{row}') === null"))
            .await;
        (gone == true).then_some(())
    })
    .await
    .expect("the token's row is gone after revoking");
    let (s, _) = api.call("GET", "/v1/fleets", Some(&secret), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a revoked token still works");
    let actor = format!("token:{}", token_id(&admin));
    let entries = audit(&api, &admin, &format!("target={id}")).await;
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            (actor.as_str(), "token.delete"),
            (actor.as_str(), "token.create")
        ]
    );
    // At phone width the page still fits: no sideways scroll of the page itself.
    b.resize(390, 844).await;
    let overflow = b
        .script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        .await;
    assert_eq!(
        overflow, true,
        "the tokens page scrolls sideways at phone width"
    );
    b.screenshot(&shots_dir().join("admin-tokens-phone.png"))
        .await;
    // Not signed in, an admin page sends the browser to sign in first.
    let (s, h, _) = http_at(gw.api_addr, "GET", "/admin/audit", None, None).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/login?next=/admin/audit");
}
