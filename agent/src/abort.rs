//! A per-worker "stop now" signal for requests still running when the shutdown grace expires.
//!
//! monoio leaks (never drops) the tasks still pending when its runtime is dropped, so a request
//! cut by shutdown would vanish without a record. Instead, each connection races its request
//! against [`AbortSignal::fired`]; firing the signal wakes them all, the request futures are
//! dropped inside the runtime, and their settle guards (`pipeline.rs`) record them with outcome
//! `shutdown`. `!Send` on purpose: one per worker. Waker slots are reused, so the slab is as
//! large as the most requests in flight at once. Hot path: one slot per request, on first poll.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct AbortSignal {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl AbortSignal {
    /// Fires the signal: every pending and future [`Fired`] completes.
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    /// Completes once the signal has fired.
    pub fn fired(&self) -> Fired<'_> {
        Fired {
            signal: self,
            slot: None,
        }
    }

    /// Waker slots in use.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.wakers.borrow().iter().filter(|w| w.is_some()).count()
    }
}

/// The future of [`AbortSignal::fired`].
pub struct Fired<'a> {
    signal: &'a AbortSignal,
    slot: Option<usize>,
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signal = self.signal;
        if signal.fired.get() {
            return Poll::Ready(());
        }
        let mut wakers = signal.wakers.borrow_mut();
        match self.slot {
            Some(i) => match &mut wakers[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                other => *other = Some(cx.waker().clone()),
            },
            None => {
                let i = match signal.free.borrow_mut().pop() {
                    Some(i) => {
                        wakers[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        wakers.push(Some(cx.waker().clone()));
                        wakers.len() - 1
                    }
                };
                drop(wakers);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Fired<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(w) = self.signal.wakers.borrow_mut().get_mut(i) {
                *w = None;
                self.signal.free.borrow_mut().push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    #[test]
    fn fire_wakes_every_waiter_and_slots_are_reused() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let signal = Rc::new(AbortSignal::default());
        let woken = rt.block_on({
            let signal = signal.clone();
            async move {
                // Waiters that end on their own give their slots back.
                for _ in 0..100 {
                    let s = signal.clone();
                    monoio::select! {
                        _ = s.fired() => unreachable!(),
                        _ = monoio::time::sleep(Duration::from_micros(10)) => {}
                    }
                }
                assert_eq!(signal.waiting(), 0);
                assert!(signal.wakers.borrow().len() <= 1, "slots are reused");
                let handles: Vec<_> = (0..3)
                    .map(|_| {
                        let s = signal.clone();
                        monoio::spawn(async move { s.fired().await })
                    })
                    .collect();
                monoio::time::sleep(Duration::from_millis(5)).await;
                assert_eq!(signal.waiting(), 3);
                signal.fire();
                for h in handles {
                    h.await;
                }
                // After firing, a new waiter completes at once.
                signal.fired().await;
                3
            }
        });
        assert_eq!(woken, 3);
    }
}
