//! Environment variables on the dashboard: the device page's (operator and up may edit)
//! and the fleet page's (admin only, as in the API), for every service or one service.
//!
//! `POST /devices/{uuid}/env` and `POST /fleets/{name}/env` take `op=set` (with `name`,
//! `value`, `service`) or `op=unset` (with `name`, `service`), and `csrf`. The variables
//! are read, changed and written back whole through the API's own `PUT .../env` handler
//! (the same name checks, audit entry `device.env` / `fleet.env`, and retargeting). A bad
//! name or an unset of a variable that is not there is shown beside the form.

use std::collections::{BTreeMap, HashMap};

use maud::{html, Markup};

use super::forms::{self, Refusal};
use super::{DashError, Signed};
use crate::api::types::Env;

/// A stored variable: service (empty: every service), name, value.
pub(super) type Row = (String, String, String);

/// Which variables a form edits.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope<'a> {
    /// A device's (operator and up).
    Device(&'a str),
    /// A fleet's (admin).
    Fleet(&'a str),
}

impl Scope<'_> {
    fn action(&self) -> String {
        match self {
            Scope::Device(u) => format!("/devices/{u}/env"),
            Scope::Fleet(f) => format!("/fleets/{}/env", super::urlencode(f)),
        }
    }
}

/// The variables' table, with an unset button a row and a set form when `editable`.
/// `services` are offered in the service field (any name may be typed).
pub(super) fn section(
    scope: Scope<'_>,
    rows: &[Row],
    editable: bool,
    signed: &Signed,
    services: &[String],
    refusal: Option<&Refusal>,
) -> Markup {
    let action = scope.action();
    let list_id = match scope {
        Scope::Device(_) => "env-services-device",
        Scope::Fleet(_) => "env-services-fleet",
    };
    let empty = match scope {
        Scope::Device(_) => "No device variables.",
        Scope::Fleet(_) => "No fleet variables.",
    };
    let kept = |field| forms::kept(refusal, "env", field);
    html! {
        div.env data-env=(action) {
            (forms::alert(refusal, "env"))
            @if rows.is_empty() { p.muted { (empty) } } @else {
                table.compact.env-vars {
                    thead { tr { th { "Name" } th { "Value" } th { "Service" } @if editable { th {} } } }
                    tbody { @for (svc, k, v) in rows {
                        tr data-env-name=(k) data-env-service=(svc) {
                            td { code { (k) } }
                            td { code.env-value { (v) } }
                            td.muted { @if svc.is_empty() { "all services" } @else { (svc) } }
                            @if editable {
                                td.num {
                                    form.act method="post" action=(action) {
                                        input type="hidden" name="csrf" value=(signed.csrf);
                                        input type="hidden" name="op" value="unset";
                                        input type="hidden" name="name" value=(k);
                                        input type="hidden" name="service" value=(svc);
                                        button.btn.btn-quiet.btn-small type="submit" data-env-unset=(k) aria-label={ "Unset " (k) } { "Unset" }
                                    }
                                }
                            }
                        }
                    } }
                }
            }
            @if editable {
                form.act.env-set method="post" action=(action) {
                    input type="hidden" name="csrf" value=(signed.csrf);
                    input type="hidden" name="op" value="set";
                    label { "Name" input name="name" required placeholder="LOG_LEVEL" spellcheck="false" autocomplete="off" value=[kept("name")]; }
                    label { "Value" input name="value" placeholder="debug" spellcheck="false" autocomplete="off" value=[kept("value")]; }
                    label { "Service"
                        input name="service" list=(list_id) placeholder="all services" spellcheck="false" autocomplete="off" value=[kept("service")];
                        datalist id=(list_id) { @for s in services { option value=(s) {} } }
                    }
                    button.btn type="submit" data-action="env-set" { "Set variable" }
                }
            }
        }
    }
}

/// Applies a posted `op` to the stored `rows`: the new variables, or a refusal that says
/// what is wrong with the form.
pub(super) fn apply(rows: Vec<Row>, f: &HashMap<String, String>) -> Result<Env, Refusal> {
    let field = |k: &str| f.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let name = field("name");
    let service = field("service");
    let mut rows = rows;
    if name.is_empty() {
        return Err(Refusal::new("env", "give the variable a name", f));
    }
    match f.get("op").map(String::as_str) {
        Some("set") => {
            // The value is kept as typed (spaces included), only the name and service
            // are trimmed.
            let value = f.get("value").cloned().unwrap_or_default();
            match rows
                .iter_mut()
                .find(|(s, k, _)| *s == service && *k == name)
            {
                Some(row) => row.2 = value,
                None => rows.push((service, name, value)),
            }
        }
        Some("unset") => {
            let before = rows.len();
            rows.retain(|(s, k, _)| !(*s == service && *k == name));
            if rows.len() == before {
                let whose = if service.is_empty() {
                    "for all services".to_string()
                } else {
                    format!("for service {service:?}")
                };
                return Err(Refusal::new(
                    "env",
                    format!("there is no variable {name:?} {whose} to unset"),
                    f,
                ));
            }
        }
        other => {
            return Err(Refusal::new(
                "env",
                format!("op must be `set` or `unset`, not {other:?}"),
                f,
            ))
        }
    }
    let mut env = Env::default();
    for (svc, k, v) in rows {
        if svc.is_empty() {
            env.vars.insert(k, v);
        } else {
            env.services
                .entry(svc)
                .or_insert_with(BTreeMap::new)
                .insert(k, v);
        }
    }
    Ok(env)
}

/// Shown when a POST is refused for the role: what the page says instead of the form.
pub(super) fn read_only_note(scope: Scope<'_>, signed: &Signed) -> Markup {
    let who = match scope {
        Scope::Device(_) => "operators and admins",
        Scope::Fleet(_) => "admins",
    };
    html! {
        p.muted.small { "Read-only for you (" (signed.role.as_str()) "): " (who) " edit these." }
    }
}

/// Turns the error of the API's handler into a refusal of the env form, or an error page.
pub(super) fn refused(
    e: crate::api::ApiError,
    f: &HashMap<String, String>,
) -> Result<Refusal, DashError> {
    Refusal::from_api(e, "env", f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn set_replaces_or_adds_and_unset_removes_per_service() {
        let rows = vec![
            (String::new(), "A".to_string(), "1".to_string()),
            ("web".to_string(), "A".to_string(), "2".to_string()),
        ];
        let env = apply(
            rows.clone(),
            &form(&[("op", "set"), ("name", " A "), ("value", " x ")]),
        )
        .unwrap();
        assert_eq!(env.vars["A"], " x ");
        assert_eq!(env.services["web"]["A"], "2");
        let env = apply(
            rows.clone(),
            &form(&[("op", "unset"), ("name", "A"), ("service", "web")]),
        )
        .unwrap();
        assert!(env.services.is_empty());
        assert_eq!(env.vars["A"], "1");
        let e = apply(
            rows,
            &form(&[("op", "unset"), ("name", "B"), ("service", "db")]),
        )
        .unwrap_err();
        assert!(
            e.message.contains("\"B\" for service \"db\""),
            "{}",
            e.message
        );
        let e = apply(vec![], &form(&[("op", "set"), ("name", "")])).unwrap_err();
        assert!(e.message.contains("name"), "{}", e.message);
    }
}
