//! The page shell (header, navigation, who is signed in) and small pieces the pages share:
//! status badges, relative times, short ids.

use axum::http::StatusCode;
use axum::response::Html;
use maud::{html, Markup, DOCTYPE};

use super::Signed;

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Devices,
    Fleets,
    /// The admin pages (shown to admins only).
    Admin,
}

/// A full page for a signed-in user.
pub(super) fn page(title: &str, signed: &Signed, nav: Nav, body: Markup) -> Html<String> {
    let item = |n: Nav, href: &str, label: &str| {
        html! { a.nav-link.active[n == nav] href=(href) aria-current=[(n == nav).then_some("page")] { (label) } }
    };
    shell(
        title,
        html! {
            header.topbar {
                a.brand href="/devices" { span.brand-mark {} span.brand-text { "Fleet gateway" } }
                nav.nav {
                    (item(Nav::Devices, "/devices", "Devices"))
                    (item(Nav::Fleets, "/fleets", "Fleets"))
                    @if signed.role >= crate::api::auth::Role::Admin {
                        (item(Nav::Admin, "/admin", "Admin"))
                    }
                }
                div.who {
                    span.who-name title=(signed.principal.actor()) { (signed.display()) }
                    span.role-tag { (signed.role.as_str()) }
                    form.signout method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(signed.csrf);
                        button.btn.btn-quiet type="submit" { "Sign out" }
                    }
                }
            }
            main.content { (body) }
        },
    )
}

/// A page without the header (sign-in, errors before sign-in).
pub(super) fn bare(title: &str, body: Markup) -> Html<String> {
    shell(title, body)
}

fn shell(title: &str, body: Markup) -> Html<String> {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Fleet gateway" }
                link rel="stylesheet" href="/assets/dashboard/dashboard.css";
                script src="/assets/dashboard/dashboard.js" defer {}
            }
            body { (body) }
        }
    };
    Html(page.into_string())
}

/// An error page.
pub(super) fn error_page(status: StatusCode, message: &str) -> Html<String> {
    bare(
        status.canonical_reason().unwrap_or("Error"),
        html! {
            main.login {
                div.card.login-card {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p.alert.alert-error { (message) }
                    p { a href="/devices" { "Back to the devices" } }
                }
            }
        },
    )
}

/// The online/offline badge (the script switches it live).
pub(super) fn presence(online: bool) -> Markup {
    html! {
        span.badge.presence.online[online].offline[!online] data-presence {
            @if online { "online" } @else { "offline" }
        }
    }
}

/// A badge for an action's or a service's status: green when done or running, red when
/// failed, amber while waiting, grey otherwise.
pub(super) fn status_badge(status: &str) -> Markup {
    let class = match status.to_ascii_lowercase().as_str() {
        "succeeded" | "running" | "idle" | "healthy" | "done" | "downloaded" => "ok",
        "failed" | "dead" | "exited" | "unhealthy" | "expired" | "error" => "bad",
        "pending" | "delivered" | "starting" | "downloading" | "installing" | "updating"
        | "stopping" => "wait",
        _ => "neutral",
    };
    html! { span.badge.(class) data-status=(status) { (status) } }
}

/// `3 min ago`, with the exact time in the tooltip; `never` for none.
pub(super) fn ago(at: Option<i64>) -> Markup {
    match at {
        None => html! { span.muted { "never" } },
        Some(t) => {
            let secs = (crate::store::now_unix() - t).max(0);
            let text = match secs {
                0..=9 => "just now".to_string(),
                10..=59 => format!("{secs} s ago"),
                60..=3599 => format!("{} min ago", secs / 60),
                3600..=86_399 => format!("{} h ago", secs / 3600),
                _ => format!("{} d ago", secs / 86_400),
            };
            html! { time datetime=(t) title=(utc(t)) { (text) } }
        }
    }
}

/// Unix seconds as `2026-12-04 01:30:00 UTC`.
pub(super) fn utc(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The first 8 characters of an id, the whole one in the tooltip.
pub(super) fn short(id: &str) -> Markup {
    let s: String = id.chars().take(8).collect();
    html! { code title=(id) { (s) } }
}

/// A dash for an empty cell.
pub(super) fn none() -> Markup {
    html! { span.muted { "—" } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_the_epoch_and_a_leap_day() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_825_600), "2000-02-29 12:00:00 UTC");
    }
}
