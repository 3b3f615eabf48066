//! `ledger.ship` to a real PostgreSQL (the Debian package, started here on a loopback port):
//! the store ends up with exactly the ledger's rows; an outage of the store costs requests
//! nothing, is counted, and its backlog catches up when the store is back; an agent killed
//! with SIGKILL loses and duplicates nothing in the store.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::ledger;
use crate::harness::postgres::Postgres;
use crate::harness::{chat_body, Sim, Stack};

/// Generous: the machines that run this are small and busy; nothing is asserted about time.
const DEADLINE: Duration = Duration::from_secs(120);

/// Requests sent while the store is down (the backlog that is timed).
const OUTAGE: usize = 200;

/// What is compared per request id: team, input, output, cost, status.
type Facts = (Option<String>, i64, i64, i64, i64);

fn ledger_rows(stack: &Stack) -> BTreeMap<String, Facts> {
    ledger::all(&stack.agent.data_dir)
        .into_iter()
        .map(|r| {
            (
                r.id,
                (
                    r.team,
                    r.input_tokens,
                    r.output_tokens,
                    r.cost_micro_usd,
                    r.status,
                ),
            )
        })
        .collect()
}

/// The store's rows (empty before the agent made the table), and the nodes named in them.
fn store_rows(pg: &Postgres) -> (BTreeMap<String, Facts>, Vec<String>, i64) {
    let mut client = pg.client();
    let Ok(rows) = client.query(
        "SELECT id, team, input_tokens, output_tokens, COALESCE(cost_micro_usd, 0), status, node
         FROM tollgate_usage",
        &[],
    ) else {
        return (BTreeMap::new(), Vec::new(), 0);
    };
    let mut nodes: Vec<String> = rows.iter().map(|r| r.get(6)).collect();
    nodes.sort();
    nodes.dedup();
    let n = rows.len() as i64;
    let map = rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)),
            )
        })
        .collect();
    (map, nodes, n)
}

/// Waits until the ledger holds at least `at_least` rows and the store exactly the ledger's
/// rows; returns how many.
fn converged(stack: &Stack, pg: &Postgres, what: &str, at_least: usize) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let want = ledger_rows(stack);
        let (have, nodes, n) = store_rows(pg);
        // The ledger commits a response's row up to ~100 ms after it; a store that has caught
        // up with a ledger still committing is not converged yet.
        if want.len() >= at_least.max(1) && want == have {
            assert_eq!(nodes, ["e2e-node"], "{what}");
            assert_eq!(n as usize, want.len(), "{what}: one row per id");
            return want.len();
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = want.keys().filter(|k| !have.contains_key(*k)).collect();
            let extra: Vec<&String> = have.keys().filter(|k| !want.contains_key(*k)).collect();
            let differ: Vec<&String> = want
                .iter()
                .filter(|(k, v)| have.get(*k).is_some_and(|h| h != *v))
                .map(|(k, _)| k)
                .collect();
            panic!(
                "{what}: the store did not converge to the ledger within {DEADLINE:?}: \
                 {} ledger rows, {} store rows; missing {missing:?}, extra {extra:?}, \
                 differing {differ:?}\nmetrics:\n{}",
                want.len(),
                have.len(),
                ship_metrics(stack)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ship_metrics(stack: &Stack) -> String {
    stack
        .agent
        .metrics()
        .lines()
        .filter(|l| l.starts_with("tollgate_ledger_ship_"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn metric(stack: &Stack, name: &str) -> f64 {
    let prefix = format!("{name}{{sink=\"postgres\"}} ");
    let text = stack.agent.metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// Polls until `ok(metric)`.
fn wait_metric(stack: &Stack, name: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let v = metric(stack, name);
        if ok(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {name} is {v}\n{}",
            ship_metrics(stack)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` requests of alternating teams, all answered 200; their request ids.
fn send(stack: &Stack, n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let team = if i % 2 == 0 { "search" } else { "ads" };
            let body = chat_body("smol", &format!("{tag} {i}"), 5 + (i % 3) as u64, false);
            let r = crate::harness::chat_as_team(stack.agent.addr, team, &body);
            r.request_id().to_string()
        })
        .collect()
}

#[test]
fn the_ledger_reaches_postgres_once_per_request_through_outages_and_crashes() {
    let mut pg = Postgres::start();
    let url = pg.url();
    let mut stack = Stack::custom(Sim::start(&[]), |c| {
        // Small batches: every phase below spans several transactions.
        c.extra_ledger = format!(
            ", ship: {{ sink: postgres, url: \"{url}\", batch: 7, interval_ms: 50, node: e2e-node }}"
        );
        c.governance_yaml
            .push_str("prices:\n  smol: {input: 2.0, output: 8.0}\n");
    });
    let mut ids = send(&stack, 30, "first");
    let n = converged(&stack, &pg, "first requests", 30);
    assert_eq!(n, 30);
    assert!(ledger_rows(&stack).values().all(|f| f.3 > 0), "priced");
    wait_metric(&stack, "tollgate_ledger_ship_lag_rows", "caught up", |v| {
        v == 0.0
    });
    assert_eq!(metric(&stack, "tollgate_ledger_ship_up"), 1.0);
    assert!(metric(&stack, "tollgate_ledger_ship_rows_total") >= 30.0);

    // Outage: requests go on and are in the local ledger; failures are counted.
    let errors_before = metric(&stack, "tollgate_ledger_ship_errors_total");
    pg.stop();
    ids.extend(send(&stack, OUTAGE, "outage"));
    for id in &ids {
        ledger::row(&stack.agent.data_dir, id);
    }
    wait_metric(
        &stack,
        "tollgate_ledger_ship_errors_total",
        "errors counted while the store is down",
        |v| v > errors_before,
    );
    wait_metric(&stack, "tollgate_ledger_ship_lag_rows", "a backlog", |v| {
        v >= OUTAGE as f64
    });
    assert_eq!(metric(&stack, "tollgate_ledger_ship_up"), 0.0);

    // The store is back: the backlog catches up, once per request. Timed from the first
    // backlog row seen in the store (the back-off running at the restart is not counted).
    pg.start_again();
    let deadline = Instant::now() + DEADLINE;
    let first = loop {
        if store_rows(&pg).2 > 30 {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no backlog row reached the store\n{}",
            ship_metrics(&stack)
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let n = converged(&stack, &pg, "after the outage", 30 + OUTAGE);
    let took = first.elapsed();
    assert_eq!(n, 30 + OUTAGE);
    wait_metric(&stack, "tollgate_ledger_ship_lag_rows", "caught up", |v| {
        v == 0.0
    });
    wait_metric(&stack, "tollgate_ledger_ship_up", "up again", |v| v == 1.0);
    eprintln!(
        "ledger_ship: a backlog of {OUTAGE} rows in batches of 7 reached PostgreSQL in {:.2} s \
         from its first row (polled every 100 ms): about {:.0} rows/s",
        took.as_secs_f64(),
        OUTAGE as f64 / took.as_secs_f64().max(0.001)
    );

    // SIGKILL with records in flight: the journal brings them back, the cursor resumes, and
    // rows sent again (shipped but not yet in the cursor) replace themselves.
    ids.extend(send(&stack, 25, "crash"));
    stack.agent.crash_and_restart(1);
    ids.extend(send(&stack, 5, "after"));
    for id in &ids {
        ledger::row(&stack.agent.data_dir, id);
    }
    let n = converged(&stack, &pg, "after a SIGKILL", 60 + OUTAGE);
    assert_eq!(
        n,
        60 + OUTAGE,
        "every answered request is in the ledger, once"
    );
    let (have, _, _) = store_rows(&pg);
    assert!(
        ids.iter().all(|id| have.contains_key(id)),
        "every answered request is in the store"
    );
    wait_metric(&stack, "tollgate_ledger_ship_lag_rows", "caught up", |v| {
        v == 0.0
    });
    assert!(
        stack.agent.data_dir.join("ship/postgres.cursor").is_file(),
        "the cursor is kept in data_dir/ship"
    );

    // After a graceful stop the store holds every committed row.
    ids.extend(send(&stack, 3, "last"));
    let status = stack.agent.stop();
    assert!(status.success(), "{status}");
    let want: Vec<String> = ledger::all(&stack.agent.data_dir)
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(want.len(), 63 + OUTAGE);
    let (have, _, n) = store_rows(&pg);
    assert_eq!(
        n as usize,
        63 + OUTAGE,
        "one row per request in the store after the stop"
    );
    assert!(want.iter().all(|id| have.contains_key(id)));
}

/// `sslmode=require`: the rows travel over TLS, the store's certificate checked against the
/// configured private CA; an agent that does not trust that CA ships nothing and says so.
#[test]
fn the_ledger_reaches_postgres_over_verified_tls() {
    let Some(openssl) = crate::harness::pki::find_binary("openssl") else {
        eprintln!("skipping: no `openssl` to make a CA (apt-get install openssl)");
        return;
    };
    let dir = crate::harness::procs::TempDir::new("pg-tls");
    let pki = crate::harness::pki::Pki::create(&openssl, &dir.path().join("pki"));
    let mut pg = Postgres::start();
    pg.enable_tls(&pki);
    let url = format!("{}?sslmode=require", pg.url());
    let ca = pki.ca.display().to_string();
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.extra_ledger = format!(
            ", ship: {{ sink: postgres, url: \"{url}\", ca_file: \"{ca}\", interval_ms: 50, node: e2e-node }}"
        );
    });
    send(&stack, 6, "tls");
    assert_eq!(converged(&stack, &pg, "over TLS", 6), 6);
    let encrypted: Vec<bool> = pg
        .client()
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'tollgate-ledger-ship'",
            &[],
        )
        .expect("pg_stat_ssl")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(encrypted, [true], "the shipper's connection is TLS");

    // Only the webpki roots: the private CA's certificate is refused, nothing is shipped.
    let untrusting = Stack::custom(Sim::start(&[]), |c| {
        c.extra_ledger = format!(
            ", ship: {{ sink: postgres, url: \"{url}\", table: refused, interval_ms: 50, node: e2e-node }}"
        );
    });
    send(&untrusting, 2, "untrusted");
    wait_metric(
        &untrusting,
        "tollgate_ledger_ship_errors_total",
        "refused",
        |v| v >= 1.0,
    );
    assert_eq!(metric(&untrusting, "tollgate_ledger_ship_up"), 0.0);
    assert_eq!(metric(&untrusting, "tollgate_ledger_ship_rows_total"), 0.0);
    let logs = untrusting.agent.proc.logs_tail();
    assert!(logs.contains("certificate"), "the error says why:\n{logs}");
}
