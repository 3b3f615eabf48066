//! `tollgate export focus`: the ledger of a running agent becomes FOCUS 1.0 CSV and Parquet
//! whose sums are the ledger's, and which the FinOps Foundation's own validator accepts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::procs::{run_tollgate, TempDir};
use crate::harness::{Sim, Stack};

/// The FOCUS validator's python, or `None` to skip.
fn validator_python() -> Option<PathBuf> {
    crate::harness::venv::python("TOLLGATE_FOCUS_VALIDATOR", ".venv-focus", "focus_validator")
}

/// Splits one CSV line (fields quoted with `"`, quotes doubled).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    out.push(field);
    out
}

/// `"0.001234"` as micro-USD.
fn micro(s: &str) -> i64 {
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    let frac = format!("{frac:0<6}");
    whole.parse::<i64>().expect("whole USD") * 1_000_000
        + frac[..6].parse::<i64>().expect("fraction")
}

#[test]
fn the_ledger_exports_as_focus_that_the_finops_validator_accepts() {
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.governance_yaml
            .push_str("prices:\n  smol: {input: 2.0, output: 8.0}\n");
    });
    let body = json!({"model": "smol", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8});
    let mut ledger_cost: HashMap<String, i64> = HashMap::new();
    for (team, n) in [("search", 3), ("ads", 2)] {
        for _ in 0..n {
            let r = crate::harness::chat_as_team(stack.agent.addr, team, &body);
            let row = stack.agent.row_of(&r);
            *ledger_cost.entry(team.to_string()).or_default() += row.cost_micro_usd;
        }
    }
    assert!(ledger_cost.values().all(|c| *c > 0), "{ledger_cost:?}");

    let dir = TempDir::new("focus");
    let out = dir.path().join("focus.csv");
    let data_dir = stack.agent.data_dir.to_string_lossy().into_owned();
    let run = run_tollgate(
        &[
            "export",
            "focus",
            "--data-dir",
            &data_dir,
            "--out",
            &out.to_string_lossy(),
            "--account",
            "node-a",
        ],
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let text = std::fs::read_to_string(&out).expect("the export");
    let mut lines = text.lines();
    let header = csv_fields(lines.next().expect("a header"));
    for required in [
        "BilledCost",
        "EffectiveCost",
        "ListCost",
        "ContractedCost",
        "BillingCurrency",
        "ChargePeriodStart",
        "ChargePeriodEnd",
        "BillingPeriodStart",
        "ChargeCategory",
        "ServiceName",
        "ServiceCategory",
        "ResourceId",
        "SkuId",
        "PricingUnit",
        "PricingQuantity",
        "ConsumedQuantity",
        "ConsumedUnit",
        "Provider",
        "Publisher",
        "InvoiceIssuer",
        "Tags",
    ] {
        assert!(
            header.iter().any(|h| h == required),
            "no {required} in {header:?}"
        );
    }
    let col = |name: &str| header.iter().position(|h| h == name).expect(name);
    let mut exported: HashMap<String, (i64, u64)> = HashMap::new();
    for line in lines {
        let f = csv_fields(line);
        assert_eq!(f.len(), header.len(), "{line}");
        let tags: serde_json::Value = serde_json::from_str(&f[col("Tags")]).expect("Tags is JSON");
        let team = tags["team"].as_str().expect("a team tag").to_string();
        assert_eq!(f[col("SubAccountId")], team);
        assert_eq!(f[col("BilledCost")], f[col("EffectiveCost")]);
        assert_eq!(f[col("ConsumedUnit")], "Tokens");
        assert_eq!(f[col("BillingAccountId")], "node-a");
        let e = exported.entry(team).or_default();
        e.0 += micro(&f[col("BilledCost")]);
        e.1 += f[col("x_Requests")].parse::<u64>().expect("x_Requests");
    }
    assert_eq!(exported.get("search").map(|e| e.1), Some(3));
    assert_eq!(exported.get("ads").map(|e| e.1), Some(2));
    for (team, cost) in &ledger_cost {
        assert_eq!(
            exported[team].0, *cost,
            "{team}: the export's cost is the ledger's"
        );
    }

    // The same rows as Parquet, typed: the same sums, read back with an independent reader.
    let parquet = dir.path().join("focus.parquet");
    let run = run_tollgate(
        &[
            "export",
            "focus",
            "--data-dir",
            &data_dir,
            "--format",
            "parquet",
            "--out",
            &parquet.to_string_lossy(),
            "--account",
            "node-a",
        ],
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let typed = parquet_sums(&parquet);
    for (team, cost) in &ledger_cost {
        assert_eq!(
            typed.get(team).map(|t| t.0),
            Some(*cost),
            "{team}: {typed:?}"
        );
    }
    assert_eq!(typed.get("search").map(|t| t.1), Some(3));
    assert_eq!(typed.get("ads").map(|t| t.1), Some(2));

    validate(&out);
    validate(&parquet);
}

/// Per team: (micro-USD of BilledCost, x_Requests) of a FOCUS Parquet file, checking each
/// column's physical type on the way.
fn parquet_sums(path: &std::path::Path) -> HashMap<String, (i64, i64)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let bytes = bytes::Bytes::from(std::fs::read(path).expect("the Parquet export"));
    let reader = SerializedFileReader::new(bytes).expect("a Parquet file");
    let mut sums: HashMap<String, (i64, i64)> = HashMap::new();
    for row in reader.get_row_iter(None).expect("rows") {
        let row = row.expect("a row");
        let mut team = None;
        let (mut cost, mut requests) = (None, None);
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("SubAccountId", Field::Str(t)) => team = Some(t.clone()),
                ("BilledCost", Field::Double(c)) => cost = Some((c * 1e6).round() as i64),
                ("x_Requests", Field::Long(n)) => requests = Some(*n),
                ("ChargePeriodStart" | "ChargePeriodEnd", f) => {
                    assert!(matches!(f, Field::TimestampMillis(_)), "{name}: {f:?}")
                }
                ("BilledCost" | "x_Requests" | "SubAccountId", f) => panic!("{name}: {f:?}"),
                _ => {}
            }
        }
        let e = sums.entry(team.expect("a team")).or_default();
        e.0 += cost.expect("a cost");
        e.1 += requests.expect("requests");
    }
    sums
}

/// Runs the FinOps Foundation's validator (FOCUS 1.0) on `file` (CSV or Parquet, by its
/// extension), with the overrides its README documents for two rules of its own that
/// contradict the specification.
fn validate(file: &std::path::Path) {
    let Some(python) = validator_python() else {
        return;
    };
    // It reads its currency list relative to the working directory: run it from its package's.
    let site = Command::new(&python)
        .args(["-c", "import focus_validator, os; print(os.path.dirname(os.path.dirname(focus_validator.__file__)))"])
        .output()
        .expect("running the validator's python");
    assert!(
        site.status.success(),
        "{}",
        String::from_utf8_lossy(&site.stderr)
    );
    let overrides =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("finops/focus-validator-overrides.yaml");
    let check = Command::new(&python)
        .current_dir(String::from_utf8_lossy(&site.stdout).trim())
        .args([
            "-m",
            "focus_validator.main",
            "--validate-version",
            "1.0",
            "--data-file",
        ])
        .arg(file)
        .arg("--override-file")
        .arg(&overrides)
        .output()
        .expect("running focus-validator");
    let report = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        report.contains("Validation succeeded."),
        "{}: {report}",
        file.display()
    );
}
