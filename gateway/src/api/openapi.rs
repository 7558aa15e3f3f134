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

/// The check that `openapi.json` says what the structs of [`super::types`] serialize: for
/// each struct, the document's component of the same name must have the same property
/// names, the same `required` list, the same `additionalProperties: false`, and the same
/// JSON types, nested objects, array items and map values included. Patterns, limits and
/// prose are the document's own and are not compared.
#[cfg(test)]
mod drift {
    use std::collections::BTreeSet;

    use schemars::generate::SchemaSettings;
    use schemars::JsonSchema;
    use serde_json::Value;

    use super::super::types::*;

    /// Which way a struct crosses the wire: a request is read (fields with defaults are
    /// optional, unknown ones refused), a response written (an `Option` without
    /// `skip_serializing_if` is always there, as null).
    #[derive(Clone, Copy, Debug)]
    enum Side {
        Request,
        Response,
    }

    /// One struct: its Rust name, its component in the document, and its derived schema
    /// (a root, with its own `$defs`).
    struct Entry {
        rust: &'static str,
        component: &'static str,
        schema: Value,
    }

    fn schema_of<T: JsonSchema>(side: Side) -> Value {
        let settings = SchemaSettings::draft2020_12();
        let settings = match side {
            Side::Request => settings.for_deserialize(),
            Side::Response => settings.for_serialize(),
        };
        settings
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value()
    }

    macro_rules! entries {
        ($($side:ident $component:literal $ty:ty),* $(,)?) => {
            vec![$(Entry {
                rust: stringify!($ty),
                component: $component,
                schema: schema_of::<$ty>(Side::$side),
            }),*]
        };
    }

    /// Every request and response body. A new struct in `types.rs` fails
    /// [`every_struct_is_listed`] until it is added here (and to the document).
    fn entries() -> Vec<Entry> {
        entries![
            Response "Error" ErrorBody,
            Request "NewFleet" NewFleet,
            Response "Fleet" Fleet,
            Response "FleetDetail" FleetDetail,
            Request "Switch" Switch,
            Response "FleetSwitched" FleetSwitched,
            Response "Device" Device,
            Request "DevicePatch" DevicePatch,
            Request "Register" Register,
            Request "Tags" Tags,
            Request "Env" Env,
            Request "NewKey" NewKey,
            Response "Key" Key,
            Response "CreatedKey" CreatedKey,
            Request "NewAction" NewAction,
            Response "Action" Action,
            Request "NewToken" NewToken,
            Response "Token" Token,
            Response "CreatedToken" CreatedToken,
            Request "NewSupportGrant" NewSupportGrant,
            Response "CreatedSupportGrant" CreatedSupportGrant,
            Response "AuditEntry" AuditEntry,
            Request "NewRelease" NewRelease,
            Response "Release" Release,
            Response "ReleaseList" ReleaseList,
            Request "Pin" Pin,
            Response "FleetPin" FleetPin,
            Response "DevicePin" DevicePin,
            Response "DeviceTarget" DeviceTarget,
            Response "DeviceState" DeviceState,
            Response "LogLine" LogLine,
            Response "LogPage" LogPage,
            Request "AccessSettings" AccessSettings,
            Response "Access" Access,
            Request "NewShareLink" NewShareLink,
            Response "ShareLink" ShareLink,
        ]
    }

    /// Query-string structs and the operations that take them: their fields must be the
    /// operations' query parameters, with the same types.
    fn queries() -> Vec<(&'static str, Vec<&'static str>, Value)> {
        let logs = "/v1/devices/{uuid}/logs";
        vec![
            (
                "DeviceFilter",
                vec!["/v1/devices"],
                schema_of::<DeviceFilter>(Side::Request),
            ),
            (
                "AuditQuery",
                vec!["/v1/audit"],
                schema_of::<AuditQuery>(Side::Request),
            ),
            (
                "LogParams",
                vec![
                    logs,
                    "/v1/devices/{uuid}/logs/export",
                    "/v1/devices/{uuid}/logs/stream",
                    "/v1/devices/{uuid}/logs/ws",
                ],
                schema_of::<LogParams>(Side::Request),
            ),
            (
                "TerminalQuery",
                vec!["/v1/devices/{uuid}/terminal"],
                schema_of::<TerminalQuery>(Side::Request),
            ),
        ]
    }

    /// Structs of `types.rs` that are no component of their own, and why.
    const NOT_COMPONENTS: &[(&str, &str)] = &[
        ("ErrorDetail", "the inside of Error, compared through it"),
        (
            "TargetSource",
            "an enum of strings, compared where it is used",
        ),
        (
            "DeviceFilter",
            "a query string, compared with the operation's parameters",
        ),
        (
            "AuditQuery",
            "a query string, compared with the operation's parameters",
        ),
        (
            "LogParams",
            "a query string, compared with the operation's parameters",
        ),
        (
            "TerminalQuery",
            "a query string, compared with the operation's parameters",
        ),
        (
            "ReportedUpdate",
            "a reading of the device's own report, which the API passes on as is",
        ),
        (
            "ReportedService",
            "a reading of the device's own report, which the API passes on as is",
        ),
    ];

    /// Components with no struct, and why.
    const NO_STRUCT: &[(&str, &str)] = &[
        ("Name", "a string pattern, used inside other schemas"),
        ("Uuid", "a string pattern, used inside other schemas"),
        (
            "TargetState",
            "protocol::release::TargetState, the agent's wire type: the protocol crate takes no schema dependency",
        ),
    ];

    /// Follows `$ref`s (within `root`) and a nullable `anyOf: [X, null]` to the schema
    /// that has the structure.
    fn resolve<'a>(root: &'a Value, mut s: &'a Value) -> &'a Value {
        loop {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                s = root
                    .pointer(r.trim_start_matches('#'))
                    .unwrap_or_else(|| panic!("{r} does not resolve"));
                continue;
            }
            let members = s.get("anyOf").or_else(|| s.get("oneOf"));
            if let Some(Value::Array(members)) = members {
                let not_null: Vec<_> = members
                    .iter()
                    .filter(|m| m.get("type") != Some(&Value::from("null")))
                    .collect();
                if let [one] = not_null[..] {
                    s = one;
                    continue;
                }
            }
            return s;
        }
    }

    /// The JSON types a schema admits; `None` for any value.
    fn types(root: &Value, s: &Value) -> Option<BTreeSet<String>> {
        if s == &Value::Bool(true) {
            return None;
        }
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let target = root
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{r} does not resolve"));
            return types(root, target);
        }
        match s.get("type") {
            Some(Value::String(t)) => return Some([t.clone()].into()),
            Some(Value::Array(ts)) => {
                return Some(
                    ts.iter()
                        .filter_map(|t| t.as_str().map(String::from))
                        .collect(),
                )
            }
            _ => {}
        }
        if let Some(Value::Array(members)) = s.get("anyOf").or_else(|| s.get("oneOf")) {
            let mut all = BTreeSet::new();
            for m in members {
                all.extend(types(root, m)?);
            }
            return Some(all);
        }
        if let Some(Value::Array(values)) = s.get("enum") {
            return Some(values.iter().map(json_type).collect());
        }
        if let Some(v) = s.get("const") {
            return Some([json_type(v)].into());
        }
        None
    }

    fn json_type(v: &Value) -> String {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
        .to_string()
    }

    fn names(s: &Value, key: &str) -> BTreeSet<String> {
        match s.get(key) {
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// Compares the document's schema `d` with the derived `g` at `at`, recording each
    /// difference in `errors`.
    fn compare(at: &str, doc: &Value, d: &Value, gen: &Value, g: &Value, errors: &mut Vec<String>) {
        let (dt, gt) = (types(doc, d), types(gen, g));
        if dt != gt {
            errors.push(format!(
                "{at}: the document's type is {dt:?}, the struct's {gt:?}"
            ));
            return;
        }
        let (d, g) = (resolve(doc, d), resolve(gen, g));
        let (dp, gp) = (names(d, "properties"), names(g, "properties"));
        if !dp.is_empty() || !gp.is_empty() {
            if dp != gp {
                errors.push(format!(
                    "{at}: properties differ: only in the document {:?}, only in the struct {:?}",
                    dp.difference(&gp).collect::<Vec<_>>(),
                    gp.difference(&dp).collect::<Vec<_>>()
                ));
            }
            let (dr, gr) = (names(d, "required"), names(g, "required"));
            if dr != gr {
                errors.push(format!(
                    "{at}: required differs: only in the document {:?}, only in the struct {:?}",
                    dr.difference(&gr).collect::<Vec<_>>(),
                    gr.difference(&dr).collect::<Vec<_>>()
                ));
            }
            for p in dp.intersection(&gp) {
                compare(
                    &format!("{at}.{p}"),
                    doc,
                    &d["properties"][p],
                    gen,
                    &g["properties"][p],
                    errors,
                );
            }
        }
        let closed = |s: &Value| s.get("additionalProperties") == Some(&Value::Bool(false));
        if closed(d) != closed(g) {
            errors.push(format!(
                "{at}: additionalProperties: false in {} only",
                if closed(d) {
                    "the document"
                } else {
                    "the struct"
                }
            ));
        }
        for key in ["items", "additionalProperties"] {
            if let (Some(di), Some(gi)) = (d.get(key), g.get(key)) {
                if di.is_object() || gi.is_object() {
                    compare(&format!("{at}.{key}"), doc, di, gen, gi, errors);
                }
            }
        }
    }

    #[test]
    fn the_document_says_what_the_structs_serialize() {
        let doc = super::document();
        let mut errors = Vec::new();
        for e in entries() {
            let pointer = format!("/components/schemas/{}", e.component);
            let Some(d) = doc.pointer(&pointer) else {
                errors.push(format!(
                    "{} ({}) has no entry in openapi.json",
                    e.component, e.rust
                ));
                continue;
            };
            compare(e.component, &doc, d, &e.schema, &e.schema, &mut errors);
        }
        assert!(
            errors.is_empty(),
            "openapi.json drifted:\n{}",
            errors.join("\n")
        );
    }

    #[test]
    fn query_structs_are_the_documented_parameters() {
        let doc = super::document();
        let mut errors = Vec::new();
        for (name, paths, schema) in queries() {
            for path in paths {
                let op = &doc["paths"][path]["get"];
                assert!(op.is_object(), "no GET {path} in openapi.json");
                let mut documented = BTreeSet::new();
                for p in op["parameters"].as_array().into_iter().flatten() {
                    let p = resolve(&doc, p);
                    if p["in"] != "query" {
                        continue;
                    }
                    let param = p["name"].as_str().unwrap_or_default().to_string();
                    documented.insert(param.clone());
                    let Some(field) = schema["properties"].get(&param) else {
                        continue;
                    };
                    let mut field_types = types(&schema, field);
                    if let Some(t) = &mut field_types {
                        t.remove("null");
                    }
                    let param_types = types(&doc, &p["schema"]);
                    if field_types != param_types {
                        errors.push(format!(
                            "GET {path} ?{param}: the document's type is {param_types:?}, {name}'s {field_types:?}"
                        ));
                    }
                }
                let fields = names(&schema, "properties");
                if documented != fields {
                    errors.push(format!(
                        "GET {path}: query parameters {documented:?}, but {name} has {fields:?}"
                    ));
                }
            }
        }
        assert!(
            errors.is_empty(),
            "openapi.json drifted:\n{}",
            errors.join("\n")
        );
    }

    #[test]
    fn every_struct_is_listed_and_every_component_has_a_struct() {
        let listed: BTreeSet<&str> = entries().iter().map(|e| e.rust).collect();
        let exempt: BTreeSet<&str> = NOT_COMPONENTS.iter().map(|(n, _)| *n).collect();
        let source = include_str!("types.rs");
        let declared: Vec<&str> = source
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                let rest = l
                    .strip_prefix("pub struct ")
                    .or_else(|| l.strip_prefix("pub enum "))
                    .or_else(|| l.strip_prefix("pub type "))?;
                rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
            })
            .collect();
        assert!(
            declared.len() > 20,
            "the scan of types.rs found {declared:?}"
        );
        for name in &declared {
            assert!(
                listed.contains(name) || exempt.contains(name),
                "types.rs declares {name}, which the OpenAPI check does not know: add it to \
                 entries() (and its component to openapi.json), or to NOT_COMPONENTS with why"
            );
        }
        for name in listed.iter().chain(&exempt) {
            assert!(
                declared.contains(name),
                "{name} is listed but not in types.rs"
            );
        }
        let doc = super::document();
        let covered: BTreeSet<&str> = entries().iter().map(|e| e.component).collect();
        let no_struct: BTreeSet<&str> = NO_STRUCT.iter().map(|(n, _)| *n).collect();
        for component in doc["components"]["schemas"].as_object().unwrap().keys() {
            assert!(
                covered.contains(component.as_str()) || no_struct.contains(component.as_str()),
                "openapi.json has component {component} with no struct in types.rs"
            );
        }
    }
}
