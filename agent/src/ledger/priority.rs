//! The ledger writer's CPU class: background work while it keeps up, normal when it falls
//! behind.
//!
//! Nothing a response waits on happens on the writer: every record is already in its worker's
//! journal, provider-counted usage was settled against budgets and token limits on the worker,
//! and estimated usage is settled on the estimator thread. At the default policy, though, a
//! writer that wakes for a batch competes with the threads a response does wait on (the
//! workers, and on a small node the inference server) and takes their core until the
//! scheduler's next decision. As `SCHED_IDLE` it runs only in the gaps: any other thread that
//! wakes on its core preempts it at once. Lowering its weight instead (`nice 19`,
//! `SCHED_BATCH`) measured no different from normal (ARCHITECTURE.md, "The ledger writer in
//! the idle CPU class").
//!
//! A node whose cores are always busy would starve it, and a starved thread cannot notice that
//! itself. So the writer stamps the time whenever it has drained its channel, and a watchdog
//! on the telemetry thread (normal policy, awake every 50 ms) moves it back to `SCHED_OTHER`
//! once it has been behind for [`BEHIND`]; the writer returns to the background the next time
//! it drains its channel. Leaving `SCHED_IDLE` needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that
//! allows nice 0; without either the writer never enters it (a probe thread tries the round
//! trip first).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Behind this long, the writer is moved to the normal policy.
pub const BEHIND: Duration = Duration::from_secs(1);
/// The watchdog's "behind" warning is logged at most this often (a saturated node would
/// otherwise log one a second).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// `caught_up` while the writer waits with nothing owed (no commit due).
const NOTHING_OWED: u64 = u64::MAX;

/// The writer thread's policy, shared with the watchdog.
#[derive(Debug)]
pub struct WriterClass {
    /// The writer's thread id (0 until it has started).
    tid: AtomicI32,
    /// Whether the policy may switch both ways (the round trip worked on a probe thread).
    adaptive: AtomicBool,
    /// Whether the writer is in `SCHED_IDLE` now.
    idle: AtomicBool,
    /// When the writer last drained its channel (µs since `epoch`), or [`NOTHING_OWED`].
    caught_up: AtomicU64,
    epoch: Instant,
}

impl Default for WriterClass {
    fn default() -> Self {
        WriterClass {
            tid: AtomicI32::new(0),
            adaptive: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            caught_up: AtomicU64::new(NOTHING_OWED),
            epoch: Instant::now(),
        }
    }
}

impl WriterClass {
    /// On the writer thread, once: enters the background class where it can also leave it.
    pub fn enter(&self) {
        // SAFETY: no arguments.
        self.tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
        let adaptive = round_trip_allowed();
        self.adaptive.store(adaptive, Ordering::Relaxed);
        if !adaptive {
            tracing::info!(
                "the ledger writer runs at the normal CPU priority: leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE ≥ 20"
            );
            return;
        }
        if set_policy(0, libc::SCHED_IDLE).is_ok() {
            self.idle.store(true, Ordering::Relaxed);
        }
    }

    /// On the writer, its channel drained, about to wait: `owed` when a commit is still due.
    /// A writer the watchdog moved to the normal policy returns to the background here.
    pub fn drained(&self, owed: bool) {
        let stamp = if owed {
            self.epoch.elapsed().as_micros() as u64
        } else {
            NOTHING_OWED
        };
        self.caught_up.store(stamp, Ordering::Relaxed);
        if self.idle.load(Ordering::Relaxed) || !self.adaptive.load(Ordering::Relaxed) {
            return;
        }
        if set_policy(0, libc::SCHED_IDLE).is_ok() {
            self.idle.store(true, Ordering::Relaxed);
        }
    }

    /// Normal policy from now on, called from any thread: the agent is stopping, the watchdog
    /// stops with the telemetry thread, and the last records and commit should not wait for
    /// idle time. (The writer calls it too when told to stop.)
    pub fn normal(&self) {
        self.adaptive.store(false, Ordering::Relaxed);
        let tid = self.tid.load(Ordering::Relaxed);
        // tid 0 would be the calling thread: a writer not started yet is not idle either.
        if tid != 0
            && self.idle.load(Ordering::Relaxed)
            && set_policy(tid, libc::SCHED_OTHER).is_ok()
        {
            self.idle.store(false, Ordering::Relaxed);
        }
    }
}

/// Moves a starved writer back to the normal policy; lives on a thread at the normal policy
/// that looks at least every `BEHIND / 10`.
pub struct Watchdog {
    class: Arc<WriterClass>,
    /// When the writer was first seen waiting with records queued for it.
    queued_since: Option<Instant>,
    moved: u64,
    last_log: Option<Instant>,
}

impl Watchdog {
    pub fn new(class: Arc<WriterClass>) -> Watchdog {
        Watchdog {
            class,
            queued_since: None,
            moved: 0,
            last_log: None,
        }
    }

    /// One look: `queued` is how many records workers have queued for the writer and it has
    /// not taken yet; `flush_interval` how long it may hold taken records before committing.
    /// Returns whether this look moved the writer to the normal policy.
    pub fn look(&mut self, queued: u64, flush_interval: Duration) -> bool {
        let c = &self.class;
        if !c.idle.load(Ordering::Relaxed) {
            self.queued_since = None;
            return false;
        }
        let now = Instant::now();
        let stamp = c.caught_up.load(Ordering::Relaxed);
        let behind = if stamp == NOTHING_OWED {
            // It waits with nothing owed: behind if records stay queued without it waking.
            if queued == 0 {
                self.queued_since = None;
                return false;
            }
            now - *self.queued_since.get_or_insert(now)
        } else {
            // It drained its channel at `stamp` with a commit due within `flush_interval`.
            // With records queued for it, it should have woken for them (workers send every
            // few milliseconds), however long the flush interval; without, it owes only the
            // commit at its deadline.
            self.queued_since = None;
            let since = c.epoch + Duration::from_micros(stamp);
            let drained_ago = now.saturating_duration_since(since);
            if queued > 0 {
                drained_ago
            } else {
                drained_ago.saturating_sub(flush_interval)
            }
        };
        if behind <= BEHIND {
            return false;
        }
        match set_policy(c.tid.load(Ordering::Relaxed), libc::SCHED_OTHER) {
            Ok(()) => {
                c.idle.store(false, Ordering::Relaxed);
                self.queued_since = None;
                self.moved += 1;
                if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    self.last_log = Some(now);
                    tracing::warn!(
                        behind_ms = behind.as_millis() as u64,
                        times = self.moved,
                        "the ledger writer fell behind in the idle CPU class: normal priority until it catches up"
                    );
                    self.moved = 0;
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot move the ledger writer to the normal CPU priority");
                c.adaptive.store(false, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Sets the policy of thread `tid` (0: the calling thread).
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` for the call's duration.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a thread of this process can enter `SCHED_IDLE` and leave it again, tried once on a
/// thread of its own so that a failed return strands nothing.
fn round_trip_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::thread::Builder::new()
            .name("tollgate-probe".into())
            .spawn(|| {
                set_policy(0, libc::SCHED_IDLE).is_ok() && set_policy(0, libc::SCHED_OTHER).is_ok()
            })
            .ok()
            .and_then(|t| t.join().ok())
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: no pointers; an unknown tid returns -1.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// A writer on a thread of its own, watched from this one: the policy is the kernel's,
    /// read back after each step.
    #[test]
    fn a_starved_writer_is_moved_to_normal_and_returns_to_the_background_when_drained() {
        // An epoch well in the past, so that a stale stamp can be written below.
        let class = Arc::new(WriterClass {
            epoch: Instant::now() - Duration::from_secs(10),
            ..WriterClass::default()
        });
        let (to_writer, steps) = std::sync::mpsc::channel::<bool>();
        let (to_test, done) = std::sync::mpsc::channel::<()>();
        // Holds the thread until its policy has been read after the stop.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let writer = {
            let class = class.clone();
            std::thread::spawn(move || {
                class.enter();
                let _ = to_test.send(());
                for owed in steps {
                    class.drained(owed);
                    let _ = to_test.send(());
                }
                class.normal();
                let _ = to_test.send(());
                let _ = released.recv();
            })
        };
        done.recv().unwrap();
        let tid = class.tid.load(Ordering::Relaxed);
        let mut dog = Watchdog::new(class.clone());
        let flush = Duration::from_millis(100);
        if !class.adaptive.load(Ordering::Relaxed) {
            // Without the privilege the writer never enters the class it could not leave.
            assert_eq!(policy_of(tid), libc::SCHED_OTHER);
            assert!(!dog.look(1_000, flush));
            drop((to_writer, release));
            writer.join().unwrap();
            return;
        }
        assert_eq!(policy_of(tid), libc::SCHED_IDLE);
        // Waiting with nothing owed and nothing queued is not behind, however long.
        assert!(!dog.look(0, flush));
        // Records queued: behind once they have stayed queued past BEHIND.
        assert!(!dog.look(5, flush));
        dog.queued_since = Some(Instant::now() - BEHIND - Duration::from_millis(10));
        assert!(dog.look(5, flush));
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);
        // Draining returns it to the background.
        to_writer.send(true).unwrap();
        done.recv().unwrap();
        assert_eq!(policy_of(tid), libc::SCHED_IDLE);
        // Drained just now with a commit due: not behind, records queued or not.
        assert!(!dog.look(0, flush));
        assert!(!dog.look(5, flush));
        // Drained over a second ago, a long flush interval still running, records queued for
        // it: it should have woken for them, so it is behind.
        let long_flush = Duration::from_secs(60);
        let stamp_ago = |ago: Duration| {
            let at = (Instant::now() - class.epoch).saturating_sub(ago);
            class
                .caught_up
                .store(at.as_micros() as u64, Ordering::Relaxed);
        };
        stamp_ago(BEHIND + Duration::from_millis(100));
        assert!(
            !dog.look(0, long_flush),
            "nothing queued: only the commit is owed"
        );
        assert!(dog.look(5, long_flush));
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);
        to_writer.send(true).unwrap();
        done.recv().unwrap();
        assert_eq!(policy_of(tid), libc::SCHED_IDLE);
        // Drained long ago with a commit due and nothing queued: behind once the commit is
        // over a second late.
        stamp_ago(BEHIND + flush * 2);
        assert!(dog.look(0, flush));
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);
        // The agent's stop, from another thread, moves it to normal for good: a later drain
        // does not return it to the background.
        to_writer.send(true).unwrap();
        done.recv().unwrap();
        assert_eq!(policy_of(tid), libc::SCHED_IDLE);
        class.normal();
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);
        to_writer.send(true).unwrap();
        done.recv().unwrap();
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);
        // Stopping leaves it normal, and the watchdog has nothing more to do.
        drop(to_writer);
        done.recv().unwrap();
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);
        assert!(!dog.look(1_000, flush));
        drop(release);
        writer.join().unwrap();
    }
}
