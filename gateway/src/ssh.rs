//! `gateway ssh UUID [SERVICE]`: a shell on a device (or in one of its service containers)
//! through the management API's terminal WebSocket.
//!
//! The local terminal goes into raw mode for the session, so every key (Ctrl-C included)
//! goes to the device; a guard puts it back on every way out (normal exit, error, panic,
//! SIGTERM/SIGHUP). Window-size changes (SIGWINCH) are forwarded. When stdin is not a
//! terminal nothing is switched and stdin is streamed as typed input, followed by an
//! end-of-file (Ctrl-D) when it ends, so the command can be scripted. The remote exit
//! status becomes the return value (the CLI's exit code).

use std::io::Write as _;
use std::os::fd::AsFd;

use futures_util::{SinkExt, StreamExt};
use protocol::{DeviceUuid, TerminalMessage};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::api::types::ErrorBody;

/// Why a session could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// No token was given.
    #[error("no API token: pass --token or set GATEWAY_TOKEN")]
    NoToken,
    /// The API URL is not usable.
    #[error("invalid API URL {0:?}: {1}")]
    BadUrl(String, String),
    /// The CA given for an https API is not usable.
    #[error("the API CA (--api-ca): {0}")]
    Ca(#[source] certs::CertError),
    /// Nothing answered at the API address.
    #[error("cannot reach the management API at {url}: {reason} (is `gateway serve` running? set --api or GATEWAY_API)")]
    Unreachable {
        /// The base URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The gateway refused the session (role, unknown or offline device, ...).
    #[error("{0}")]
    Refused(String),
    /// The device reported an error (no such service, too many sessions, ...).
    #[error("{0}")]
    Device(String),
    /// The WebSocket broke mid-session.
    #[error("connection to the gateway lost: {0}")]
    Lost(String),
    /// The local terminal could not be set up.
    #[error("local terminal: {0}")]
    Tty(std::io::Error),
}

/// Puts a terminal into raw mode and restores its previous settings when dropped (which
/// also happens while a panic unwinds).
struct RawMode {
    fd: std::os::fd::OwnedFd,
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enable(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Self> {
        let saved = rustix::termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Flush, &raw)?;
        Ok(Self {
            fd: fd.try_clone_to_owned()?,
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            &self.fd,
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// The size of the terminal on stdout (or stdin), if there is one.
fn window_size() -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout().as_fd())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin().as_fd()))
        .ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col.min(1000), size.ws_row.min(1000)))
}

/// A TCP or TLS stream to the API.
enum Transport {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// Opens a terminal on `uuid` (its host, or `service`'s container) through the API at
/// `base` and runs it on this process's stdin/stdout until it ends. Returns the remote
/// exit status.
pub async fn run(
    base: &str,
    token: Option<&str>,
    ca_pem: Option<&str>,
    uuid: DeviceUuid,
    service: Option<&str>,
) -> Result<i32, SshError> {
    let token = token.ok_or(SshError::NoToken)?;
    let base = base.trim_end_matches('/');
    let uri: http::Uri = base
        .parse()
        .map_err(|e: http::uri::InvalidUri| SshError::BadUrl(base.into(), e.to_string()))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(SshError::BadUrl(
                base.into(),
                "use http:// or https://".into(),
            ))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| SshError::BadUrl(base.into(), "no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let interactive = rustix::termios::isatty(std::io::stdin().as_fd());
    let (cols, rows) = window_size().unwrap_or((80, 24));
    let term = std::env::var("TERM")
        .ok()
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .unwrap_or_else(|| "xterm-256color".into());
    let mut path = format!("/v1/devices/{uuid}/terminal?cols={cols}&rows={rows}&term={term}");
    if let Some(s) = service {
        path.push_str(&format!("&service={}", encode(s)));
    }
    let url = format!(
        "{}://{}{}",
        if https { "wss" } else { "ws" },
        uri.authority().map(|a| a.as_str()).unwrap_or_default(),
        path
    );
    let mut req = url
        .into_client_request()
        .map_err(|e| SshError::BadUrl(base.into(), e.to_string()))?;
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().map_err(|_| {
            SshError::BadUrl(base.into(), "the token is not a valid header value".into())
        })?,
    );

    let unreachable = |reason: String| SshError::Unreachable {
        url: base.to_string(),
        reason,
    };
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let transport = if https {
        let pem = ca_pem.ok_or_else(|| {
            unreachable(
                "an https API needs its CA: pass --api-ca FILE or set GATEWAY_API_CA".into(),
            )
        })?;
        let connector = crate::client::api_tls_connector(pem).map_err(SshError::Ca)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| SshError::BadUrl(base.into(), e.to_string()))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        Transport::Tls(Box::new(tls))
    } else {
        Transport::Plain(tcp)
    };
    match transport {
        Transport::Plain(s) => session(handshake(req, s).await?, interactive).await,
        Transport::Tls(s) => session(handshake(req, *s).await?, interactive).await,
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn handshake<S>(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: S,
) -> Result<tokio_tungstenite::WebSocketStream<S>, SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Error;
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(Error::Http(resp)) => {
            let status = resp.status();
            let message = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok())
                .map(|b| b.error.message)
                .unwrap_or_else(|| format!("the gateway answered HTTP {status}"));
            Err(SshError::Refused(message))
        }
        Err(e) => Err(SshError::Lost(e.to_string())),
    }
}

/// Runs the session; the raw-mode guard lives exactly as long as this function.
async fn session<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    interactive: bool,
) -> Result<i32, SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::signal::unix::{signal, SignalKind};
    let _raw = if interactive {
        Some(RawMode::enable(std::io::stdin().as_fd()).map_err(SshError::Tty)?)
    } else {
        None
    };
    let (mut tx, mut rx) = ws.split();
    let mut winch = signal(SignalKind::window_change()).map_err(SshError::Tty)?;
    let mut term = signal(SignalKind::terminate()).map_err(SshError::Tty)?;
    let mut hup = signal(SignalKind::hangup()).map_err(SshError::Tty)?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = std::io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdin_open = true;
    let mut exit: Option<i32> = None;
    loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => {
                let msg = match n {
                    Ok(0) | Err(_) => {
                        // End of scripted input: an end-of-file keystroke for the remote side.
                        stdin_open = false;
                        Message::Binary(vec![0x04].into())
                    }
                    Ok(n) => Message::Binary(buf[..n].to_vec().into()),
                };
                if let Err(e) = tx.send(msg).await {
                    return Err(SshError::Lost(e.to_string()));
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    // Blocking write on purpose: output must reach the terminal in order.
                    let _ = stdout.write_all(&b);
                    let _ = stdout.flush();
                }
                Some(Ok(Message::Text(t))) => match TerminalMessage::from_json(t.as_bytes()) {
                    Ok(TerminalMessage::Exit { code }) => exit = Some(code),
                    Ok(TerminalMessage::Error { message }) if exit.is_none() => {
                        return Err(SshError::Device(message));
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if exit.is_some() {
                        break;
                    }
                    return Err(SshError::Lost(e.to_string()));
                }
            },
            _ = winch.recv() => {
                if let Some((cols, rows)) = window_size() {
                    let resize = TerminalMessage::Resize { cols, rows }.to_json();
                    let _ = tx.send(Message::Text(resize.into())).await;
                }
            }
            // Being killed or hung up: leave the device's shell (it is hung up too) and
            // let the guard restore the terminal.
            _ = term.recv() => { let _ = tx.close().await; return Ok(128 + 15); }
            _ = hup.recv() => { let _ = tx.close().await; return Ok(128 + 1); }
        }
    }
    exit.ok_or_else(|| {
        SshError::Lost("the gateway closed the session without an exit status".into())
    })
}
