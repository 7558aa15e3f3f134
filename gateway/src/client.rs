//! A small client for the management API, used by the operator commands of the `gateway`
//! binary (`gateway devices`, `gateway fleet ...`).
//!
//! Answers are read into the structs of [`crate::api::types`], the ones the server writes
//! them from, so a changed field is a compile error here rather than a `?` in a table.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::types::ErrorBody;

/// Why an API call failed, phrased for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No token was given.
    #[error("no API token: pass --token or set GATEWAY_TOKEN (create one with `gateway token create --data-dir DIR --role admin`)")]
    NoToken,
    /// The API URL is not usable.
    #[error("invalid API URL {0:?}: {1}")]
    BadUrl(String, String),
    /// The API is https and no CA was given to verify it.
    #[error("an https API needs its CA: pass --api-ca FILE or set GATEWAY_API_CA")]
    NoCa,
    /// The CA given for an https API is not usable.
    #[error("the API CA (--api-ca): {0}")]
    Ca(#[source] certs::CertError),
    /// Nothing answered.
    #[error("cannot reach the management API at {url}: {reason} (is `gateway serve` running? set --api or GATEWAY_API)")]
    Unreachable {
        /// The base URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The API answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Stable error code.
        code: String,
        /// Message.
        message: String,
    },
    /// The API answered something that is not JSON.
    #[error("unexpected answer from the API: {0}")]
    BadResponse(String),
    /// The API answered JSON of another shape than this CLI knows (a different version?).
    #[error("unexpected answer from the API (is the CLI the gateway's version?): {0}")]
    Shape(#[source] serde_json::Error),
    /// A request body could not be written as JSON.
    #[error("cannot write the request as JSON: {0}")]
    Body(#[source] serde_json::Error),
    /// A query could not be written as a query string.
    #[error("cannot write the request's query: {0}")]
    Query(#[source] serde_urlencoded::ser::Error),
}

/// `path` with `query` (one of the API's query types) as its query string, escaped:
/// `/v1/devices` and `DeviceFilter { fleet: Some("a&b") }` give `/v1/devices?fleet=a%26b`.
pub fn with_query<Q: Serialize>(path: &str, query: &Q) -> Result<String, ClientError> {
    let qs = serde_urlencoded::to_string(query).map_err(ClientError::Query)?;
    Ok(if qs.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{qs}")
    })
}

/// Talks to one gateway's management API.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// An https API and no CA to verify it with: every call says so.
    missing_ca: bool,
}

impl ApiClient {
    /// `base` is like `http://127.0.0.1:8081` or `https://gw.example.com:8081`; an https
    /// API is verified against `ca_pem` (the API certificate's CA).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self::with_ca(base, token, None).expect("no CA, nothing to fail")
    }

    /// Like [`ApiClient::new`], trusting `ca_pem` for https.
    pub fn with_ca(
        base: &str,
        token: Option<String>,
        ca_pem: Option<&str>,
    ) -> Result<Self, ClientError> {
        // Plain HTTP, or HTTPS trusting only the API's CA (`--api-ca`); hyper-rustls does
        // the TLS. Without a CA, an https API is refused at the first call, with the flag
        // to pass.
        let missing_ca = ca_pem.is_none() && base.starts_with("https://");
        let tls = match ca_pem {
            Some(pem) => api_tls_config(pem).map_err(ClientError::Ca)?,
            None => api_tls_config_with(rustls::RootCertStore::empty())
                .expect("the default protocol versions are supported"),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: Client::builder(TokioExecutor::new()).build(connector),
            missing_ca,
        })
    }

    /// Sends `method path` with an optional JSON body and returns the response head and
    /// streaming body, whatever its status.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: Option<&str>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NoToken)?;
        if self.missing_ca {
            return Err(ClientError::NoCa);
        }
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {token}"));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let payload = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(b)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ClientError::BadUrl(self.base.clone(), e.to_string()))?;
        self.http.request(req).await.map_err(|e| {
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = s.to_string();
                src = s.source();
            }
            ClientError::Unreachable {
                url: self.base.clone(),
                reason,
            }
        })
    }

    /// `GET path` whose answer is a stream (NDJSON, Server-Sent Events): the body, once the
    /// status says success; an API error otherwise.
    pub async fn get_stream(
        &self,
        path: &str,
        accept: &str,
    ) -> Result<hyper::body::Incoming, ClientError> {
        let resp = self.send(Method::GET, path, None, Some(accept)).await?;
        if resp.status().is_success() {
            return Ok(resp.into_body());
        }
        let status = resp.status();
        let bytes = read_body(resp).await?;
        Err(api_error(status, &bytes))
    }

    /// `GET path`, the answer read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        decode(&self.call(Method::GET, path, None).await?)
    }

    /// `GET path?query`, the query written from one of the API's query types, the answer
    /// read as `T`.
    pub async fn get_query<Q: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T, ClientError> {
        self.get(&with_query(path, query)?).await
    }

    /// `method path` with `body` as JSON, the answer read as `T`.
    pub async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(ClientError::Body)?;
        decode(&self.call(method, path, Some(body)).await?)
    }

    /// `DELETE path` (the API answers 204, no body).
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, path, None).await.map(drop)
    }

    /// Calls `method path` with an optional JSON body; the answer's bytes once the status
    /// says success, the API's error otherwise.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let resp = self.send(method, path, body, None).await?;
        let status = resp.status();
        let bytes = read_body(resp).await?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(api_error(status, &bytes))
        }
    }
}

async fn read_body(resp: http::Response<hyper::body::Incoming>) -> Result<Bytes, ClientError> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::BadResponse(e.to_string()))?
        .to_bytes())
}

/// A TLS client that trusts only `ca_pem`, the CA of an https management API (`--api-ca`).
pub fn api_tls_connector(ca_pem: &str) -> Result<tokio_rustls::TlsConnector, certs::CertError> {
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        api_tls_config(ca_pem)?,
    )))
}

/// The TLS client configuration that trusts only `ca_pem`.
fn api_tls_config(ca_pem: &str) -> Result<rustls::ClientConfig, certs::CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs::parse_certs(ca_pem, "API CA")? {
        roots.add(c)?;
    }
    api_tls_config_with(roots)
}

fn api_tls_config_with(
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, certs::CertError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(certs::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A success answer read as `T`: not JSON at all is [`ClientError::BadResponse`], JSON of
/// another shape [`ClientError::Shape`].
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ClientError::BadResponse(String::from_utf8_lossy(bytes).into_owned())
        } else {
            ClientError::Shape(e)
        }
    })
}

/// The API's error answer; anything else (a proxy's HTML page, nothing) as `unknown`.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => ClientError::Api {
            status,
            code: error.code,
            message: error.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: "unknown".into(),
            message: "no message".into(),
        },
    }
}
