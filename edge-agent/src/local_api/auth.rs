//! The API key check: `?apikey=KEY` or `Authorization: Bearer KEY` (balena also
//! accepts the `ApiKey` scheme), else `401 Unauthorized`.

use std::sync::PoisonError;

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::reply::text;
use super::LocalApiState;

/// Middleware: passes the request on only if it carries the current key.
pub(crate) async fn require_key(
    State(state): State<LocalApiState>,
    req: Request,
    next: Next,
) -> Response {
    let presented = presented_key(&req);
    // Read the key and compare inside this block: the guard must not live across the
    // `.await` below (a regenerate-api-key request takes the write lock).
    let ok = {
        let current = state.api_key.read().unwrap_or_else(PoisonError::into_inner);
        presented.is_some_and(|k| keys_match(&k, &current))
    };
    if !ok {
        tracing::debug!(path = %req.uri().path(), "local API request without a valid key");
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    next.run(req).await
}

/// The key a request presents. Like balena, a non-empty `apikey` query parameter wins
/// over the header.
fn presented_key(req: &Request) -> Option<String> {
    if let Ok(Query(params)) = Query::<Vec<(String, String)>>::try_from_uri(req.uri()) {
        if let Some((_, key)) = params
            .into_iter()
            .find(|(k, v)| k == "apikey" && !v.is_empty())
        {
            return Some(key);
        }
    }
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apikey");
    (known && !key.is_empty()).then(|| key.to_string())
}

/// Compares keys in time independent of where they differ. An empty current key
/// matches nothing, so an unset key cannot open the API.
fn keys_match(presented: &str, current: &str) -> bool {
    let (a, b) = (presented.as_bytes(), current.as_bytes());
    if b.is_empty() || a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(uri: &str, auth: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn key_sources() {
        assert_eq!(
            presented_key(&req("/v1/device?apikey=abc", None)).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_key(&req("/v1/device?x=1&apikey=a%2Bb", None)).as_deref(),
            Some("a+b")
        );
        assert_eq!(
            presented_key(&req("/v1/device", Some("Bearer abc"))).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_key(&req("/v1/device", Some("bearer abc"))).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented_key(&req("/v1/device", Some("ApiKey abc"))).as_deref(),
            Some("abc")
        );
        assert_eq!(presented_key(&req("/v1/device", Some("Basic abc"))), None);
        assert_eq!(presented_key(&req("/v1/device", Some("Bearer "))), None);
        assert_eq!(presented_key(&req("/v1/device?apikey=", None)), None);
        assert_eq!(
            presented_key(&req("/v1/device?apikey=q", Some("Bearer h"))).as_deref(),
            Some("q")
        );
    }

    #[test]
    fn matching() {
        assert!(keys_match("abc", "abc"));
        assert!(!keys_match("abd", "abc"));
        assert!(!keys_match("ab", "abc"));
        assert!(!keys_match("", ""));
    }
}
