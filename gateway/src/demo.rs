//! `gateway demo`: a gateway, one agent and a sample device web app in one process, on a
//! throw-away data dir, so a newcomer sees a public device URL work in one command.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{add_device, Gateway, GatewayError, ServeConfig};

/// Runs the demo until `shutdown`. Prints the public URL on stdout.
pub async fn run(http_listen: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data = tempfile_dir()?;
    let app = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    let cfg = ServeConfig {
        data_dir: data.clone(),
        http_listen,
        tunnel_listen: "127.0.0.1:0".parse()?,
        // A port of its own: by default the TCP tunnel takes the UDP port's number, which
        // another process may hold on TCP ("address already in use" at random).
        tunnel_tcp_listen: Some("127.0.0.1:0".parse()?),
        api_listen: "127.0.0.1:0".parse()?,
        ..ServeConfig::default()
    };
    let gateway = match Gateway::bind(cfg.clone()).await {
        Err(GatewayError::Bind { addr, source }) if addr == http_listen => {
            anyhow::bail!("cannot listen on {addr}: {source} (pick another with --http-listen 127.0.0.1:PORT)")
        }
        other => other?,
    };
    let tunnel = gateway.tunnel_addr();
    let port = gateway.http_addr().port();
    let api_addr = gateway.api_addr();
    let agent_cfg = add_device(&data, None, None, true, &tunnel.to_string()).await?;
    let uuid = agent_cfg.uuid.clone();
    let opts = edge_agent::AgentOptions {
        target: app_addr.to_string(),
        route: edge_agent::dial::Route {
            gateway_tcp: Some(gateway.tunnel_tcp_addr().to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    let agent = edge_agent::Agent::new(agent_cfg, opts)?;
    let mut state = agent.state();

    let gw = tokio::spawn(gateway.run(shutdown.clone()));
    let ag = tokio::spawn(agent.run(shutdown.clone()));
    let web = tokio::spawn(sample_app(app, uuid.clone(), shutdown.clone()));
    // Print the URL once the tunnel is up, so it works when the reader clicks it.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == edge_agent::ConnState::Connected),
    )
    .await;
    println!("gateway data dir: {}", data.display());
    println!("device {uuid} connected; its web app listens on {app_addr}");
    println!("public URL: http://{uuid}.devices.localhost:{port}/");
    println!("(curl without *.localhost resolution: curl -H 'Host: {uuid}.devices.localhost' http://127.0.0.1:{port}/)");
    println!(
        "management API: http://{api_addr}/ (create a token: gateway token create --data-dir {} --role admin)",
        data.display()
    );
    match dashboard_link(&data, api_addr).await {
        Ok(link) => println!("dashboard: {link} (signs you in as admin once, within 10 minutes)"),
        Err(e) => println!("dashboard: http://{api_addr}/ (no sign-in link: {e})"),
    }
    println!("press Ctrl-C to stop");
    let (g, a, _) = tokio::join!(gw, ag, web);
    g??;
    a??;
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// A one-time sign-in link to the dashboard (`/login/once?t=…`) for an admin token made for
/// the demo.
async fn dashboard_link(data: &std::path::Path, api: SocketAddr) -> anyhow::Result<String> {
    let (id, _) =
        crate::create_token(data, None, crate::api::auth::Role::Admin, "demo dashboard").await?;
    let (_, store) = crate::datadir::open_existing_in(data, None).await?;
    let principal = crate::store::Principal::Token(id);
    let t = crate::dashboard::create_login_link(&store, &principal).await;
    store.close().await;
    Ok(format!("http://{api}/login/once?t={}", t?))
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("gateway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The device's web UI stand-in: a page, a JSON endpoint and an echo endpoint.
async fn sample_app(listener: TcpListener, uuid: String, shutdown: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(v) => v, Err(_) => continue },
        };
        let uuid = uuid.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let uuid = uuid.clone();
                async move { Ok::<_, Infallible>(sample_response(req, &uuid).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn sample_response(req: Request<Incoming>, uuid: &str) -> Response<Full<Bytes>> {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    match req.uri().path() {
        "/echo" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::new(Full::new(body))
        }
        "/api/info" => {
            let json = format!("{{\"device\":\"{uuid}\",\"visitor\":\"{forwarded}\"}}\n");
            let mut r = Response::new(Full::new(Bytes::from(json)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "application/json".parse().expect("mime"),
            );
            r
        }
        _ => {
            let html = format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>device {uuid}</title></head>\
                 <body style=\"font-family:system-ui,sans-serif;margin:4em auto;max-width:40em\">\
                 <h1>Hello from device <code>{uuid}</code></h1>\
                 <p>This page is served by the device's own web server on its port 80 stand-in, \
                 through the device's QUIC tunnel to the gateway.</p>\
                 <p>You are {forwarded} (X-Forwarded-For). Try <a href=\"/api/info\">/api/info</a>.</p>\
                 </body></html>\n"
            );
            let mut r = Response::new(Full::new(Bytes::from(html)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "text/html; charset=utf-8".parse().expect("mime"),
            );
            r
        }
    }
}
