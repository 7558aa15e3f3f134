//! The device page's "who may visit" card: the mode in force and where it comes from, an
//! operator's form that changes it (through the API's own handler: basic's password
//! hashed, a bad allow-list entry refused beside the form), share links in link mode
//! that admit a visitor, and the refusals: a viewer's POST and a missing CSRF token.
//! Real gateway and agent, hyper on the dashboard and on the public listener.

use e2e_tests::access::{basic, recording_backend, visit};
use e2e_tests::dashboard::*;
use e2e_tests::*;
use http::StatusCode;

#[tokio::test]
async fn the_device_page_sets_who_may_visit_and_makes_share_links() {
    let gw = TestGateway::spawn().await;
    user_add(&gw, "ann", "operator", "operator-password");
    user_add(&gw, "vic", "viewer", "viewer-password");
    let (viewer, _, admin) = tokens(&gw).await;
    let api = Api::new(&gw);
    let (backend, seen) = recording_backend().await;
    let cfg = gw.add_device(true).await;
    let uuid = cfg.uuid.clone();
    let host = device_host(&uuid);
    let mut agent = TestAgent::spawn(cfg, backend);
    agent.connected().await;
    let ann = session(&gw, "ann", "operator-password").await;
    let page_path = format!("/devices/{uuid}");
    let (page, csrf) = page_and_csrf(&gw, &ann, &page_path).await;
    assert!(
        page.contains(r#"data-access-mode="public""#),
        "the page shows the mode in force: {page}"
    );
    assert!(page.contains("the default"), "and where it comes from");
    let post = |path: &'static str, fields: Vec<(&'static str, String)>| {
        let (gw, ann, uuid) = (&gw, ann.clone(), uuid.clone());
        async move {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(
                gw,
                "POST",
                &format!("/devices/{uuid}/{path}"),
                Some(&ann),
                Some(&form_body(&pairs)),
            )
            .await
        }
    };

    // A bad allow-list entry: refused beside the form, with what was typed kept, and the
    // setting unchanged.
    let (s, _, page) = post(
        "access",
        vec![
            ("csrf", csrf.clone()),
            ("mode", "public".into()),
            ("allow", "10.0.0.0/8, not-an-address".into()),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains(r#"data-refused="access""#), "{page}");
    assert!(page.contains("not-an-address"), "the typed value is kept");
    let (_, now) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/access"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(now["mode"], "public", "{now}");

    // Basic with a password: the visitor needs it; the API shows the mode and user.
    let (s, h, body) = post(
        "access",
        vec![
            ("csrf", csrf.clone()),
            ("mode", "basic".into()),
            ("user", "guest".into()),
            ("password", "a long password".into()),
            ("allow", String::new()),
        ],
    )
    .await;
    assert!(s.is_redirection(), "{s}: {body}");
    assert!(h["location"].to_str().unwrap().ends_with("#access"));
    let (_, now) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/access"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(
        (
            now["mode"].as_str(),
            now["source"].as_str(),
            now["user"].as_str()
        ),
        (Some("basic"), Some("device"), Some("guest")),
        "{now}"
    );
    let (s, _, _) = visit(&gw, &host, "/", &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let auth = basic("guest", "a long password");
    let (s, _, body) = visit(&gw, &host, "/", &[("authorization", &auth)]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(seen.last().1.get("authorization").is_none());

    // Link mode, then a share link from the page: shown once, and it admits a visitor.
    let (s, _, _) = post(
        "access",
        vec![("csrf", csrf.clone()), ("mode", "link".into())],
    )
    .await;
    assert!(s.is_redirection(), "{s}");
    let (page, csrf) = page_and_csrf(&gw, &ann, &page_path).await;
    assert!(page.contains("/share-link"), "link mode offers share links");
    let (s, _, page) = post(
        "share-link",
        vec![("csrf", csrf.clone()), ("for", "soon".into())],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a bad duration: {page}");
    assert!(page.contains(r#"data-refused="share""#), "{page}");
    let (s, _, page) = post(
        "share-link",
        vec![("csrf", csrf.clone()), ("for", "2h".into())],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let start = page.find("data-share-url>").expect("the link on the page") + 15;
    let url = &page[start..start + page[start..].find('<').unwrap()];
    let url = url.replace("&amp;", "&");
    let path = e2e_tests::access::path_of(&url);
    let (s, h, _) = visit(&gw, &host, &path, &[]).await;
    assert!(
        s.is_redirection() && h.get("set-cookie").is_some(),
        "the share link is exchanged for a cookie: {s} {h:?}"
    );
    let (_, audit) = api
        .call("GET", "/v1/audit?limit=50", Some(&admin), None)
        .await;
    let entries = audit.as_array().unwrap();
    for action in ["device.access", "device.share"] {
        assert!(
            entries
                .iter()
                .any(|e| e["action"] == action && e["actor"] == "user:ann"),
            "{action} audited as the user: {audit}"
        );
    }

    // A viewer sees the mode and no form; their POST and one without CSRF are refused,
    // and nothing changes.
    let vic = session(&gw, "vic", "viewer-password").await;
    let (s, _, page) = http(&gw, "GET", &page_path, Some(&vic), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains(r#"data-access-mode="link""#));
    assert!(
        !page.contains(&format!(r#"action="/devices/{uuid}/access""#)),
        "a viewer sees the access form"
    );
    let vcsrf = csrf_in(&page);
    let (s, _, _) = http(
        &gw,
        "POST",
        &format!("/devices/{uuid}/access"),
        Some(&vic),
        Some(&form_body(&[("csrf", &vcsrf), ("mode", "public")])),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = post("access", vec![("mode", "public".into())]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, now) = api
        .call(
            "GET",
            &format!("/v1/devices/{uuid}/access"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(now["mode"], "link", "{now}");
    agent.stop().await;
}
