//! Which replica among a model's available targets (same priority group) serves a request:
//! `weighted` (a draw by weight), `round_robin`, `least_load`, or `prefix` (the default for a
//! model with several targets): prefix affinity, queue and KV-cache use in one score.
//!
//! **Prefix affinity.** The prompt is rendered as the engine sees it — each message's role and
//! text in order (system prompts, text parts), not the raw JSON bytes, so two clients that
//! escape or order fields differently still match — cut into fixed-size blocks, each hashed
//! (xxh3) chained over the one before and seeded with the model name, like the engines' own
//! prefix caches. A per-worker index maps each block hash to the set of providers it was
//! recently sent to (a bit per stable provider id) and when; entries older than the TTL do not
//! count, and the index is bounded (two generations, the older dropped whole). A replica's
//! match is its longest run of leading blocks: one probe per block, whatever the number of
//! replicas.
//!
//! **Load.** The engines' own figures (running + waiting, KV use) from the telemetry thread's
//! scrapes, ignored when older than three scrape intervals, plus this worker's own requests in
//! flight to the replica (which the scrape has not seen yet). A target's weight is its share of
//! capacity: queues are divided by it.
//!
//! **Score** = `weight_prefix` × matched fraction − `weight_queue` × queue − `weight_kv` × KV
//! use. When one candidate's queue is `imbalance` or more ahead of the shortest, the shortest
//! queue wins instead (affinity must not pile a hot session onto one replica). Ties go to a draw
//! by weight. The chosen replica's score and matched prefix ride in `ctx.route` to the ledger.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sonic_rs::{JsonContainerTrait, JsonValueTrait};

use crate::api::Api;
use crate::config::routing::{Balance, PrefixSettings};
use crate::telemetry::replicas::ReplicaBoard;

/// Providers an index entry can name (bits of a `u128`); higher ids get no affinity.
const MAX_PROVIDER_BITS: usize = 128;

#[derive(Clone, Copy)]
struct Entry {
    providers: u128,
    /// Seconds on the index's clock when a provider was last added.
    seen_s: u32,
}

type BlockMap = HashMap<u64, Entry, std::hash::BuildHasherDefault<IdentityHasher>>;

/// The per-worker prefix index, in two generations: new entries go to `current`; when it holds
/// half the bound, it becomes `previous` and the old `previous` is dropped whole. Lookups see
/// both, and an entry found in `previous` is carried into `current` when it is used again. So
/// the bound holds with O(1) work per block — no scan, no pause on the worker — and what is
/// dropped is what went unused for a whole generation (an approximate LRU).
pub struct PrefixIndex {
    current: BlockMap,
    previous: BlockMap,
    epoch: Instant,
}

/// Block hashes are already uniform: the map uses them as they are.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl Default for PrefixIndex {
    fn default() -> Self {
        PrefixIndex {
            current: BlockMap::default(),
            previous: BlockMap::default(),
            epoch: Instant::now(),
        }
    }
}

impl PrefixIndex {
    fn now_s(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, h: &u64) -> Option<&Entry> {
        self.current.get(h).or_else(|| self.previous.get(h))
    }

    /// Leading blocks of `hashes` each provider holds: `(provider id, blocks)` for every
    /// provider with at least one.
    pub fn matches(&self, hashes: &[u64], ttl: Duration) -> Vec<(usize, usize)> {
        let now = self.now_s();
        let ttl = ttl.as_secs() as u32;
        let mut alive = u128::MAX;
        let mut out = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            let here = match self.get(h) {
                Some(e) if now.saturating_sub(e.seen_s) <= ttl => e.providers,
                _ => 0,
            };
            let dropped = alive & !here;
            push_bits(dropped, i, &mut out);
            alive &= here;
            if alive == 0 {
                return out;
            }
        }
        push_bits(alive, hashes.len(), &mut out);
        out
    }

    /// Notes that `hashes` were sent to `provider`; returns how many new entries were made.
    pub fn record(&mut self, hashes: &[u64], provider: usize, max_blocks: usize) -> usize {
        if provider >= MAX_PROVIDER_BITS {
            return 0;
        }
        // A prompt longer than a generation keeps its leading blocks: the prefix is what matches.
        let hashes = &hashes[..hashes.len().min(max_blocks / 2)];
        let now = self.now_s();
        if self.current.len() + hashes.len() > max_blocks / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
        let before = self.current.len();
        for h in hashes {
            let carried = self.previous.get(h).map_or(0, |e| e.providers);
            let e = self.current.entry(*h).or_insert(Entry {
                providers: carried,
                seen_s: now,
            });
            e.providers |= 1 << provider;
            e.seen_s = now;
        }
        self.current.len() - before
    }
}

fn push_bits(mut bits: u128, blocks: usize, out: &mut Vec<(usize, usize)>) {
    if blocks == 0 {
        return;
    }
    while bits != 0 {
        let p = bits.trailing_zeros() as usize;
        out.push((p, blocks));
        bits &= bits - 1;
    }
}

/// The prompt as the engine sees it: each message's role and text, in order. One pass over
/// the top-level object picks the fields that carry the prompt (a `get` per absent field would
/// cost an error value each).
pub fn render_prompt(api: Api, body: &[u8]) -> String {
    let mut out = String::new();
    let text_of = |v: &sonic_rs::Value, out: &mut String| {
        if let Some(s) = v.as_str() {
            out.push_str(s);
        } else if let Some(parts) = v.as_array() {
            for p in parts.iter() {
                if let Some(t) = p.get("text").and_then(|t| t.as_str()) {
                    out.push_str(t);
                }
            }
        }
    };
    let parse = |raw: &str| sonic_rs::from_str::<sonic_rs::Value>(raw).ok();
    let (mut system, mut list, mut prompt) = (Vec::new(), None, None);
    for (key, value) in sonic_rs::to_object_iter(body).flatten() {
        match key.as_ref() {
            "system" | "instructions" => system.extend(parse(value.as_raw_str())),
            "messages" | "input" => list = parse(value.as_raw_str()),
            "prompt" => prompt = parse(value.as_raw_str()),
            _ => {}
        }
    }
    match api {
        Api::Embeddings => {}
        Api::Completions => {
            if let Some(p) = &prompt {
                text_of(p, &mut out);
            }
        }
        _ => {
            for s in &system {
                out.push_str("system\n");
                text_of(s, &mut out);
                out.push('\n');
            }
            match list.as_ref().and_then(|l| l.as_array()) {
                Some(messages) => {
                    for m in messages.iter() {
                        out.push_str(m.get("role").and_then(|r| r.as_str()).unwrap_or(""));
                        out.push('\n');
                        if let Some(c) = m.get("content") {
                            text_of(c, &mut out);
                        }
                        out.push('\n');
                    }
                }
                None => {
                    if let Some(s) = list.as_ref().and_then(|l| l.as_str()) {
                        out.push_str(s);
                    }
                }
            }
        }
    }
    out
}

/// Chained block hashes of `text`, seeded with `model`; a trailing partial block gets none.
pub fn block_hashes(model: &str, text: &[u8], block_bytes: usize) -> Vec<u64> {
    if block_bytes == 0 {
        return Vec::new();
    }
    let mut previous = xxhash_rust::xxh3::xxh3_64(model.as_bytes());
    text.chunks_exact(block_bytes)
        .map(|block| {
            previous = xxhash_rust::xxh3::xxh3_64_with_seed(block, previous);
            previous
        })
        .collect()
}

/// A worker's prefix index as the admin listener sees it.
pub type SharedIndex = Arc<Mutex<PrefixIndex>>;

/// Per-worker balancing state.
pub struct BalanceLocal {
    /// Locked only by this worker, and by the admin thread's `predict` (rarely).
    pub index: SharedIndex,
    /// Requests this worker has in flight, by stable provider id.
    inflight: Rc<RefCell<Vec<u32>>>,
    rr: Cell<u64>,
    pub replicas: Arc<ReplicaBoard>,
    /// Prefix lookups and lookups whose chosen replica matched (published to `/metrics`).
    pub lookups: Cell<u64>,
    pub hits: Cell<u64>,
}

impl BalanceLocal {
    pub fn new(replicas: Arc<ReplicaBoard>) -> Self {
        BalanceLocal {
            index: Arc::default(),
            inflight: Rc::default(),
            rr: Cell::new(0),
            replicas,
            lookups: Cell::new(0),
            hits: Cell::new(0),
        }
    }

    /// The prefix index (a poisoned lock still holds a consistent index: every change is one
    /// map operation).
    pub fn index(&self) -> MutexGuard<'_, PrefixIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request in flight to `provider_id` until the guard is dropped.
    pub fn start(&self, provider_id: usize) -> Inflight {
        let mut v = self.inflight.borrow_mut();
        if v.len() <= provider_id {
            v.resize(provider_id + 1, 0);
        }
        v[provider_id] += 1;
        Inflight {
            counts: self.inflight.clone(),
            provider_id,
        }
    }

    /// A replica's queue (the engine's running + waiting when its scrape is fresh, plus this
    /// worker's requests in flight there) and its KV-cache use.
    pub fn load(
        &self,
        board: &[crate::telemetry::replicas::ReplicaState],
        c: &Candidate,
        stale_after: Duration,
    ) -> (f64, f64) {
        let scraped = board
            .iter()
            .find(|r| r.provider_index == c.provider_index)
            .filter(|r| r.updated.is_some_and(|t| t.elapsed() <= stale_after))
            .and_then(|r| r.load);
        let (queue, kv) = scraped.map_or((0.0, 0.0), |l| {
            (l.running + l.waiting, l.kv_cache_ratio.unwrap_or(0.0))
        });
        (queue + f64::from(self.inflight(c.provider_id)), kv)
    }

    fn inflight(&self, provider_id: usize) -> u32 {
        self.inflight
            .borrow()
            .get(provider_id)
            .copied()
            .unwrap_or(0)
    }
}

/// A request in flight to a provider (decremented on drop).
pub struct Inflight {
    counts: Rc<RefCell<Vec<u32>>>,
    provider_id: usize,
}

impl std::fmt::Debug for Inflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inflight({})", self.provider_id)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        if let Some(c) = self.counts.borrow_mut().get_mut(self.provider_id) {
            *c = c.saturating_sub(1);
        }
    }
}

/// One candidate as the balancer sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// Index among the model's targets.
    pub target: usize,
    /// Index into `Config::providers` (the replica board's key).
    pub provider_index: usize,
    /// Stable provider id (the prefix index's and in-flight counters' key).
    pub provider_id: usize,
    pub weight: u32,
}

/// What the balancer decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    pub target: usize,
    /// Matched prefix, bytes of rendered prompt.
    pub prefix_bytes: u64,
    pub score: Option<f32>,
}

/// The prompt's block hashes, when the strategy needs them (computed once per request).
pub struct Prompt {
    pub hashes: Vec<u64>,
}

/// Picks among `cands` (at least two) by `balance`. `draw(total)` is the weighted draw.
pub fn pick(
    balance: Balance,
    settings: &PrefixSettings,
    local: &BalanceLocal,
    cands: &[Candidate],
    prompt: Option<&Prompt>,
    draw: &dyn Fn(u64) -> u64,
) -> Choice {
    let weighted = |subset: &[Candidate]| -> usize {
        let total: u64 = subset.iter().map(|c| u64::from(c.weight)).sum();
        let mut r = draw(total.max(1));
        for c in subset {
            if r < u64::from(c.weight) {
                return c.target;
            }
            r -= u64::from(c.weight);
        }
        subset.last().map_or(0, |c| c.target)
    };
    let plain = |target| Choice {
        target,
        prefix_bytes: 0,
        score: None,
    };
    match balance {
        Balance::Weighted => plain(weighted(cands)),
        Balance::RoundRobin => {
            let n = local.rr.get();
            local.rr.set(n.wrapping_add(1));
            plain(cands[(n % cands.len() as u64) as usize].target)
        }
        Balance::LeastLoad | Balance::Prefix => {
            let board = local.replicas.load();
            let load = |c: &Candidate| local.load(&board, c, settings.stale_after);
            let mean_weight =
                cands.iter().map(|c| f64::from(c.weight)).sum::<f64>() / cands.len() as f64;
            let queues: Vec<(f64, f64)> = cands
                .iter()
                .map(|c| {
                    let (q, kv) = load(c);
                    (q * mean_weight / f64::from(c.weight.max(1)), kv)
                })
                .collect();
            let shortest = queues.iter().map(|q| q.0).fold(f64::INFINITY, f64::min);
            let longest = queues.iter().map(|q| q.0).fold(0.0, f64::max);
            let matched: Vec<(usize, usize)> = match (balance, prompt) {
                (Balance::Prefix, Some(p)) if !p.hashes.is_empty() => {
                    local.index().matches(&p.hashes, settings.ttl)
                }
                _ => Vec::new(),
            };
            let blocks = prompt.map_or(0, |p| p.hashes.len()).max(1);
            let matched_blocks = |c: &Candidate| {
                matched
                    .iter()
                    .find(|(p, _)| *p == c.provider_id)
                    .map_or(0, |(_, b)| *b)
            };
            let imbalanced = longest - shortest >= settings.imbalance;
            let scores: Vec<f64> = cands
                .iter()
                .zip(&queues)
                .map(|(c, (q, kv))| {
                    if balance == Balance::LeastLoad || imbalanced {
                        return -q;
                    }
                    settings.weight_prefix * matched_blocks(c) as f64 / blocks as f64
                        - settings.weight_queue * q
                        - settings.weight_kv * kv
                })
                .collect();
            let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let tied: Vec<Candidate> = cands
                .iter()
                .zip(&scores)
                .filter(|(_, s)| best - **s <= 1e-9)
                .map(|(c, _)| *c)
                .collect();
            let target = weighted(&tied);
            let chosen = cands.iter().find(|c| c.target == target).copied();
            let prefix_bytes =
                chosen.map_or(0, |c| (matched_blocks(&c) * settings.block_bytes) as u64);
            if balance == Balance::Prefix {
                local.lookups.set(local.lookups.get() + 1);
                local
                    .hits
                    .set(local.hits.get() + u64::from(prefix_bytes > 0));
            }
            Choice {
                target,
                prefix_bytes,
                score: Some(best as f32),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_each_providers_longest_prefix() {
        let text = "x".repeat(1000);
        let a = block_hashes("m", text.as_bytes(), 100);
        assert_eq!(a.len(), 10);
        let mut idx = PrefixIndex::default();
        idx.record(&a[..6], 3, 1000);
        idx.record(&a[..2], 5, 1000);
        let mut m = idx.matches(&a, Duration::from_secs(60));
        m.sort_unstable();
        assert_eq!(m, vec![(3, 6), (5, 2)]);
        // Another model's hashes share nothing.
        let b = block_hashes("other", text.as_bytes(), 100);
        assert!(idx.matches(&b, Duration::from_secs(60)).is_empty());
        // Bounded: recording past the bound drops the older generation; what was used in the
        // current one survives the turn.
        let mut small = PrefixIndex::default();
        let kept = block_hashes("kept", text.as_bytes(), 100);
        for i in 0..50 {
            let h = block_hashes(&format!("m{i}"), text.as_bytes(), 100);
            small.record(&h, 1, 40);
            small.record(&kept, 2, 40);
            assert!(small.len() <= 40, "{}", small.len());
        }
        assert_eq!(small.matches(&kept, Duration::from_secs(60)), vec![(2, 10)]);
        // A prompt longer than a generation keeps its leading blocks.
        let long = block_hashes("long", "y".repeat(10_000).as_bytes(), 100);
        let mut one = PrefixIndex::default();
        one.record(&long, 4, 40);
        assert!(one.len() <= 20);
        assert_eq!(one.matches(&long, Duration::from_secs(60)), vec![(4, 20)]);
    }

    fn cands() -> Vec<Candidate> {
        (0..3)
            .map(|i| Candidate {
                target: i,
                provider_index: i,
                provider_id: 10 + i,
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn prefix_affinity_then_the_imbalance_guard_then_least_load() {
        let local = BalanceLocal::new(Arc::default());
        let settings = PrefixSettings::default();
        let text = "a long shared system prompt ".repeat(100);
        let prompt = Prompt {
            hashes: block_hashes("m", text.as_bytes(), settings.block_bytes),
        };
        local
            .index()
            .record(&prompt.hashes, 11, settings.max_blocks);
        let first = |_: u64| 0;
        let c = pick(
            Balance::Prefix,
            &settings,
            &local,
            &cands(),
            Some(&prompt),
            &first,
        );
        assert_eq!(c.target, 1, "the replica holding the prefix");
        assert_eq!(
            c.prefix_bytes,
            (prompt.hashes.len() * settings.block_bytes) as u64
        );
        assert_eq!((local.lookups.get(), local.hits.get()), (1, 1));
        // A few requests in flight there: affinity still wins (score 1 - 0.05 * 4 > 0)...
        let held: Vec<Inflight> = (0..4).map(|_| local.start(11)).collect();
        let c = pick(
            Balance::Prefix,
            &settings,
            &local,
            &cands(),
            Some(&prompt),
            &first,
        );
        assert_eq!(c.target, 1);
        // ... but a queue `imbalance` ahead of the shortest sends it elsewhere.
        let more: Vec<Inflight> = (0..4).map(|_| local.start(11)).collect();
        let c = pick(
            Balance::Prefix,
            &settings,
            &local,
            &cands(),
            Some(&prompt),
            &first,
        );
        assert_ne!(c.target, 1);
        assert_eq!(c.prefix_bytes, 0);
        // least_load ignores the prefix; dropping the guards empties the queue.
        let c = pick(
            Balance::LeastLoad,
            &settings,
            &local,
            &cands(),
            None,
            &first,
        );
        assert_ne!(c.target, 1);
        drop((held, more));
        let last = |t: u64| t - 1;
        let c = pick(Balance::LeastLoad, &settings, &local, &cands(), None, &last);
        assert_eq!(c.target, 2, "all idle: the draw decides among the tie");
        // round_robin cycles.
        let order: Vec<usize> = (0..4)
            .map(|_| {
                pick(
                    Balance::RoundRobin,
                    &settings,
                    &local,
                    &cands(),
                    None,
                    &first,
                )
                .target
            })
            .collect();
        assert_eq!(order, vec![0, 1, 2, 0]);
    }

    #[test]
    fn scraped_load_steers_least_load_and_stale_figures_do_not() {
        use crate::telemetry::replicas::{EngineLoad, ReplicaState};
        let board = Arc::new(ReplicaBoard::default());
        let state = |i: usize, waiting: f64, age: Duration| ReplicaState {
            provider: format!("r{i}"),
            provider_index: i,
            load: Some(EngineLoad {
                running: 0.0,
                waiting,
                kv_cache_ratio: None,
            }),
            updated: Instant::now().checked_sub(age),
            errors_total: 0,
            last_error: None,
        };
        let settings = PrefixSettings::default();
        let local = BalanceLocal::new(board.clone());
        let first = |_: u64| 0;
        // Replica 0 reports a long queue: the others are preferred.
        board.publish(vec![
            state(0, 50.0, Duration::ZERO),
            state(1, 0.0, Duration::ZERO),
        ]);
        let c = pick(
            Balance::LeastLoad,
            &settings,
            &local,
            &cands(),
            None,
            &first,
        );
        assert_ne!(c.target, 0);
        // The same figure ten seconds old steers nothing: a tie, the draw picks the first.
        board.publish(vec![state(0, 50.0, Duration::from_secs(10))]);
        let c = pick(
            Balance::LeastLoad,
            &settings,
            &local,
            &cands(),
            None,
            &first,
        );
        assert_eq!(c.target, 0);
    }

    #[test]
    fn the_rendered_prompt_ignores_json_spelling() {
        let a = br#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}]}"#;
        let b = br#"{"messages":[{"content":"Be brief.","role":"system"},{"content":[{"type":"text","text":"h\u0069"}],"role":"user"}],"model":"m"}"#;
        assert_eq!(
            render_prompt(Api::ChatCompletions, a),
            render_prompt(Api::ChatCompletions, b)
        );
        assert_eq!(
            render_prompt(Api::ChatCompletions, a),
            "system\nBe brief.\nuser\nhi\n"
        );
        let anthropic = br#"{"system":"S","messages":[{"role":"user","content":"q"}]}"#;
        assert_eq!(
            render_prompt(Api::Messages, anthropic),
            "system\nS\nuser\nq\n"
        );
    }
}
