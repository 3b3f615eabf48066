//! The exact response cache: answers a repeated request with the bytes the client got the
//! first time, so the same tokens are never paid for twice.
//!
//! One store for all workers (a hit on one core serves a request first answered on another),
//! bounded by bytes and evicted by `quick_cache`'s CLOCK-Pro policy; its shards take a short lock
//! per lookup, never held across I/O. Entries expire after the TTL in force when read.
//!
//! The key is a SHA-256 over the cache scope (key id, team or nothing), the API, the model that
//! serves, whether the response streams, and the request body in canonical form (keys sorted,
//! whitespace gone, `model`/`stream`/`stream_options` left out): two tenants never share an
//! entry, and a collision cannot be forged to read another tenant's answer. What is stored is
//! exactly what the client received (after guardrail restoring and translation), so a hit
//! replays a well-formed body or stream.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::api::Api;
use crate::config::CacheScope;
use crate::metering::Usage;

/// A cache key.
pub type Key = [u8; 32];

/// One stored response.
pub struct Entry {
    /// The body as the client received it (JSON, or the event stream's frames).
    pub body: Bytes,
    pub stream: bool,
    /// What the original request used: what a hit saves.
    pub usage: Usage,
    pub stored_at: Instant,
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Key, Arc<Entry>> for Weigh {
    fn weight(&self, _key: &Key, e: &Arc<Entry>) -> u64 {
        // The body plus the bookkeeping around it.
        e.body.len() as u64 + 128
    }
}

/// The shared store.
pub struct ExactCache {
    inner: quick_cache::sync::Cache<Key, Arc<Entry>, Weigh>,
}

impl ExactCache {
    pub fn new(max_bytes: u64) -> ExactCache {
        // quick_cache sizes its shards from an item estimate: assume 8 KiB per response.
        let items = (max_bytes / 8192).clamp(16, 1 << 20) as usize;
        ExactCache {
            inner: quick_cache::sync::Cache::with_weighter(items, max_bytes, Weigh),
        }
    }

    /// The entry for `key`, if it is younger than `ttl`.
    pub fn get(&self, key: &Key, ttl: std::time::Duration) -> Option<Arc<Entry>> {
        let e = self.inner.get(key)?;
        if e.stored_at.elapsed() < ttl {
            Some(e)
        } else {
            self.inner.remove(key);
            None
        }
    }

    pub fn put(&self, key: Key, e: Entry) {
        self.inner.insert(key, Arc::new(e));
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Bytes held now (the weight the bound applies to).
    pub fn bytes(&self) -> u64 {
        self.inner.weight()
    }
}

/// What a request is, for the key.
pub struct KeyParts<'a> {
    pub scope: CacheScope,
    pub key_id: Option<&'a str>,
    pub team: Option<&'a str>,
    pub api: Api,
    pub model: &'a str,
    pub stream: bool,
    pub body: &'a [u8],
}

/// The key of a request, or `None` when its body is not a JSON object (inspect has already
/// refused those; this is defence, not a path).
pub fn key_of(p: &KeyParts<'_>) -> Option<Key> {
    key_of_value(p, serde_json::from_slice(p.body).ok()?)
}

/// [`key_of`] over the already parsed body `v` (`p.body` is not read).
fn key_of_value(p: &KeyParts<'_>, mut v: serde_json::Value) -> Option<Key> {
    let obj = v.as_object_mut()?;
    for k in ["model", "stream", "stream_options"] {
        obj.remove(k);
    }
    // serde_json's map is ordered by key: this is the canonical form.
    let canonical = serde_json::to_vec(&v).ok()?;
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, s: &[u8]| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s);
    };
    let (kind, owner) = match p.scope {
        CacheScope::Key => ("key", p.key_id),
        CacheScope::Team => ("team", p.team),
        CacheScope::Global => ("global", None),
    };
    field(&mut h, kind.as_bytes());
    field(&mut h, owner.unwrap_or("").as_bytes());
    field(&mut h, &[u8::from(owner.is_some())]);
    field(&mut h, p.api.label().as_bytes());
    field(&mut h, p.model.as_bytes());
    field(&mut h, &[u8::from(p.stream)]);
    field(&mut h, &canonical);
    Some(h.finalize().into())
}

/// A chat request's semantic-cache bucket and the text to embed: the bucket is the exact key
/// of the request with the last user turn's text blanked (same scope, API, model, stream flag,
/// system prompt, earlier turns and parameters), and the text is that turn's. `None` for
/// anything but a chat request ending in a user turn with text.
pub fn semantic_parts(p: &KeyParts<'_>) -> Option<(Key, String)> {
    if p.api != Api::ChatCompletions {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(p.body).ok()?;
    let last = v.get_mut("messages")?.as_array_mut()?.last_mut()?;
    if last.get("role")?.as_str()? != "user" {
        return None;
    }
    let content = last.get_mut("content")?;
    let text = match content {
        serde_json::Value::String(s) => std::mem::take(s),
        serde_json::Value::Array(parts) => {
            let mut t = String::new();
            for part in parts.iter_mut() {
                if let Some(serde_json::Value::String(s)) = part.get_mut("text") {
                    t.push_str(s);
                    t.push('\n');
                    s.clear();
                }
            }
            t
        }
        _ => return None,
    };
    if text.trim().is_empty() {
        return None;
    }
    Some((key_of_value(p, v)?, text))
}

/// One answered request in the semantic index.
struct SemEntry {
    vector: Box<[f32]>,
    /// Where its answer is, in the exact store.
    exact: Key,
    stored_at: Instant,
}

/// Shards of the semantic index (by bucket), so workers rarely meet on a lock.
const SEM_SHARDS: usize = 16;

/// Entries one shard holds over all its buckets. Every conversation is a bucket of its own,
/// so without this the index would grow with the number of conversations ever seen; past it
/// the bucket used least recently goes (16 K entries in all: 24 MiB of 384-dim vectors).
const SEM_SHARD_ENTRIES: usize = 1024;

/// The semantic index: per bucket (scope, model, conversation before the last turn), the
/// embeddings of the last user turns answered, searched exhaustively. Exact search: at the
/// sizes a bucket holds (`max_entries`, 1024 by default and at most) a scan of unit vectors is a few
/// hundred microseconds at most, less than the embedding call before it, and never misses
/// the nearest entry as an approximate index can.
pub struct SemanticIndex {
    shards:
        Vec<std::sync::Mutex<std::collections::HashMap<Key, std::collections::VecDeque<SemEntry>>>>,
}

impl Default for SemanticIndex {
    fn default() -> Self {
        SemanticIndex {
            shards: (0..SEM_SHARDS).map(|_| Default::default()).collect(),
        }
    }
}

impl SemanticIndex {
    fn shard(
        &self,
        bucket: &Key,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<Key, std::collections::VecDeque<SemEntry>>,
    > {
        self.shards[bucket[0] as usize % SEM_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The closest entry of `bucket` to `vector` (unit length) younger than `ttl`, with its
    /// cosine similarity, when at least `threshold`.
    pub fn nearest(
        &self,
        bucket: &Key,
        vector: &[f32],
        threshold: f32,
        ttl: std::time::Duration,
    ) -> Option<(Key, f32)> {
        let mut shard = self.shard(bucket);
        let entries = shard.get_mut(bucket)?;
        entries.retain(|e| e.stored_at.elapsed() < ttl);
        entries
            .iter()
            .filter(|e| e.vector.len() == vector.len())
            .map(|e| (e.exact, dot(&e.vector, vector)))
            .filter(|(_, s)| *s >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Adds an answered request; the bucket keeps its newest `max_entries`.
    pub fn insert(&self, bucket: Key, vector: Vec<f32>, exact: Key, max_entries: usize) {
        let max_entries = max_entries.clamp(1, SEM_SHARD_ENTRIES);
        let mut shard = self.shard(&bucket);
        let total: usize = shard.values().map(|v| v.len()).sum();
        if total >= SEM_SHARD_ENTRIES {
            evict_oldest_bucket(&mut shard, &bucket);
        }
        let entries = shard.entry(bucket).or_default();
        entries.retain(|e| e.exact != exact);
        while entries.len() >= max_entries {
            entries.pop_front();
        }
        entries.push_back(SemEntry {
            vector: vector.into_boxed_slice(),
            exact,
            stored_at: Instant::now(),
        });
    }

    /// Entries held, over all buckets.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.values().map(|v| v.len()).sum()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the bucket (other than `keep`) whose newest entry is oldest; rare (a shard at its
/// bound), so a scan of the shard is fine.
fn evict_oldest_bucket(
    shard: &mut std::collections::HashMap<Key, std::collections::VecDeque<SemEntry>>,
    keep: &Key,
) {
    let oldest = shard
        .iter()
        .filter(|(k, _)| *k != keep)
        .min_by_key(|(_, v)| v.back().map(|e| e.stored_at))
        .map(|(k, _)| *k);
    match oldest {
        Some(k) => {
            shard.remove(&k);
        }
        // Only `keep` holds entries: its own bound applies.
        None => {
            if let Some(v) = shard.get_mut(keep) {
                v.pop_front();
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v` scaled to unit length (`None` for a zero or non-finite vector).
pub fn unit(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(body: &'a [u8], key_id: Option<&'a str>) -> KeyParts<'a> {
        KeyParts {
            scope: CacheScope::Key,
            key_id,
            team: None,
            api: Api::ChatCompletions,
            model: "m",
            stream: false,
            body,
        }
    }

    #[test]
    fn the_key_ignores_order_and_spacing_but_not_content_or_tenant() {
        let a = key_of(&parts(
            br#"{"model":"x","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            Some("k1"),
        ))
        .unwrap();
        let b = key_of(&parts(br#"{ "messages": [ {"content":"hi", "role":"user"} ], "temperature": 0, "stream": false }"#, Some("k1"))).unwrap();
        assert_eq!(a, b);
        let other_text = key_of(&parts(
            br#"{"temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#,
            Some("k1"),
        ))
        .unwrap();
        assert_ne!(a, other_text);
        let other_key = key_of(&parts(
            br#"{"temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            Some("k2"),
        ))
        .unwrap();
        assert_ne!(a, other_key);
        let no_key = key_of(&parts(
            br#"{"temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            None,
        ))
        .unwrap();
        assert_ne!(a, no_key);
        let mut streaming = parts(
            br#"{"temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            Some("k1"),
        );
        streaming.stream = true;
        assert_ne!(a, key_of(&streaming).unwrap());
    }

    #[test]
    fn the_byte_bound_evicts_and_the_ttl_expires() {
        let c = ExactCache::new(64 * 1024);
        let entry = |n: usize| Entry {
            body: Bytes::from(vec![b'x'; n]),
            stream: false,
            usage: Usage::default(),
            stored_at: Instant::now(),
        };
        for i in 0..100u8 {
            c.put([i; 32], entry(4096));
        }
        assert!(c.bytes() <= 64 * 1024, "{}", c.bytes());
        assert!(c.len() < 100);
        c.put([200; 32], entry(10));
        assert!(c
            .get(&[200; 32], std::time::Duration::from_secs(60))
            .is_some());
        assert!(c.get(&[200; 32], std::time::Duration::ZERO).is_none());
        assert!(
            c.get(&[200; 32], std::time::Duration::from_secs(60))
                .is_none(),
            "expired entries are dropped"
        );
    }

    #[test]
    fn semantic_buckets_ignore_only_the_last_user_turn() {
        let a = semantic_parts(&parts(
            br#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"reset my password"}]}"#,
            Some("k1"),
        ))
        .unwrap();
        let b = semantic_parts(&parts(
            br#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"how to reset password"}]}"#,
            Some("k1"),
        ))
        .unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, "reset my password");
        let other_system = semantic_parts(&parts(
            br#"{"messages":[{"role":"system","content":"be long"},{"role":"user","content":"reset my password"}]}"#,
            Some("k1"),
        ))
        .unwrap();
        assert_ne!(a.0, other_system.0);
        let other_key = semantic_parts(&parts(
            br#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"reset my password"}]}"#,
            Some("k2"),
        ))
        .unwrap();
        assert_ne!(a.0, other_key.0);
        assert!(semantic_parts(&parts(
            br#"{"messages":[{"role":"assistant","content":"hi"}]}"#,
            Some("k1")
        ))
        .is_none());
    }

    #[test]
    fn the_index_serves_the_nearest_above_the_threshold_per_bucket() {
        let idx = SemanticIndex::default();
        let ttl = std::time::Duration::from_secs(60);
        let (b1, b2) = ([1u8; 32], [2u8; 32]);
        idx.insert(b1, unit(vec![1.0, 0.0, 0.0]).unwrap(), [10; 32], 2);
        idx.insert(b1, unit(vec![0.0, 1.0, 0.0]).unwrap(), [11; 32], 2);
        let q = unit(vec![0.9, 0.1, 0.0]).unwrap();
        let (k, s) = idx.nearest(&b1, &q, 0.9, ttl).unwrap();
        assert_eq!(k, [10; 32]);
        assert!(s > 0.99);
        assert!(idx.nearest(&b1, &q, 0.999, ttl).is_none());
        assert!(idx.nearest(&b2, &q, 0.5, ttl).is_none());
        // The bucket keeps its newest entries.
        idx.insert(b1, unit(vec![0.0, 0.0, 1.0]).unwrap(), [12; 32], 2);
        assert_eq!(idx.len(), 2);
        assert!(idx.nearest(&b1, &q, 0.9, ttl).is_none());
        assert!(unit(vec![0.0, 0.0]).is_none());
    }

    #[test]
    fn the_index_stays_bounded_however_many_conversations() {
        let idx = SemanticIndex::default();
        let v = unit(vec![1.0, 0.0]).unwrap();
        for i in 0..(SEM_SHARD_ENTRIES * SEM_SHARDS * 3) {
            let mut bucket = [0u8; 32];
            bucket[..8].copy_from_slice(&(i as u64).to_le_bytes());
            idx.insert(bucket, v.clone(), bucket, 4);
        }
        assert!(idx.len() <= SEM_SHARD_ENTRIES * SEM_SHARDS, "{}", idx.len());
    }
}
