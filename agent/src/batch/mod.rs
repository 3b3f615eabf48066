//! The OpenAI Batch API on the node's own replicas: `/v1/files` (purpose `batch`) and
//! `/v1/batches`, as the OpenAI SDKs call them on their `base_url`.
//!
//! Why it is built this way:
//! - **Every line is an ordinary request.** The runner (`runner.rs`) sends each line through
//!   the agent's own client listener on loopback, so a batch is admitted, limited, budgeted,
//!   routed, metered and written to the ledger exactly like a client's request, at the `batch`
//!   priority class (`x-tollgate-priority: batch`: it waits while the replicas are busy, see
//!   `phase/route/batch.rs`). Nothing here re-implements a phase.
//! - **No stored secrets.** A line authenticates as the batch's owner with a per-process
//!   random token ([`internal_token`], memory only) plus `x-tollgate-on-behalf-of: <key id>`,
//!   accepted only from a loopback peer (`phase/admit/auth.rs`). The identity headers sent
//!   when the batch was created go with each line (in open mode they are all there is).
//! - **Workers never touch the disk.** The HTTP handlers (`api.rs`) run on the batch thread;
//!   a worker hands it the request and polls for the reply (monoio without `sync` cannot be
//!   woken from another thread; these are rare control-plane calls).
//! - **A restart resumes.** Job state lives in `data_dir/batch.sqlite` (`store.rs`), files
//!   under `data_dir/files/`. A line's result is appended to its output or error file and
//!   fsynced before anything else; at resume the files (torn tail dropped) say which lines
//!   are done, so a line whose result was recorded is never sent again, and a line that was in
//!   flight at a crash is sent again (its first attempt may have been served and billed).
//!
//! Not on the hot path: only `pipeline::handle` looks at the path to dispatch here.

pub mod api;
pub mod input;
pub mod multipart;
pub mod runner;
pub mod store;

use std::sync::mpsc::Sender;

/// Endpoints a batch line may call (OpenAI's list, minus those Tollgate does not proxy).
pub const ENDPOINTS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
];

/// Lines a batch may hold at most (OpenAI's limit).
pub const MAX_LINES: usize = 50_000;

/// How the workers reach the batch thread.
pub struct Handle {
    pub tx: Sender<runner::Msg>,
}

/// `prefix` + `n` random base62 characters from the OS generator (ids like OpenAI's).
pub fn random_id(prefix: &str, n: usize) -> std::io::Result<String> {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(prefix.len() + n);
    out.push_str(prefix);
    let mut buf = [0u8; 64];
    while out.len() < prefix.len() + n {
        getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
        // 248 = 4 × 62: rejecting the rest keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == prefix.len() + n {
                break;
            }
            out.push(DIGITS[usize::from(*b % 62)] as char);
        }
    }
    Ok(out)
}

/// How the runner's credential starts (never a virtual key's `tg-`).
pub const INTERNAL_PREFIX: &str = "tgi-";

/// The runner's credential for this process: `tgi-` + 32 random bytes (hex). Never stored or
/// logged; a restart makes a new one.
pub fn internal_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut out = String::from(INTERNAL_PREFIX);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

/// Seconds since the Unix epoch (the API's timestamps).
pub fn now_s() -> i64 {
    crate::governance::window::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_well_formed() {
        let a = random_id("batch_", 24).unwrap_or_else(|e| panic!("{e}"));
        let b = random_id("batch_", 24).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 30);
        assert!(a[6..].bytes().all(|c| c.is_ascii_alphanumeric()));
        let t = internal_token().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.len(), 4 + 64);
        assert!(!t.starts_with(crate::governance::keys::KEY_PREFIX));
    }
}
