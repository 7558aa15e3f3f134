//! Public HTTPS: the certificate of the `--https-listen` listener, from the operator's
//! PEM files (a wildcard for `*.<domain>`), read at start and again when either file
//! changes (checked every [`WATCH_EVERY`]) or on SIGHUP. A reload that fails (a key that
//! does not match, a half-written file) keeps the certificate in use and says why; the
//! next change or SIGHUP tries again. Also the redirect of plain HTTP visitors.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::pages::Body;

/// How often the certificate files are checked for a change.
pub(crate) const WATCH_EVERY: Duration = Duration::from_secs(2);

/// What a file looked like when last read: modified time and length.
type Stamp = Option<(SystemTime, u64)>;

/// The HTTPS certificate, from its files; the TLS acceptor asks it for every handshake.
pub(crate) struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    /// `None` until an ACME certificate was first issued: handshakes then fail.
    current: RwLock<Option<Arc<CertifiedKey>>>,
    seen: Mutex<(Stamp, Stamp)>,
}

impl std::fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read(path: &Path) -> Result<String, certs::CertError> {
    std::fs::read_to_string(path).map_err(|source| certs::CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl CertFiles {
    /// Reads `cert` and `key`; an error names the file or says the two do not match.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, certs::CertError> {
        let seen = (stamp(cert), stamp(key));
        let ck = certs::certified_key(&read(cert)?, &read(key)?)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Some(ck)),
            seen: Mutex::new(seen),
        }))
    }

    /// Files that may not exist yet (ACME's, before the first certificate): served once
    /// they do and form a valid pair.
    pub(crate) fn pending(cert: &Path, key: &Path) -> Arc<Self> {
        let files = Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(None),
            seen: Mutex::new((None, None)),
        });
        if stamp(cert).is_some() {
            files.reload_and_say("the gateway started");
        }
        files
    }

    /// Whether a certificate is being served.
    pub(crate) fn has_certificate(&self) -> bool {
        self.current.read().expect("cert lock").is_some()
    }

    /// The certificate file.
    pub(crate) fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// Reads the files again and uses what they hold from the next handshake on.
    pub(crate) fn reload(&self) -> Result<(), certs::CertError> {
        let seen = (stamp(&self.cert), stamp(&self.key));
        // Marked as seen whatever happens: a bad file is reported once, not every check.
        *self.seen.lock().expect("cert stamp lock") = seen;
        let ck = certs::certified_key(&read(&self.cert)?, &read(&self.key)?)?;
        *self.current.write().expect("cert lock") = Some(ck);
        Ok(())
    }

    /// Whether either file changed since it was last read.
    fn changed(&self) -> bool {
        let now = (stamp(&self.cert), stamp(&self.key));
        *self.seen.lock().expect("cert stamp lock") != now
    }

    pub(crate) fn reload_and_say(&self, why: &str) {
        match self.reload() {
            Ok(()) => info!(cert = %self.cert.display(), why, "reloaded the HTTPS certificate"),
            Err(e) => warn!(
                cert = %self.cert.display(),
                error = %e,
                why,
                "cannot reload the HTTPS certificate; still serving the one loaded before"
            ),
        }
    }

    /// Reloads on SIGHUP and when a file changes, until `shutdown`.
    pub(crate) async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; the HTTPS certificate reloads when its files change");
                None
            }
        };
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.reload_and_say("SIGHUP"),
                _ = tick.tick() => {
                    if self.changed() {
                        self.reload_and_say("the files changed");
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().expect("cert lock").clone()
    }
}

/// The 308 that sends a plain HTTP visitor to the same URL over HTTPS on `port`; a 400
/// when the request names no host.
pub(crate) fn redirect<B>(req: &Request<B>, port: u16) -> Response<Body> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            Some(protocol::host::strip_port(h).to_string())
        })
        .filter(|h| !h.is_empty());
    let Some(host) = host else {
        return super::pages::error_page(
            StatusCode::BAD_REQUEST,
            "The request names no host.",
            req.headers(),
        );
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let Ok(value) = HeaderValue::from_str(&location) else {
        return super::pages::error_page(
            StatusCode::BAD_REQUEST,
            "The request's host cannot be redirected.",
            req.headers(),
        );
    };
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "Moved to {location}\n"
    )))));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, value);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_host_path_and_query_and_drop_the_http_port() {
        let req = Request::get("/a/b?c=1")
            .header("host", "dev.devices.example:8080")
            .body(())
            .unwrap();
        let r = redirect(&req, 8443);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://dev.devices.example:8443/a/b?c=1"
        );
        let r = redirect(&req, 443);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://dev.devices.example/a/b?c=1"
        );
        let none = Request::get("/").body(()).unwrap();
        assert_eq!(redirect(&none, 443).status(), StatusCode::BAD_REQUEST);
    }
}
