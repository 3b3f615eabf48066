//! The exact cache's spill to disk (`cache.exact.spill`): every stored answer is also written
//! to a file under `<data_dir>/cache/exact/`, so an answer evicted from memory, or stored by the
//! run before a restart, is served from disk instead of paid for again.
//!
//! * **Writes** go to one thread (`tollgate-cache-spill`) through a bounded queue: a worker
//!   never waits on the disk to store. A full queue drops the write (counted), never a request.
//! * **Reads** happen on a memory miss, on the worker: one `open` and one `read` through its
//!   io_uring (a missing file is one failed open, paid by a request that is about to go to a
//!   provider anyway). A good entry is promoted into memory.
//! * **Crash safety.** A file is written under `tmp/` and renamed into place, and ends with a
//!   CRC-32 over all its bytes: a crash mid-write leaves the old entry, the new one, or a file
//!   that fails its check and is removed. A torn answer is never served.
//! * **Bounds.** `max_mb` on disk, oldest stored first out; expired entries are swept every
//!   30 s. At start the thread rebuilds its index from the files' headers, removing what has
//!   expired or is damaged, and gives the semantic index back the embeddings stored with
//!   their answers, so a restart starts warm for both caches.
//! * Files are 0600 in 0700 directories: they hold answers as clients received them.
//!
//! File layout (little-endian): the header below, the body, `dim` f32s of the semantic
//! embedding, then the CRC-32 of everything before it.
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `TGCACHE1` |
//! | 32 | key (also the file's name, in hex) |
//! | 32 | semantic bucket (zeros without an embedding) |
//! | 8 | stored at, Unix ms |
//! | 40 | usage: input, cached, cache-write, output, reasoning tokens |
//! | 4 | flags: 1 streamed, 2 has an embedding |
//! | 4 | `dim` |
//! | 8 | body length |

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::{Key, SemanticIndex, Stamp};
use crate::metering::usage::MAX_REPORTED_TOKENS;
use crate::metering::Usage;

const MAGIC: &[u8; 8] = b"TGCACHE1";
/// Bytes before the body.
pub const HEADER: usize = 136;
const FLAG_STREAM: u32 = 1;
const FLAG_SEMANTIC: u32 = 2;
/// Largest embedding kept (real models stay under 8 K dimensions).
const MAX_DIM: usize = 1 << 16;
/// Writes waiting for the thread, past which they are dropped.
const QUEUE: usize = 1024;
/// How often expired files are removed.
const SWEEP: Duration = Duration::from_secs(30);

/// One stored answer, as written to and read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: Key,
    pub stored_at_ms: u64,
    pub stream: bool,
    pub usage: Usage,
    pub body: Bytes,
    /// The semantic bucket and unit embedding the answer was indexed under.
    pub semantic: Option<(Key, Vec<f32>)>,
}

/// Why a file was not a good entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Corrupt {
    #[error("shorter than its header")]
    Short,
    #[error("not a cache entry (bad magic)")]
    Magic,
    #[error("its lengths do not add up to its size")]
    Length,
    #[error("its checksum does not match")]
    Checksum,
}

/// The header fields, enough to index a file without reading its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    key: Key,
    bucket: Key,
    stored_at_ms: u64,
    usage: [u64; 5],
    flags: u32,
    dim: usize,
    body_len: usize,
}

impl Header {
    /// The file size this header describes.
    fn file_len(&self) -> usize {
        HEADER + self.body_len + self.dim * 4 + 4
    }
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn parse_header(b: &[u8]) -> Result<Header, Corrupt> {
    if b.len() < HEADER {
        return Err(Corrupt::Short);
    }
    if &b[..8] != MAGIC {
        return Err(Corrupt::Magic);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&b[8..40]);
    let mut bucket = [0u8; 32];
    bucket.copy_from_slice(&b[40..72]);
    let mut usage = [0u64; 5];
    for (i, u) in usage.iter_mut().enumerate() {
        *u = read_u64(b, 80 + i * 8).min(MAX_REPORTED_TOKENS);
    }
    let dim = read_u32(b, 124) as usize;
    let body_len = usize::try_from(read_u64(b, 128)).map_err(|_| Corrupt::Length)?;
    if dim > MAX_DIM || body_len > isize::MAX as usize / 2 {
        return Err(Corrupt::Length);
    }
    Ok(Header {
        key,
        bucket,
        stored_at_ms: read_u64(b, 72),
        usage,
        flags: read_u32(b, 120),
        dim,
        body_len,
    })
}

/// The file's bytes for `r`.
pub fn encode(r: &Record) -> Vec<u8> {
    let dim = r.semantic.as_ref().map_or(0, |(_, v)| v.len());
    let mut out = Vec::with_capacity(HEADER + r.body.len() + dim * 4 + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&r.key);
    out.extend_from_slice(r.semantic.as_ref().map_or(&[0u8; 32], |(b, _)| b));
    out.extend_from_slice(&r.stored_at_ms.to_le_bytes());
    let u = &r.usage;
    for n in [
        u.input_tokens,
        u.cached_tokens,
        u.cache_write_tokens,
        u.output_tokens,
        u.reasoning_tokens,
    ] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    let flags = if r.stream { FLAG_STREAM } else { 0 }
        | if r.semantic.is_some() {
            FLAG_SEMANTIC
        } else {
            0
        };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    out.extend_from_slice(&(r.body.len() as u64).to_le_bytes());
    out.extend_from_slice(&r.body);
    if let Some((_, v)) = &r.semantic {
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The record in a file's bytes; the body is a slice of `data`, not a copy.
pub fn decode(data: Bytes) -> Result<Record, Corrupt> {
    let h = parse_header(&data)?;
    if data.len() != h.file_len() {
        return Err(Corrupt::Length);
    }
    let (content, crc) = data.split_at(data.len() - 4);
    if crc32fast::hash(content).to_le_bytes() != crc {
        return Err(Corrupt::Checksum);
    }
    let body_end = HEADER + h.body_len;
    let semantic = (h.flags & FLAG_SEMANTIC != 0).then(|| {
        let v = data[body_end..body_end + h.dim * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (h.bucket, v)
    });
    Ok(Record {
        key: h.key,
        stored_at_ms: h.stored_at_ms,
        stream: h.flags & FLAG_STREAM != 0,
        usage: usage_of(&h.usage),
        body: data.slice(HEADER..body_end),
        semantic,
    })
}

fn usage_of(u: &[u64; 5]) -> Usage {
    Usage {
        input_tokens: u[0],
        cached_tokens: u[1],
        cache_write_tokens: u[2],
        output_tokens: u[3],
        reasoning_tokens: u[4],
    }
}

/// Wall-clock now, in Unix ms (entries outlive the process, so their age is wall-clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex(key: &Key) -> String {
    use std::fmt::Write;
    key.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(name: &str) -> Option<Key> {
    if name.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(name.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(key)
}

/// Where `key`'s file lives: one of 256 directories by its first byte, so none grows huge.
fn path_of(dir: &Path, key: &Key) -> PathBuf {
    let name = hex(key);
    dir.join(&name[..2]).join(name)
}

/// What the spill has done, for `/metrics`.
#[derive(Default)]
pub struct SpillStats {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
    pub writes: AtomicU64,
    /// Writes dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Files that could not be written, or were found damaged and removed.
    pub errors: AtomicU64,
    /// Memory misses answered from disk.
    pub hits: AtomicU64,
    /// 1 once the files an earlier run left are indexed (and their embeddings given back).
    pub indexed: AtomicU64,
}

/// How the spill is set up.
pub struct SpillSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// The TTL at start (later writes carry the one in force).
    pub ttl: Duration,
    /// `cache.semantic.max_entries` when the semantic cache is on at start: its embeddings are
    /// given back to `semantic` as the files are indexed.
    pub semantic: Option<(usize, Arc<SemanticIndex>)>,
}

enum Job {
    Put(Box<Record>, Duration),
    Remove(Key),
    /// A damaged entry a read found: removed, and counted as an error if it was still there.
    /// Counted here, not by the read: two reads of the file before the writer gets to it (an
    /// exact lookup, then the semantic one) are one damaged entry.
    Discard(Key),
    Stop,
}

/// The disk tier: its writer thread, and reads for the workers.
pub struct Spill {
    dir: PathBuf,
    tx: SyncSender<Job>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub stats: Arc<SpillStats>,
}

fn make_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

impl Spill {
    /// Creates the directory and starts the writer, which first indexes what is there.
    pub fn start(settings: SpillSettings) -> io::Result<Spill> {
        make_dir(&settings.dir.join("tmp"))?;
        let (tx, rx) = sync_channel(QUEUE);
        let stats = Arc::new(SpillStats::default());
        let mut writer = Writer {
            dir: settings.dir.clone(),
            max_bytes: settings.max_bytes,
            ttl: settings.ttl,
            files: HashMap::new(),
            by_age: BTreeSet::new(),
            bytes: 0,
            stats: stats.clone(),
        };
        let semantic = settings.semantic;
        let thread = std::thread::Builder::new()
            .name("tollgate-cache-spill".into())
            .spawn(move || {
                writer.index(semantic);
                writer.run(rx);
            })?;
        Ok(Spill {
            dir: settings.dir,
            tx,
            thread: Mutex::new(Some(thread)),
            stats,
        })
    }

    /// Queues `r` to be written; dropped (and counted) when the writer is behind.
    pub fn put(&self, r: Record, ttl: Duration) {
        match self.tx.try_send(Job::Put(Box::new(r), ttl)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// The entry for `key` on disk, if it is good and younger than `ttl`, with its age. A
    /// damaged or expired file is queued for removal.
    pub async fn load(&self, key: &Key, ttl: Duration) -> Option<(Record, Duration)> {
        let data = match monoio::fs::read(path_of(&self.dir, key)).await {
            Ok(d) => Bytes::from(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::debug!(error = %e, "cache spill: reading an entry");
                return None;
            }
        };
        let record = match decode(data) {
            Ok(r) if r.key == *key => r,
            Ok(_) | Err(_) => {
                let _ = self.tx.try_send(Job::Discard(*key));
                return None;
            }
        };
        let age = Duration::from_millis(now_ms().saturating_sub(record.stored_at_ms));
        if age >= ttl {
            let _ = self.tx.try_send(Job::Remove(*key));
            return None;
        }
        self.stats.hits.fetch_add(1, Relaxed);
        Some((record, age))
    }

    /// Writes what is queued and stops the thread.
    pub fn stop(&self) {
        let _ = self.tx.send(Job::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The writer thread's state: every file it knows, by key and by age.
struct Writer {
    dir: PathBuf,
    max_bytes: u64,
    ttl: Duration,
    files: HashMap<Key, (u64, u64)>,
    by_age: BTreeSet<(u64, Key)>,
    bytes: u64,
    stats: Arc<SpillStats>,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Job>) {
        let mut next_sweep = std::time::Instant::now() + SWEEP;
        loop {
            let wait = next_sweep.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Job::Put(r, ttl)) => {
                    self.ttl = ttl;
                    self.write(&r);
                }
                Ok(Job::Remove(key)) => {
                    self.remove(&key);
                }
                Ok(Job::Discard(key)) => {
                    if self.remove(&key) {
                        self.stats.errors.fetch_add(1, Relaxed);
                    }
                }
                Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if std::time::Instant::now() >= next_sweep {
                self.sweep(now_ms());
                next_sweep = std::time::Instant::now() + SWEEP;
            }
        }
    }

    /// Rebuilds the index from the files' headers; gives the semantic embeddings back.
    fn index(&mut self, semantic: Option<(usize, Arc<SemanticIndex>)>) {
        let _ = std::fs::remove_dir_all(self.dir.join("tmp"));
        let _ = make_dir(&self.dir.join("tmp"));
        let now = now_ms();
        let mut vectors = Vec::new();
        let shards = std::fs::read_dir(&self.dir).into_iter().flatten().flatten();
        for shard in shards.filter(|e| e.file_name().len() == 2) {
            for file in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let Some(key) = file.file_name().to_str().and_then(unhex) else {
                    continue;
                };
                let want_vector = semantic.is_some();
                match read_header(&file.path(), want_vector) {
                    Ok((h, size, vector)) if h.key == key && size == h.file_len() as u64 => {
                        if self.expired(h.stored_at_ms, now) {
                            let _ = std::fs::remove_file(file.path());
                            continue;
                        }
                        self.add(key, h.stored_at_ms, size);
                        if let Some(v) = vector {
                            vectors.push((h.stored_at_ms, h.bucket, v, key));
                        }
                    }
                    Ok(_) | Err(_) => {
                        self.stats.errors.fetch_add(1, Relaxed);
                        let _ = std::fs::remove_file(file.path());
                    }
                }
            }
        }
        self.evict();
        if let Some((max_entries, index)) = semantic {
            // Oldest first, so each bucket keeps its newest.
            vectors.sort_by_key(|v| v.0);
            for (stored_at_ms, bucket, vector, key) in vectors {
                if self.files.contains_key(&key) {
                    let age = Duration::from_millis(now.saturating_sub(stored_at_ms));
                    index.insert_at(bucket, vector, key, max_entries, Stamp::aged(age));
                }
            }
        }
        self.stats.indexed.store(1, Relaxed);
        tracing::info!(
            entries = self.files.len(),
            bytes = self.bytes,
            "cache spill indexed"
        );
    }

    fn expired(&self, stored_at_ms: u64, now: u64) -> bool {
        now.saturating_sub(stored_at_ms) >= self.ttl.as_millis() as u64
    }

    fn write(&mut self, r: &Record) {
        let bytes = encode(r);
        let name = hex(&r.key);
        let tmp = self.dir.join("tmp").join(&name);
        let fin = path_of(&self.dir, &r.key);
        let written = write_file(&tmp, &bytes).and_then(|()| {
            match std::fs::rename(&tmp, &fin) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // The first entry of its directory.
                    make_dir(fin.parent().unwrap_or(&self.dir))?;
                    std::fs::rename(&tmp, &fin)
                }
                r => r,
            }
        });
        match written {
            Ok(()) => {
                self.stats.writes.fetch_add(1, Relaxed);
                self.forget(&r.key);
                self.add(r.key, r.stored_at_ms, bytes.len() as u64);
                self.evict();
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Relaxed);
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(error = %e, path = %fin.display(), "cache spill: writing an entry");
            }
        }
    }

    fn add(&mut self, key: Key, stored_at_ms: u64, size: u64) {
        if let Some((old_at, old_size)) = self.files.insert(key, (stored_at_ms, size)) {
            self.by_age.remove(&(old_at, key));
            self.bytes -= old_size;
        }
        self.by_age.insert((stored_at_ms, key));
        self.bytes += size;
        self.publish();
    }

    /// Drops `key` from the index (not the file).
    fn forget(&mut self, key: &Key) {
        if let Some((at, size)) = self.files.remove(key) {
            self.by_age.remove(&(at, *key));
            self.bytes -= size;
            self.publish();
        }
    }

    /// Forgets `key` and removes its file; whether there was one to remove.
    fn remove(&mut self, key: &Key) -> bool {
        self.forget(key);
        std::fs::remove_file(path_of(&self.dir, key)).is_ok()
    }

    /// Oldest first until under the bound.
    fn evict(&mut self) {
        while self.bytes > self.max_bytes {
            let Some(&(_, key)) = self.by_age.first() else {
                return;
            };
            self.remove(&key);
        }
    }

    fn sweep(&mut self, now: u64) {
        while let Some(&(at, key)) = self.by_age.first() {
            if !self.expired(at, now) {
                return;
            }
            self.remove(&key);
        }
    }

    fn publish(&self) {
        self.stats.entries.store(self.files.len() as u64, Relaxed);
        self.stats.bytes.store(self.bytes, Relaxed);
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// A file's header, size, and its embedding when asked for.
fn read_header(path: &Path, vector: bool) -> io::Result<(Header, u64, Option<Vec<f32>>)> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut head = [0u8; HEADER];
    f.read_exact(&mut head)?;
    let h = parse_header(&head).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if !vector || h.flags & FLAG_SEMANTIC == 0 || size != h.file_len() as u64 {
        return Ok((h, size, None));
    }
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start((HEADER + h.body_len) as u64))?;
    let mut raw = vec![0u8; h.dim * 4];
    f.read_exact(&mut raw)?;
    let v: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // Unchecked by the CRC here (that reads the whole file): a damaged vector can only point
    // at its own answer, whose file is checked when it is read.
    Ok((h, size, super::unit(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize, semantic: bool) -> Record {
        Record {
            key: [n as u8; 32],
            stored_at_ms: now_ms(),
            stream: n.is_multiple_of(2),
            usage: Usage {
                input_tokens: 12,
                output_tokens: 34,
                ..Usage::default()
            },
            body: Bytes::from(vec![b'a' + (n % 26) as u8; n * 10]),
            semantic: semantic.then(|| ([7u8; 32], vec![0.6, 0.8])),
        }
    }

    #[test]
    fn a_record_round_trips_and_any_damage_is_caught() {
        for r in [record(3, false), record(4, true), record(0, false)] {
            let bytes = encode(&r);
            assert_eq!(decode(Bytes::from(bytes.clone())).unwrap(), r);
            // Every truncation and every flipped byte is refused, never misread.
            for cut in 0..bytes.len() {
                assert!(decode(Bytes::copy_from_slice(&bytes[..cut])).is_err());
            }
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x20;
                assert!(decode(Bytes::from(b)).is_err(), "byte {i} flipped");
            }
        }
        assert_eq!(unhex(&hex(&[0xab; 32])), Some([0xab; 32]));
        assert_eq!(unhex("zz"), None);
    }

    fn settings(dir: &Path, max_bytes: u64, semantic: Option<Arc<SemanticIndex>>) -> SpillSettings {
        SpillSettings {
            dir: dir.to_path_buf(),
            max_bytes,
            ttl: Duration::from_secs(3600),
            semantic: semantic.map(|s| (16, s)),
        }
    }

    fn load(s: &Spill, key: &Key, ttl: Duration) -> Option<(Record, Duration)> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(s.load(key, ttl))
    }

    #[test]
    fn entries_survive_a_restart_within_the_bound_and_damage_is_removed() {
        let dir = std::env::temp_dir().join(format!("tg-spill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ttl = Duration::from_secs(3600);
        let s = Spill::start(settings(dir.as_path(), 1 << 20, None)).unwrap();
        for n in 1..=5 {
            s.put(record(n, n == 5), ttl);
        }
        s.stop();
        assert_eq!(s.stats.writes.load(Relaxed), 5);
        // A restart: the index is rebuilt and the semantic embedding given back.
        let index = Arc::new(SemanticIndex::default());
        let s = Spill::start(settings(dir.as_path(), 1 << 20, Some(index.clone()))).unwrap();
        s.stop();
        assert_eq!(s.stats.entries.load(Relaxed), 5);
        assert_eq!(index.len(), 1);
        let (r, age) = load(&s, &[3; 32], ttl).unwrap();
        assert_eq!(r, record(3, false).with_stored_at(r.stored_at_ms));
        assert!(age < ttl);
        assert!(load(&s, &[3; 32], Duration::ZERO).is_none(), "expired");
        assert!(load(&s, &[9; 32], ttl).is_none(), "never stored");
        // A damaged body is refused on read; a damaged header is removed at the next start.
        let damage = |key: u8, at: fn(usize) -> usize| {
            let p = path_of(dir.as_path(), &[key; 32]);
            let mut b = std::fs::read(&p).unwrap();
            let i = at(b.len());
            b[i] ^= 1;
            std::fs::write(&p, b).unwrap();
        };
        damage(2, |len| len - 1);
        let s = Spill::start(settings(dir.as_path(), 1 << 20, None)).unwrap();
        assert!(load(&s, &[2; 32], ttl).is_none());
        // Read again, before or after the writer removed it: still one damaged entry.
        assert!(load(&s, &[2; 32], ttl).is_none());
        s.stop();
        assert_eq!(s.stats.errors.load(Relaxed), 1);
        assert!(!path_of(dir.as_path(), &[2; 32]).exists());
        damage(1, |_| 0);
        let s = Spill::start(settings(dir.as_path(), 1 << 20, None)).unwrap();
        s.stop();
        assert!(!path_of(dir.as_path(), &[1; 32]).exists());
        assert_eq!(s.stats.entries.load(Relaxed), 3);
        // A smaller bound at start keeps the newest that fit.
        let s = Spill::start(settings(dir.as_path(), 250, None)).unwrap();
        s.stop();
        assert!(s.stats.bytes.load(Relaxed) <= 250);
        assert_eq!(s.stats.entries.load(Relaxed), 1);
        assert!(
            path_of(dir.as_path(), &[5; 32]).exists(),
            "the newest stays"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    impl Record {
        fn with_stored_at(mut self, ms: u64) -> Record {
            self.stored_at_ms = ms;
            self
        }
    }
}
