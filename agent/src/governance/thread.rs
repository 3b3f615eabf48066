//! The governance thread: writes the audit log, raises budget alerts (audit entry, metric and
//! the optional webhook POST), removes exceptions when they expire, reloads keys after admin
//! changes made elsewhere, and forgets idle loop-guard sessions. Off the request path: workers
//! only send it events.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::hold::Alert;
use super::store::{AuditEntry, Store};
use super::window::{now_ms, rfc3339};
use super::{Event, Governor};
use crate::shared::Shared;

/// How often exceptions are checked for expiry.
const SWEEP: Duration = Duration::from_secs(1);
/// Loop-guard sessions idle this long are forgotten.
const SESSION_IDLE_MS: i64 = 3_600_000;

pub fn run(shared: Arc<Shared>, rx: Receiver<Event>) {
    let gov = shared.governor.clone();
    let store = match Store::open(gov.data_dir()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the governance store could not be opened; audit entries will be lost");
            return;
        }
    };
    let mut next_sweep = Instant::now() + SWEEP;
    loop {
        match rx.recv_timeout(next_sweep.saturating_duration_since(Instant::now())) {
            Ok(Event::Audit(entry)) => append(&store, &entry),
            Ok(Event::Alert(alert)) => raise(&shared, &gov, &store, &alert),
            Ok(Event::Reload) => {
                if let Err(e) = gov.reload_from(&store) {
                    tracing::warn!(error = %e, "reloading keys failed");
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + SWEEP;
            sweep(&gov, &store);
            if shared.shutting_down.load(Ordering::Relaxed) {
                // Whatever is queued still gets written.
                while let Ok(ev) = rx.try_recv() {
                    match ev {
                        Event::Audit(entry) => append(&store, &entry),
                        Event::Alert(alert) => raise(&shared, &gov, &store, &alert),
                        Event::Reload => {}
                    }
                }
                return;
            }
        }
    }
}

fn append(store: &Store, entry: &AuditEntry) {
    if let Err(e) = store.append_audit(entry) {
        tracing::error!(error = %e, action = %entry.action, "could not write an audit entry");
    }
}

/// Removes expired exceptions (each with an audit entry) and idle sessions.
fn sweep(gov: &Governor, store: &Store) {
    let now = now_ms();
    let expired: Vec<i64> = match store.exceptions() {
        Ok(list) => list
            .iter()
            .filter(|x| x.expires_ms <= now)
            .map(|x| x.id)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading exceptions failed");
            Vec::new()
        }
    };
    for id in &expired {
        if let Ok(Some(x)) = store.remove_exception(*id) {
            append(
                store,
                &AuditEntry {
                    seq: 0,
                    ts_ms: now,
                    actor: "agent".into(),
                    action: "exception.expire".into(),
                    subject: format!("{}:{}", x.subject_kind.as_str(), x.subject),
                    detail: serde_json::to_value(&x).unwrap_or_default(),
                },
            );
        }
    }
    if !expired.is_empty() {
        if let Err(e) = gov.reload_from(store) {
            tracing::warn!(error = %e, "reloading exceptions failed");
        }
    }
    gov.sessions.evict_idle(now, SESSION_IDLE_MS);
}

fn raise(shared: &Shared, gov: &Governor, store: &Store, a: &Alert) {
    gov.counters.budget_alerts.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::json!({
        "event": "budget.alert",
        "budget": a.budget,
        "scope": a.scope,
        "threshold": a.threshold,
        "used_tokens": a.used_tokens,
        "used_usd": a.used_micro_usd as f64 / 1e6,
        "limit_tokens": a.limit_tokens,
        "limit_usd": a.limit_micro_usd.map(|c| c as f64 / 1e6),
        "window_start": rfc3339(a.window_start_ms),
        "window_end": rfc3339(a.window_end_ms),
    });
    tracing::warn!(budget = %a.budget, threshold = a.threshold, "budget alert");
    append(
        store,
        &AuditEntry {
            seq: 0,
            ts_ms: now_ms(),
            actor: "agent".into(),
            action: "budget.alert".into(),
            subject: a.budget.clone(),
            detail: body.clone(),
        },
    );
    let url = shared.snapshot.load().cfg.governance.alert_webhook.clone();
    if let Some(url) = url {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .http_status_as_error(false)
                .build(),
        );
        let result = agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string());
        let ok = matches!(&result, Ok(r) if r.status().is_success());
        if !ok {
            gov.counters
                .webhook_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(url = %url, result = ?result.map(|r| r.status()), "the alert webhook failed");
        }
    }
}
