//! The governance store: keys (hash and display prefix only), expiring exceptions and the
//! append-only audit log, in `governance.sqlite` under `data_dir` (WAL). Written by the admin
//! listener's thread and the governance thread, each with its own connection; never touched by
//! a worker. The audit table refuses UPDATE and DELETE with triggers.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::keys::{KeyRecord, KeySpec};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS exceptions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    model TEXT,
    extra_tokens INTEGER,
    extra_usd REAL,
    justification TEXT NOT NULL,
    approver TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS exceptions_withdrawn (
    uid TEXT PRIMARY KEY,
    withdrawn_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts_ms);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("governance.sqlite")
}

/// One connection to the governance store.
pub struct Store {
    conn: Connection,
}

/// Who an exception is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    Key,
    Team,
    Project,
    User,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Key => "key",
            SubjectKind::Team => "team",
            SubjectKind::Project => "project",
            SubjectKind::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<SubjectKind> {
        Some(match s {
            "key" => SubjectKind::Key,
            "team" => SubjectKind::Team,
            "project" => SubjectKind::Project,
            "user" => SubjectKind::User,
            _ => return None,
        })
    }
}

/// A time-limited grant: a model beyond the subject's policy, or extra budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exception {
    #[serde(default)]
    pub id: i64,
    pub subject_kind: SubjectKind,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_usd: Option<f64>,
    pub justification: String,
    pub approver: String,
    #[serde(default)]
    pub created_ms: i64,
    pub expires_ms: i64,
    /// The same exception on every agent of a cluster (`cluster/keys.rs`); given at grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(default)]
    pub seq: i64,
    pub ts_ms: i64,
    /// `admin` (the admin API), `agent` (breaches, loop trips, expiry), `cli`.
    pub actor: String,
    /// `key.create`, `budget.alert`, `loop.trip`, `exception.expire`, ...
    pub action: String,
    pub subject: String,
    pub detail: serde_json::Value,
}

/// Filters for reading the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since_ms: Option<i64>,
    /// A prefix of `action` (`key.` matches every key action).
    pub action: Option<String>,
    pub subject: Option<String>,
    pub limit: Option<usize>,
    /// The newest entries first (the dashboard's "latest N").
    pub newest_first: bool,
}

/// A whole key row; `put_key` adds its upsert clause.
const KEY_INSERT: &str =
    "INSERT INTO keys (id, hash, prefix, spec, created_ms, updated_ms, revoked_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

impl Store {
    pub fn open(data_dir: &Path) -> rusqlite::Result<Store> {
        let _ = std::fs::create_dir_all(data_dir);
        let conn = Connection::open(db_path(data_dir))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Store { conn })
    }

    /// Opens an existing store read-only (CLI reports); `None` when there is none.
    pub fn open_read_only(data_dir: &Path) -> rusqlite::Result<Option<Store>> {
        let path = db_path(data_dir);
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Some(Store { conn }))
    }

    pub fn insert_key(&self, rec: &KeyRecord, hash: &[u8; 32]) -> rusqlite::Result<()> {
        self.write_key(KEY_INSERT, rec, hash)
    }

    pub fn update_spec(&self, id: &str, spec: &KeySpec, now_ms: i64) -> rusqlite::Result<bool> {
        let n = self.conn.execute(
            "UPDATE keys SET spec = ?2, updated_ms = ?3 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, spec_json(spec), now_ms],
        )?;
        Ok(n == 1)
    }

    pub fn rotate(
        &self,
        id: &str,
        hash: &[u8; 32],
        prefix: &str,
        now_ms: i64,
    ) -> rusqlite::Result<bool> {
        let n = self.conn.execute(
            "UPDATE keys SET hash = ?2, prefix = ?3, updated_ms = ?4 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, &hash[..], prefix, now_ms],
        )?;
        Ok(n == 1)
    }

    pub fn revoke(&self, id: &str, now_ms: i64) -> rusqlite::Result<bool> {
        let n = self.conn.execute(
            "UPDATE keys SET revoked_ms = ?2, updated_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, now_ms],
        )?;
        Ok(n == 1)
    }

    /// Writes a key record received from the cluster (`cluster/keys.rs`) as it is: inserted
    /// when new, replaced otherwise. The caller has decided that it wins (`cluster::keys::wins`).
    pub fn put_key(&self, rec: &KeyRecord, hash: &[u8; 32]) -> rusqlite::Result<()> {
        let sql = format!(
            "{KEY_INSERT} ON CONFLICT(id) DO UPDATE SET hash = excluded.hash, \
             prefix = excluded.prefix, spec = excluded.spec, created_ms = excluded.created_ms, \
             updated_ms = excluded.updated_ms, revoked_ms = excluded.revoked_ms"
        );
        self.write_key(&sql, rec, hash)
    }

    fn write_key(&self, sql: &str, rec: &KeyRecord, hash: &[u8; 32]) -> rusqlite::Result<()> {
        self.conn.execute(
            sql,
            params![
                rec.id,
                &hash[..],
                rec.prefix,
                spec_json(&rec.spec),
                rec.created_ms,
                rec.updated_ms,
                rec.revoked_ms
            ],
        )?;
        Ok(())
    }

    pub fn key(&self, id: &str) -> rusqlite::Result<Option<KeyRecord>> {
        self.conn
            .query_row(
                "SELECT id, prefix, spec, created_ms, updated_ms, revoked_ms FROM keys WHERE id = ?1",
                [id],
                key_row,
            )
            .optional()
    }

    /// Every key with its hash, revoked ones included (the table builder skips them).
    pub fn keys_with_hashes(&self) -> rusqlite::Result<Vec<(KeyRecord, [u8; 32])>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, prefix, spec, created_ms, updated_ms, revoked_ms, hash FROM keys ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map([], |r| {
            let rec = key_row(r)?;
            let raw: Vec<u8> = r.get(6)?;
            let mut hash = [0u8; 32];
            if raw.len() == 32 {
                hash.copy_from_slice(&raw);
            }
            Ok((rec, hash))
        })?;
        rows.collect()
    }

    pub fn keys(&self) -> rusqlite::Result<Vec<KeyRecord>> {
        Ok(self
            .keys_with_hashes()?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Stores an exception under a new local id; one without a `uid` gets a random one.
    pub fn insert_exception(&self, e: &Exception) -> rusqlite::Result<i64> {
        let uid = match &e.uid {
            Some(u) => u.clone(),
            None => new_uid().map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?,
        };
        self.conn.execute(
            "INSERT INTO exceptions (subject_kind, subject, model, extra_tokens, extra_usd,
             justification, approver, created_ms, expires_ms, uid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                e.subject_kind.as_str(),
                e.subject,
                e.model,
                e.extra_tokens.map(|t| t as i64),
                e.extra_usd,
                e.justification,
                e.approver,
                e.created_ms,
                e.expires_ms,
                uid
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Exceptions withdrawn or expired here, by uid, with when (for cluster mode).
    pub fn withdrawn_exceptions(&self) -> rusqlite::Result<Vec<(String, i64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT uid, withdrawn_ms FROM exceptions_withdrawn ORDER BY uid")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Records that another agent withdrew exception `uid` (so it is not taken again).
    pub fn mark_withdrawn(&self, uid: &str, ms: i64) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO exceptions_withdrawn (uid, withdrawn_ms) VALUES (?1, ?2)",
            params![uid, ms],
        )?;
        Ok(())
    }

    pub fn exceptions(&self) -> rusqlite::Result<Vec<Exception>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, subject_kind, subject, model, extra_tokens, extra_usd, justification,
             approver, created_ms, expires_ms, uid FROM exceptions ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let kind: String = r.get(1)?;
            Ok(Exception {
                id: r.get(0)?,
                subject_kind: SubjectKind::parse(&kind).unwrap_or(SubjectKind::Key),
                subject: r.get(2)?,
                model: r.get(3)?,
                extra_tokens: r.get::<_, Option<i64>>(4)?.map(|t| t.max(0) as u64),
                extra_usd: r.get(5)?,
                justification: r.get(6)?,
                approver: r.get(7)?,
                created_ms: r.get(8)?,
                expires_ms: r.get(9)?,
                uid: r.get(10)?,
            })
        })?;
        rows.collect()
    }

    /// Removes one exception (and remembers its uid as withdrawn); returns it if it existed.
    pub fn remove_exception(&self, id: i64) -> rusqlite::Result<Option<Exception>> {
        let found = self.exceptions()?.into_iter().find(|e| e.id == id);
        if let Some(x) = &found {
            self.conn
                .execute("DELETE FROM exceptions WHERE id = ?1", [id])?;
            if let Some(uid) = &x.uid {
                self.mark_withdrawn(uid, super::window::now_ms())?;
            }
        }
        Ok(found)
    }

    pub fn append_audit(&self, e: &AuditEntry) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO audit (ts_ms, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![e.ts_ms, e.actor, e.action, e.subject, e.detail.to_string()],
        )?;
        Ok(())
    }

    pub fn audit(&self, q: &AuditQuery) -> rusqlite::Result<Vec<AuditEntry>> {
        let mut stmt = self.conn.prepare(if q.newest_first {
            "SELECT seq, ts_ms, actor, action, subject, detail FROM audit
             WHERE ts_ms >= ?1 AND action LIKE ?2 ESCAPE '\\' AND (?3 IS NULL OR subject = ?3)
             ORDER BY seq DESC LIMIT ?4"
        } else {
            "SELECT seq, ts_ms, actor, action, subject, detail FROM audit
             WHERE ts_ms >= ?1 AND action LIKE ?2 ESCAPE '\\' AND (?3 IS NULL OR subject = ?3)
             ORDER BY seq LIMIT ?4"
        })?;
        let action = format!(
            "{}%",
            q.action
                .as_deref()
                .unwrap_or("")
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows = stmt.query_map(
            params![
                q.since_ms.unwrap_or(i64::MIN),
                action,
                q.subject,
                q.limit.map_or(i64::MAX, |l| l as i64)
            ],
            |r| {
                let detail: String = r.get(5)?;
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    ts_ms: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    subject: r.get(4)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            },
        )?;
        rows.collect()
    }

    /// Runs raw SQL (tests of the append-only guarantee).
    #[cfg(test)]
    fn execute(&self, sql: &str) -> rusqlite::Result<usize> {
        self.conn.execute(sql, [])
    }
}

/// Adds the `uid` column to a store from before cluster mode, and a uid to its exceptions.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_uid = {
        let mut stmt = conn.prepare("PRAGMA table_info(exceptions)")?;
        let found = stmt
            .query_map([], |r| r.get::<_, String>(1))?
            .filter_map(Result::ok)
            .any(|n| n == "uid");
        found
    };
    if !has_uid {
        conn.execute_batch("ALTER TABLE exceptions ADD COLUMN uid TEXT")?;
    }
    conn.execute_batch(
        "UPDATE exceptions SET uid = 'x_' || lower(hex(randomblob(9))) WHERE uid IS NULL;
         CREATE UNIQUE INDEX IF NOT EXISTS exceptions_uid ON exceptions(uid);",
    )
}

/// A random exception uid (`x_` + 12 base62 characters).
pub fn new_uid() -> std::io::Result<String> {
    super::keys::new_id().map(|id| format!("x_{}", id.trim_start_matches("k_")))
}

fn spec_json(spec: &KeySpec) -> String {
    serde_json::to_string(spec).unwrap_or_else(|_| "{}".into())
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    let spec: String = r.get(2)?;
    Ok(KeyRecord {
        id: r.get(0)?,
        prefix: r.get(1)?,
        spec: serde_json::from_str(&spec).unwrap_or_default(),
        created_ms: r.get(3)?,
        updated_ms: r.get(4)?,
        revoked_ms: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tollgate-gov-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn keys_round_trip_and_revoke() {
        let d = dir("keys");
        let s = Store::open(&d).unwrap();
        let rec = KeyRecord {
            id: "k_1".into(),
            prefix: "tg-abc".into(),
            spec: KeySpec {
                team: Some("t".into()),
                rpm: Some(5),
                enabled: true,
                ..KeySpec::default()
            },
            created_ms: 1,
            updated_ms: 1,
            revoked_ms: None,
        };
        s.insert_key(&rec, &[7; 32]).unwrap();
        assert_eq!(s.key("k_1").unwrap().as_ref(), Some(&rec));
        assert!(s.revoke("k_1", 5).unwrap());
        assert!(!s.revoke("k_1", 6).unwrap(), "revoked once");
        let (back, hash) = s.keys_with_hashes().unwrap().remove(0);
        assert_eq!((back.revoked_ms, hash), (Some(5), [7; 32]));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_key_from_the_cluster_is_inserted_then_replaced_whole() {
        let d = dir("put");
        let s = Store::open(&d).unwrap();
        let mut rec = KeyRecord {
            id: "k_9".into(),
            prefix: "tg-abc".into(),
            spec: KeySpec {
                team: Some("a".into()),
                enabled: true,
                ..KeySpec::default()
            },
            created_ms: 1,
            updated_ms: 1,
            revoked_ms: None,
        };
        s.put_key(&rec, &[1; 32]).unwrap();
        assert_eq!(s.key("k_9").unwrap().as_ref(), Some(&rec));
        rec.spec.team = Some("b".into());
        rec.prefix = "tg-new".into();
        rec.updated_ms = 7;
        rec.revoked_ms = Some(7);
        s.put_key(&rec, &[2; 32]).unwrap();
        let all = s.keys_with_hashes().unwrap();
        assert_eq!(all, vec![(rec, [2; 32])]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_store_from_before_cluster_mode_gets_exception_uids() {
        let d = dir("migrate");
        let _ = std::fs::create_dir_all(&d);
        {
            let c = Connection::open(db_path(&d)).unwrap();
            c.execute_batch(
                "CREATE TABLE exceptions (id INTEGER PRIMARY KEY AUTOINCREMENT, subject_kind TEXT NOT NULL,
                 subject TEXT NOT NULL, model TEXT, extra_tokens INTEGER, extra_usd REAL,
                 justification TEXT NOT NULL, approver TEXT NOT NULL, created_ms INTEGER NOT NULL,
                 expires_ms INTEGER NOT NULL);
                 INSERT INTO exceptions (subject_kind, subject, model, justification, approver, created_ms, expires_ms)
                 VALUES ('team', 't', 'm', 'j', 'a', 1, 2), ('team', 'u', 'm', 'j', 'a', 1, 2);",
            )
            .unwrap();
        }
        let s = Store::open(&d).unwrap();
        let xs = s.exceptions().unwrap();
        let uids: Vec<&str> = xs.iter().filter_map(|x| x.uid.as_deref()).collect();
        assert_eq!(uids.len(), 2);
        assert_ne!(uids[0], uids[1]);
        let removed = s.remove_exception(xs[0].id).unwrap().unwrap();
        assert_eq!(
            s.withdrawn_exceptions().unwrap()[0].0.as_str(),
            removed.uid.as_deref().unwrap()
        );
        drop(s);
        // Opened again: nothing changes.
        let again = Store::open(&d).unwrap().exceptions().unwrap();
        assert_eq!(again[0].uid.as_deref(), Some(uids[1]));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_audit_log_is_append_only() {
        let d = dir("audit");
        let s = Store::open(&d).unwrap();
        for (i, action) in ["key.create", "budget.alert", "key.revoke"]
            .iter()
            .enumerate()
        {
            s.append_audit(&AuditEntry {
                seq: 0,
                ts_ms: i as i64,
                actor: "admin".into(),
                action: (*action).into(),
                subject: "k_1".into(),
                detail: serde_json::json!({"i": i}),
            })
            .unwrap();
        }
        assert!(s.execute("DELETE FROM audit").is_err());
        assert!(s.execute("UPDATE audit SET actor = 'x'").is_err());
        let keys = s
            .audit(&AuditQuery {
                action: Some("key.".into()),
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(keys.len(), 2);
        let recent = s
            .audit(&AuditQuery {
                since_ms: Some(1),
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(recent.len(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }
}
