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
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::api::Api;
use crate::config::CacheScope;
use crate::metering::Usage;

mod semantic;
pub mod spill;

pub use semantic::{unit, SemanticIndex};

/// A cache key.
pub type Key = [u8; 32];

/// When something was stored, as an age that can predate this process (an entry reloaded
/// from the spill keeps the age it had; `Instant` alone cannot reach before boot).
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    at: Instant,
    before: Duration,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp::aged(Duration::ZERO)
    }

    /// Stored `age` ago.
    pub fn aged(age: Duration) -> Stamp {
        Stamp {
            at: Instant::now(),
            before: age,
        }
    }

    pub fn age(&self) -> Duration {
        self.before + self.at.elapsed()
    }
}

/// One stored response.
pub struct Entry {
    /// The body as the client received it (JSON, or the event stream's frames).
    pub body: Bytes,
    pub stream: bool,
    /// What the original request used: what a hit saves.
    pub usage: Usage,
    pub stored_at: Stamp,
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Key, Arc<Entry>> for Weigh {
    fn weight(&self, _key: &Key, e: &Arc<Entry>) -> u64 {
        // The body plus the bookkeeping around it.
        e.body.len() as u64 + 128
    }
}

/// The shared store: memory, and the disk behind it when `spill` is on.
pub struct ExactCache {
    inner: quick_cache::sync::Cache<Key, Arc<Entry>, Weigh>,
    spill: Option<spill::Spill>,
}

impl ExactCache {
    pub fn new(max_bytes: u64) -> ExactCache {
        // quick_cache sizes its shards from an item estimate: assume 8 KiB per response.
        let items = (max_bytes / 8192).clamp(16, 1 << 20) as usize;
        ExactCache {
            inner: quick_cache::sync::Cache::with_weighter(items, max_bytes, Weigh),
            spill: None,
        }
    }

    /// A store that also writes every entry to disk and reads misses back from it.
    pub fn with_spill(max_bytes: u64, spill: spill::Spill) -> ExactCache {
        ExactCache {
            spill: Some(spill),
            ..ExactCache::new(max_bytes)
        }
    }

    /// The entry for `key` in memory, if it is younger than `ttl`.
    pub fn get(&self, key: &Key, ttl: Duration) -> Option<Arc<Entry>> {
        let e = self.inner.get(key)?;
        if e.stored_at.age() < ttl {
            Some(e)
        } else {
            self.inner.remove(key);
            None
        }
    }

    /// The entry for `key` in memory or, past a memory miss, on disk (then kept in memory).
    pub async fn lookup(&self, key: &Key, ttl: Duration) -> Option<Arc<Entry>> {
        if let Some(e) = self.get(key, ttl) {
            return Some(e);
        }
        let (r, age) = self.spill.as_ref()?.load(key, ttl).await?;
        let e = Arc::new(Entry {
            body: r.body,
            stream: r.stream,
            usage: r.usage,
            stored_at: Stamp::aged(age),
        });
        self.inner.insert(*key, e.clone());
        Some(e)
    }

    /// Stores `e` (and queues it for the disk, with the semantic bucket and embedding it is
    /// indexed under, so a restart can index it again).
    pub fn put(&self, key: Key, e: Entry, semantic: Option<&(Key, Vec<f32>)>, ttl: Duration) {
        let e = Arc::new(e);
        if let Some(s) = &self.spill {
            s.put(
                spill::Record {
                    key,
                    stored_at_ms: spill::now_ms(),
                    stream: e.stream,
                    usage: e.usage,
                    body: e.body.clone(),
                    semantic: semantic.cloned(),
                },
                ttl,
            );
        }
        self.inner.insert(key, e);
    }

    /// Entries held in memory now.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Bytes held in memory now (the weight the bound applies to).
    pub fn bytes(&self) -> u64 {
        self.inner.weight()
    }

    /// Writes what the spill has queued and stops its thread.
    pub fn stop(&self) {
        if let Some(s) = &self.spill {
            s.stop();
        }
    }

    /// The store's gauges and the spill's counters, for `/metrics`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let mut gauge = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            "tollgate_cache_entries",
            "gauge",
            "Answers the exact cache holds in memory.",
            self.len() as u64,
        );
        gauge(
            "tollgate_cache_bytes",
            "gauge",
            "Bytes the exact cache holds in memory.",
            self.bytes(),
        );
        let Some(s) = &self.spill else {
            return;
        };
        let st = &s.stats;
        for (name, kind, help, v) in [
            (
                "tollgate_cache_spill_entries",
                "gauge",
                "Answers the exact cache holds on disk.",
                &st.entries,
            ),
            (
                "tollgate_cache_spill_bytes",
                "gauge",
                "Bytes the exact cache holds on disk.",
                &st.bytes,
            ),
            (
                "tollgate_cache_spill_indexed",
                "gauge",
                "1 once the answers an earlier run left on disk are indexed.",
                &st.indexed,
            ),
            (
                "tollgate_cache_spill_hits_total",
                "counter",
                "Memory misses the disk answered.",
                &st.hits,
            ),
            (
                "tollgate_cache_spill_writes_total",
                "counter",
                "Answers written to disk.",
                &st.writes,
            ),
            (
                "tollgate_cache_spill_dropped_total",
                "counter",
                "Answers not written to disk because its writer was behind.",
                &st.dropped,
            ),
            (
                "tollgate_cache_spill_errors_total",
                "counter",
                "Disk entries that could not be written, or were found damaged and removed.",
                &st.errors,
            ),
        ] {
            gauge(
                name,
                kind,
                help,
                v.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
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
            stored_at: Stamp::now(),
        };
        for i in 0..100u8 {
            c.put([i; 32], entry(4096), None, Duration::from_secs(60));
        }
        assert!(c.bytes() <= 64 * 1024, "{}", c.bytes());
        assert!(c.len() < 100);
        c.put([200; 32], entry(10), None, Duration::from_secs(60));
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
    fn a_memory_miss_is_answered_from_the_spill_and_promoted() {
        let dir = std::env::temp_dir().join(format!("tg-exact-spill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ttl = Duration::from_secs(60);
        let spill = spill::Spill::start(spill::SpillSettings {
            dir: dir.clone(),
            max_bytes: 1 << 20,
            ttl,
            semantic: None,
        })
        .unwrap();
        let c = ExactCache::with_spill(64 * 1024, spill);
        for i in 0..100u8 {
            let e = Entry {
                body: Bytes::from(vec![i; 4096]),
                stream: false,
                usage: Usage::default(),
                stored_at: Stamp::now(),
            };
            c.put([i; 32], e, None, ttl);
        }
        // Every write is on disk once the writer stops.
        c.stop();
        let evicted = (0..100u8)
            .find(|i| c.get(&[*i; 32], ttl).is_none())
            .expect("memory holds 64 KiB, not 400");
        let rt = || {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .build()
                .unwrap()
        };
        let e = rt().block_on(c.lookup(&[evicted; 32], ttl)).unwrap();
        assert_eq!(&e.body[..], &vec![evicted; 4096][..]);
        assert!(c.get(&[evicted; 32], ttl).is_some(), "promoted into memory");
        assert!(rt().block_on(c.lookup(&[200; 32], ttl)).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
