//! The ledger writer's CPU priority: background work while it keeps up, normal when it falls
//! behind.
//!
//! The writer's commits are work nobody waits on (each record is already in its worker's
//! journal), but at the default policy a writer that wakes for a batch competes with the
//! threads a response does wait on (the workers, and on a small node the inference server),
//! and takes their core until the scheduler's next decision. As `SCHED_IDLE` it runs only in
//! the gaps: any other thread that wakes on its core preempts it at once. On the 2-core bench
//! host, same process, alternating 5 s windows at 16 connections: p99 1.25–1.83 → 0.86–1.01
//! ms and 31–43k → 40–46k req/s, with the writer committing all but the last ~0.1 s of rows
//! inside each window (ARCHITECTURE.md, "The ledger writer in the background class").
//!
//! A node whose cores are always busy would starve it, so the writer measures how far behind
//! its commits are (the oldest record's end against the clock) and returns to the normal
//! policy past [`BEHIND`], and to the background one only once under [`CAUGHT_UP`]. Leaving
//! `SCHED_IDLE` needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows nice 0; without either
//! the writer never enters it (a probe thread tries the round trip first).

use std::time::Duration;

/// Commits this far behind put the writer back at the normal policy.
pub const BEHIND: Duration = Duration::from_secs(1);
/// Commits this close behind let it go back to the background.
pub const CAUGHT_UP: Duration = Duration::from_millis(100);

/// The writer thread's policy, switched as its lag moves.
pub struct Priority {
    /// Whether this thread may switch (the round trip worked on a probe thread).
    adaptive: bool,
    background: bool,
}

impl Priority {
    /// Puts the calling thread in the background class when it can also leave it; otherwise
    /// leaves it at the normal policy for good.
    pub fn background() -> Priority {
        let adaptive = round_trip_allowed();
        let background = adaptive && set_policy(libc::SCHED_IDLE).is_ok();
        if !adaptive {
            tracing::info!(
                "the ledger writer runs at the normal CPU priority: leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE ≥ 20"
            );
        }
        Priority {
            adaptive,
            background,
        }
    }

    /// After a commit whose oldest record ended `lag` ago.
    pub fn after_commit(&mut self, lag: Duration) {
        if !self.adaptive {
            return;
        }
        let want = next(self.background, lag);
        if want == self.background {
            return;
        }
        let policy = if want {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        match set_policy(policy) {
            Ok(()) => {
                self.background = want;
                if want {
                    tracing::info!("the ledger writer caught up: back to the background CPU class");
                } else {
                    tracing::warn!(
                        lag_ms = lag.as_millis() as u64,
                        "the ledger writer fell behind: normal CPU priority until it catches up"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot change the ledger writer's CPU policy");
                self.adaptive = false;
            }
        }
    }

    /// Normal priority from here on (stopping: the last commit should not wait for idle time).
    pub fn normal(&mut self) {
        if self.background && set_policy(libc::SCHED_OTHER).is_ok() {
            self.background = false;
        }
        self.adaptive = false;
    }
}

/// Whether the writer should be in the background class, given where it is and its lag.
fn next(background: bool, lag: Duration) -> bool {
    if background {
        lag <= BEHIND
    } else {
        lag < CAUGHT_UP
    }
}

/// Sets the calling thread's policy (`sched_setscheduler` with pid 0 acts on the calling
/// thread on Linux).
fn set_policy(policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` for the call's duration.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a thread of this process can enter `SCHED_IDLE` and leave it again, tried on a
/// thread of its own so that a failed return strands nothing.
fn round_trip_allowed() -> bool {
    std::thread::Builder::new()
        .name("tollgate-probe".into())
        .spawn(|| set_policy(libc::SCHED_IDLE).is_ok() && set_policy(libc::SCHED_OTHER).is_ok())
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or(false)
}

/// The calling thread's policy.
#[cfg(test)]
fn policy() -> libc::c_int {
    // SAFETY: no arguments beyond the pid; 0 is the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_leaves_the_background_past_a_second_behind_and_returns_under_100_ms() {
        assert!(next(true, Duration::ZERO));
        assert!(next(true, BEHIND));
        assert!(!next(true, BEHIND + Duration::from_millis(1)));
        // Between the two marks it stays where it is.
        assert!(!next(false, Duration::from_millis(500)));
        assert!(next(true, Duration::from_millis(500)));
        assert!(!next(false, CAUGHT_UP));
        assert!(next(false, CAUGHT_UP - Duration::from_millis(1)));
    }

    /// On a thread of its own: the policy is the kernel's, read back after each switch.
    #[test]
    fn the_policy_follows_the_lag_where_the_thread_may_switch() {
        std::thread::spawn(|| {
            let allowed = round_trip_allowed();
            let mut p = Priority::background();
            if !allowed {
                // Without the privilege the writer never enters the class it could not leave.
                assert_eq!(policy(), libc::SCHED_OTHER);
                return;
            }
            assert_eq!(policy(), libc::SCHED_IDLE);
            p.after_commit(Duration::from_millis(10));
            assert_eq!(policy(), libc::SCHED_IDLE);
            p.after_commit(Duration::from_secs(3));
            assert_eq!(policy(), libc::SCHED_OTHER);
            p.after_commit(Duration::from_millis(500));
            assert_eq!(policy(), libc::SCHED_OTHER);
            p.after_commit(Duration::from_millis(20));
            assert_eq!(policy(), libc::SCHED_IDLE);
            p.normal();
            assert_eq!(policy(), libc::SCHED_OTHER);
            p.after_commit(Duration::ZERO);
            assert_eq!(policy(), libc::SCHED_OTHER, "stopping stays normal");
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }
}
