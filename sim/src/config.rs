//! Command line and runtime configuration.
//!
//! Parsing happens in two steps: [`Args`] is what clap reads (milliseconds as typed, every flag
//! optional), and [`Config`] is what the server runs with (validated, integer nanoseconds, faults
//! and timing grouped per subsystem). Nothing here runs per request.

use std::net::SocketAddr;

use clap::Parser;
use hyper::StatusCode;

/// Tokens a completion produces when the request sets no limit.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 16;
/// Largest completion the simulator generates, whatever the request asks for.
pub const MAX_COMPLETION_TOKENS: u64 = 4096;

/// `tollgate-sim` command line, as typed.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tollgate-sim",
    version,
    about = "OpenAI/Anthropic-compatible inference simulator that behaves like a vLLM replica"
)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (the bound one is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Served model name; repeat the flag to serve several.
    #[arg(long = "model", value_name = "NAME", required = true)]
    pub models: Vec<String>,
    /// A served model that answers like a Llama-Guard classifier: `safe`, or `unsafe` and a
    /// category line when the prompt contains a --guard-flag word. Repeatable.
    #[arg(long = "guard-model", value_name = "NAME")]
    pub guard_models: Vec<String>,
    /// A word (ASCII case-insensitive) that makes a guard model answer `unsafe`. Repeatable.
    #[arg(long = "guard-flag", value_name = "WORD")]
    pub guard_flags: Vec<String>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// No modelled latency at all (TTFT, ITL): reply as fast as possible.
    #[arg(long)]
    pub zero_delay: bool,
    /// Time to first token for a fully cached prompt, in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    pub ttft_base_ms: f64,
    /// Extra time to first token per uncached prompt token, in microseconds.
    #[arg(long, default_value_t = 100.0)]
    pub ttft_per_token_us: f64,
    /// Inter-token latency with a single running sequence, in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    pub itl_base_ms: f64,
    /// Extra inter-token latency per running sequence, in milliseconds.
    #[arg(long, default_value_t = 0.5)]
    pub itl_per_running_ms: f64,
    /// Sequences that run at once; later ones wait in a FIFO queue.
    #[arg(long, default_value_t = 64)]
    pub max_running: usize,
    /// Prefix cache capacity in blocks (0 disables the cache).
    #[arg(long, default_value_t = 4096)]
    pub prefix_cache_blocks: usize,
    /// Tokens per prefix cache block.
    #[arg(long, default_value_t = 16)]
    pub block_tokens: usize,
    /// Context window in tokens: longer prompt plus completion is rejected with 400.
    #[arg(long, default_value_t = 32768)]
    pub max_model_len: u64,
    /// Dimension of the vectors `/v1/embeddings` returns.
    #[arg(long, default_value_t = 16)]
    pub embedding_dim: usize,
    /// Never put usage in streaming responses, even when the client asks for it.
    #[arg(long)]
    pub no_stream_usage: bool,
    /// Serve no `/tokenize` (404), like an engine without one.
    #[arg(long)]
    pub no_tokenize: bool,
    /// `system_fingerprint` in chat completions (null without), as OpenAI sends one per
    /// backend configuration.
    #[arg(long)]
    pub system_fingerprint: Option<String>,
    /// Prompt bytes per token (the simulated tokenizer), for a tokenizer that changed.
    #[arg(long, default_value_t = 4)]
    pub bytes_per_token: usize,
    /// Fraction of inference requests that fail with --fail-status.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// HTTP status of failures drawn by --fail-rate.
    #[arg(long, default_value_t = 500)]
    pub fail_status: u16,
    /// Delay before every inference request is handled, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Reset the TCP connection after this many SSE frames (non-streams: before the response).
    #[arg(long, value_name = "N")]
    pub reset_after_chunks: Option<u64>,
    /// Seed for the --fail-rate draws (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

/// Why a command line was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// Validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub models: Vec<String>,
    /// Models that answer as classifiers (see [`Args::guard_models`]).
    pub guard_models: Vec<String>,
    /// Lower-cased words that make a guard model answer `unsafe`.
    pub guard_flags: Vec<String>,
    pub workers: usize,
    /// `None` under `--zero-delay`: nothing sleeps.
    pub timing: Option<Timing>,
    pub max_running: usize,
    pub cache: CacheConfig,
    pub max_model_len_tokens: u64,
    pub embedding_dim: usize,
    pub faults: FaultConfig,
    pub max_body_bytes: usize,
    /// `/tokenize` answers 404 (`--no-tokenize`).
    pub no_tokenize: bool,
    pub system_fingerprint: Option<String>,
    pub bytes_per_token: usize,
}

/// The latency model, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttft_base_ns: u64,
    pub ttft_per_token_ns: u64,
    pub itl_base_ns: u64,
    pub itl_per_running_ns: u64,
}

/// Prefix cache geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    pub capacity_blocks: usize,
    pub block_tokens: usize,
}

/// Faults injected into every request unless its headers say otherwise.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Probability in [0, 1].
    pub fail_rate: f64,
    pub fail_status: StatusCode,
    pub delay_ms: u64,
    pub reset_after_frames: Option<u64>,
    pub no_stream_usage: bool,
    pub seed: u64,
}

impl Config {
    /// Parses a command line (first item is the program name), as the binary does.
    pub fn from_cli<I, T>(argv: I) -> Result<Self, anyhow::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Ok(Self::try_from(Args::try_parse_from(argv)?)?)
    }
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        if let Some(empty) = args.models.iter().find(|m| m.is_empty()) {
            return Err(invalid("model", format!("empty model name {empty:?}")));
        }
        if args.workers == 0 {
            return Err(invalid("workers", "must be at least 1"));
        }
        if args.max_running == 0 || args.max_running > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(invalid(
                "max-running",
                format!(
                    "must be between 1 and {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                ),
            ));
        }
        if args.block_tokens == 0 {
            return Err(invalid("block-tokens", "must be at least 1"));
        }
        if args.bytes_per_token == 0 {
            return Err(invalid("bytes-per-token", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&args.fail_rate) {
            return Err(invalid("fail-rate", "must be between 0 and 1"));
        }
        let fail_status = StatusCode::from_u16(args.fail_status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .ok_or_else(|| invalid("fail-status", "must be an HTTP status from 400 to 599"))?;
        let timing = if args.zero_delay {
            None
        } else {
            Some(Timing {
                ttft_base_ns: nanos("ttft-base-ms", args.ttft_base_ms, 1e6)?,
                ttft_per_token_ns: nanos("ttft-per-token-us", args.ttft_per_token_us, 1e3)?,
                itl_base_ns: nanos("itl-base-ms", args.itl_base_ms, 1e6)?,
                itl_per_running_ns: nanos("itl-per-running-ms", args.itl_per_running_ms, 1e6)?,
            })
        };
        let seed = args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        if let Some(m) = args.guard_models.iter().find(|g| !args.models.contains(g)) {
            return Err(invalid(
                "--guard-model",
                format!("`{m}` is not a served model (add --model {m})"),
            ));
        }
        Ok(Config {
            listen: args.listen,
            models: args.models,
            guard_models: args.guard_models,
            guard_flags: args
                .guard_flags
                .iter()
                .map(|w| w.to_ascii_lowercase())
                .collect(),
            workers: args.workers,
            timing,
            max_running: args.max_running,
            cache: CacheConfig {
                capacity_blocks: args.prefix_cache_blocks,
                block_tokens: args.block_tokens,
            },
            max_model_len_tokens: args.max_model_len,
            embedding_dim: args.embedding_dim.max(1),
            faults: FaultConfig {
                fail_rate: args.fail_rate,
                fail_status,
                delay_ms: args.delay_ms,
                reset_after_frames: args.reset_after_chunks,
                no_stream_usage: args.no_stream_usage,
                seed,
            },
            max_body_bytes: args.max_body_bytes,
            no_tokenize: args.no_tokenize,
            system_fingerprint: args.system_fingerprint,
            bytes_per_token: args.bytes_per_token,
        })
    }
}

/// Converts a flag value to nanoseconds: finite, not negative, at most an hour.
fn nanos(flag: &'static str, value: f64, ns_per_unit: f64) -> Result<u64, ConfigError> {
    let ns = value * ns_per_unit;
    if !ns.is_finite() || !(0.0..=3.6e12).contains(&ns) {
        return Err(invalid(flag, "must be between 0 and one hour"));
    }
    Ok(ns.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_units() {
        let c = Config::from_cli(["sim", "--model", "m", "--ttft-per-token-us", "2.5"]).unwrap();
        let t = c.timing.unwrap();
        assert_eq!(t.ttft_base_ns, 20_000_000);
        assert_eq!(t.ttft_per_token_ns, 2_500);
        assert_eq!(c.cache.block_tokens, 16);
        assert_eq!(c.models, ["m"]);
    }

    #[test]
    fn zero_delay_and_bad_values() {
        let c = Config::from_cli(["sim", "--model", "m", "--zero-delay"]).unwrap();
        assert!(c.timing.is_none());
        assert!(Config::from_cli(["sim", "--model", "m", "--fail-rate", "2"]).is_err());
        assert!(Config::from_cli(["sim", "--model", "m", "--fail-status", "200"]).is_err());
        assert!(Config::from_cli(["sim", "--model", "m", "--itl-base-ms", "-1"]).is_err());
        assert!(Config::from_cli(["sim"]).is_err());
    }
}
