//! Metering: what a request consumed. `usage` reads the provider's own numbers (plain bodies and
//! stream frames), `sse` splits event streams into frames without copying, `estimate` counts
//! tokens with a BPE tokenizer when the provider reported nothing (off the request path), or asks
//! the serving engine's `/tokenize` (`engine_tokenize`).

pub mod engine_tokenize;
pub mod estimate;
mod one_pass;
pub mod prices;
pub mod sse;
pub mod tokenizer;
pub mod usage;

pub use usage::{Usage, UsageAccumulator};
