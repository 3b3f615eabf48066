//! Deadlines of idle keep-alive connections, kept by one clock per worker instead of a monoio
//! timer per connection. A second clock per worker bounds reads from providers the same way
//! (`client::read_more_by`; it is never closed, so a stop lets responses in flight finish).
//!
//! A monoio `Sleep` is 640 bytes (its timer entry is cache-padded), and a `timeout` around a
//! wait makes the whole connection task 128-byte aligned: an idle connection's task was 1,792
//! bytes, most of it timer. Here a connection holds one small [`Deadline`] for its life; arming
//! it for the next wait writes two cells (no allocation, no timer-wheel insert and cancel per
//! request), and the worker's [`IdleClock`] keeps at most a few heap entries per connection.
//!
//! The clock's heap holds `(when, ticket)` entries. An entry may be stale: the ticket was
//! disarmed (data came), re-armed for later (the entry goes back with the new time), or
//! dropped (the connection closed). The sweeper looks at each entry when its time comes and
//! does what the ticket now says, so arming never searches the heap. A ticket armed *earlier*
//! than its queued entry (a reload shortened a timeout) gets a second entry: every deadline is
//! absolute.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One connection's deadline. Armed for a wait, [`Deadline::expired`] resolves at the deadline.
pub struct Deadline {
    ticket: Rc<Ticket>,
    clock: Rc<IdleClock>,
}

/// One connection's share of the clock, 32 bytes (48 with its `Rc` counts, jemalloc's 48-byte
/// class; it was 80 with `Option<Instant>` fields). Times are nanoseconds since the clock's
/// epoch ([`Tick`]).
#[derive(Default)]
struct Ticket {
    /// The wait: [`DISARMED`], [`FIRED`] (its deadline passed), or when it ends.
    at: Cell<Tick>,
    /// The earliest time an entry for this ticket is queued for; [`NONE_QUEUED`]: none is.
    queued: Cell<Tick>,
    waker: Cell<Option<Waker>>,
}

/// Nanoseconds since the clock's epoch, plus one (584 years before it wraps).
type Tick = u64;
const DISARMED: Tick = 0;
const FIRED: Tick = Tick::MAX;
const NONE_QUEUED: Tick = 0;

impl Ticket {
    /// The armed wait's deadline passed (or the worker is stopping): end it.
    fn fire(&self) {
        self.queued.set(NONE_QUEUED);
        self.at.set(FIRED);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The time the armed wait ends, if one is armed.
    fn armed(&self) -> Option<Tick> {
        let at = self.at.get();
        (at != DISARMED && at != FIRED).then_some(at)
    }
}

/// A heap entry, ordered by time only.
struct Due {
    at: Tick,
    ticket: Weak<Ticket>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

/// A worker's clock for idle deadlines; [`IdleClock::run`] is its sweeper task.
pub struct IdleClock {
    /// Where its [`Tick`]s count from.
    epoch: Instant,
    due: RefCell<BinaryHeap<Reverse<Due>>>,
    /// Deadlines alive (connections open): the heap is compacted when its stale entries
    /// outnumber them.
    live: Cell<usize>,
    /// The sweeper, when it waits: woken by an entry due before the earliest queued one (the
    /// time it sleeps until).
    sweeper: Cell<Option<Waker>>,
    /// The worker is stopping: every wait ends now, and every wait armed from now on at once.
    closing: Cell<bool>,
}

/// Deadlines this close to now fire in the same sweep (fewer wake-ups, none late).
const SLACK: Tick = Duration::from_millis(1).as_nanos() as Tick;

impl Default for IdleClock {
    fn default() -> Self {
        IdleClock {
            epoch: Instant::now(),
            due: RefCell::default(),
            live: Cell::default(),
            sweeper: Cell::default(),
            closing: Cell::default(),
        }
    }
}

impl IdleClock {
    fn tick(&self, t: Instant) -> Tick {
        (t.saturating_duration_since(self.epoch).as_nanos() as Tick).saturating_add(1)
    }

    fn instant(&self, t: Tick) -> Instant {
        self.epoch + Duration::from_nanos(t.saturating_sub(1))
    }

    /// A deadline for one connection, disarmed.
    pub fn deadline(self: &Rc<Self>) -> Deadline {
        self.live.set(self.live.get() + 1);
        Deadline {
            ticket: Rc::new(Ticket::default()),
            clock: self.clone(),
        }
    }

    fn queue(&self, at: Tick, ticket: &Rc<Ticket>) {
        ticket.queued.set(at);
        let mut due = self.due.borrow_mut();
        self.compact(&mut due);
        let earliest = due.peek().map(|Reverse(d)| d.at);
        due.push(Reverse(Due {
            at,
            ticket: Rc::downgrade(ticket),
        }));
        drop(due);
        // The sweeper sleeps until the earliest entry (or for one, when there is none).
        if earliest.is_none_or(|e| at < e) {
            if let Some(s) = self.sweeper.take() {
                s.wake();
            }
        }
    }

    /// Closed connections leave their entry until its time (up to the idle timeout), and the
    /// entry's `Weak` keeps the ticket's allocation: with many short connections the heap would
    /// hold one per connection of the last minute, and after a wave of closes their memory
    /// would stay until the timeout. Dropping what no live ticket stands behind once the heap
    /// is twice the live deadlines keeps it at most that, at amortised O(1) per entry; it runs
    /// when an entry is queued and when a deadline is dropped, so memory returns as
    /// connections close. The heap's own buffer shrinks with it.
    fn compact(&self, due: &mut BinaryHeap<Reverse<Due>>) {
        if due.len() < 2 * self.live.get() + 64 {
            return;
        }
        due.retain(|Reverse(d)| d.ticket.upgrade().is_some_and(|t| t.queued.get() == d.at));
        if due.capacity() > 4 * due.len() + 256 {
            due.shrink_to(2 * due.len() + 64);
        }
    }

    /// Ends every idle wait now, and every one armed later at once: the worker is stopping. A
    /// connection whose request raced the stop still gets it read and answered (`first_read`
    /// cancels its read and keeps the bytes); a quiet one closes.
    pub fn close(&self) {
        self.closing.set(true);
        let due = std::mem::take(&mut *self.due.borrow_mut());
        for Reverse(d) in due {
            if let Some(t) = d.ticket.upgrade() {
                t.queued.set(NONE_QUEUED);
                if t.armed().is_some() {
                    t.fire();
                }
            }
        }
    }

    /// Entries queued (live or stale).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.due.borrow().len()
    }

    /// Fires what is due at `now`; returns when the next entry is due.
    fn sweep(&self, now: Instant) -> Option<Instant> {
        let now = self.tick(now);
        let mut due = self.due.borrow_mut();
        while let Some(Reverse(d)) = due.peek() {
            if d.at > now + SLACK {
                return Some(self.instant(d.at));
            }
            let Some(Reverse(d)) = due.pop() else { break };
            let Some(t) = d.ticket.upgrade() else {
                continue;
            };
            // An older duplicate of a re-queued ticket: the newer entry speaks for it.
            if t.queued.get() != d.at {
                continue;
            }
            match t.armed() {
                None => t.queued.set(NONE_QUEUED),
                Some(at) if at <= now + SLACK => t.fire(),
                Some(later) => {
                    t.queued.set(later);
                    due.push(Reverse(Due {
                        at: later,
                        ticket: d.ticket,
                    }));
                }
            }
        }
        None
    }

    /// The sweeper: runs on the worker for as long as the worker does.
    pub async fn run(self: Rc<Self>) {
        loop {
            let next = self.sweep(Instant::now());
            let woken = WakeOn {
                slot: &self.sweeper,
                registered: false,
            };
            match next {
                Some(at) => {
                    monoio::select! {
                        _ = monoio::time::sleep_until(at.into()) => {},
                        _ = woken => {},
                    }
                }
                None => woken.await,
            }
        }
    }
}

impl Deadline {
    /// Arms the deadline `timeout` from now, for the next wait.
    pub fn arm(&self, timeout: Duration) {
        self.arm_at(Instant::now(), timeout)
    }

    /// [`Deadline::arm`] with the time already read by the caller (a clock read is ~26 ns here).
    pub fn arm_at(&self, now: Instant, timeout: Duration) {
        let t = &self.ticket;
        if self.clock.closing.get() {
            t.fire();
            return;
        }
        let at = self.clock.tick(now + timeout);
        t.at.set(at);
        // An entry at or before `at` is already queued: the sweeper re-queues it then.
        let queued = t.queued.get();
        if queued == NONE_QUEUED || queued > at {
            self.clock.queue(at, t);
        }
    }

    /// Ends the armed wait early (its operation finished first).
    pub fn disarm(&self) {
        self.ticket.at.set(DISARMED);
        self.ticket.waker.set(None);
    }

    /// Resolves when the armed deadline passes (never, when none is armed).
    pub fn expired(&self) -> Expired<'_> {
        Expired(&self.ticket)
    }
}

/// `op`'s output, or `None` when `expired` (a [`Deadline::expired`]) resolves first.
pub async fn first_of<F: Future>(
    mut op: Pin<&mut F>,
    expired: impl Future<Output = ()>,
) -> Option<F::Output> {
    let mut expired = std::pin::pin!(expired);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = op.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        expired.as_mut().poll(cx).map(|()| None)
    })
    .await
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // The heap's entry, if any, is skipped when its time comes (its ticket is gone), or
        // dropped when the heap is compacted, which a wave of closes triggers from here.
        self.clock.live.set(self.clock.live.get() - 1);
        // Never borrowed across a drop today (the sweep only wakes tasks); if it ever is, the
        // next queue or drop compacts instead.
        if let Ok(mut due) = self.clock.due.try_borrow_mut() {
            self.clock.compact(&mut due);
        }
    }
}

/// The future of [`Deadline::expired`].
pub struct Expired<'a>(&'a Ticket);

impl Future for Expired<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.at.get() == FIRED {
            return Poll::Ready(());
        }
        self.0.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// Resolves once [`IdleClock::queue`] takes the waker this left in `slot` (it woke it).
struct WakeOn<'a> {
    slot: &'a Cell<Option<Waker>>,
    registered: bool,
}

impl Future for WakeOn<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered && self.slot.take().is_none() {
            return Poll::Ready(());
        }
        self.slot.set(Some(cx.waker().clone()));
        self.registered = true;
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    /// Every open connection holds a ticket (its `Rc` adds 16 bytes): 32 bytes keeps it in
    /// jemalloc's 48-byte class. A heap entry is 16.
    #[test]
    fn a_ticket_and_a_heap_entry_stay_small() {
        assert!(std::mem::size_of::<Ticket>() <= 32);
        assert_eq!(std::mem::size_of::<Due>(), 16);
    }

    /// A clock with its sweeper running on the current runtime.
    fn running_clock() -> Rc<IdleClock> {
        let clock = Rc::new(IdleClock::default());
        monoio::spawn(clock.clone().run());
        clock
    }

    /// Whether `f` is ready when polled once now.
    fn ready_now<F: Future>(f: F) -> bool {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        f.as_mut().poll(&mut cx).is_ready()
    }

    /// Waits for `d` to expire, failing the test after a generous bound (not a timing claim:
    /// a deadline that never fires would hang the test otherwise).
    async fn expires(d: &Deadline) {
        monoio::select! {
            _ = d.expired() => {},
            _ = monoio::time::sleep(Duration::from_secs(20)) => panic!("the deadline never fired"),
        }
    }

    #[test]
    fn an_armed_deadline_fires_and_a_disarmed_or_dropped_one_does_not() {
        block_on(async {
            let clock = running_clock();
            let (fires, disarmed, dropped) = (clock.deadline(), clock.deadline(), clock.deadline());
            for d in [&fires, &disarmed, &dropped] {
                d.arm(Duration::from_millis(5));
            }
            disarmed.disarm();
            drop(dropped);
            assert!(!ready_now(fires.expired()));
            expires(&fires).await;
            // Every entry was due with the first: all swept, none left behind.
            monoio::time::sleep(Duration::from_millis(20)).await;
            assert!(!ready_now(disarmed.expired()));
            assert_eq!(clock.queued(), 0);
            // Fired once; armed again, it waits again.
            fires.arm(Duration::from_secs(3600));
            assert!(!ready_now(fires.expired()));
        });
    }

    #[test]
    fn re_arming_moves_the_deadline_both_ways() {
        block_on(async {
            let clock = running_clock();
            let d = clock.deadline();
            // Later: the queued entry is re-queued when its time comes, not fired.
            d.arm(Duration::from_millis(5));
            d.arm(Duration::from_secs(3600));
            monoio::time::sleep(Duration::from_millis(30)).await;
            assert!(!ready_now(d.expired()));
            assert_eq!(clock.queued(), 1, "re-queued for the later time");
            // Earlier than what is queued (a shortened timeout): it still fires on time.
            d.arm(Duration::from_millis(5));
            expires(&d).await;
        });
    }

    #[test]
    fn closing_the_clock_ends_every_wait_now_and_later() {
        block_on(async {
            let clock = running_clock();
            let (waiting, later) = (clock.deadline(), clock.deadline());
            waiting.arm(Duration::from_secs(3600));
            assert!(!ready_now(waiting.expired()));
            clock.close();
            assert!(ready_now(waiting.expired()));
            later.arm(Duration::from_secs(3600));
            assert!(
                ready_now(later.expired()),
                "armed after the close: expired at once"
            );
            assert_eq!(clock.queued(), 0);
        });
    }

    #[test]
    fn closed_connections_do_not_pile_up_in_the_heap() {
        block_on(async {
            let clock = running_clock();
            let open: Vec<Deadline> = (0..10).map(|_| clock.deadline()).collect();
            for d in &open {
                d.arm(Duration::from_secs(3600));
            }
            // 10,000 connections, each idle for a while and then closed by its client.
            for _ in 0..10_000 {
                clock.deadline().arm(Duration::from_secs(3600));
            }
            assert!(clock.queued() <= 2 * open.len() + 64, "{}", clock.queued());
            // The open ones still fire.
            open[0].arm(Duration::from_millis(5));
            expires(&open[0]).await;
        });
    }

    /// A wave of connections that idle and then all close: their heap entries (and the
    /// tickets their `Weak`s keep allocated) go with them, not at their idle timeout.
    #[test]
    fn a_wave_of_closes_empties_the_heap_without_waiting_for_the_timeouts() {
        block_on(async {
            let clock = running_clock();
            let wave: Vec<Deadline> = (0..5_000).map(|_| clock.deadline()).collect();
            for d in &wave {
                d.arm(Duration::from_secs(3600));
            }
            assert_eq!(clock.queued(), 5_000);
            let grown = clock.due.borrow().capacity();
            drop(wave);
            assert!(clock.queued() <= 64, "{} entries left", clock.queued());
            let capacity = clock.due.borrow().capacity();
            assert!(capacity < grown / 4, "{capacity} of {grown} kept");
        });
    }

    #[test]
    fn a_busy_connection_keeps_one_entry_however_often_it_arms() {
        block_on(async {
            let clock = running_clock();
            let d = clock.deadline();
            for _ in 0..10_000 {
                d.arm(Duration::from_secs(1));
                d.disarm();
            }
            assert_eq!(clock.queued(), 1);
        });
    }
}
