//! The governance part of the admin API (served by `admin.rs` on the admin listener):
//!
//! | method and path | what it does |
//! |---|---|
//! | `POST /admin/keys` | create a key from a [`KeySpec`]; the answer holds the key, shown once |
//! | `GET /admin/keys`, `GET /admin/keys/ID` | list keys, show one (with its budget use) |
//! | `PATCH /admin/keys/ID` | change fields of a key's spec |
//! | `POST /admin/keys/ID/rotate` | a new secret for the same key (counters kept) |
//! | `POST /admin/keys/ID/revoke`, `DELETE /admin/keys/ID` | revoke |
//! | `POST /admin/exceptions`, `GET /admin/exceptions`, `DELETE /admin/exceptions/ID` | expiring grants |
//! | `GET /admin/audit?since_ms=&action=&subject=&limit=` | the audit log |
//!
//! Every change is written to the store, audited, and applied to the running agent before the
//! answer is sent (the key table is rebuilt and swapped).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::keys::{self, KeyRecord, KeySpec};
use super::store::{AuditEntry, AuditQuery, Exception, Store};
use super::window::now_ms;
use super::Governor;

/// An answer: status and JSON body.
pub type Answer = (u16, Value);

fn err(status: u16, code: &str, message: impl Into<String>) -> Answer {
    (
        status,
        json!({"error": {"message": message.into(), "type": "invalid_request_error", "code": code, "param": null}}),
    )
}

fn internal(e: impl std::fmt::Display) -> Answer {
    (
        500,
        json!({"error": {"message": e.to_string(), "type": "api_error", "code": "internal_error", "param": null}}),
    )
}

/// Handles `/admin/keys...`, `/admin/exceptions...` and `/admin/audit`; `None` for other paths.
pub fn handle(
    gov: &Governor,
    store: &Store,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Option<Answer> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    let answer = match (method, parts.as_slice()) {
        ("POST", ["keys"]) => create(gov, store, body),
        ("GET", ["keys"]) => list(store),
        ("GET", ["keys", id]) => show(gov, store, id),
        ("PATCH", ["keys", id]) | ("POST", ["keys", id]) => update(gov, store, id, body),
        ("POST", ["keys", id, "rotate"]) => rotate(gov, store, id),
        ("POST", ["keys", id, "revoke"]) | ("DELETE", ["keys", id]) => revoke(gov, store, id),
        ("POST", ["exceptions"]) => grant(gov, store, body),
        ("GET", ["exceptions"]) => match store.exceptions() {
            Ok(list) => (200, json!({ "exceptions": list })),
            Err(e) => internal(e),
        },
        ("DELETE", ["exceptions", id]) => withdraw(gov, store, id),
        ("GET", ["audit"]) => audit(store, query),
        (_, ["keys", ..]) | (_, ["exceptions", ..]) | (_, ["audit"]) => err(
            405,
            "method_not_allowed",
            format!("{method} is not supported on {path}"),
        ),
        _ => return None,
    };
    Some(answer)
}

/// Audits a change made by the admin and applies it to the running agent.
fn commit(
    gov: &Governor,
    store: &Store,
    action: &str,
    subject: &str,
    detail: Value,
) -> Result<(), Answer> {
    if let Err(e) = store.append_audit(&AuditEntry {
        seq: 0,
        ts_ms: now_ms(),
        actor: "admin".into(),
        action: action.into(),
        subject: subject.into(),
        detail,
    }) {
        tracing::error!(error = %e, action, "could not write an audit entry");
    }
    // Cluster mode (`cluster/keys.rs`) pushes the change to Redis off this thread.
    gov.local_changes
        .fetch_add(1, std::sync::atomic::Ordering::Release);
    gov.reload_from(store).map_err(internal)
}

fn parse_spec(body: &[u8]) -> Result<KeySpec, Answer> {
    let spec: KeySpec = serde_json::from_slice(body)
        .map_err(|e| err(400, "invalid_key_spec", format!("invalid key spec: {e}")))?;
    spec.check().map_err(|m| err(400, "invalid_key_spec", m))?;
    Ok(spec)
}

fn create(gov: &Governor, store: &Store, body: &[u8]) -> Answer {
    let spec = match parse_spec(body) {
        Ok(s) => s,
        Err(a) => return a,
    };
    let (new, id) = match (keys::generate(), keys::new_id()) {
        (Ok(n), Ok(id)) => (n, id),
        (Err(e), _) | (_, Err(e)) => return internal(e),
    };
    let now = now_ms();
    let rec = KeyRecord {
        id,
        prefix: new.prefix.clone(),
        spec,
        created_ms: now,
        updated_ms: now,
        revoked_ms: None,
    };
    if let Err(e) = store.insert_key(&rec, &new.hash) {
        return internal(e);
    }
    if let Err(a) = commit(
        gov,
        store,
        "key.create",
        &rec.id,
        serde_json::to_value(&rec).unwrap_or_default(),
    ) {
        return a;
    }
    (201, json!({ "key": new.secret, "record": rec }))
}

fn list(store: &Store) -> Answer {
    match store.keys() {
        Ok(keys) => (200, json!({ "keys": keys })),
        Err(e) => internal(e),
    }
}

fn show(gov: &Governor, store: &Store, id: &str) -> Answer {
    let rec = match store.key(id) {
        Ok(Some(r)) => r,
        Ok(None) => return err(404, "key_not_found", format!("no key `{id}`")),
        Err(e) => return internal(e),
    };
    let mut out = serde_json::to_value(&rec).unwrap_or_default();
    let table = gov.keys.load();
    if let Some(e) = table.entries().find(|e| e.id == id) {
        let span = e.window().at(now_ms());
        out["usage"] = json!({
            "window": e.window().as_str(),
            "window_start_ms": span.start_ms,
            "window_end_ms": span.end_ms,
            "tokens": e.state.budget.tokens.used(span.index),
            "usd": e.state.budget.micro_usd.used(span.index) as f64 / 1e6,
        });
        let lease = &e.state.budget.lease;
        if lease.is_shared() {
            out["usage"]["cluster"] = json!({
                "tokens": lease.cluster_tokens.used(span.index),
                "usd": lease.cluster_micro_usd.used(span.index) as f64 / 1e6,
            });
        }
    }
    (200, out)
}

fn update(gov: &Governor, store: &Store, id: &str, body: &[u8]) -> Answer {
    let rec = match store.key(id) {
        Ok(Some(r)) if r.revoked_ms.is_none() => r,
        Ok(_) => return err(404, "key_not_found", format!("no active key `{id}`")),
        Err(e) => return internal(e),
    };
    let changes: HashMap<String, Value> = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => {
            return err(
                400,
                "invalid_key_spec",
                format!("expected a JSON object: {e}"),
            )
        }
    };
    let mut merged = serde_json::to_value(&rec.spec).unwrap_or_default();
    for (k, v) in &changes {
        merged[k] = v.clone();
    }
    // `null` clears a field.
    if let Value::Object(m) = &mut merged {
        m.retain(|_, v| !v.is_null());
    }
    let spec = match parse_spec(merged.to_string().as_bytes()) {
        Ok(s) => s,
        Err(a) => return a,
    };
    match store.update_spec(id, &spec, now_ms()) {
        Ok(true) => {}
        Ok(false) => return err(404, "key_not_found", format!("no active key `{id}`")),
        Err(e) => return internal(e),
    }
    if let Err(a) = commit(gov, store, "key.update", id, json!({ "changes": changes })) {
        return a;
    }
    show(gov, store, id)
}

fn rotate(gov: &Governor, store: &Store, id: &str) -> Answer {
    let new = match keys::generate() {
        Ok(n) => n,
        Err(e) => return internal(e),
    };
    match store.rotate(id, &new.hash, &new.prefix, now_ms()) {
        Ok(true) => {}
        Ok(false) => return err(404, "key_not_found", format!("no active key `{id}`")),
        Err(e) => return internal(e),
    }
    if let Err(a) = commit(
        gov,
        store,
        "key.rotate",
        id,
        json!({ "prefix": new.prefix }),
    ) {
        return a;
    }
    (
        200,
        json!({ "id": id, "key": new.secret, "prefix": new.prefix }),
    )
}

fn revoke(gov: &Governor, store: &Store, id: &str) -> Answer {
    match store.revoke(id, now_ms()) {
        Ok(true) => {}
        Ok(false) => return err(404, "key_not_found", format!("no active key `{id}`")),
        Err(e) => return internal(e),
    }
    if let Err(a) = commit(gov, store, "key.revoke", id, json!({})) {
        return a;
    }
    (200, json!({ "id": id, "revoked": true }))
}

fn grant(gov: &Governor, store: &Store, body: &[u8]) -> Answer {
    let mut x: Exception = match serde_json::from_slice(body) {
        Ok(x) => x,
        Err(e) => return err(400, "invalid_exception", format!("invalid exception: {e}")),
    };
    let now = now_ms();
    if x.justification.trim().is_empty() || x.approver.trim().is_empty() {
        return err(
            400,
            "invalid_exception",
            "an exception needs a justification and an approver",
        );
    }
    if x.expires_ms <= now {
        return err(400, "invalid_exception", "expires_ms is in the past");
    }
    if x.model.is_none() && x.extra_tokens.is_none() && x.extra_usd.is_none() {
        return err(
            400,
            "invalid_exception",
            "grant a model, extra_tokens or extra_usd",
        );
    }
    x.created_ms = now;
    x.uid = match super::store::new_uid() {
        Ok(u) => Some(u),
        Err(e) => return internal(e),
    };
    x.id = match store.insert_exception(&x) {
        Ok(id) => id,
        Err(e) => return internal(e),
    };
    if let Err(a) = commit(
        gov,
        store,
        "exception.grant",
        &format!("{}:{}", x.subject_kind.as_str(), x.subject),
        serde_json::to_value(&x).unwrap_or_default(),
    ) {
        return a;
    }
    (201, json!({ "exception": x }))
}

fn withdraw(gov: &Governor, store: &Store, id: &str) -> Answer {
    let Ok(n) = id.parse::<i64>() else {
        return err(404, "exception_not_found", format!("no exception `{id}`"));
    };
    match store.remove_exception(n) {
        Ok(Some(x)) => {
            if let Err(a) = commit(
                gov,
                store,
                "exception.revoke",
                &format!("{}:{}", x.subject_kind.as_str(), x.subject),
                serde_json::to_value(&x).unwrap_or_default(),
            ) {
                return a;
            }
            (200, json!({ "id": n, "revoked": true }))
        }
        Ok(None) => err(404, "exception_not_found", format!("no exception `{id}`")),
        Err(e) => internal(e),
    }
}

fn audit(store: &Store, query: &str) -> Answer {
    let mut q = AuditQuery::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "since_ms" => q.since_ms = v.parse().ok(),
            "action" => q.action = Some(v.into_owned()),
            "subject" => q.subject = Some(v.into_owned()),
            "limit" => q.limit = v.parse().ok(),
            _ => {}
        }
    }
    match store.audit(&q) {
        Ok(entries) => (200, json!({ "entries": entries })),
        Err(e) => internal(e),
    }
}
