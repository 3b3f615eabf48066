//! Journal segments made ready off the worker.
//!
//! A worker copies each record into a mapped segment file (`journal.rs`). Making a segment is
//! file-system work: create, size, map, and then a page fault on the first write to each of
//! its 256 pages. On ext4 that fault (`page_mkwrite`) joins the file system's journal, and it
//! waits whenever a journal commit is under way, which the ledger's own `fsync`s start. The
//! worker took one such fault every ~15 requests and stalled whenever one waited: in
//! alternating 5 s windows at 16 connections, the slowest request of a window took 6–42 ms
//! (19.5 on average) with the journal on and 8–16 ms (10.5) with it off (`benches/results/2026-12-03-journal-spare.md`).
//!
//! So one background thread (`tollgate-journal`) makes each worker's next segment while the
//! current one fills, and faults all its pages in (`MADV_POPULATE_WRITE`); rotating is then a
//! channel receive, and a worker's copies into the mapping do not fault. The thread also
//! unmaps full segments, so the worker does not wait for the TLB shootdown.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::OnceLock;
use std::time::Duration;

/// Size of one segment file (a few thousand records).
pub(super) const SEGMENT_BYTES: usize = 1 << 20;

/// A segment file, mapped and faulted in.
pub(super) struct Segment {
    pub map: memmap2::MmapMut,
    pub path: PathBuf,
}

/// Work for the background thread.
enum Job {
    Make {
        dir: PathBuf,
        prefix: String,
        seq: u32,
        reply: Sender<io::Result<Segment>>,
    },
    Unmap(memmap2::MmapMut),
}

/// The background thread's queue; `None` if it could not be started (then workers do the
/// work themselves, as before).
fn background() -> Option<&'static Sender<Job>> {
    static QUEUE: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("tollgate-journal".into())
                .spawn(move || {
                    for job in rx {
                        match job {
                            Job::Make {
                                dir,
                                prefix,
                                seq,
                                reply,
                            } => {
                                let _ = reply.send(make(&dir, &prefix, seq));
                            }
                            Job::Unmap(map) => drop(map),
                        }
                    }
                })
                .map_err(|e| tracing::warn!(error = %e, "no journal thread; workers make their own segments"))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Creates (or truncates) segment `seq`, sizes it, maps it and faults its pages in.
pub(super) fn make(dir: &Path, prefix: &str, seq: u32) -> io::Result<Segment> {
    let path = dir.join(format!("{prefix}-{seq:06}.bin"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        // The boot id in the name keeps runs apart; truncate reuses a file that a failed
        // earlier attempt (a full disk) left behind.
        .create(true)
        .truncate(true)
        // Records may carry a response body (`settle::seal_unread`): the agent's user only.
        .mode(0o600)
        .open(&path)?;
    file.set_len(SEGMENT_BYTES as u64)?;
    // SAFETY: the file was just created (or truncated) for this worker's journal and is mapped
    // only by it; nothing else writes it while it is mapped (replay reads journals of earlier
    // runs only).
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file)? };
    // In steps, yielding the CPU between them: each page's fault joins the file system's
    // journal (~6 µs a page here), and a whole segment at once kept a worker that shared the
    // core off it for up to 1.6 ms (`perf sched`).
    for (n, at) in (0..SEGMENT_BYTES).step_by(POPULATE_STEP).enumerate() {
        if n > 0 {
            std::thread::yield_now();
        }
        if map
            .advise_range(memmap2::Advice::PopulateWrite, at, POPULATE_STEP)
            .is_err()
        {
            // Before Linux 5.14: a write to each page does the same.
            for page in map[at..at + POPULATE_STEP].chunks_mut(4096) {
                page[0] = 0;
            }
        }
    }
    Ok(Segment { map, path })
}

/// Bytes of a segment faulted in between two yields: 16 pages, ~0.1 ms.
const POPULATE_STEP: usize = 64 * 1024;

/// A segment being made in the background.
pub(super) struct Next {
    reply: Receiver<io::Result<Segment>>,
}

/// Asks the background thread for segment `seq`; `None` without one.
pub(super) fn request(dir: &Path, prefix: &str, seq: u32) -> Option<Next> {
    let (reply, rx) = mpsc::channel();
    let job = Job::Make {
        dir: dir.to_path_buf(),
        prefix: prefix.to_string(),
        seq,
        reply,
    };
    background()?.send(job).ok()?;
    Some(Next { reply: rx })
}

impl Next {
    /// The segment. Waits if it is not ready yet (the thread fell a whole segment behind):
    /// making it here instead could truncate the file the thread is about to hand over.
    pub(super) fn take(self, dir: &Path, prefix: &str, seq: u32) -> io::Result<Segment> {
        match self.reply.recv() {
            Ok(made) => made,
            // The thread is gone (it never drops a job otherwise): nothing else touches the file.
            Err(_) => make(dir, prefix, seq),
        }
    }

    /// Removes the segment once made, for a journal that closes without using it. Waits at
    /// most a second; a segment made later stays until the next start's replay removes it.
    pub(super) fn discard(self) {
        if let Ok(Ok(seg)) = self.reply.recv_timeout(Duration::from_secs(1)) {
            unmap(seg.map);
            let _ = std::fs::remove_file(seg.path);
        }
    }
}

/// Unmaps a full segment on the background thread (here without one).
pub(super) fn unmap(map: memmap2::MmapMut) {
    match background() {
        // A failed send hands the job back, and dropping it unmaps here.
        Some(queue) => drop(queue.send(Job::Unmap(map))),
        None => drop(map),
    }
}
