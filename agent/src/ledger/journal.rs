//! Crash safety for spend: every usage record is appended to its worker's journal file before
//! it is queued for the ledger, so a crash (SIGKILL, OOM, panic) between a response and the
//! SQLite commit loses nothing. On start, [`replay`] commits whatever journals a previous run
//! left behind (idempotent: rows are keyed by request id) and removes them.
//!
//! Each worker writes its own segment files, `journal/w<worker>-<boot>-<seq>.bin`: fixed-size
//! files mapped shared into memory, one framed record per request copied in (length, CRC-32,
//! postcard bytes; no syscall per request). The dirty pages belong to the page cache, so they
//! survive a process crash, not a power loss, like the ledger's `synchronous=NORMAL`. The unused
//! tail stays zero-filled. When a record does not fit, the worker moves to the next segment (made
//! and faulted in ahead of time by a background thread, `segments.rs`) and tells the writer,
//! over the same FIFO channel, that the old one is retired; the writer deletes it
//! after its next successful commit, when every record in it is in SQLite. (A `write` per record
//! measured ~2.5 µs of CPU per request; JSON lines instead of postcard ~2 µs more.) Records
//! that still needed a tokenizer estimate are journalled with a byte-based approximation and
//! flagged `estimated`, since a stream's payload is not journalled. A plain response sealed
//! before its usage was read (`settle::seal_unread`) is journalled with its body and price, and
//! replay reads the usage from the body. Segments of the older JSON-lines format (`.log`) are
//! still replayed.
//! Hot path: one serialisation into a reused buffer (borrowing the record) and one copy into
//! the mapping per request.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::segments::{self, Next, Segment, SEGMENT_BYTES};
use super::UsageRecord;
use crate::api::Api;
use crate::identity::Identity;
use crate::kernel::ConnAttribution;
use crate::metering::prices::Price;
use crate::metering::Usage;

/// The journal directory inside a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

/// One journalled record: the ledger row as settle knew it. Borrowed from the record when
/// written (no copies); owned when read back. Optional fields carry `default` so that journals
/// written before a field existed still read.
#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    ts_ms: i64,
    latency_us: u64,
    ttft_us: Option<u64>,
    status: u16,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(borrow)]
    api: Cow<'a, str>,
    identity: Cow<'a, Identity>,
    #[serde(borrow)]
    requested_model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    served_model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    provider: Option<Cow<'a, str>>,
    input_tokens: u64,
    cached_tokens: u64,
    cache_write_tokens: u64,
    output_tokens: u64,
    reasoning_tokens: u64,
    estimated: bool,
    #[serde(default, borrow)]
    conn: Option<ConnEntry<'a>>,
    #[serde(default, borrow)]
    key_id: Option<Cow<'a, str>>,
    #[serde(default)]
    cost_micro_usd: u64,
    #[serde(default, borrow)]
    route: Option<Cow<'a, str>>,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    score: Option<f32>,
    #[serde(default)]
    prefix_bytes: u64,
    #[serde(default, borrow)]
    guard: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    cache: Option<Cow<'a, str>>,
    #[serde(default)]
    saved_micro_usd: u64,
    #[serde(default)]
    saved_tokens: u64,
    #[serde(default, borrow)]
    upstream_version: Option<Cow<'a, str>>,
    #[serde(default)]
    prompt_bytes: u64,
    #[serde(default, borrow)]
    unread: Option<UnreadEntry<'a>>,
}

/// A plain response journalled before its usage was read (settle reads it after the response's
/// last byte, off the client's wait): replay reads the usage from these bytes as the worker
/// would have, and prices it.
#[derive(Serialize, Deserialize)]
struct UnreadEntry<'a> {
    /// The API the provider answered in (`Api::label`).
    #[serde(borrow)]
    api: Cow<'a, str>,
    #[serde(borrow, with = "serde_bytes")]
    body: Cow<'a, [u8]>,
    /// The price in force when the record was sealed.
    price: Option<Price>,
}

/// What [`Journal::append`] journals besides the record: nothing, the byte-based usage of a
/// record still to be estimated, or the body of a response whose usage is still to be read.
#[derive(Clone, Copy)]
pub enum Pending<'a> {
    None,
    Estimate(Usage),
    Unread { api: Api, body: &'a [u8] },
}

#[derive(Serialize, Deserialize)]
struct ConnEntry<'a> {
    pid: u32,
    tgid: u32,
    uid: u32,
    #[serde(borrow)]
    comm: Cow<'a, str>,
    cgroup_id: u64,
    original_dst: Option<SocketAddr>,
}

fn borrowed(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(Cow::Borrowed)
}

fn owned(s: Option<Cow<'_, str>>) -> Option<String> {
    s.map(Cow::into_owned)
}

impl<'a> Entry<'a> {
    fn of(r: &'a UsageRecord, pending: Pending<'a>) -> Entry<'a> {
        let approx = match pending {
            Pending::Estimate(a) => Some(a),
            _ => None,
        };
        let (u, estimated) = match approx {
            Some(a) => (a, true),
            None => (r.usage, r.estimated),
        };
        // An estimate's cost is computed from the approximate usage journalled with it.
        let cost_micro_usd = match (approx, r.price) {
            (Some(a), Some(p)) => p.micro_usd(&a),
            _ => r.cost_micro_usd,
        };
        Entry {
            id: Cow::Borrowed(&r.id),
            ts_ms: r.ts_ms,
            latency_us: r.latency_us,
            ttft_us: r.ttft_us,
            status: r.status,
            outcome: Cow::Borrowed(&*r.outcome),
            api: Cow::Borrowed(r.api),
            identity: Cow::Borrowed(&r.identity),
            requested_model: borrowed(&r.requested_model),
            served_model: borrowed(&r.served_model),
            provider: borrowed(&r.provider),
            input_tokens: u.input_tokens,
            cached_tokens: u.cached_tokens,
            cache_write_tokens: u.cache_write_tokens,
            output_tokens: u.output_tokens,
            reasoning_tokens: u.reasoning_tokens,
            estimated,
            conn: r.conn.as_ref().map(|c| ConnEntry {
                pid: c.pid,
                tgid: c.tgid,
                uid: c.uid,
                comm: Cow::Borrowed(&c.comm),
                cgroup_id: c.cgroup_id,
                original_dst: c.original_dst,
            }),
            key_id: borrowed(&r.key_id),
            cost_micro_usd,
            route: borrowed(&r.route),
            attempts: r.attempts,
            score: r.score,
            prefix_bytes: r.prefix_bytes,
            guard: borrowed(&r.guard),
            cache: borrowed(&r.cache),
            saved_micro_usd: r.saved_micro_usd,
            saved_tokens: r.saved_tokens,
            upstream_version: borrowed(&r.upstream_version),
            prompt_bytes: r.prompt_bytes,
            unread: match pending {
                Pending::Unread { api, body } => Some(UnreadEntry {
                    api: Cow::Borrowed(api.label()),
                    body: Cow::Borrowed(body),
                    price: r.price,
                }),
                _ => None,
            },
        }
    }

    fn into_record(mut self) -> UsageRecord {
        if let Some(unread) = self.unread.take() {
            self.read(unread);
        }
        let api = Api::from_label(&self.api).map_or("unknown", Api::label);
        UsageRecord {
            id: self.id.into_owned(),
            ts_ms: self.ts_ms,
            latency_us: self.latency_us,
            ttft_us: self.ttft_us,
            status: self.status,
            outcome: Cow::Owned(self.outcome.into_owned()),
            api,
            identity: self.identity.into_owned(),
            requested_model: owned(self.requested_model),
            served_model: owned(self.served_model),
            provider: owned(self.provider),
            usage: Usage {
                input_tokens: self.input_tokens,
                cached_tokens: self.cached_tokens,
                cache_write_tokens: self.cache_write_tokens,
                output_tokens: self.output_tokens,
                reasoning_tokens: self.reasoning_tokens,
            },
            estimated: self.estimated,
            conn: self.conn.map(|c| {
                Arc::new(ConnAttribution {
                    pid: c.pid,
                    tgid: c.tgid,
                    uid: c.uid,
                    comm: c.comm.into_owned(),
                    cgroup_id: c.cgroup_id,
                    original_dst: c.original_dst,
                    ..ConnAttribution::default()
                })
            }),
            cgroup: None,
            key_id: owned(self.key_id),
            cost_micro_usd: self.cost_micro_usd,
            price: None,
            hold: Default::default(),
            route: owned(self.route),
            attempts: self.attempts,
            score: self.score,
            prefix_bytes: self.prefix_bytes,
            guard: owned(self.guard),
            cache: owned(self.cache),
            saved_micro_usd: self.saved_micro_usd,
            saved_tokens: self.saved_tokens,
            upstream_version: owned(self.upstream_version),
            prompt_bytes: self.prompt_bytes,
            // Spans are sent for live records only; a replayed one has no trace context.
            trace_parent: None,
        }
    }

    /// Fills in the usage of a response journalled unread: the provider's, read as settle reads
    /// it, else (no usage in the body) the byte-based approximation an estimate is journalled
    /// with, flagged `estimated`.
    fn read(&mut self, unread: UnreadEntry<'_>) {
        let api = Api::from_label(&unread.api).unwrap_or(Api::ChatCompletions);
        let (usage, version) = crate::metering::usage::plain_response_facts(api, &unread.body);
        let u = usage.unwrap_or(Usage {
            input_tokens: self.prompt_bytes / 4,
            output_tokens: (unread.body.len() / 4) as u64,
            ..Usage::default()
        });
        self.estimated = usage.is_none();
        self.upstream_version = version.map(Cow::Owned);
        self.input_tokens = u.input_tokens;
        self.cached_tokens = u.cached_tokens;
        self.cache_write_tokens = u.cache_write_tokens;
        self.output_tokens = u.output_tokens;
        self.reasoning_tokens = u.reasoning_tokens;
        self.cost_micro_usd = unread.price.map_or(0, |p| p.micro_usd(&u));
    }
}

/// Bytes before each record in a segment: its length and the CRC-32 of its bytes (u32 LE each).
const FRAME_HEAD: usize = 8;

/// Frames the records of a `.bin` segment: length, CRC, postcard bytes. Stops at the zero-filled
/// tail, and at a record torn by a crash mid-copy (short, or its CRC does not match); nothing
/// after a torn record was written, since a worker appends in order.
fn frames(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let head = bytes.get(at..at + FRAME_HEAD)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let body = bytes.get(at + FRAME_HEAD..at + FRAME_HEAD + len)?;
        if len == 0 || crc32fast::hash(body) != crc {
            return None;
        }
        at += FRAME_HEAD + len;
        Some(body)
    })
}

/// Zero bytes that stand in for the fields an older agent's records lack (see [`decode`]): more
/// than have been added since the `.bin` format began.
const ADDED_FIELDS: usize = 32;

/// One `.bin` record. postcard has no field names and does not fill in a missing trailing
/// field, so a record written by an agent from before a field was added would not read as is.
/// Every field added since is trailing and `default`, and postcard writes each such default (a
/// varint 0, `None`, `false`) as one zero byte: padded with zeros, the older record reads as it
/// would have (postcard ignores bytes after the value). Without this, an upgrade after a crash
/// would drop the journalled records of the version before.
fn decode(bytes: &[u8]) -> Option<UsageRecord> {
    if let Ok(entry) = postcard::from_bytes::<Entry>(bytes) {
        return Some(entry.into_record());
    }
    let mut padded = Vec::with_capacity(bytes.len() + ADDED_FIELDS);
    padded.extend_from_slice(bytes);
    padded.resize(bytes.len() + ADDED_FIELDS, 0);
    postcard::from_bytes::<Entry>(&padded)
        .ok()
        .map(Entry::into_record)
}

/// A worker's journal. One per worker thread.
pub struct Journal {
    dir: PathBuf,
    prefix: String,
    seq: u32,
    map: memmap2::MmapMut,
    at: usize,
    path: PathBuf,
    line: Vec<u8>,
    /// A segment filled up and was replaced: the writer may delete it once it has committed.
    retired: Option<PathBuf>,
    /// Segment `seq + 1`, being made in the background (`segments.rs`).
    next: Option<Next>,
}

impl Journal {
    /// Opens the first segment for `worker` of the run identified by `boot`.
    pub fn open(data_dir: &Path, worker: usize, boot: u64) -> std::io::Result<Journal> {
        let dir = dir(data_dir);
        std::fs::create_dir_all(&dir)?;
        // Its segments may hold response bodies: closed to other users, like the cache spill.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let prefix = format!("w{worker}-{boot:x}");
        let Segment { map, path } = segments::make(&dir, &prefix, 0)?;
        let next = segments::request(&dir, &prefix, 1);
        Ok(Journal {
            dir,
            prefix,
            seq: 0,
            map,
            at: 0,
            path,
            line: Vec::with_capacity(1024),
            retired: None,
            next,
        })
    }

    /// Moves on to segment `seq + 1`: the one made in the background, or (without the
    /// background thread, or after an error) one made here.
    fn rotate(&mut self) -> std::io::Result<()> {
        let seq = self.seq + 1;
        let made = match self.next.take() {
            Some(next) => next.take(&self.dir, &self.prefix, seq),
            None => segments::make(&self.dir, &self.prefix, seq),
        };
        let Segment { map, path } = made?;
        self.seq = seq;
        segments::unmap(std::mem::replace(&mut self.map, map));
        self.at = 0;
        self.retired = Some(std::mem::replace(&mut self.path, path));
        self.next = segments::request(&self.dir, &self.prefix, seq + 1);
        Ok(())
    }

    /// Appends one record, with what it still waits for (`pending`).
    pub fn append(&mut self, r: &UsageRecord, pending: Pending<'_>) -> std::io::Result<()> {
        self.line.clear();
        self.line.extend_from_slice(&[0; FRAME_HEAD]);
        let line = std::mem::take(&mut self.line);
        self.line =
            postcard::to_extend(&Entry::of(r, pending), line).map_err(std::io::Error::other)?;
        let len = (self.line.len() - FRAME_HEAD) as u32;
        let crc = crc32fast::hash(&self.line[FRAME_HEAD..]);
        self.line[..4].copy_from_slice(&len.to_le_bytes());
        self.line[4..FRAME_HEAD].copy_from_slice(&crc.to_le_bytes());
        if self.line.len() > SEGMENT_BYTES {
            return Err(std::io::Error::other(
                "usage record larger than a journal segment",
            ));
        }
        if self.at + self.line.len() > SEGMENT_BYTES {
            self.rotate()?;
        }
        self.map[self.at..self.at + self.line.len()].copy_from_slice(&self.line);
        self.at += self.line.len();
        Ok(())
    }

    /// The segment that filled up since the last call, if any.
    pub fn take_retired(&mut self) -> Option<PathBuf> {
        self.retired.take()
    }

    /// The segment being written.
    pub fn current(&self) -> &Path {
        &self.path
    }
}

impl Drop for Journal {
    /// The spare segment holds no record: removed, not left for the next start's replay.
    fn drop(&mut self) {
        if let Some(next) = self.next.take() {
            next.discard();
        }
    }
}

/// Commits every journalled record that a previous run left behind, then removes the journals.
/// Returns how many records were read. Rows already in the ledger are left as they are.
pub fn replay(data_dir: &Path, conn: &mut rusqlite::Connection) -> std::io::Result<usize> {
    let dir = dir(data_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin" || x == "log"))
        .collect();
    files.sort();
    let mut records: Vec<UsageRecord> = Vec::new();
    // A request journalled twice (sealed before its last byte, then its outcome changed) keeps
    // its last line.
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for f in &files {
        let bytes = std::fs::read(f)?;
        let read: Vec<UsageRecord> = if f.extension().is_some_and(|x| x == "log") {
            // Written by an agent before 2026-12 (JSON lines). The zero-filled tail is unused
            // space; a torn last line fails to parse and is skipped.
            let used = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            bytes[..used]
                .split(|b| *b == b'\n')
                .filter_map(|line| serde_json::from_slice::<Entry>(line).ok())
                .map(Entry::into_record)
                .collect()
        } else {
            // A torn record (the crash hit mid-copy) ends the segment: its request never
            // finished settling.
            frames(&bytes).filter_map(decode).collect()
        };
        for record in read {
            match index.get(&record.id) {
                Some(&i) => records[i] = record,
                None => {
                    index.insert(record.id.clone(), records.len());
                    records.push(record);
                }
            }
        }
    }
    if !records.is_empty() {
        super::insert_batch_keep_existing(conn, &records).map_err(std::io::Error::other)?;
    }
    for f in &files {
        std::fs::remove_file(f)?;
    }
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty data directory for one test, its ledger open.
    fn fresh(tag: &str) -> (PathBuf, rusqlite::Connection) {
        let data =
            std::env::temp_dir().join(format!("tollgate-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let conn = crate::ledger::open(&data).unwrap();
        (data, conn)
    }

    #[test]
    fn journalled_records_are_replayed_once() {
        let (data, mut conn) = fresh("test");
        let mut j = Journal::open(&data, 0, 7).unwrap();
        let mut r = UsageRecord {
            id: "a".into(),
            status: 200,
            outcome: "ok".into(),
            api: "chat",
            usage: Usage {
                input_tokens: 5,
                output_tokens: 3,
                ..Usage::default()
            },
            conn: Some(Arc::new(ConnAttribution {
                tgid: 42,
                comm: "python3".into(),
                cgroup_id: 9,
                ..ConnAttribution::default()
            })),
            ..UsageRecord::default()
        };
        j.append(&r, Pending::None).unwrap();
        r.id = "b".into();
        j.append(
            &r,
            Pending::Estimate(Usage {
                input_tokens: 10,
                output_tokens: 20,
                ..Usage::default()
            }),
        )
        .unwrap();
        // A record torn by a crash mid-copy: its length is there, its bytes only in part.
        r.id = "c".into();
        j.append(&r, Pending::None).unwrap();
        let end = j.at;
        let last = end - j.line.len();
        j.map[last + FRAME_HEAD + 4..end].fill(0);
        // "a" was already committed, with enrichment the journal does not have.
        let mut committed = r.clone();
        committed.id = "a".into();
        committed.outcome = "ok-enriched".into();
        crate::ledger::insert_batch(&mut conn, &[committed]).unwrap();
        // Closing removes the spare segment made in the background (it holds no record).
        drop(j);

        assert_eq!(replay(&data, &mut conn).unwrap(), 2);
        let rows: Vec<(String, String, i64, i64, i64)> = conn
            .prepare("SELECT id, outcome, output_tokens, estimated, pid FROM usage ORDER BY id")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                ("a".into(), "ok-enriched".into(), 3, 0, 42),
                ("b".into(), "ok".into(), 20, 1, 42)
            ]
        );
        assert_eq!(
            std::fs::read_dir(dir(&data)).unwrap().count(),
            0,
            "journals are removed"
        );
        assert_eq!(replay(&data, &mut conn).unwrap(), 0);
        let _ = std::fs::remove_dir_all(&data);
    }

    /// A plain response journalled before its usage was read replays with the usage the worker
    /// would have read from its body, priced at the journalled price; a body without usage
    /// replays as the byte-based approximation, flagged estimated.
    #[test]
    fn a_response_journalled_unread_replays_with_the_usage_of_its_body() {
        let (data, mut conn) = fresh("unread");
        let mut j = Journal::open(&data, 0, 9).unwrap();
        let mut r = UsageRecord {
            id: "read".into(),
            status: 200,
            outcome: "ok".into(),
            api: "chat",
            prompt_bytes: 400,
            price: Some(Price {
                input: 2.0,
                cached_input: 1.0,
                cache_write: 2.0,
                output: 8.0,
            }),
            ..UsageRecord::default()
        };
        let body = br#"{"id":"c","model":"m","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500},"system_fingerprint":"fp_1"}"#;
        j.append(
            &r,
            Pending::Unread {
                api: Api::ChatCompletions,
                body,
            },
        )
        .unwrap();
        r.id = "none".into();
        let bare =
            br#"{"id":"c","model":"m","choices":[{"message":{"content":"0123456789abcdef"}}]}"#;
        j.append(
            &r,
            Pending::Unread {
                api: Api::ChatCompletions,
                body: bare,
            },
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(
                mode(&dir(&data)),
                0o700,
                "the journal holds response bodies"
            );
            assert_eq!(mode(j.current()), 0o600);
        }
        drop(j);

        assert_eq!(replay(&data, &mut conn).unwrap(), 2);
        type Row = (String, i64, i64, i64, i64, Option<String>);
        let rows: Vec<Row> = conn
            .prepare("SELECT id, input_tokens, output_tokens, estimated, cost_micro_usd, upstream_version FROM usage ORDER BY id")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let approx_out = (bare.len() / 4) as i64;
        assert_eq!(
            rows,
            vec![
                (
                    "none".into(),
                    100,
                    approx_out,
                    1,
                    200 + approx_out * 8,
                    None
                ),
                (
                    "read".into(),
                    1000,
                    500,
                    0,
                    2000 + 4000,
                    Some("m@fp_1".into())
                ),
            ]
        );
        let _ = std::fs::remove_dir_all(&data);
    }

    /// Records of an agent from before the last fields were added (the same bytes without their
    /// trailing zero bytes) read with those fields at their defaults, alone and through replay.
    #[test]
    fn records_of_an_agent_before_the_newest_fields_replay() {
        let r = UsageRecord {
            id: "older".into(),
            status: 200,
            outcome: "ok".into(),
            api: "chat",
            usage: Usage {
                input_tokens: 7,
                output_tokens: 2,
                ..Usage::default()
            },
            ..UsageRecord::default()
        };
        let bytes = postcard::to_allocvec(&Entry::of(&r, Pending::None)).unwrap();
        // conn, key_id, ..., prompt_bytes, unread: all at their defaults, one zero byte each.
        for missing in [1, 2, 14] {
            let older = &bytes[..bytes.len() - missing];
            assert!(postcard::from_bytes::<Entry>(older).is_err(), "{missing}");
            let read = decode(older).unwrap_or_else(|| panic!("{missing} fields missing"));
            assert_eq!(
                (read.id.as_str(), read.usage, read.prompt_bytes),
                ("older", r.usage, 0)
            );
        }
        let (data, mut conn) = fresh("older");
        std::fs::create_dir_all(dir(&data)).unwrap();
        let older = &bytes[..bytes.len() - 1];
        let mut segment = Vec::new();
        segment.extend_from_slice(&(older.len() as u32).to_le_bytes());
        segment.extend_from_slice(&crc32fast::hash(older).to_le_bytes());
        segment.extend_from_slice(older);
        segment.resize(4096, 0);
        std::fs::write(dir(&data).join("w0-1-000000.bin"), &segment).unwrap();
        assert_eq!(replay(&data, &mut conn).unwrap(), 1);
        let tokens: i64 = conn
            .query_row(
                "SELECT output_tokens FROM usage WHERE id = 'older'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tokens, 2);
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn json_segments_of_an_older_agent_replay() {
        let (data, mut conn) = fresh("json");
        std::fs::create_dir_all(dir(&data)).unwrap();
        let mut old = br#"{"id":"old","ts_ms":1,"latency_us":2,"ttft_us":null,"status":200,"outcome":"ok","api":"chat","identity":{"team":"ml","project":null,"user":null,"session":null,"workflow":null,"cost_center":null},"requested_model":"smol","served_model":"smol","provider":"local","input_tokens":4,"cached_tokens":0,"cache_write_tokens":0,"output_tokens":6,"reasoning_tokens":0,"estimated":false}
{"id":"tor"#.to_vec();
        old.resize(4096, 0);
        std::fs::write(dir(&data).join("w0-1-000000.log"), &old).unwrap();
        assert_eq!(replay(&data, &mut conn).unwrap(), 1);
        let row: (String, String, i64) = conn
            .query_row("SELECT id, team, output_tokens FROM usage", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(row, ("old".into(), "ml".into(), 6));
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn a_full_segment_is_retired_and_both_replay() {
        let (data, mut conn) = fresh("rotate");
        let mut j = Journal::open(&data, 1, 9).unwrap();
        let first = j.current().to_path_buf();
        let mut r = UsageRecord {
            status: 200,
            outcome: "ok".into(),
            api: "chat",
            ..UsageRecord::default()
        };
        let mut n = 0;
        let retired = loop {
            r.id = format!("r{n}");
            j.append(&r, Pending::None).unwrap();
            n += 1;
            if let Some(p) = j.take_retired() {
                break p;
            }
            assert!(n < 100_000, "never rotated");
        };
        assert_eq!(retired, first);
        assert_ne!(j.current(), first.as_path());
        drop(j);
        assert_eq!(replay(&data, &mut conn).unwrap(), n);
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM usage", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count as usize, n);
        let _ = std::fs::remove_dir_all(&data);
    }

    /// Minor page faults of the calling thread so far.
    fn thread_faults() -> i64 {
        // SAFETY: `usage` is a valid out-pointer for getrusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) },
            0
        );
        usage.ru_minflt
    }

    /// A worker's copies into its segments do not fault: the first segment is faulted in when
    /// it is made and every later one in the background, so writing two whole segments takes
    /// a handful of faults (heap growth), not one per page (256 a segment).
    #[test]
    fn appending_through_two_segments_takes_no_fault_per_page() {
        let data =
            std::env::temp_dir().join(format!("tollgate-journal-faults-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let mut j = Journal::open(&data, 2, 11).unwrap();
        let mut r = UsageRecord {
            status: 200,
            outcome: "ok".into(),
            api: "chat",
            ..UsageRecord::default()
        };
        r.id = "warm".into();
        j.append(&r, Pending::None).unwrap();
        let mut rotations = 0;
        let mut n = 0u64;
        let before = thread_faults();
        while rotations < 2 {
            r.id = format!("r{n:08}");
            j.append(&r, Pending::None).unwrap();
            n += 1;
            if j.take_retired().is_some() {
                rotations += 1;
            }
        }
        let faults = thread_faults() - before;
        assert!(
            faults < 64,
            "{faults} faults for {n} records over two segments"
        );
        drop(j);
        let left: Vec<_> = std::fs::read_dir(dir(&data)).unwrap().collect();
        // Three segments written (two full, one current); the spare was removed at close.
        assert_eq!(left.len(), 3, "{left:?}");
        let _ = std::fs::remove_dir_all(&data);
    }
}
