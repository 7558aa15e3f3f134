//! Terminal WebSocket clients for the tests: open a session, type, read what comes back.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::TestGateway;

/// A terminal WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the terminal WebSocket; on a refused upgrade returns the status and JSON body.
pub async fn open(
    gw: &TestGateway,
    uuid: &str,
    token: Option<&str>,
    query: &str,
) -> Result<Ws, (StatusCode, Value)> {
    let url = format!("ws://{}/v1/devices/{uuid}/terminal?{query}", gw.api_addr);
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(e) => panic!("websocket connect: {e}"),
    }
}

/// What came back from the device until a condition held.
#[derive(Default, Debug)]
pub struct Seen {
    pub output: String,
    pub exit: Option<i64>,
    pub error: Option<String>,
    pub close: Option<(u16, String)>,
}

/// Reads until `done(&seen)` or the socket ends; panics after `limit`.
pub async fn read_until(ws: &mut Ws, limit: Duration, done: impl Fn(&Seen) -> bool) -> Seen {
    let mut seen = Seen::default();
    let res = tokio::time::timeout(limit, async {
        while !done(&seen) {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => seen.output.push_str(&String::from_utf8_lossy(&b)),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    match v["type"].as_str() {
                        Some("exit") => seen.exit = v["code"].as_i64(),
                        Some("error") => seen.error = v["message"].as_str().map(String::from),
                        _ => panic!("unexpected control message {v}"),
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    seen.close = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    })
    .await;
    assert!(res.is_ok(), "timed out; seen so far: {seen:?}");
    seen
}

/// Types `line` and Enter.
pub async fn type_line(ws: &mut Ws, line: &str) {
    ws.send(Message::Binary(format!("{line}\r").into_bytes().into()))
        .await
        .unwrap();
}
