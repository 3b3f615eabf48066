//! `struct tg_usage`: the value of tg_cg_usage, tg_key_usage and tg_model_usage. Monotonic
//! totals the agent adds to when it settles a request; readers diff successive dumps.

/// `struct tg_usage`. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Prompt tokens served from a prefix cache.
    pub cached_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Requests settled.
    pub requests: u64,
    /// Priced cost in micro-USD (1e-6 USD).
    pub cost_micro_usd: u64,
}

const _: () = assert!(core::mem::size_of::<Usage>() == 40);

impl Usage {
    /// `self + delta`, field by field, saturating.
    pub fn saturating_add(&self, delta: &Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(delta.input_tokens),
            cached_tokens: self.cached_tokens.saturating_add(delta.cached_tokens),
            output_tokens: self.output_tokens.saturating_add(delta.output_tokens),
            requests: self.requests.saturating_add(delta.requests),
            cost_micro_usd: self.cost_micro_usd.saturating_add(delta.cost_micro_usd),
        }
    }
}

crate::impl_pod!(Usage);
