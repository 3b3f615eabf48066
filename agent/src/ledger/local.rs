//! The worker's side of the ledger channel. Records are gathered per core and handed to the
//! writer in batches (at most `BATCH` records, or after `DELAY`), so the control thread is woken
//! once per batch instead of once per request: a cross-core futex wake per request was a
//! measurable share of the agent's CPU. `!Send` on purpose: one per worker.
//! With the journal on (the default), each record is first appended to this worker's journal
//! (`journal.rs`), so a crash before the writer commits it loses nothing.
//! Hot path (a journal `write` and a `Vec::push`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use super::journal::{Journal, Pending};
use super::writer::{LedgerMsg, ToWriter};
use super::UsageRecord;
use crate::api::Api;
use crate::metering::Usage;

/// Most records held by a worker before they are sent.
const BATCH: usize = 64;
/// Longest a record waits on its worker before it is sent.
pub const DELAY: Duration = Duration::from_millis(5);

pub struct LedgerLocal {
    pending: RefCell<Vec<LedgerMsg>>,
    armed: Cell<bool>,
    tx: Sender<ToWriter>,
    journal: RefCell<Option<Journal>>,
    /// The last journal write failed (logged once until one succeeds again).
    failing: Cell<bool>,
}

impl LedgerLocal {
    pub fn new(tx: Sender<ToWriter>, journal: Option<Journal>) -> Rc<Self> {
        Rc::new(Self {
            pending: RefCell::new(Vec::with_capacity(BATCH)),
            armed: Cell::new(false),
            tx,
            journal: RefCell::new(journal),
            failing: Cell::new(false),
        })
    }

    /// Journals the record; on a full segment, hands the writer everything pending and then
    /// the retired segment (in that order, on one FIFO channel) so it can delete it once committed.
    /// A failed write loses crash safety for this record only: the next record tries again (a
    /// full disk may clear), and the failure is logged once per streak, not per record.
    pub fn journal(&self, msg: &LedgerMsg) {
        match msg {
            LedgerMsg::Record(r) | LedgerMsg::Sampled { record: r, .. } => {
                self.append(r, Pending::None)
            }
            LedgerMsg::Estimate { record, input, .. } => {
                self.append(record, Pending::Estimate(approximate(input)))
            }
        }
    }

    /// Journals a record whose usage is still to be read from `body`, the response of `api`
    /// (`settle::seal_unread`).
    pub fn journal_unread(&self, record: &UsageRecord, api: Api, body: &[u8]) {
        self.append(record, Pending::Unread { api, body });
    }

    fn append(&self, record: &UsageRecord, pending: Pending<'_>) {
        let mut slot = self.journal.borrow_mut();
        let Some(j) = slot.as_mut() else { return };
        let written = j.append(record, pending);
        match written.map(|()| j.take_retired()) {
            Ok(retired) => {
                if self.failing.replace(false) {
                    tracing::info!("usage journal writes succeed again");
                }
                if let Some(retired) = retired {
                    drop(slot);
                    self.flush();
                    let _ = self.tx.send(ToWriter::Retire(retired));
                }
            }
            Err(e) => {
                if !self.failing.replace(true) {
                    tracing::error!(error = %e, "usage journal write failed; this record is not crash-safe (later records are retried)");
                }
            }
        }
    }

    /// Sends what is pending and retires the current journal segment (the worker is stopping).
    pub fn close(&self) {
        self.flush();
        if let Some(j) = self.journal.borrow_mut().take() {
            let _ = self.tx.send(ToWriter::Retire(j.current().to_path_buf()));
        }
    }

    /// Queues one message, journalling it first unless `journal` is false (settle already
    /// journalled it before the response's last byte); returns false if the writer is gone.
    pub fn push(self: &Rc<Self>, msg: LedgerMsg, journal: bool) -> bool {
        if journal {
            self.journal(&msg);
        }
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

/// Usage for a journalled record that still needs a tokenizer estimate, from what settle has
/// without tokenizing: prompt bytes / 4, and one token per relayed stream frame (providers send
/// about one token per content frame) or body bytes / 4. Only used if the agent crashes first.
fn approximate(input: &crate::metering::estimate::EstimateInput) -> Usage {
    let partial = input.partial.unwrap_or_default();
    let prompt_bytes: usize = input.prompt_spans.iter().map(|r| r.len()).sum();
    let output = if input.stream {
        input.response.len() as u64
    } else {
        (input.response.iter().map(|b| b.len()).sum::<usize>() / 4) as u64
    };
    Usage {
        input_tokens: partial.input_tokens.max((prompt_bytes / 4) as u64),
        output_tokens: partial.output_tokens.max(output),
        ..partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::UsageRecord;

    /// One record that cannot be journalled (here: larger than a segment) costs crash safety for
    /// that record only; the next one is journalled as usual.
    #[test]
    fn a_failed_journal_write_does_not_disable_the_journal() {
        let data = std::env::temp_dir().join(format!("tollgate-local-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let journal = Journal::open(&data, 0, 1).unwrap();
        let segment = journal.current().to_path_buf();
        let (tx, _rx) = std::sync::mpsc::channel();
        let local = LedgerLocal::new(tx, Some(journal));
        let mut huge = UsageRecord {
            id: "huge".into(),
            ..UsageRecord::default()
        };
        huge.identity.team = Some("t".repeat(2 << 20));
        local.journal(&LedgerMsg::Record(Box::new(huge)));
        let next = UsageRecord {
            id: "after-the-failure".into(),
            ..UsageRecord::default()
        };
        local.journal(&LedgerMsg::Record(Box::new(next)));
        let text = std::fs::read(&segment).unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains("after-the-failure"),
            "the journal stopped after one failure"
        );
        assert!(!text.contains("\"huge\""));
        let _ = std::fs::remove_dir_all(&data);
    }
}
