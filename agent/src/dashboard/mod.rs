//! The web dashboard on the admin listener, for people who do not read CSV.
//!
//! - **Page.** `GET /dashboard/` and its script and style are compiled into the binary
//!   (`assets/`): no CDN, no external fonts, works offline. They hold no data and are served
//!   without the token, with a Content-Security-Policy that allows only this origin.
//! - **Data.** The page asks for the admin token once per browser tab (kept in
//!   `sessionStorage`) and reads `GET /admin/dashboard/{spend,budgets,findings,live,audit}`
//!   with `Authorization: Bearer`, like every other admin URL (the same check, in `admin.rs`).
//! - **Cost.** Period figures come from the ledger's rollups (`data.rs`), each request on its
//!   own read-only SQLite connection on tokio's blocking pool, never on the admin thread.

pub mod data;

use std::path::Path;

use serde_json::{json, Value};

use crate::governance::store::{AuditQuery, Store};
use crate::governance::window::now_ms;

/// The embedded page: `(path, content type, bytes)`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/dashboard/",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "/dashboard/app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "/dashboard/app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
];

/// Only this origin's script, style and data; never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// The asset at `path`: content type and body.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    let path = if path == "/dashboard/index.html" {
        "/dashboard/"
    } else {
        path
    };
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, t, body)| (*t, *body))
}

/// True for the data URLs ([`api`] answers them).
pub fn is_api(path: &str) -> bool {
    path.starts_with("/admin/dashboard/")
}

/// Answers `GET /admin/dashboard/...` (blocking: SQLite). `data_dir` holds the ledger.
pub fn api(
    data_dir: &Path,
    governance: &crate::governance::Bound,
    store: &std::sync::Mutex<Store>,
    path: &str,
    query: &str,
) -> (u16, Value) {
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let now = now_ms();
    let range = || {
        let name = param("range").unwrap_or_else(|| "30d".into());
        data::Range::parse(&name, now).ok_or(name)
    };
    let bad_range = |name: String| {
        (
            400,
            error(
                "invalid_request_error",
                "invalid_range",
                &format!("range `{name}` is not one of 24h, 7d, 30d, 365d, month"),
            ),
        )
    };
    let ledger = || {
        rusqlite::Connection::open_with_flags(
            crate::ledger::db_path(data_dir),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    };
    let answer = |r: rusqlite::Result<Value>| match r {
        Ok(v) => (200, v),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard query failed");
            (
                500,
                error(
                    "server_error",
                    "ledger_unavailable",
                    &format!("the ledger could not be read: {e}"),
                ),
            )
        }
    };
    match path {
        "/admin/dashboard/spend" => match range() {
            Ok(r) => answer(ledger().and_then(|c| data::spend(&c, r))),
            Err(name) => bad_range(name),
        },
        "/admin/dashboard/findings" => match range() {
            Ok(r) => answer(ledger().and_then(|c| data::findings_in(&c, r))),
            Err(name) => bad_range(name),
        },
        "/admin/dashboard/live" => answer(ledger().and_then(|c| data::live(&c, now))),
        "/admin/dashboard/budgets" => (200, data::budgets(governance, now)),
        "/admin/dashboard/audit" => {
            let limit = param("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(50)
                .min(1000);
            let store = store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            answer(
                store
                    .audit(&AuditQuery {
                        limit: Some(limit),
                        newest_first: true,
                        ..AuditQuery::default()
                    })
                    .map(|entries| json!({ "entries": entries })),
            )
        }
        _ => (
            404,
            error(
                "invalid_request_error",
                "not_found",
                &format!("Unknown dashboard URL: {path}"),
            ),
        ),
    }
}

fn error(kind: &str, code: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_anywhere_else() {
        for (path, _, body) in ASSETS {
            // The SVG namespace is a name, not a URL anything loads.
            let body = body.replace("\"http://www.w3.org/2000/svg\"", "");
            for external in ["http://", "https://", "//cdn", "@import"] {
                assert!(!body.contains(external), "{path} refers to {external}");
            }
        }
        let page = asset("/dashboard/").unwrap().1;
        assert!(page.contains("app.js") && page.contains("app.css"));
        // No inline script or style: the CSP refuses them.
        assert!(!page.contains("<script>") && !page.contains("<style"));
        assert!(!page.contains(" style="));
        assert!(asset("/dashboard/secret").is_none());
    }
}
