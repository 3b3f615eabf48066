//! The worker's side of the ledger channel. Records are gathered per core and handed to the
//! writer in batches (at most `BATCH` records, or after `DELAY`), so the control thread is woken
//! once per batch instead of once per request: a cross-core futex wake per request was a
//! measurable share of the agent's CPU. `!Send` on purpose: one per worker.
//! Hot path (a `Vec::push`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use super::writer::{LedgerMsg, ToWriter};

/// Most records held by a worker before they are sent.
const BATCH: usize = 64;
/// Longest a record waits on its worker before it is sent.
pub const DELAY: Duration = Duration::from_millis(5);

pub struct LedgerLocal {
    pending: RefCell<Vec<LedgerMsg>>,
    armed: Cell<bool>,
    tx: Sender<ToWriter>,
}

impl LedgerLocal {
    pub fn new(tx: Sender<ToWriter>) -> Rc<Self> {
        Rc::new(Self {
            pending: RefCell::new(Vec::with_capacity(BATCH)),
            armed: Cell::new(false),
            tx,
        })
    }

    /// Queues one message; returns false if the writer is gone (the record is then lost).
    pub fn push(self: &Rc<Self>, msg: LedgerMsg) -> bool {
        let full = {
            let mut p = self.pending.borrow_mut();
            p.push(msg);
            p.len() >= BATCH
        };
        if full {
            return self.flush();
        }
        if !self.armed.replace(true) {
            let me = self.clone();
            monoio::spawn(async move {
                monoio::time::sleep(DELAY).await;
                me.armed.set(false);
                me.flush();
            });
        }
        true
    }

    /// Sends whatever is pending; returns false if the writer is gone.
    pub fn flush(&self) -> bool {
        let batch = std::mem::take(&mut *self.pending.borrow_mut());
        batch.is_empty() || self.tx.send(ToWriter::Batch(batch)).is_ok()
    }
}
