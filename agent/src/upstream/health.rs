//! The upstream thread: re-resolves provider hosts every 30 s (workers never call
//! `getaddrinfo`) and runs the active health checks. A provider with `health_check` is sent
//! `GET path` every `interval`; `failures` failed checks in a row (no answer within `timeout`,
//! or a status other than 200) clear its `healthy` flag and routing passes its targets over
//! (`phase/route`), until one check passes. Checks block (a small HTTP client with a deadline),
//! which is why they run here and never on a worker. Plain-http providers only; cloud APIs
//! rely on the passive breakers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shared::Shared;

/// How often provider hosts are resolved again.
const DNS_EVERY: Duration = Duration::from_secs(30);
/// The thread's tick: how quickly a stop, or a check that falls due, is noticed.
const TICK: Duration = Duration::from_millis(50);

/// Per provider id: when the next check is due and the failures in a row so far.
#[derive(Default)]
struct Probe {
    due: Option<Instant>,
    failures: u32,
}

pub fn run(shared: Arc<Shared>) {
    let mut next_dns = Instant::now() + DNS_EVERY;
    let mut probes: HashMap<usize, Probe> = HashMap::new();
    while !shared.shutting_down.load(Ordering::Acquire) {
        // The providers of the current snapshot (a reload resolves new ones itself).
        let snap = shared.snapshot.load_full();
        let now = Instant::now();
        if now >= next_dns {
            for (p, rt) in snap.cfg.providers.iter().zip(&snap.providers) {
                rt.refresh(p);
            }
            next_dns = now + DNS_EVERY;
        }
        for (p, rt) in snap.cfg.providers.iter().zip(&snap.providers) {
            let Some(check) = &p.health_check else {
                // A reload may have removed the check of a provider it had taken out.
                rt.healthy.store(true, Ordering::Relaxed);
                continue;
            };
            let probe = probes.entry(rt.id).or_default();
            if probe.due.is_some_and(|d| Instant::now() < d) {
                continue;
            }
            probe.due = Some(Instant::now() + check.interval);
            let addrs = rt.addrs.load_full();
            let result = crate::telemetry::replicas::http_get(
                &addrs,
                &p.host_header,
                &check.path,
                check.timeout,
            );
            match result {
                Ok(_) => {
                    probe.failures = 0;
                    if !rt.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!(provider = %p.name, "health check passes again: back in routing");
                    }
                }
                Err(e) => {
                    probe.failures = probe.failures.saturating_add(1);
                    if probe.failures >= check.failures && rt.healthy.swap(false, Ordering::Relaxed)
                    {
                        tracing::warn!(provider = %p.name, failures = probe.failures, error = %e, "health check failing: out of routing");
                    }
                }
            }
        }
        std::thread::sleep(TICK);
    }
}
