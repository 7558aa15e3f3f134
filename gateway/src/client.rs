//! A small client for the management API, used by the operator commands of the `gateway`
//! binary (`gateway devices`, `gateway fleet ...`).

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why an API call failed, phrased for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No token was given.
    #[error("no API token: pass --token or set GATEWAY_TOKEN (create one with `gateway token create --data-dir DIR --role admin`)")]
    NoToken,
    /// The API URL is not usable.
    #[error("invalid API URL {0:?}: {1}")]
    BadUrl(String, String),
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
}

/// Talks to one gateway's management API.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    /// `base` is like `http://127.0.0.1:8081`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Calls `method path` with an optional JSON body; returns the JSON answer (`Null`
    /// for an empty one).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NoToken)?;
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {token}"));
        let payload = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ClientError::BadUrl(self.base.clone(), e.to_string()))?;
        let resp = self.http.request(req).await.map_err(|e| {
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
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::BadResponse(e.to_string()))?
            .to_bytes();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| {
                ClientError::BadResponse(String::from_utf8_lossy(&bytes).into_owned())
            })?
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Api {
                status,
                code: value["error"]["code"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
                message: value["error"]["message"]
                    .as_str()
                    .unwrap_or("no message")
                    .to_string(),
            })
        }
    }
}
