//! `tollgate demo --no-wait`: starts two simulators and the agent, runs its workload, prints the
//! usage tables and exits 0, leaving a ledger behind.

use std::time::Duration;

use crate::harness::ledger;
use crate::harness::procs::{run_tollgate, TempDir};

#[test]
fn demo_runs_and_prints_usage() {
    let dir = TempDir::new("demo");
    let data_dir = dir.path().join("data");
    let out = run_tollgate(
        &[
            "demo",
            "--no-wait",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().expect("utf-8 path"),
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{out:#?}");
    assert!(
        out.stdout.contains("tollgate listening on"),
        "{}",
        out.stdout
    );
    let header = out
        .stdout
        .lines()
        .find(|l| l.starts_with("model") && l.contains("requests") && l.contains("output"))
        .unwrap_or_else(|| panic!("no usage table in:\n{}", out.stdout));
    assert!(header.contains("input"), "{header}");
    let rows = ledger::all(&data_dir);
    assert!(!rows.is_empty(), "the demo leaves a ledger");
    assert!(
        rows.iter().any(|r| r.status == 200 && r.output_tokens > 0),
        "{rows:#?}"
    );
}
