//! The Batch API's HTTP side: [`serve`] runs on a worker (authenticate, hand the call to the
//! batch thread, poll for its answer, write it), [`handle`] runs on the batch thread (files,
//! batches, OpenAI-shaped JSON). A batch and its files belong to the key that made them (in
//! open mode to nobody in particular); another key gets 404 for them.

use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::store::{BatchRow, Status, StoreError};
use crate::api::Wire;
use crate::client::ClientConn;
use crate::error::{ErrorKind, GateError};
use crate::phase::read::Request;
use crate::worker::Worker;

/// How long a worker waits for the batch thread's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Identity headers kept with a batch and sent with each of its lines (the key's own team,
/// project and user still win, as for any request).
const IDENTITY_HEADERS: [&str; 6] = [
    "x-tollgate-team",
    "x-tollgate-project",
    "x-tollgate-user",
    "x-tollgate-session",
    "x-tollgate-workflow",
    "x-tollgate-cost-center",
];

/// Whether `path` is one of the Batch API's.
pub fn handles(path: &str) -> bool {
    path == "/v1/files"
        || path.starts_with("/v1/files/")
        || path == "/v1/batches"
        || path.starts_with("/v1/batches/")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMethod {
    Get,
    Post,
    Delete,
    Other,
}

/// A Batch API request, owned, as the batch thread gets it.
#[derive(Debug)]
pub struct Call {
    pub method: CallMethod,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// The authenticated key's id; empty when there is none (open mode).
    pub owner: String,
    /// Identity headers of the request (recorded with a batch, sent with its lines).
    pub identity: Vec<(String, String)>,
}

/// A response to write: status, content type, body.
pub type Reply = Result<(u16, &'static str, Vec<u8>), GateError>;

/// Serves a Batch API request on a worker; returns whether the connection stays open.
pub async fn serve(w: &Worker, client: &mut ClientConn, req: Request) -> bool {
    let keep = req.head.keep_alive;
    let reply = call(w, client, &req).await;
    let written = match reply {
        Ok((status, content_type, body)) => {
            client.respond(status, content_type, body, keep, "").await
        }
        Err(e) => client.respond_error(&e, Wire::OpenAi, keep, None).await,
    };
    written.is_ok() && keep
}

async fn call(w: &Worker, client: &ClientConn, req: &Request) -> Reply {
    let path = req.head.path();
    let Some(batch) = w.shared.batch.as_ref() else {
        return Err(GateError::new(
            ErrorKind::NotFound,
            format!("Unknown request URL: {path} (the Batch API is off: batch_jobs.enabled)"),
        ));
    };
    let cfg = &req.snap.cfg;
    let key = crate::phase::admit::authenticate(
        &w.shared.governor,
        client,
        &req.head,
        Wire::OpenAi,
        cfg.governance.auth,
    )?;
    let method = match req.head.method_bytes() {
        b"GET" => CallMethod::Get,
        b"POST" => CallMethod::Post,
        b"DELETE" => CallMethod::Delete,
        _ => CallMethod::Other,
    };
    let target = String::from_utf8_lossy(req.head.target()).into_owned();
    let query = target
        .split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default();
    let c = Call {
        method,
        path: path.to_string(),
        query,
        content_type: req.head.header_str("content-type").map(str::to_string),
        body: req.body.clone(),
        owner: key.as_ref().map(|k| k.id.clone()).unwrap_or_default(),
        identity: IDENTITY_HEADERS
            .iter()
            .filter_map(|h| {
                req.head
                    .header_str(h)
                    .filter(|v| !v.is_empty() && v.len() <= 256)
                    .map(|v| (h.to_string(), v.to_string()))
            })
            .collect(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let unavailable = || {
        GateError::new(
            ErrorKind::Unavailable {
                code: "batch_unavailable",
            },
            "The batch service did not answer; try again.",
        )
    };
    if batch.tx.send(super::runner::Msg::Api(c, tx)).is_err() {
        return Err(unavailable());
    }
    // The batch thread cannot wake a monoio task (no `sync` feature): poll, these are rare.
    let started = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(reply) => return reply,
            Err(TryRecvError::Disconnected) => return Err(unavailable()),
            Err(TryRecvError::Empty) if started.elapsed() > REPLY_TIMEOUT => {
                return Err(unavailable())
            }
            Err(TryRecvError::Empty) => monoio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

fn not_found(what: &str, id: &str) -> GateError {
    GateError::new(ErrorKind::NotFound, format!("No such {what} object: {id}"))
}

fn invalid(param: &'static str, message: impl Into<String>) -> GateError {
    GateError::new(
        ErrorKind::InvalidRequest { param: Some(param) },
        message.into(),
    )
}

fn json(v: &serde_json::Value) -> Reply {
    Ok((200, "application/json", v.to_string().into_bytes()))
}

/// Answers one call on the batch thread.
pub fn handle(runner: &mut super::runner::Runner, c: Call) -> Reply {
    let parts: Vec<&str> = c.path.trim_end_matches('/').split('/').skip(2).collect();
    match (c.method, parts.as_slice()) {
        (CallMethod::Post, ["files"]) => upload(runner, &c),
        (CallMethod::Get, ["files"]) => list_files(runner, &c),
        (CallMethod::Get, ["files", id]) => {
            let f = runner
                .store
                .file(&c.owner, id)?
                .ok_or_else(|| not_found("File", id))?;
            json(&f.to_json())
        }
        (CallMethod::Get, ["files", id, "content"]) => {
            let f = runner
                .store
                .file(&c.owner, id)?
                .ok_or_else(|| not_found("File", id))?;
            Ok((200, "application/jsonl", runner.store.read_file(&f.id)?))
        }
        (CallMethod::Delete, ["files", id]) => {
            if !runner.store.delete_file(&c.owner, id)? {
                return Err(not_found("File", id));
            }
            json(&serde_json::json!({ "id": id, "object": "file", "deleted": true }))
        }
        (CallMethod::Post, ["batches"]) => create(runner, &c),
        (CallMethod::Get, ["batches"]) => {
            let (limit, after) = page(&c.query);
            let rows = runner
                .store
                .list_batches(&c.owner, limit + 1, after.as_deref())?;
            json(&list(rows.iter().map(BatchRow::to_json).collect(), limit))
        }
        (CallMethod::Get, ["batches", id]) => {
            let b = runner
                .store
                .batch(&c.owner, id)?
                .ok_or_else(|| not_found("Batch", id))?;
            json(&b.to_json())
        }
        (CallMethod::Post, ["batches", id, "cancel"]) => {
            let b = runner
                .store
                .batch(&c.owner, id)?
                .ok_or_else(|| not_found("Batch", id))?;
            if matches!(
                b.status,
                Status::Completed | Status::Failed | Status::Expired | Status::Finalizing
            ) {
                return Err(GateError::new(
                    ErrorKind::InvalidRequest { param: None },
                    format!("Cannot cancel a batch with status '{}'.", b.status.as_str()),
                ));
            }
            let now = runner.cancel(&b)?.unwrap_or(b);
            json(&now.to_json())
        }
        (
            _,
            ["files"]
            | ["files", _]
            | ["files", _, "content"]
            | ["batches"]
            | ["batches", _]
            | ["batches", _, "cancel"],
        ) => Err(GateError::new(
            ErrorKind::MethodNotAllowed,
            format!("{} does not accept this method", c.path),
        )),
        _ => Err(GateError::new(
            ErrorKind::NotFound,
            format!("Unknown request URL: {}", c.path),
        )),
    }
}

/// `limit` (1 to 100, default 20) and `after` from a query string.
fn page(query: &str) -> (usize, Option<String>) {
    let mut limit = 20;
    let mut after = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("limit", v)) => limit = v.parse::<usize>().unwrap_or(20).clamp(1, 100),
            Some(("after", v)) if !v.is_empty() => after = Some(v.to_string()),
            _ => {}
        }
    }
    (limit, after)
}

/// A list page from `limit + 1` rows (the extra one says whether there are more).
fn list(mut data: Vec<serde_json::Value>, limit: usize) -> serde_json::Value {
    let has_more = data.len() > limit;
    data.truncate(limit);
    let first = data.first().map(|v| v["id"].clone());
    let last = data.last().map(|v| v["id"].clone());
    serde_json::json!({
        "object": "list",
        "data": data,
        "first_id": first,
        "last_id": last,
        "has_more": has_more,
    })
}

fn list_files(runner: &mut super::runner::Runner, c: &Call) -> Reply {
    let (limit, after) = page(&c.query);
    let purpose = c
        .query
        .split('&')
        .find_map(|p| p.strip_prefix("purpose="))
        .map(str::to_string);
    let rows =
        runner
            .store
            .list_files(&c.owner, purpose.as_deref(), limit + 1, after.as_deref())?;
    json(&list(rows.iter().map(|f| f.to_json()).collect(), limit))
}

/// `POST /v1/files`: a `multipart/form-data` body with `purpose=batch` and `file`, a JSONL
/// batch input checked line by line.
fn upload(runner: &mut super::runner::Runner, c: &Call) -> Reply {
    let boundary = c
        .content_type
        .as_deref()
        .and_then(super::multipart::boundary)
        .ok_or_else(|| {
            invalid(
                "file",
                super::multipart::MultipartError::NoBoundary.to_string(),
            )
        })?;
    let parts =
        super::multipart::parse(&c.body, boundary).map_err(|e| invalid("file", e.to_string()))?;
    let purpose = parts
        .iter()
        .find(|p| p.name == "purpose")
        .map(|p| String::from_utf8_lossy(p.data).trim().to_string())
        .ok_or_else(|| invalid("purpose", "Missing required parameter: 'purpose'."))?;
    if purpose != "batch" {
        return Err(invalid(
            "purpose",
            format!("Invalid purpose '{purpose}': this server accepts files for 'batch' only."),
        ));
    }
    let file = parts
        .iter()
        .find(|p| p.name == "file")
        .ok_or_else(|| invalid("file", "Missing required parameter: 'file'."))?;
    super::input::parse(file.data)?;
    let filename: String = file
        .filename
        .as_deref()
        .unwrap_or("upload.jsonl")
        .chars()
        .filter(|c| !c.is_control())
        .take(256)
        .collect();
    let row = runner
        .store
        .insert_file(&c.owner, "batch", &filename, file.data)?;
    json(&row.to_json())
}

#[derive(serde::Deserialize)]
struct CreateBody {
    input_file_id: Option<String>,
    endpoint: Option<String>,
    completion_window: Option<String>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /v1/batches`.
fn create(runner: &mut super::runner::Runner, c: &Call) -> Reply {
    if crate::json::depth_exceeds(&c.body, crate::json::DEFAULT_MAX_DEPTH).is_some() {
        return Err(GateError::new(
            ErrorKind::JsonTooDeep {
                limit: crate::json::DEFAULT_MAX_DEPTH,
            },
            "JSON nested too deeply",
        ));
    }
    let body: CreateBody = serde_json::from_slice(&c.body)
        .map_err(|e| invalid("body", format!("Invalid request body: {e}")))?;
    let input_file_id = body.input_file_id.ok_or_else(|| {
        invalid(
            "input_file_id",
            "Missing required parameter: 'input_file_id'.",
        )
    })?;
    let endpoint = body
        .endpoint
        .ok_or_else(|| invalid("endpoint", "Missing required parameter: 'endpoint'."))?;
    if !super::ENDPOINTS.contains(&endpoint.as_str()) {
        return Err(invalid(
            "endpoint",
            format!(
                "Invalid endpoint '{endpoint}': one of {}",
                super::ENDPOINTS.join(", ")
            ),
        ));
    }
    let window = body.completion_window.unwrap_or_default();
    if window != "24h" {
        return Err(invalid(
            "completion_window",
            "Invalid completion_window: only '24h' is supported.",
        ));
    }
    if let Some(m) = &body.metadata {
        let ok = m.len() <= 16
            && m.iter()
                .all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|s| s.len() <= 512));
        if !ok {
            return Err(invalid(
                "metadata",
                "metadata: at most 16 pairs, keys up to 64 and string values up to 512 characters",
            ));
        }
    }
    let file = runner
        .store
        .file(&c.owner, &input_file_id)?
        .ok_or_else(|| not_found("File", &input_file_id))?;
    if file.purpose != "batch" {
        return Err(invalid(
            "input_file_id",
            format!("File {input_file_id} does not have purpose 'batch'."),
        ));
    }
    let lines = super::input::parse(&runner.store.read_file(&file.id)?)?;
    let mismatched: Vec<serde_json::Value> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.url != endpoint)
        .take(100)
        .map(|(i, l)| {
            serde_json::json!({
                "code": "invalid_url",
                "message": format!("The URL provided for this request does not match the batch endpoint ({} vs {endpoint}).", l.url),
                "param": "url",
                "line": i + 1,
            })
        })
        .collect();
    let now = super::now_s();
    let row = BatchRow {
        id: super::random_id("batch_", 24).map_err(StoreError::from)?,
        owner: c.owner.clone(),
        endpoint,
        input_file_id,
        completion_window: window,
        status: Status::Validating,
        metadata: body
            .metadata
            .map(|m| serde_json::Value::Object(m).to_string()),
        identity: serde_json::to_string(&c.identity).unwrap_or_else(|_| "[]".into()),
        errors: None,
        out_id: super::random_id("file-", 24).map_err(StoreError::from)?,
        err_id: super::random_id("file-", 24).map_err(StoreError::from)?,
        output_file_id: None,
        error_file_id: None,
        total: lines.len() as u64,
        completed: 0,
        failed: 0,
        created_at: now,
        expires_at: now + 24 * 3600,
        in_progress_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
    };
    runner.store.insert_batch(&row)?;
    if !mismatched.is_empty() {
        runner
            .store
            .set_errors(&row.id, &serde_json::Value::Array(mismatched))?;
        let failed = runner.store.set_status(&row.id, Status::Failed)?;
        return json(&failed.unwrap_or(row).to_json());
    }
    json(&row.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_pages() {
        assert!(handles("/v1/files") && handles("/v1/files/file-1/content"));
        assert!(handles("/v1/batches") && handles("/v1/batches/batch_1/cancel"));
        assert!(!handles("/v1/filesx") && !handles("/v1/chat/completions"));
        assert_eq!(page("limit=5&after=batch_x"), (5, Some("batch_x".into())));
        assert_eq!(page("limit=1000"), (100, None));
        assert_eq!(page(""), (20, None));
        let l = list(
            vec![
                serde_json::json!({"id": "a"}),
                serde_json::json!({"id": "b"}),
            ],
            1,
        );
        assert_eq!(l["has_more"], true);
        assert_eq!(l["last_id"], "a");
    }
}
