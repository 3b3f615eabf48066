//! The scheduler and latency model: what makes the simulator behave like a loaded vLLM replica.
//!
//! At most `--max-running` sequences run at once; the rest wait in FIFO order on a semaphore (the
//! `waiting` gauge). A running [`Sequence`] first prefills: it looks its prompt's blocks up in the
//! prefix cache, sleeps for a time to first token that grows with the *uncached* prompt tokens,
//! then adds its blocks to the cache. Each later token waits an inter-token latency that grows
//! with the number of running sequences. Under `--zero-delay` nothing sleeps, but scheduling, the
//! cache and the counters work the same. Dropping a sequence (client gone, reset) frees its slot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{Config, Timing};
use crate::error::SimError;
use crate::metrics::{Finish, Metrics, ModelMetrics};
use crate::prefix_cache::{block_hashes, PrefixCache};
use crate::textgen::hash_bytes;

/// A prompt as the engine sees it.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// The bytes that count as tokens and get hashed into cache blocks.
    pub text: Vec<u8>,
    pub tokens: u64,
}

impl Prompt {
    pub fn from_text(text: Vec<u8>) -> Self {
        let tokens = crate::textgen::count_tokens(text.len());
        Prompt { text, tokens }
    }

    /// Counts the prompt again under `--bytes-per-token` (the default is [`from_text`]'s).
    pub fn retokenize(&mut self, bytes_per_token: usize) {
        self.tokens = crate::textgen::count_tokens_at(self.text.len(), bytes_per_token);
    }

    /// Seed of the generated text: same prompt, same output.
    pub fn seed(&self) -> u64 {
        hash_bytes(0, &self.text)
    }
}

/// What the prefix cache did for one prompt, in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Leading prompt tokens found in the cache.
    pub cached_tokens: u64,
    /// Prompt tokens of blocks this request added to the cache.
    pub created_tokens: u64,
}

/// Shared by every request; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    timing: Option<Timing>,
    slots: Arc<Semaphore>,
    /// Running sequences of all models: the batch size that slows decoding.
    running: AtomicU64,
    cache: Mutex<PrefixCache>,
    block_tokens: u64,
    /// Prompt bytes per token: a cache block is `block_tokens` of them.
    bytes_per_token: usize,
    /// Cache salt per model, so that models never share blocks.
    model_salts: Vec<u64>,
    metrics: Arc<Metrics>,
}

impl Engine {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        Engine {
            inner: Arc::new(Inner {
                timing: config.timing,
                slots: Arc::new(Semaphore::new(config.max_running)),
                running: AtomicU64::new(0),
                cache: Mutex::new(PrefixCache::new(config.cache.capacity_blocks)),
                block_tokens: config.cache.block_tokens as u64,
                bytes_per_token: config.bytes_per_token.max(1),
                model_salts: config
                    .models
                    .iter()
                    .map(|m| hash_bytes(1, m.as_bytes()))
                    .collect(),
                metrics,
            }),
        }
    }

    /// Waits (FIFO) for a running slot for a request to model `model` (an index into `--model`).
    pub async fn schedule(&self, model: usize) -> Result<Sequence, SimError> {
        let arrived = Instant::now();
        let counters = self.inner.metrics.model(model);
        let permit = {
            let _waiting = GaugeGuard::raise(&counters.waiting);
            self.inner
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SimError::ShuttingDown)?
        };
        self.inner.running.fetch_add(1, Relaxed);
        counters.running.fetch_add(1, Relaxed);
        Ok(Sequence {
            engine: self.clone(),
            model,
            arrived,
            _permit: permit,
        })
    }

    /// Fraction of the prefix cache in use, 0 to 1 (`vllm:kv_cache_usage_perc`).
    pub fn kv_usage(&self) -> f64 {
        let cache = self.cache();
        match cache.capacity_blocks() {
            0 => 0.0,
            capacity => cache.len_blocks() as f64 / capacity as f64,
        }
    }

    fn cache(&self) -> MutexGuard<'_, PrefixCache> {
        // A panic while holding the lock cannot leave the LRU half-linked in a way that matters
        // more than serving on; keep going with whatever it holds.
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One request holding a running slot. Dropping it frees the slot.
pub struct Sequence {
    engine: Engine,
    model: usize,
    arrived: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Sequence {
    fn counters(&self) -> &ModelMetrics {
        self.engine.inner.metrics.model(self.model)
    }

    /// Prefills `prompt`: cache lookup, time to first token for the uncached part, cache insert.
    /// `cacheable` is false for requests that never use the prefix cache (embeddings).
    pub async fn prefill(&mut self, prompt: &Prompt, cacheable: bool) -> CacheUsage {
        let inner = &self.engine.inner;
        let block_tokens = inner.block_tokens;
        let bytes_per_token = inner.bytes_per_token;
        let blocks = if cacheable {
            let salt = inner
                .model_salts
                .get(self.model)
                .copied()
                .unwrap_or_default();
            block_hashes(salt, &prompt.text, block_tokens as usize * bytes_per_token)
        } else {
            Vec::new()
        };
        // Like vLLM, at least the last prompt token is always computed.
        let max_hit_blocks = (prompt.tokens.saturating_sub(1) / block_tokens) as usize;
        let hit_blocks = self
            .engine
            .cache()
            .lookup(&blocks[..blocks.len().min(max_hit_blocks)]);
        let cached_tokens = hit_blocks as u64 * block_tokens;

        if let Some(timing) = inner.timing {
            tokio::time::sleep(ttft(&timing, prompt.tokens - cached_tokens)).await;
        }
        let created_blocks = self.engine.cache().insert(&blocks);

        let counters = self.counters();
        counters.prompt_tokens.fetch_add(prompt.tokens, Relaxed);
        if cacheable {
            counters
                .prefix_queries_tokens
                .fetch_add(prompt.tokens, Relaxed);
            counters
                .prefix_hits_tokens
                .fetch_add(cached_tokens, Relaxed);
        }
        counters.observe_ttft(self.arrived.elapsed());
        CacheUsage {
            cached_tokens,
            created_tokens: created_blocks as u64 * block_tokens,
        }
    }

    /// The wait before the next token, given how many sequences run now; `None` under zero delay.
    pub fn token_interval(&self) -> Option<Duration> {
        let inner = &self.engine.inner;
        let timing = inner.timing?;
        let running = inner.running.load(Relaxed);
        Some(Duration::from_nanos(timing.itl_base_ns.saturating_add(
            timing.itl_per_running_ns.saturating_mul(running),
        )))
    }

    /// Decodes `tokens` tokens without streaming them; the first came with the prefill.
    pub async fn decode(&self, tokens: u64) {
        let mut step_at = Instant::now();
        for _ in 1..tokens {
            let Some(interval) = self.token_interval() else {
                return;
            };
            step_at += interval;
            tokio::time::sleep_until(step_at).await;
        }
    }

    /// Records a successful finish; the slot is freed as the sequence drops.
    pub fn finish(self, finish: Finish, generated_tokens: u64) {
        self.counters().finished(finish, generated_tokens);
    }
}

impl Drop for Sequence {
    fn drop(&mut self) {
        self.engine.inner.running.fetch_sub(1, Relaxed);
        self.counters().running.fetch_sub(1, Relaxed);
    }
}

fn ttft(timing: &Timing, uncached_tokens: u64) -> Duration {
    Duration::from_nanos(
        timing
            .ttft_base_ns
            .saturating_add(timing.ttft_per_token_ns.saturating_mul(uncached_tokens)),
    )
}

/// Raises a gauge for as long as it lives (also when the future holding it is dropped).
struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    fn raise(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Relaxed);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(args: &[&str]) -> (Engine, Arc<Metrics>) {
        let mut argv = vec!["sim", "--model", "m", "--zero-delay"];
        argv.extend_from_slice(args);
        let config = Config::from_cli(argv).unwrap();
        let metrics = Arc::new(Metrics::new(&config.models));
        (Engine::new(&config, metrics.clone()), metrics)
    }

    #[tokio::test]
    async fn second_identical_prompt_hits_the_cache() {
        let (engine, metrics) = engine(&[]);
        // 400 bytes = 100 tokens = 6 full blocks of 16 tokens (64 bytes) and a partial one.
        let prompt = Prompt::from_text(vec![b'a'; 400]);
        let mut seq = engine.schedule(0).await.unwrap();
        let first = seq.prefill(&prompt, true).await;
        assert_eq!(
            first,
            CacheUsage {
                cached_tokens: 0,
                created_tokens: 96
            }
        );
        seq.finish(Finish::Stop, 16);
        let mut seq = engine.schedule(0).await.unwrap();
        let second = seq.prefill(&prompt, true).await;
        assert_eq!(
            second,
            CacheUsage {
                cached_tokens: 96,
                created_tokens: 0
            }
        );
        drop(seq);
        let m = metrics.model(0);
        assert_eq!(m.prefix_queries_tokens.load(Relaxed), 200);
        assert_eq!(m.prefix_hits_tokens.load(Relaxed), 96);
        assert_eq!(m.running.load(Relaxed), 0);
        assert!((engine.kv_usage() - 6.0 / 4096.0).abs() < 1e-12);
    }

    #[tokio::test]
    async fn a_fully_cached_prompt_still_computes_its_last_block() {
        let (engine, _) = engine(&[]);
        // Exactly two blocks: the second is never reported as cached.
        let prompt = Prompt::from_text(vec![b'b'; 128]);
        engine
            .schedule(0)
            .await
            .unwrap()
            .prefill(&prompt, true)
            .await;
        let usage = engine
            .schedule(0)
            .await
            .unwrap()
            .prefill(&prompt, true)
            .await;
        assert_eq!(usage.cached_tokens, 16);
        assert!(usage.cached_tokens < prompt.tokens);
    }

    #[tokio::test]
    async fn waiting_requests_queue_behind_running_ones() {
        let (engine, metrics) = engine(&["--max-running", "1"]);
        let first = engine.schedule(0).await.unwrap();
        let queued = tokio::spawn({
            let engine = engine.clone();
            async move { engine.schedule(0).await.map(drop) }
        });
        while metrics.model(0).waiting.load(Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.model(0).running.load(Relaxed), 1);
        drop(first);
        queued.await.unwrap().unwrap();
        assert_eq!(metrics.model(0).waiting.load(Relaxed), 0);
        assert_eq!(metrics.model(0).running.load(Relaxed), 0);
    }
}
