//! Request bodies and path parameters, read the way balena's supervisor reads them but
//! with a 400 instead of a silent default when a field has the wrong type.

use serde_json::{Map, Value};

/// A request body: a JSON object, or nothing at all (balena's own examples POST with
/// `Content-Type: application/json` and no body, meaning "no options").
#[derive(Debug, Default)]
pub(crate) struct JsonBody(Map<String, Value>);

impl JsonBody {
    /// Parses a body. Empty (or all-whitespace) is `{}`; anything but an object is an
    /// error message for a 400. The `Content-Type` is not checked: a JSON object sent
    /// without one still means what it says.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(other) => Err(format!(
                "request body must be a JSON object, got {}",
                kind(&other)
            )),
            Err(e) => Err(format!("request body is not valid JSON: {e}")),
        }
    }

    /// The optional `force` flag. Besides JSON booleans it takes the spellings balena's
    /// `checkTruthy` takes (`"true"`/`"false"`, `1`/`0`, `"on"`/`"off"`, ...); anything
    /// else is an error rather than balena's silent `false`.
    pub(crate) fn force(&self) -> Result<bool, String> {
        match self.0.get("force") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(true),
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(false),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "on" => Ok(true),
                "false" | "0" | "off" => Ok(false),
                _ => Err(format!("force must be a boolean, got the string {s:?}")),
            },
            Some(other) => Err(format!("force must be a boolean, got {}", kind(other))),
        }
    }

    /// An optional positive integer field (`appId`, `imageId`): a JSON number or a
    /// string of digits, as balena's `checkInt` accepts.
    pub(crate) fn id(&self, key: &str) -> Result<Option<u32>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => positive_id(v)
                .map(Some)
                .ok_or_else(|| format!("{key} must be a positive integer, got {}", show(v))),
        }
    }

    /// An optional non-empty string field (`serviceName`).
    pub(crate) fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(v) => Err(format!("{key} must be a non-empty string, got {}", show(v))),
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

    fn body(s: &str) -> JsonBody {
        JsonBody::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn empty_body_is_an_empty_object() {
        assert!(!JsonBody::parse(b"").unwrap().force().unwrap());
        assert!(!JsonBody::parse(b" \r\n").unwrap().force().unwrap());
    }

    #[test]
    fn non_objects_and_garbage_are_rejected() {
        assert!(JsonBody::parse(b"[1]").unwrap_err().contains("an array"));
        assert!(JsonBody::parse(b"true").unwrap_err().contains("a boolean"));
        assert!(JsonBody::parse(b"{\"force\":")
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn force_spellings() {
        assert!(body(r#"{"force":true}"#).force().unwrap());
        assert!(!body(r#"{"force":false}"#).force().unwrap());
        assert!(!body(r#"{"force":null}"#).force().unwrap());
        assert!(body(r#"{"force":"TRUE"}"#).force().unwrap());
        assert!(body(r#"{"force":1}"#).force().unwrap());
        assert!(!body(r#"{"force":"off"}"#).force().unwrap());
        assert!(body(r#"{"force":"yes please"}"#).force().is_err());
        assert!(body(r#"{"force":2}"#).force().is_err());
        assert!(body(r#"{"force":{}}"#).force().is_err());
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
