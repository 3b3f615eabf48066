//! The PostgreSQL sink: one upsert per batch, in one transaction.
//!
//! - **Table.** Created when missing: `id TEXT PRIMARY KEY`, `node TEXT`, every ledger column
//!   (INTEGER → `BIGINT`, REAL → `DOUBLE PRECISION`, TEXT → `TEXT`, NOT NULL where the ledger
//!   has it) and `shipped_at TIMESTAMPTZ`, with an index on `ts_ms`. A table made by an older
//!   agent gets the columns it lacks (`ADD COLUMN`, nullable) when a connection is opened.
//! - **Idempotent.** `INSERT ... SELECT FROM unnest($arrays) ON CONFLICT (id) DO UPDATE`: a
//!   batch sent twice leaves one row per request id, and the version sent last (the ledger's
//!   newest) wins. One statement with one array per column, whatever the batch size (no limit
//!   on bind parameters, one round trip).
//! - **Connection.** Opened on the first batch and after every failure; connect timeout 5 s, TCP
//!   keep-alives and a 60 s statement timeout so a stuck store cannot hold the thread forever.
//!   With `sslmode=require` in the URL it is TLS (rustls, as for https providers): the server's
//!   certificate must chain to the webpki roots or `ca_file` and name the URL's host, like
//!   libpq's `verify-full` (libpq's `require` checks nothing). Otherwise plain TCP.

use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Column, Kind, ShipRow, Sink, SinkError, COLUMNS};
use crate::config::ship::ShipSettings;

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PostgresSink {
    config: postgres::Config,
    /// The URL without password, for messages.
    url: String,
    table: String,
    /// `sslmode=require`: the private CA to trust besides the webpki roots, if any.
    tls: Option<Option<std::path::PathBuf>>,
    /// The client and its prepared upsert, while connected.
    conn: Option<(Client, Statement)>,
}

impl PostgresSink {
    pub fn new(settings: &ShipSettings) -> PostgresSink {
        // Validated at load (`config/ship.rs`); a URL that stopped parsing fails at connect.
        let mut config: postgres::Config = settings.url.parse().unwrap_or_default();
        if let Some(p) = &settings.password {
            config.password(p);
        }
        config
            .application_name("tollgate-ledger-ship")
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(60))
            .options("-c statement_timeout=60000");
        PostgresSink {
            config,
            url: settings.url.clone(),
            table: settings.table.clone(),
            tls: settings.tls.then(|| settings.ca_file.clone()),
            conn: None,
        }
    }

    fn connect(&mut self) -> Result<&mut (Client, Statement), SinkError> {
        if self.conn.is_none() {
            let connect = |e| SinkError::Connect {
                what: self.url.clone(),
                source: e,
            };
            let mut client = match &self.tls {
                // Read at each connection: a CA file rotated on disk is picked up.
                Some(ca) => {
                    let tls = crate::upstream::tls::client_config(ca.as_deref())
                        .map_err(|e| connect(e.into()))?;
                    self.config.connect(MakeRustlsConnect::new(tls))
                }
                None => self.config.connect(NoTls),
            }
            .map_err(|e| connect(detailed(e)))?;
            let schema = |e: postgres::Error| SinkError::Schema {
                table: self.table.clone(),
                source: detailed(e),
            };
            prepare_table(&mut client, &self.table).map_err(schema)?;
            let upsert = client.prepare(&upsert_sql(&self.table)).map_err(schema)?;
            self.conn = Some((client, upsert));
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }
}

impl Sink for PostgresSink {
    fn send(&mut self, node: &str, rows: &[ShipRow]) -> Result<(), SinkError> {
        let (client, upsert) = self.connect()?;
        let arrays: Vec<Box<dyn ToSql + Sync>> = ShipRow::columns(rows)
            .into_iter()
            .map(|c| -> Box<dyn ToSql + Sync> {
                match c {
                    Column::Int(v) => Box::new(v),
                    Column::Real(v) => Box::new(v),
                    Column::Text(v) => Box::new(v),
                }
            })
            .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(arrays.len() + 1);
        params.push(&node);
        params.extend(arrays.iter().map(|a| a.as_ref()));
        let write = |e: postgres::Error| SinkError::Write {
            rows: rows.len(),
            source: detailed(e),
        };
        let mut tx = client.transaction().map_err(write)?;
        tx.execute(&*upsert, &params).map_err(write)?;
        tx.commit().map_err(write)
    }

    fn reset(&mut self) {
        self.conn = None;
    }
}

/// The error with what the server said (`postgres::Error` displays only "db error"), or with
/// its causes (a TLS failure displays only "error performing TLS handshake").
fn detailed(e: postgres::Error) -> Box<dyn std::error::Error + Send + Sync> {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code()).into();
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text.into()
}

fn sql_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Int => "BIGINT",
        Kind::Real => "DOUBLE PRECISION",
        Kind::Text => "TEXT",
    }
}

/// `CREATE TABLE IF NOT EXISTS` with every column.
pub fn create_sql(table: &str) -> String {
    let mut cols = vec![
        "id TEXT PRIMARY KEY".to_string(),
        "node TEXT NOT NULL".into(),
    ];
    for c in COLUMNS.iter().filter(|c| c.name != "id") {
        let null = if c.nullable { "" } else { " NOT NULL" };
        cols.push(format!("{} {}{null}", c.name, sql_type(c.kind)));
    }
    cols.push("shipped_at TIMESTAMPTZ NOT NULL DEFAULT now()".into());
    let base = table.rsplit('.').next().unwrap_or(table);
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n    {}\n);\n\
         CREATE INDEX IF NOT EXISTS {base}_ts_ms ON {table} (ts_ms);",
        cols.join(",\n    ")
    )
}

/// The upsert: `$1` the node, then one array per column of [`COLUMNS`].
pub fn upsert_sql(table: &str) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    let arrays: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 2, sql_type(c.kind)))
        .collect();
    let updates: Vec<String> = std::iter::once("node")
        .chain(names.iter().copied().filter(|n| *n != "id"))
        .chain(std::iter::once("shipped_at"))
        .map(|n| format!("{n} = EXCLUDED.{n}"))
        .collect();
    format!(
        "INSERT INTO {table} (node, {cols}, shipped_at)\n\
         SELECT $1::TEXT, u.*, now() FROM unnest({arrays}) AS u({cols})\n\
         ON CONFLICT (id) DO UPDATE SET {updates}",
        cols = names.join(", "),
        arrays = arrays.join(", "),
        updates = updates.join(", ")
    )
}

/// Creates the table when missing and adds the columns an older table lacks.
fn prepare_table(client: &mut Client, table: &str) -> Result<(), postgres::Error> {
    client.batch_execute(&create_sql(table))?;
    let (schema, name) = match table.split_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, table),
    };
    let have: Vec<String> = client
        .query(
            "SELECT column_name::TEXT FROM information_schema.columns
             WHERE table_name = $1 AND table_schema = COALESCE($2, current_schema())",
            &[&name, &schema],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for c in COLUMNS {
        if !have.iter().any(|h| h == c.name) {
            client.batch_execute(&format!(
                "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {}",
                c.name,
                sql_type(c.kind)
            ))?;
            tracing::info!(table, column = c.name, "ship table: added a column");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statements_name_every_column_once() {
        let create = create_sql("audit.usage");
        assert!(create.starts_with("CREATE TABLE IF NOT EXISTS audit.usage ("));
        assert!(create.contains("id TEXT PRIMARY KEY"));
        assert!(create.contains("input_tokens BIGINT NOT NULL"));
        assert!(create.contains("score DOUBLE PRECISION,"));
        assert!(create.contains("CREATE INDEX IF NOT EXISTS usage_ts_ms ON audit.usage (ts_ms)"));
        let upsert = upsert_sql("t");
        let n = COLUMNS.len();
        assert!(
            upsert.contains(&format!("${}::BIGINT[]", n + 1)),
            "{upsert}"
        );
        assert!(!upsert.contains(&format!("${}", n + 2)), "{upsert}");
        assert!(upsert.contains("ON CONFLICT (id) DO UPDATE SET node = EXCLUDED.node"));
        assert!(!upsert.contains(" id = EXCLUDED.id"));
        assert!(upsert.contains("prompt_bytes = EXCLUDED.prompt_bytes"));
    }
}
