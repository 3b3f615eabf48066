//! Batch state that survives a restart: `data_dir/batch.sqlite` (files and batches, WAL like
//! the governance store) and the file contents under `data_dir/files/`, plus [`Results`], the
//! append-only output and error files of a running job, which are the record of which lines
//! are done. Used only by the batch thread; never by a worker.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("batch store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("batch files: {0}")]
    Io(#[from] std::io::Error),
}

impl From<StoreError> for crate::error::GateError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "batch store");
        crate::error::GateError::new(crate::error::ErrorKind::Internal, e.to_string())
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT,
    identity TEXT NOT NULL,
    errors TEXT,
    out_id TEXT NOT NULL,
    err_id TEXT NOT NULL,
    output_file_id TEXT,
    error_file_id TEXT,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER
);
";

/// A batch's status, as OpenAI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Validating,
        Status::Failed,
        Status::InProgress,
        Status::Finalizing,
        Status::Completed,
        Status::Expired,
        Status::Cancelling,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::Failed => "failed",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Status {
        Status::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .unwrap_or(Status::Failed)
    }

    /// Still to be run (or finished) by the runner.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Status::Validating | Status::InProgress | Status::Finalizing | Status::Cancelling
        )
    }

    /// The column holding the time this status was entered.
    fn at_column(self) -> Option<&'static str> {
        match self {
            Status::Validating => None,
            Status::Failed => Some("failed_at"),
            Status::InProgress => Some("in_progress_at"),
            Status::Finalizing => Some("finalizing_at"),
            Status::Completed => Some("completed_at"),
            Status::Expired => Some("expired_at"),
            Status::Cancelling => Some("cancelling_at"),
            Status::Cancelled => Some("cancelled_at"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub id: String,
    /// The key id that uploaded it; empty in open mode.
    pub owner: String,
    pub purpose: String,
    pub filename: String,
    pub bytes: u64,
    pub created_at: i64,
}

impl FileRow {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
            "expires_at": null,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    pub id: String,
    pub owner: String,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: Status,
    /// JSON object or `None`.
    pub metadata: Option<String>,
    /// JSON list of `[header, value]` forwarded with each line (open mode).
    pub identity: String,
    /// JSON list of `{code, message, param, line}` (validation failures).
    pub errors: Option<String>,
    /// Ids reserved for the output and error files (their contents grow while it runs).
    pub out_id: String,
    pub err_id: String,
    /// Set at the end, when there is something in them.
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    pub created_at: i64,
    pub expires_at: i64,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

impl BatchRow {
    /// The batch object as OpenAI returns it.
    pub fn to_json(&self) -> serde_json::Value {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        let errors = match parse(&self.errors) {
            serde_json::Value::Null => serde_json::Value::Null,
            data => serde_json::json!({ "object": "list", "data": data }),
        };
        serde_json::json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status.as_str(),
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": parse(&self.metadata),
        })
    }
}

pub struct Store {
    conn: Connection,
    files_dir: PathBuf,
}

const BATCH_COLUMNS: &str = "id, owner, endpoint, input_file_id, completion_window, status, metadata, identity, errors, out_id, err_id, output_file_id, error_file_id, total, completed, failed, created_at, expires_at, in_progress_at, finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at";

fn batch_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BatchRow> {
    Ok(BatchRow {
        id: r.get(0)?,
        owner: r.get(1)?,
        endpoint: r.get(2)?,
        input_file_id: r.get(3)?,
        completion_window: r.get(4)?,
        status: Status::parse(&r.get::<_, String>(5)?),
        metadata: r.get(6)?,
        identity: r.get(7)?,
        errors: r.get(8)?,
        out_id: r.get(9)?,
        err_id: r.get(10)?,
        output_file_id: r.get(11)?,
        error_file_id: r.get(12)?,
        total: r.get::<_, i64>(13)?.max(0) as u64,
        completed: r.get::<_, i64>(14)?.max(0) as u64,
        failed: r.get::<_, i64>(15)?.max(0) as u64,
        created_at: r.get(16)?,
        expires_at: r.get(17)?,
        in_progress_at: r.get(18)?,
        finalizing_at: r.get(19)?,
        completed_at: r.get(20)?,
        failed_at: r.get(21)?,
        expired_at: r.get(22)?,
        cancelling_at: r.get(23)?,
        cancelled_at: r.get(24)?,
    })
}

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        id: r.get(0)?,
        owner: r.get(1)?,
        purpose: r.get(2)?,
        filename: r.get(3)?,
        bytes: r.get::<_, i64>(4)?.max(0) as u64,
        created_at: r.get(5)?,
    })
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("batch.sqlite")
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let files_dir = data_dir.join("files");
        std::fs::create_dir_all(&files_dir)?;
        let conn = Connection::open(db_path(data_dir))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn, files_dir })
    }

    /// Where a file's content lives.
    pub fn path_of(&self, id: &str) -> PathBuf {
        self.files_dir.join(id)
    }

    /// Stores a file's content (written, fsynced and renamed into place first) and its row.
    pub fn insert_file(
        &self,
        owner: &str,
        purpose: &str,
        filename: &str,
        content: &[u8],
    ) -> Result<FileRow, StoreError> {
        let id = super::random_id("file-", 24)?;
        let tmp = self.files_dir.join(format!("{id}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.path_of(&id))?;
        let row = FileRow {
            id,
            owner: owner.to_string(),
            purpose: purpose.to_string(),
            filename: filename.to_string(),
            bytes: content.len() as u64,
            created_at: super::now_s(),
        };
        self.put_file(&row)?;
        Ok(row)
    }

    fn put_file(&self, row: &FileRow) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO files (id, owner, purpose, filename, bytes, created_at, deleted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
            params![
                row.id,
                row.owner,
                row.purpose,
                row.filename,
                row.bytes as i64,
                row.created_at
            ],
        )?;
        Ok(())
    }

    /// A file of `owner` that was not deleted.
    pub fn file(&self, owner: &str, id: &str) -> Result<Option<FileRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, owner, purpose, filename, bytes, created_at FROM files
                 WHERE id = ?1 AND owner = ?2 AND deleted = 0",
                params![id, owner],
                file_row,
            )
            .optional()?)
    }

    pub fn read_file(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        Ok(std::fs::read(self.path_of(id))?)
    }

    /// Newest first; `after` is the id of the last file of the previous page.
    pub fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<FileRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, owner, purpose, filename, bytes, created_at FROM files
             WHERE owner = ?1 AND deleted = 0 AND (?2 IS NULL OR purpose = ?2)
               AND (?3 IS NULL OR rowid < (SELECT rowid FROM files WHERE id = ?3))
             ORDER BY rowid DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![owner, purpose, after, limit as i64], file_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Marks a file deleted; its content goes too unless an unfinished batch still reads it
    /// (then it goes when that batch ends). Whether there was such a file.
    pub fn delete_file(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE files SET deleted = 1 WHERE id = ?1 AND owner = ?2 AND deleted = 0",
            params![id, owner],
        )?;
        if n > 0 && !self.input_in_use(id)? {
            let _ = std::fs::remove_file(self.path_of(id));
        }
        Ok(n > 0)
    }

    fn input_in_use(&self, id: &str) -> Result<bool, StoreError> {
        let open: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM batches WHERE input_file_id = ?1
             AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling')",
            params![id],
            |r| r.get(0),
        )?;
        Ok(open > 0)
    }

    /// Removes the content of a batch's input file if it was deleted while the batch ran.
    pub fn release_input(&self, input_file_id: &str) -> Result<(), StoreError> {
        let deleted: Option<i64> = self
            .conn
            .query_row(
                "SELECT deleted FROM files WHERE id = ?1",
                params![input_file_id],
                |r| r.get(0),
            )
            .optional()?;
        if deleted == Some(1) && !self.input_in_use(input_file_id)? {
            let _ = std::fs::remove_file(self.path_of(input_file_id));
        }
        Ok(())
    }

    pub fn insert_batch(&self, b: &BatchRow) -> Result<(), StoreError> {
        self.conn.execute(
            &format!(
                "INSERT INTO batches ({BATCH_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                 ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)"
            ),
            params![
                b.id,
                b.owner,
                b.endpoint,
                b.input_file_id,
                b.completion_window,
                b.status.as_str(),
                b.metadata,
                b.identity,
                b.errors,
                b.out_id,
                b.err_id,
                b.output_file_id,
                b.error_file_id,
                b.total as i64,
                b.completed as i64,
                b.failed as i64,
                b.created_at,
                b.expires_at,
                b.in_progress_at,
                b.finalizing_at,
                b.completed_at,
                b.failed_at,
                b.expired_at,
                b.cancelling_at,
                b.cancelled_at,
            ],
        )?;
        Ok(())
    }

    /// A batch of `owner`.
    pub fn batch(&self, owner: &str, id: &str) -> Result<Option<BatchRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1 AND owner = ?2"),
                params![id, owner],
                batch_row,
            )
            .optional()?)
    }

    fn batch_any(&self, id: &str) -> Result<Option<BatchRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1"),
                params![id],
                batch_row,
            )
            .optional()?)
    }

    /// Newest first; `after` is the id of the last batch of the previous page.
    pub fn list_batches(
        &self,
        owner: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<BatchRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE owner = ?1
               AND (?2 IS NULL OR rowid < (SELECT rowid FROM batches WHERE id = ?2))
             ORDER BY rowid DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![owner, after, limit as i64], batch_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The oldest batch the runner has still to run or finish.
    pub fn next_open(&self) -> Result<Option<BatchRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {BATCH_COLUMNS} FROM batches
                     WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
                     ORDER BY rowid LIMIT 1"
                ),
                [],
                batch_row,
            )
            .optional()?)
    }

    /// Moves a batch to `status`, stamping the time it entered it; returns the row.
    pub fn set_status(&self, id: &str, status: Status) -> Result<Option<BatchRow>, StoreError> {
        match status.at_column() {
            Some(col) => self.conn.execute(
                &format!("UPDATE batches SET status = ?1, {col} = ?2 WHERE id = ?3"),
                params![status.as_str(), super::now_s(), id],
            )?,
            None => self.conn.execute(
                "UPDATE batches SET status = ?1 WHERE id = ?2",
                params![status.as_str(), id],
            )?,
        };
        self.batch_any(id)
    }

    pub fn set_errors(&self, id: &str, errors: &serde_json::Value) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE batches SET errors = ?1 WHERE id = ?2",
            params![errors.to_string(), id],
        )?;
        Ok(())
    }

    pub fn set_counts(
        &self,
        id: &str,
        total: u64,
        completed: u64,
        failed: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE batches SET total = ?1, completed = ?2, failed = ?3 WHERE id = ?4",
            params![total as i64, completed as i64, failed as i64, id],
        )?;
        Ok(())
    }

    /// Publishes the output and error files of a finished batch (those with any lines; empty
    /// ones are removed) and records their ids on it.
    pub fn publish_results(&self, b: &BatchRow) -> Result<(), StoreError> {
        let mut ids: [Option<String>; 2] = [None, None];
        for (slot, (id, name, purpose)) in ids.iter_mut().zip([
            (&b.out_id, "batch_output.jsonl", "batch_output"),
            (&b.err_id, "batch_errors.jsonl", "batch_output"),
        ]) {
            let path = self.path_of(id);
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            if bytes == 0 {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            self.put_file(&FileRow {
                id: id.clone(),
                owner: b.owner.clone(),
                purpose: purpose.to_string(),
                filename: format!("{}_{name}", b.id),
                bytes,
                created_at: super::now_s(),
            })?;
            *slot = Some(id.clone());
        }
        let [out, err] = ids;
        self.conn.execute(
            "UPDATE batches SET output_file_id = ?1, error_file_id = ?2 WHERE id = ?3",
            params![out, err, b.id],
        )?;
        Ok(())
    }
}

/// The output and error files of a running job, opened for appending. A line's result is
/// recorded when its line (with the newline) is in one of them and fsynced: that is the
/// record [`Results::open`] reads at resume, so SQLite (counts for `GET`) can lag without
/// losing or repeating anything.
pub struct Results {
    out: File,
    err: File,
    /// `custom_id`s with a recorded result.
    pub done: HashSet<String>,
    pub completed: u64,
    pub failed: u64,
}

#[derive(serde::Deserialize)]
struct Recorded {
    custom_id: String,
}

impl Results {
    /// Opens (or creates) both files, drops a torn last line a crash left (everything after
    /// the last newline), and reads which `custom_id`s are done.
    pub fn open(out_path: &Path, err_path: &Path) -> Result<Results, StoreError> {
        let (out, out_done) = open_recovering(out_path)?;
        let (err, err_done) = open_recovering(err_path)?;
        let completed = out_done.len() as u64;
        let failed = err_done.len() as u64;
        let mut done = out_done;
        done.extend(err_done);
        Ok(Results {
            out,
            err,
            done,
            completed,
            failed,
        })
    }

    /// Appends one result line and fsyncs it; only then is the line done.
    pub fn record(&mut self, ok: bool, custom_id: &str, line: &[u8]) -> Result<(), StoreError> {
        self.record_all(ok, &[(custom_id.to_string(), line.to_vec())])
    }

    /// Appends result lines to one file with a single fsync (an expiring job's leftovers).
    pub fn record_all(&mut self, ok: bool, lines: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let f = if ok { &mut self.out } else { &mut self.err };
        let mut buf = Vec::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum());
        for (_, line) in lines {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        f.write_all(&buf)?;
        f.sync_data()?;
        for (custom_id, _) in lines {
            self.done.insert(custom_id.clone());
        }
        let n = lines.len() as u64;
        if ok {
            self.completed += n;
        } else {
            self.failed += n;
        }
        Ok(())
    }
}

fn open_recovering(path: &Path) -> Result<(File, HashSet<String>), StoreError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let mut content = Vec::new();
    f.read_to_end(&mut content)?;
    let keep = content
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    if keep < content.len() {
        tracing::warn!(
            file = %path.display(),
            bytes = content.len() - keep,
            "dropping a torn batch result line left by a crash; its request will be sent again"
        );
        f.set_len(keep as u64)?;
        f.sync_data()?;
    }
    let mut done = HashSet::new();
    for line in content[..keep].split(|b| *b == b'\n') {
        if let Ok(r) = serde_json::from_slice::<Recorded>(line) {
            done.insert(r.custom_id);
        }
    }
    f.seek(SeekFrom::End(0))?;
    Ok((f, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tollgate-batch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn line(id: &str) -> Vec<u8> {
        serde_json::json!({"id": "batch_req_1", "custom_id": id, "response": {"status_code": 200, "body": {}}, "error": null})
            .to_string()
            .into_bytes()
    }

    /// A crash after a result was appended but in the middle of the next one: the recorded
    /// lines are done (never sent again), the torn one is dropped (sent again), and appending
    /// after the resume keeps the file valid JSONL with each id once.
    #[test]
    fn resume_keeps_recorded_lines_and_drops_a_torn_one() {
        let d = dir("resume");
        let store = Store::open(&d).unwrap_or_else(|e| panic!("{e}"));
        let (out, err) = (store.path_of("file-out"), store.path_of("file-err"));
        {
            let mut r = Results::open(&out, &err).unwrap_or_else(|e| panic!("{e}"));
            r.record(true, "a", &line("a"))
                .unwrap_or_else(|e| panic!("{e}"));
            r.record(false, "b", &line("b"))
                .unwrap_or_else(|e| panic!("{e}"));
            r.record(true, "c", &line("c"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // The torn write of "d": no newline reached the file.
        let mut f = OpenOptions::new()
            .append(true)
            .open(&out)
            .unwrap_or_else(|e| panic!("{e}"));
        f.write_all(&line("d")[..20])
            .unwrap_or_else(|e| panic!("{e}"));
        drop(f);

        let mut r = Results::open(&out, &err).unwrap_or_else(|e| panic!("{e}"));
        let mut done: Vec<_> = r.done.iter().cloned().collect();
        done.sort();
        assert_eq!(done, ["a", "b", "c"]);
        assert_eq!((r.completed, r.failed), (2, 1));
        r.record(true, "d", &line("d"))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(r);
        let text = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"))
                    ["custom_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, ["a", "c", "d"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn batches_and_files_belong_to_their_owner_and_survive_reopening() {
        let d = dir("store");
        let store = Store::open(&d).unwrap_or_else(|e| panic!("{e}"));
        let f = store
            .insert_file("k_a", "batch", "in.jsonl", b"{}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(f.id.starts_with("file-"));
        assert!(store
            .file("k_b", &f.id)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        let b = BatchRow {
            id: "batch_1".into(),
            owner: "k_a".into(),
            endpoint: "/v1/chat/completions".into(),
            input_file_id: f.id.clone(),
            completion_window: "24h".into(),
            status: Status::Validating,
            metadata: None,
            identity: "[]".into(),
            errors: None,
            out_id: "file-o".into(),
            err_id: "file-e".into(),
            output_file_id: None,
            error_file_id: None,
            total: 0,
            completed: 0,
            failed: 0,
            created_at: 1,
            expires_at: 2,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
        };
        store.insert_batch(&b).unwrap_or_else(|e| panic!("{e}"));
        // Deleting the input of an unfinished batch keeps its content until the batch ends.
        assert!(store
            .delete_file("k_a", &f.id)
            .unwrap_or_else(|e| panic!("{e}")));
        assert!(store.path_of(&f.id).exists());
        drop(store);

        let store = Store::open(&d).unwrap_or_else(|e| panic!("{e}"));
        assert!(store
            .batch("k_b", "batch_1")
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        let open = store.next_open().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(open.map(|b| b.id), Some("batch_1".to_string()));
        let row = store
            .set_status("batch_1", Status::InProgress)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("row"));
        assert!(row.in_progress_at.is_some());
        std::fs::write(store.path_of("file-o"), b"x\n").unwrap_or_else(|e| panic!("{e}"));
        store
            .set_status("batch_1", Status::Completed)
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .publish_results(&row)
            .unwrap_or_else(|e| panic!("{e}"));
        store.release_input(&f.id).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !store.path_of(&f.id).exists(),
            "released when the batch ended"
        );
        let row = store
            .batch("k_a", "batch_1")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("row"));
        assert_eq!(row.output_file_id.as_deref(), Some("file-o"));
        assert_eq!(
            row.error_file_id, None,
            "an empty error file is not published"
        );
        assert!(store
            .next_open()
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        let v = row.to_json();
        assert_eq!(v["object"], "batch");
        assert_eq!(v["status"], "completed");
        let _ = std::fs::remove_dir_all(&d);
    }
}
