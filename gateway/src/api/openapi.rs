//! The OpenAPI 3.1 document served at `/openapi.json`.
//!
//! It lives as JSON in `openapi.json` beside this file, readable and diffable as the
//! document it is. Two things are filled in at run time: the version, and the action
//! names (from [`super::ACTIONS`], so the list has one source). `tests/tests/schemathesis.rs`
//! checks the running API against it: statuses, content types, bodies, and that requests
//! outside the schemas (patterns, limits) are refused.

use std::sync::OnceLock;

use serde_json::{json, Value};

const DOCUMENT: &str = include_str!("openapi.json");

/// The document.
pub(crate) fn document() -> Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        // The file is checked by the unit test below; it cannot be broken at run time.
        let mut doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
        doc["components"]["schemas"]["NewAction"]["properties"]["action"]["enum"] =
            json!(super::ACTIONS);
        doc
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_and_every_operation_says_who_and_what_fails() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
        let methods = ["get", "put", "post", "patch", "delete"];
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if !methods.contains(&method.as_str()) {
                    continue;
                }
                let responses = op["responses"].as_object().unwrap();
                let secured = !op["security"].as_array().unwrap().is_empty();
                if secured {
                    for code in ["401", "403", "500"] {
                        assert!(responses.contains_key(code), "{method} {path}: no {code}");
                    }
                }
                if op.get("requestBody").is_some() {
                    for code in ["400", "413", "415"] {
                        assert!(responses.contains_key(code), "{method} {path}: no {code}");
                    }
                }
                if path.contains('{') {
                    assert!(
                        responses.contains_key("404") || responses.contains_key("400"),
                        "{method} {path}: a path parameter that can be wrong"
                    );
                }
            }
        }
        assert_eq!(
            doc["components"]["schemas"]["NewAction"]["properties"]["action"]["enum"],
            json!(crate::api::ACTIONS)
        );
    }
}
