//! `tollgate validate`: a good config passes (exit 0); a bad one fails (exit 1) and every
//! problem is reported on its own stderr line as `line N: path: message`.

use std::time::Duration;

use crate::harness::procs::{run_tollgate, TempDir};
use crate::harness::{AgentConfig, Sim};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The `line N: path: message` lines of stderr, as (N, path).
fn problems(stderr: &str) -> Vec<(usize, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("line ")?;
            let (n, rest) = rest.split_once(": ")?;
            let (path, message) = rest.split_once(": ")?;
            assert!(!message.trim().is_empty(), "empty message in {l:?}");
            Some((n.parse().ok()?, path.to_string()))
        })
        .collect()
}

#[test]
fn good_config_validates() {
    let sim = Sim::start(&[]);
    let dir = TempDir::new("validate");
    let path = dir.path().join("good.yaml");
    std::fs::write(
        &path,
        AgentConfig::for_sim(&sim).render(&dir.path().join("data")),
    )
    .expect("writing config");
    let out = run_tollgate(
        &["validate", "--config", path.to_str().expect("utf-8 path")],
        TIMEOUT,
    );
    assert!(out.status.success(), "{out:#?}");
    assert!(out.stdout.contains("ok"), "{out:#?}");
}

#[test]
fn bad_config_reports_every_problem_with_its_line() {
    let dir = TempDir::new("validate");
    let path = dir.path().join("bad.yaml");
    let yaml = "\
listen: not-an-address
workers: 0
io: { driver: kqueue }
limits: { max_body_bytes: 1048576 }
providers:
  - name: good
    kind: openai
    base_url: http://127.0.0.1:9
  - name: broken
    kind: gemini
    base_url: ftp://example.invalid
models:
  - name: a
    provider: nowhere
    model: m
";
    std::fs::write(&path, yaml).expect("writing config");
    let out = run_tollgate(
        &["validate", "--config", path.to_str().expect("utf-8 path")],
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    let found = problems(&out.stderr);
    for (line, field) in [
        (1, "listen"),
        (2, "workers"),
        (3, "io.driver"),
        (10, "providers[1].kind"),
        (11, "providers[1].base_url"),
        (14, "models[0].provider"),
    ] {
        assert!(
            found.iter().any(|(n, p)| *n == line && p == field),
            "expected `line {line}: {field}: ...` in stderr:\n{}",
            out.stderr
        );
    }
}

#[test]
fn unknown_key_is_reported_with_its_line() {
    let dir = TempDir::new("validate");
    let path = dir.path().join("typo.yaml");
    let yaml = "\
listen: 127.0.0.1:0
limits:
  max_body_bytes: 1024
  header_timout_ms: 5
providers: []
models: []
";
    std::fs::write(&path, yaml).expect("writing config");
    let out = run_tollgate(
        &["validate", "--config", path.to_str().expect("utf-8 path")],
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("header_timout_ms"),
        "the typo is named: {}",
        out.stderr
    );
    assert!(
        problems(&out.stderr).iter().any(|(n, _)| *n == 4),
        "the typo's line (4) is named: {}",
        out.stderr
    );
}

/// A config whose only problem is a provider key variable that is not set.
const UNSET_KEY: &str = "\
providers:
  - name: p
    kind: openai
    base_url: http://127.0.0.1:9
    api_key_env: TOLLGATE_E2E_DEFINITELY_UNSET
models:
  - name: m
    provider: p
";

#[test]
fn unset_key_variable_is_reported_with_its_line() {
    let dir = TempDir::new("validate");
    let path = dir.path().join("unset.yaml");
    std::fs::write(&path, UNSET_KEY).expect("writing config");
    let out = run_tollgate(
        &["validate", "--config", path.to_str().expect("utf-8 path")],
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    assert_eq!(
        problems(&out.stderr),
        [(5, "providers[0].api_key_env".to_string())],
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("TOLLGATE_E2E_DEFINITELY_UNSET"),
        "{}",
        out.stderr
    );
}

#[test]
fn unset_key_variable_is_reported_beside_other_problems() {
    let dir = TempDir::new("validate");
    let path = dir.path().join("both.yaml");
    let yaml = UNSET_KEY.replace("http://127.0.0.1:9", "ftp://127.0.0.1:9");
    std::fs::write(&path, yaml).expect("writing config");
    let out = run_tollgate(
        &["validate", "--config", path.to_str().expect("utf-8 path")],
        TIMEOUT,
    );
    let found = problems(&out.stderr);
    assert!(
        found.contains(&(4, "providers[0].base_url".to_string())),
        "{}",
        out.stderr
    );
    assert!(
        found.contains(&(5, "providers[0].api_key_env".to_string())),
        "{}",
        out.stderr
    );
}
