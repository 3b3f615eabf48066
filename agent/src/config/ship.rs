//! `ledger.ship` — copying the usage ledger to an organisation-wide store (PostgreSQL first),
//! in batches, at least once (the store keeps one row per request id). Off when absent.
//! Validated here into [`ShipSettings`]; the thread that ships is `ledger/ship/`.

use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ShipFile {
    /// `postgres` (ClickHouse and Kafka may follow).
    sink: Option<String>,
    /// `postgres://user@host:5432/db` (no password: see `password_env`).
    url: Option<String>,
    /// The environment variable holding the store's password.
    password_env: Option<String>,
    /// PEM certificates of a private CA the store's certificate is checked against (with
    /// `sslmode=require` in the URL), besides the webpki roots.
    ca_file: Option<String>,
    /// Table in the store (`tollgate_usage`; `schema.table` allowed), created when missing.
    table: Option<String>,
    /// Rows per transaction at most.
    batch: Option<usize>,
    /// How often the ledger is read for new rows, in milliseconds.
    interval_ms: Option<u64>,
    /// The name stored with every row (default: `TOLLGATE_NODE_NAME`, else the host name).
    node: Option<String>,
}

/// Where shipped rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Postgres,
}

impl SinkKind {
    /// The sink's name: metric label and cursor file name.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Postgres => "postgres",
        }
    }
}

/// The sinks that exist, for messages.
const SINKS: &str = "postgres";
/// Sinks the design leaves room for but that are not built.
const PLANNED: &[&str] = &["clickhouse", "kafka"];

/// What `ledger.ship` asks for.
#[derive(Clone, PartialEq)]
pub struct ShipSettings {
    pub sink: SinkKind,
    /// The store's URL, without a password.
    pub url: String,
    /// From `password_env`, read at load (never logged).
    pub password: Option<String>,
    /// `sslmode=require`: TLS (rustls), the server's certificate verified against the webpki
    /// roots and `ca_file`, and its name against the URL's host.
    pub tls: bool,
    pub ca_file: Option<std::path::PathBuf>,
    /// A lower-case SQL name, optionally `schema.table` (interpolated into SQL: checked here).
    pub table: String,
    /// Rows per transaction at most.
    pub batch: usize,
    /// Pause between reads of the ledger once everything committed is shipped.
    pub interval: Duration,
    /// This node's name, stored with every row.
    pub node: String,
}

impl std::fmt::Debug for ShipSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipSettings")
            .field("sink", &self.sink)
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("table", &self.table)
            .field("batch", &self.batch)
            .field("interval", &self.interval)
            .field("node", &self.node)
            .finish()
    }
}

/// Most rows per batch (a batch is held in memory and sent as one statement).
pub const MAX_BATCH: usize = 100_000;

/// A lower-case SQL identifier PostgreSQL accepts unquoted: `[a-z_][a-z0-9_]*`, 63 bytes at most.
fn sql_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Validator<'_> {
    pub(super) fn ship(
        &mut self,
        raw: Option<serde_yaml_ng::Value>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<ShipSettings> {
        let f: ShipFile = self.item("ledger.ship", raw?)?;
        let sink = match f.sink.as_deref().map(str::trim) {
            Some("postgres") | Some("postgresql") => Some(SinkKind::Postgres),
            Some(s) if PLANNED.contains(&s) => {
                self.problem(
                    "ledger.ship.sink",
                    format!("`{s}` is not built yet; the sinks are: {SINKS}"),
                );
                None
            }
            Some(s) => {
                self.problem(
                    "ledger.ship.sink",
                    format!("unknown sink `{s}`; the sinks are: {SINKS}"),
                );
                None
            }
            None => {
                self.problem("ledger.ship.sink", format!("required (one of: {SINKS})"));
                None
            }
        };
        let mut tls = false;
        let url = match f.url.as_deref().map(str::trim) {
            Some(u) => {
                if sink == Some(SinkKind::Postgres) {
                    tls = self.postgres_url(u);
                }
                u.to_string()
            }
            None => {
                self.problem(
                    "ledger.ship.url",
                    "required (e.g. postgres://tollgate@127.0.0.1:5432/tollgate)",
                );
                String::new()
            }
        };
        let password = f.password_env.as_deref().and_then(|name| {
            let v = env(name);
            if v.is_none() {
                self.problem(
                    "ledger.ship.password_env",
                    format!("the environment variable `{name}` is not set"),
                );
            }
            v
        });
        let ca_file = f.ca_file.map(std::path::PathBuf::from);
        if let Some(ca) = &ca_file {
            if !tls {
                self.problem(
                    "ledger.ship.ca_file",
                    "applies to TLS only: add sslmode=require to the url",
                );
            } else if let Err(e) = crate::upstream::tls::client_config(Some(ca)) {
                self.problem("ledger.ship.ca_file", format!("not a usable CA file: {e}"));
            }
        }
        let table = f.table.unwrap_or_else(|| "tollgate_usage".into());
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| sql_name(p)) {
            self.problem(
                "ledger.ship.table",
                format!(
                    "`{table}` is not a lower-case SQL name (letters a-z, digits and `_`, \
                     not starting with a digit, 63 bytes at most; `schema.table` allowed)"
                ),
            );
        }
        let batch = f.batch.unwrap_or(1000);
        if !(1..=MAX_BATCH).contains(&batch) {
            self.problem(
                "ledger.ship.batch",
                format!("must be between 1 and {MAX_BATCH} (rows per transaction)"),
            );
        }
        let interval_ms = f.interval_ms.unwrap_or(1000);
        if !(10..=3_600_000).contains(&interval_ms) {
            self.problem(
                "ledger.ship.interval_ms",
                "must be between 10 and 3600000 (one hour)",
            );
        }
        let node = f.node.unwrap_or_else(super::cluster::host_name);
        if node.is_empty() || node.len() > 64 || node.chars().any(|c| c.is_control()) {
            self.problem(
                "ledger.ship.node",
                "must be 1 to 64 characters without control characters",
            );
        }
        Some(ShipSettings {
            sink: sink?,
            url,
            password,
            tls,
            ca_file,
            table,
            batch: batch.clamp(1, MAX_BATCH),
            interval: Duration::from_millis(interval_ms.max(1)),
            node,
        })
    }

    /// A `postgres://` URL the client can use: parsed, a host, no password. True when it asks
    /// for TLS (`sslmode=require`).
    fn postgres_url(&mut self, url: &str) -> bool {
        const FIELD: &str = "ledger.ship.url";
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            self.problem(
                FIELD,
                format!("`{url}` is not a postgres:// or postgresql:// URL"),
            );
            return false;
        }
        let cfg: postgres::Config = match url.parse() {
            Ok(c) => c,
            Err(e) => {
                self.problem(FIELD, format!("`{url}` does not parse: {e}"));
                return false;
            }
        };
        if cfg.get_password().is_some() {
            self.problem(
                FIELD,
                "carries a password; put it in an environment variable and name it in password_env",
            );
        }
        if cfg.get_hosts().is_empty() {
            self.problem(FIELD, format!("`{url}` names no host"));
        }
        if cfg.get_ssl_mode() == postgres::config::SslMode::Prefer && url.contains("sslmode=prefer")
        {
            self.problem(
                FIELD,
                "sslmode=prefer would fall back to plain TCP: say sslmode=require (TLS, the \
                 certificate verified) or sslmode=disable",
            );
        }
        cfg.get_ssl_mode() == postgres::config::SslMode::Require
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(ledger: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        let src = format!(
            "providers:\n  - {{name: a, kind: openai, base_url: \"http://127.0.0.1:8001\"}}\n\
             models:\n  - {{name: m, targets: [{{provider: a, model: q}}]}}\n{ledger}"
        );
        Config::from_yaml(&src, env).map_err(|e| e.to_string())
    }

    const URL: &str = "postgres://tollgate@127.0.0.1:5432/tollgate";

    #[test]
    fn shipping_is_off_unless_configured_and_defaults_apply() {
        let none = |_: &str| None;
        assert!(load("", &none).unwrap().ledger.ship.is_none());
        assert!(load("ledger: {batch_max: 10}\n", &none)
            .unwrap()
            .ledger
            .ship
            .is_none());
        let c = load(
            &format!(
                "ledger:\n  ship: {{sink: postgres, url: \"{URL}\", node: n1, password_env: PW}}\n"
            ),
            &|v| (v == "PW").then(|| "secret".to_string()),
        )
        .unwrap();
        let s = c.ledger.ship.unwrap();
        assert_eq!(s.sink.name(), "postgres");
        assert_eq!(
            (s.url.as_str(), s.table.as_str(), s.batch, s.node.as_str()),
            (URL, "tollgate_usage", 1000, "n1")
        );
        assert_eq!(s.interval, std::time::Duration::from_millis(1000));
        assert_eq!(s.password.as_deref(), Some("secret"));
        assert!(!format!("{s:?}").contains("secret"), "{s:?}");
        let c = load(
            &format!("ledger:\n  ship: {{sink: postgres, url: \"{URL}\", table: audit.usage_rows, batch: 5, interval_ms: 50}}\n"),
            &none,
        )
        .unwrap();
        let s = c.ledger.ship.unwrap();
        assert_eq!((s.table.as_str(), s.batch), ("audit.usage_rows", 5));
        assert!(!s.node.is_empty(), "the host name by default");
    }

    #[test]
    fn every_bad_setting_is_named_with_its_line() {
        let none = |_: &str| None;
        for (ship, want) in [
            (
                format!("{{sink: mysql, url: \"{URL}\"}}"),
                "line 6: ledger.ship.sink: unknown sink `mysql`; the sinks are: postgres",
            ),
            (
                format!("{{sink: kafka, url: \"{URL}\"}}"),
                "`kafka` is not built yet",
            ),
            (format!("{{url: \"{URL}\"}}"), "ledger.ship.sink"),
            ("{sink: postgres}".to_string(), "ledger.ship.url"),
            (
                "{sink: postgres, url: \"http://db:5432/x\"}".to_string(),
                "is not a postgres:// or postgresql:// URL",
            ),
            (
                "{sink: postgres, url: \"postgres://u@db:notaport/x\"}".to_string(),
                "does not parse",
            ),
            (
                "{sink: postgres, url: \"postgres://u:pw@db/x\"}".to_string(),
                "carries a password",
            ),
            (
                "{sink: postgres, url: \"postgres://u@db/x?sslmode=prefer\"}".to_string(),
                "sslmode=prefer would fall back to plain TCP",
            ),
            (
                format!("{{sink: postgres, url: \"{URL}\", ca_file: /etc/hostname}}"),
                "ledger.ship.ca_file: applies to TLS only",
            ),
            (
                "{sink: postgres, url: \"postgres://u@db/x?sslmode=require\", ca_file: /no/such/ca.pem}"
                    .to_string(),
                "ledger.ship.ca_file: not a usable CA file",
            ),
            (
                format!("{{sink: postgres, url: \"{URL}\", batch: 0}}"),
                "line 6: ledger.ship.batch: must be between 1 and 100000",
            ),
            (
                format!("{{sink: postgres, url: \"{URL}\", interval_ms: 0}}"),
                "ledger.ship.interval_ms",
            ),
            (
                format!("{{sink: postgres, url: \"{URL}\", table: \"usage; DROP TABLE x\"}}"),
                "is not a lower-case SQL name",
            ),
            (
                format!("{{sink: postgres, url: \"{URL}\", table: a.b.c}}"),
                "ledger.ship.table",
            ),
            (
                format!("{{sink: postgres, url: \"{URL}\", password_env: NOPE}}"),
                "`NOPE` is not set",
            ),
            (
                format!("{{sink: postgres, url: \"{URL}\", port: 1}}"),
                "ledger.ship",
            ),
        ] {
            let e = load(&format!("ledger:\n  ship: {ship}\n"), &none).unwrap_err();
            assert!(e.contains(want), "{want:?} missing from {e}");
        }
    }
}
