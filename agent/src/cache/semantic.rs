//! The semantic cache's index: per bucket (scope, model, conversation before the last user
//! turn), the embeddings of the last user turns answered, and where their answers are in the
//! exact store.

use std::time::Duration;

use super::{Key, Stamp};

/// One answered request in the semantic index.
struct SemEntry {
    vector: Box<[f32]>,
    /// Where its answer is, in the exact store.
    exact: Key,
    stored_at: Stamp,
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
        ttl: Duration,
    ) -> Option<(Key, f32)> {
        let mut shard = self.shard(bucket);
        let entries = shard.get_mut(bucket)?;
        entries.retain(|e| e.stored_at.age() < ttl);
        entries
            .iter()
            .filter(|e| e.vector.len() == vector.len())
            .map(|e| (e.exact, dot(&e.vector, vector)))
            .filter(|(_, s)| *s >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Adds an answered request; the bucket keeps its newest `max_entries`.
    pub fn insert(&self, bucket: Key, vector: Vec<f32>, exact: Key, max_entries: usize) {
        self.insert_at(bucket, vector, exact, max_entries, Stamp::now());
    }

    /// [`insert`](Self::insert) of an entry stored at `stored_at` (one reloaded from the spill
    /// at start keeps its age, so it expires when it would have).
    pub fn insert_at(
        &self,
        bucket: Key,
        vector: Vec<f32>,
        exact: Key,
        max_entries: usize,
        stored_at: Stamp,
    ) {
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
            stored_at,
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
        .max_by_key(|(_, v)| v.back().map_or(Duration::MAX, |e| e.stored_at.age()))
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
