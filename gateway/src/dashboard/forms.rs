//! A form's refusal shown beside the form on the page it came from (with what was typed
//! kept in the fields), instead of an error page: for mistakes the user fixes and posts
//! again (a bad variable name, a compose file with an error on line 7).

use std::collections::HashMap;

use axum::http::StatusCode;
use maud::{html, Markup};

use super::DashError;
use crate::api::ApiError;

/// Why a form was refused, which form, and what it carried.
#[derive(Debug, Clone)]
pub(super) struct Refusal {
    /// The status of the page that shows it (400, 409, 422).
    pub(super) status: StatusCode,
    /// Which form: `env`, `compose`, `pin`, ...
    pub(super) form: &'static str,
    /// What is wrong, for a person.
    pub(super) message: String,
    /// The fields as posted, to fill the form again.
    pub(super) fields: HashMap<String, String>,
    /// Where in the posted text the error is (compose files): 1-based line, key path.
    pub(super) at: Option<Box<(Option<usize>, String)>>,
}

impl Refusal {
    /// Turns an API handler's error into a refusal of `form` when it is about the input
    /// (400, 409, 422); anything else (403, 404, 500) stays an error page.
    pub(super) fn from_api(
        e: ApiError,
        form: &'static str,
        fields: &HashMap<String, String>,
    ) -> Result<Self, DashError> {
        match e.status {
            StatusCode::BAD_REQUEST | StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {
                Ok(Self {
                    status: e.status,
                    form,
                    message: e.message,
                    fields: fields.clone(),
                    at: None,
                })
            }
            _ => Err(e.into()),
        }
    }

    /// A refusal of `form` found by the dashboard itself (400).
    pub(super) fn new(
        form: &'static str,
        message: impl Into<String>,
        fields: &HashMap<String, String>,
    ) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            form,
            message: message.into(),
            fields: fields.clone(),
            at: None,
        }
    }
}

/// The refusal's alert when it belongs to `form`, else nothing.
pub(super) fn alert(refusal: Option<&Refusal>, form: &str) -> Markup {
    html! {
        @if let Some(r) = refusal.filter(|r| r.form == form) {
            p.alert.alert-error role="alert" data-refused=(form) {
                @if let Some((line, key)) = r.at.as_deref() {
                    @if let Some(l) = line { strong data-error-line=(l) { "Line " (l) } }
                    @if !key.is_empty() && key != "." {
                        @if line.is_some() { ", " } "key " code data-error-key=(key) { (key) }
                    }
                    @if line.is_some() || (!key.is_empty() && key != ".") { ": " }
                }
                (r.message)
            }
        }
    }
}

/// The posted value of `field` when the refusal belongs to `form`.
pub(super) fn kept<'a>(refusal: Option<&'a Refusal>, form: &str, field: &str) -> Option<&'a str> {
    refusal
        .filter(|r| r.form == form)
        .and_then(|r| r.fields.get(field))
        .map(String::as_str)
}
