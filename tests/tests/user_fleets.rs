//! Dashboard users limited to fleets (`gateway user add --fleet`, `docs/dashboard.md`):
//! `gateway user list` shows the limit, and the dashboard's pages and forms refuse every
//! other fleet's devices, on the server. A real gateway and agents, hyper as the browser.

use std::io::Write;
use std::process::{Command, Stdio};

use e2e_tests::access::*;
use e2e_tests::*;
use http::StatusCode;
use http_body_util::BodyExt;

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
    assert!(
        page.contains(r#"<option value="kiosks""#) && !page.contains(r#"<option value="cams""#),
        "the fleet filter offers only her fleet: {page}"
    );
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
