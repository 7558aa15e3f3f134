//! Error pages visitors see instead of resets: small HTML, or plain text for clients that
//! do not accept HTML (curl, scripts).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// Response body: streamed from the device, or a small page made here.
pub(crate) type Body = Either<Incoming, Full<Bytes>>;

/// Renders an error page for `status` with a one-line `detail`.
pub(crate) fn error_page(
    status: StatusCode,
    detail: &str,
    request_headers: &HeaderMap,
) -> Response<Body> {
    page(status, detail, None, request_headers)
}

/// As [`error_page`], with a link under the detail (`label` → `href`): a 401 that offers
/// the sign-in page, a 303 whose body says where it goes.
pub(crate) fn link_page(
    status: StatusCode,
    detail: &str,
    label: &str,
    href: &str,
    request_headers: &HeaderMap,
) -> Response<Body> {
    page(status, detail, Some((label, href)), request_headers)
}

/// The page of [`error_page`] and [`link_page`]: HTML when the visitor accepts it, else
/// one line of text (and the link on a second).
fn page(
    status: StatusCode,
    detail: &str,
    link: Option<(&str, &str)>,
    request_headers: &HeaderMap,
) -> Response<Body> {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let wants_html = request_headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let (content_type, body) = if wants_html {
        let link = link.map_or(String::new(), |(label, href)| {
            format!(
                "<p><a href=\"{}\">{}</a></p>",
                escape(href).replace('"', "&quot;"),
                escape(label)
            )
        });
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
                 <style>body{{font-family:system-ui,sans-serif;margin:4em auto;max-width:40em;color:#222}}\
                 h1{{font-size:1.4em}}p{{color:#555}}</style></head>\
                 <body><h1>{title}</h1><p>{}</p>{link}<hr><p><small>edge gateway</small></p></body></html>\n",
                escape(detail)
            ),
        )
    } else {
        let link = link.map_or(String::new(), |(label, href)| format!("{label}: {href}\n"));
        (
            "text/plain; charset=utf-8",
            format!("{title}: {detail}\n{link}"),
        )
    };
    let mut resp = Response::new(Body::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
