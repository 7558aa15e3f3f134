//! Request bodies and path parameters, read the way balena's supervisor reads them but
//! with a 400 instead of a silent default when a field has the wrong type.
//!
//! balena's supervisor parses `application/json` and `application/x-www-form-urlencoded`
//! bodies (express's `json` and extended `urlencoded` parsers, 10 MB each), and real
//! clients send both: `curl -d force=true`, Python's `requests.post(url, data=...)`. So
//! does this API, chosen by `Content-Type`:
//!
//! * `application/json` (or any `+json` type): JSON, strictly;
//! * `application/x-www-form-urlencoded`: a form, `a=1&b=2`, with express's nested keys
//!   (`network[hostname]=x`, `list[]=a&list[]=b`). A body that starts with `{` is read as
//!   JSON instead: `curl -d '{"force":true}'` without `-H` labels JSON as a form;
//! * no `Content-Type` (or another one): JSON if it parses as JSON, else a form if it
//!   reads as one (every `&`-separated part is `name=value`), else the JSON error.
//!
//! Values then coerce the same way whichever encoding they came in (a form has only
//! strings): `"true"`, `"1"` and `"on"` are true, `"42"` is the app id 42 — balena's
//! `checkTruthy` and `checkInt`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde_json::{Map, Value};

/// Deepest nesting a form key may have (`a[b][c]...`), as express's parser (`qs`) allows.
const MAX_FORM_DEPTH: usize = 5;

/// A request body as received: its bytes and declared `Content-Type`, parsed later with
/// [`JsonBody::parse`] so that each endpoint family reports errors in its own shape.
/// The body size limit (`DefaultBodyLimit`) applies as for [`Bytes`].
pub(crate) struct Payload {
    content_type: Option<String>,
    bytes: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for Payload {
    type Rejection = axum::extract::rejection::BytesRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = Bytes::from_request(req, state).await?;
        Ok(Self {
            content_type,
            bytes,
        })
    }
}

/// Why a request body was refused: the text of the 400 answer.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadBody(String);

impl From<BadBody> for String {
    fn from(e: BadBody) -> String {
        e.0
    }
}

/// A request body: an object read from JSON or a form, or nothing at all (balena's own
/// examples POST with `Content-Type: application/json` and no body, meaning "no
/// options").
#[derive(Debug, Default)]
pub(crate) struct JsonBody(Map<String, Value>);

impl JsonBody {
    /// Parses a body by its `Content-Type` (see the module docs). Empty (or
    /// all-whitespace) is `{}`; anything but an object is an error message for a 400.
    pub(crate) fn parse(payload: &Payload) -> Result<Self, BadBody> {
        Self::parse_as(payload.content_type.as_deref(), &payload.bytes)
    }

    fn parse_as(content_type: Option<&str>, bytes: &[u8]) -> Result<Self, BadBody> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let mime = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        match mime.as_deref() {
            Some("application/json") => json_object(bytes),
            Some(m) if m.ends_with("+json") => json_object(bytes),
            Some("application/x-www-form-urlencoded") => {
                if bytes.trim_ascii_start().starts_with(b"{") {
                    json_object(bytes)
                } else {
                    form(bytes)
                }
            }
            _ => match serde_json::from_slice::<Value>(bytes) {
                Ok(v) => object(v),
                Err(_) if looks_like_form(bytes) => form(bytes),
                Err(e) => Err(not_json(&e)),
            },
        }
        .map(Self)
    }

    /// The optional `force` flag. Besides JSON booleans it takes the spellings balena's
    /// `checkTruthy` takes (`"true"`/`"false"`, `1`/`0`, `"on"`/`"off"`, ...); anything
    /// else is an error rather than balena's silent `false`.
    pub(crate) fn force(&self) -> Result<bool, BadBody> {
        match self.0.get("force") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(true),
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(false),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "on" => Ok(true),
                "false" | "0" | "off" => Ok(false),
                _ => Err(BadBody(format!(
                    "force must be a boolean, got the string {s:?}"
                ))),
            },
            Some(other) => Err(BadBody(format!(
                "force must be a boolean, got {}",
                kind(other)
            ))),
        }
    }

    /// An optional positive integer field (`appId`, `imageId`): a JSON number or a
    /// string of digits, as balena's `checkInt` accepts.
    pub(crate) fn id(&self, key: &str) -> Result<Option<u32>, BadBody> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => positive_id(v).map(Some).ok_or_else(|| {
                BadBody(format!("{key} must be a positive integer, got {}", show(v)))
            }),
        }
    }

    /// An optional non-empty string field (`serviceName`).
    pub(crate) fn string(&self, key: &str) -> Result<Option<String>, BadBody> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(v) => Err(BadBody(format!(
                "{key} must be a non-empty string, got {}",
                show(v)
            ))),
        }
    }

    /// A field's raw value.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The whole object without `key`.
    pub(crate) fn without(mut self, key: &str) -> Map<String, Value> {
        self.0.remove(key);
        self.0
    }
}

fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, BadBody> {
    serde_json::from_slice::<Value>(bytes)
        .map_err(|e| not_json(&e))
        .and_then(object)
}

fn object(v: Value) -> Result<Map<String, Value>, BadBody> {
    match v {
        Value::Object(map) => Ok(map),
        other => Err(BadBody(format!(
            "request body must be a JSON object, got {}",
            kind(&other)
        ))),
    }
}

fn not_json(e: &serde_json::Error) -> BadBody {
    BadBody(format!("request body is not valid JSON: {e}"))
}

/// Whether a body without a usable `Content-Type` reads as a form: every `&`-separated
/// part is `name=value` with a non-empty name, and nothing is whitespace or a control
/// character (which `curl -d` and `requests` percent-encode).
fn looks_like_form(bytes: &[u8]) -> bool {
    bytes.split(|b| *b == b'&').all(|part| {
        part.iter()
            .position(|b| *b == b'=')
            .is_some_and(|eq| eq > 0)
            && part.iter().all(|b| b.is_ascii_graphic())
    })
}

/// A form body as an object of strings, nesting `a[b]=v` and collecting `a[]=v` into
/// arrays like express's extended parser; a name given twice is an error.
fn form(bytes: &[u8]) -> Result<Map<String, Value>, BadBody> {
    let mut map = Map::new();
    for (name, value) in form_urlencoded::parse(bytes) {
        let (path, append) = form_path(&name)?;
        insert(
            &mut map,
            &name,
            &path,
            append,
            Value::String(value.into_owned()),
        )?;
    }
    Ok(map)
}

/// `a[b][c]` → (`[a, b, c]`, false); `a[]` → (`[a]`, true); anything else is one name.
fn form_path(name: &str) -> Result<(Vec<&str>, bool), BadBody> {
    if name.is_empty() {
        return Err(BadBody("a form field has no name".into()));
    }
    let Some(open) = name.find('[').filter(|&i| i > 0 && name.ends_with(']')) else {
        return Ok((vec![name], false));
    };
    let mut path = vec![&name[..open]];
    let inner = &name[open + 1..name.len() - 1];
    let mut segments: Vec<&str> = inner.split("][").collect();
    let append = segments.last() == Some(&"");
    if append {
        segments.pop();
    }
    if segments
        .iter()
        .any(|s| s.is_empty() || s.contains(['[', ']']))
    {
        return Err(BadBody(format!("form field name {name:?} is malformed")));
    }
    path.extend(segments);
    if path.len() > MAX_FORM_DEPTH {
        return Err(BadBody(format!(
            "form field name {name:?} nests deeper than {MAX_FORM_DEPTH} levels"
        )));
    }
    Ok((path, append))
}

fn insert(
    map: &mut Map<String, Value>,
    name: &str,
    path: &[&str],
    append: bool,
    value: Value,
) -> Result<(), BadBody> {
    let conflict = || BadBody(format!("form field {name:?} conflicts with another field"));
    let (last, parents) = path.split_last().expect("a path has a name");
    let mut at = map;
    for p in parents {
        at = at
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(conflict)?;
    }
    if append {
        at.entry(last.to_string())
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .ok_or_else(conflict)?
            .push(value);
        return Ok(());
    }
    if at.insert(last.to_string(), value).is_some() {
        return Err(BadBody(format!("form field {name:?} is given twice")));
    }
    Ok(())
}

/// Parses an app id from a URL path segment: decimal digits, 1 to `u32::MAX`.
pub(crate) fn path_id(segment: &str) -> Option<u32> {
    if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.parse().ok().filter(|id| *id != 0)
}

fn positive_id(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => path_id(s),
        _ => None,
    }
    .filter(|id| *id != 0)
}

/// The JSON type of a value, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value for an error message: scalars verbatim, containers by type.
fn show(v: &Value) -> String {
    match v {
        Value::Array(_) | Value::Object(_) => kind(v).to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JSON: Option<&str> = Some("application/json");
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    fn body(s: &str) -> JsonBody {
        JsonBody::parse_as(JSON, s.as_bytes()).unwrap()
    }

    fn parsed(ct: Option<&str>, s: &str) -> Result<Value, String> {
        JsonBody::parse_as(ct, s.as_bytes())
            .map(|b| Value::Object(b.0))
            .map_err(String::from)
    }

    #[test]
    fn empty_body_is_an_empty_object() {
        for ct in [JSON, FORM, None] {
            assert!(!JsonBody::parse_as(ct, b"").unwrap().force().unwrap());
            assert!(!JsonBody::parse_as(ct, b" \r\n").unwrap().force().unwrap());
        }
    }

    #[test]
    fn non_objects_and_garbage_are_rejected() {
        for ct in [JSON, None] {
            assert!(parsed(ct, "[1]").unwrap_err().contains("an array"));
            assert!(parsed(ct, "true").unwrap_err().contains("a boolean"));
            assert!(parsed(ct, "{\"force\":")
                .unwrap_err()
                .contains("not valid JSON"));
        }
        // JSON is strict: a form labelled as JSON is refused.
        assert!(parsed(JSON, "force=true")
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn forms_by_content_type_or_by_shape() {
        let want = json!({"force": "true", "appId": "42"});
        assert_eq!(parsed(FORM, "force=true&appId=42").unwrap(), want);
        assert_eq!(
            parsed(
                Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
                "force=true&appId=42"
            )
            .unwrap(),
            want
        );
        assert_eq!(parsed(None, "force=true&appId=42").unwrap(), want);
        assert_eq!(
            parsed(Some("text/plain"), "force=true").unwrap(),
            json!({"force": "true"})
        );
        assert_eq!(
            parsed(FORM, "serviceName=my%20app+x").unwrap(),
            json!({"serviceName": "my app x"})
        );
        // JSON sent with curl's default form type is JSON.
        assert_eq!(
            parsed(FORM, r#" {"force": true}"#).unwrap(),
            json!({"force": true})
        );
        // Nested names, as express's extended parser reads them.
        assert_eq!(
            parsed(
                FORM,
                "network[hostname]=kiosk&network[proxy][type]=socks5&network[proxy][noProxy][]=a&network[proxy][noProxy][]=b"
            )
            .unwrap(),
            json!({"network": {"hostname": "kiosk", "proxy": {"type": "socks5", "noProxy": ["a", "b"]}}})
        );
        // Not a form without a content type: the JSON error stays.
        assert!(parsed(None, "{oops")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(parsed(None, "force")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(parsed(None, "a b=c")
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn bad_forms_are_rejected() {
        assert!(parsed(FORM, "=x").unwrap_err().contains("no name"));
        assert!(parsed(FORM, "a=1&a=2").unwrap_err().contains("twice"));
        assert!(parsed(FORM, "a=1&a[b]=2")
            .unwrap_err()
            .contains("conflicts"));
        assert!(parsed(FORM, "a[]=1&a[b]=2")
            .unwrap_err()
            .contains("conflicts"));
        assert!(parsed(FORM, "a[b]]=1").unwrap_err().contains("malformed"));
        assert!(parsed(FORM, "a[b][c][d][e][f]=1")
            .unwrap_err()
            .contains("deeper"));
    }

    #[test]
    fn force_spellings() {
        assert!(body(r#"{"force":true}"#).force().unwrap());
        assert!(!body(r#"{"force":false}"#).force().unwrap());
        assert!(!body(r#"{"force":null}"#).force().unwrap());
        assert!(body(r#"{"force":"TRUE"}"#).force().unwrap());
        assert!(body(r#"{"force":1}"#).force().unwrap());
        assert!(body(r#"{"force":"1"}"#).force().unwrap());
        assert!(body(r#"{"force":"on"}"#).force().unwrap());
        assert!(!body(r#"{"force":"off"}"#).force().unwrap());
        assert!(body(r#"{"force":"yes please"}"#).force().is_err());
        assert!(body(r#"{"force":2}"#).force().is_err());
        assert!(body(r#"{"force":{}}"#).force().is_err());
        let form = JsonBody::parse_as(FORM, b"force=on").unwrap();
        assert!(form.force().unwrap());
    }

    #[test]
    fn ids() {
        assert_eq!(body(r#"{"appId":2167}"#).id("appId").unwrap(), Some(2167));
        assert_eq!(body(r#"{"appId":"2167"}"#).id("appId").unwrap(), Some(2167));
        assert_eq!(body("{}").id("appId").unwrap(), None);
        for bad in [
            r#"{"appId":0}"#,
            r#"{"appId":-1}"#,
            r#"{"appId":1.5}"#,
            r#"{"appId":"x1"}"#,
            r#"{"appId":true}"#,
            r#"{"appId":4294967296}"#,
        ] {
            assert!(body(bad).id("appId").is_err(), "{bad}");
        }
        let form = JsonBody::parse_as(FORM, b"appId=42").unwrap();
        assert_eq!(form.id("appId").unwrap(), Some(42));
        assert_eq!(path_id("12"), Some(12));
        assert_eq!(path_id("0"), None);
        assert_eq!(path_id("+1"), None);
        assert_eq!(path_id("abc"), None);
    }

    #[test]
    fn strings() {
        assert_eq!(
            body(r#"{"serviceName":"main"}"#)
                .string("serviceName")
                .unwrap(),
            Some("main".to_string())
        );
        assert!(body(r#"{"serviceName":""}"#).string("serviceName").is_err());
        assert!(body(r#"{"serviceName":3}"#).string("serviceName").is_err());
    }
}
