//! The prefix cache: which prompt blocks a replica still holds in its KV cache.
//!
//! Like vLLM's automatic prefix caching, a prompt is cut into fixed-size blocks and each block is
//! named by a hash chained over every block before it, so a block hit implies the whole prefix
//! matched. The cache is an LRU of those hashes with a fixed capacity in blocks; a request's
//! cached tokens are its leading blocks found in the cache. It owns no text, only hashes, and is
//! guarded by the engine's mutex (held for a map lookup per block, never across an await).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::textgen::hash_bytes;

/// Hashes of the full blocks of `text`, each chained over the previous block's hash.
/// `salt` separates models. A trailing partial block is not cacheable and gets no hash.
pub fn block_hashes(salt: u64, text: &[u8], block_bytes: usize) -> Vec<u64> {
    if block_bytes == 0 {
        return Vec::new();
    }
    let mut previous = salt;
    text.chunks_exact(block_bytes)
        .map(|block| {
            previous = hash_bytes(previous, block);
            previous
        })
        .collect()
}

const NONE: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    hash: u64,
    /// Towards the most recently used end.
    newer: usize,
    /// Towards the least recently used end.
    older: usize,
}

/// An LRU set of block hashes with O(1) lookup, touch, insert and eviction.
#[derive(Debug)]
pub struct PrefixCache {
    capacity_blocks: usize,
    index: HashMap<u64, usize, BuildHasherDefault<IdentityHasher>>,
    nodes: Vec<Node>,
    newest: usize,
    oldest: usize,
}

impl PrefixCache {
    pub fn new(capacity_blocks: usize) -> Self {
        PrefixCache {
            capacity_blocks,
            index: HashMap::with_capacity_and_hasher(capacity_blocks, Default::default()),
            nodes: Vec::with_capacity(capacity_blocks),
            newest: NONE,
            oldest: NONE,
        }
    }

    pub fn len_blocks(&self) -> usize {
        self.nodes.len()
    }

    pub fn capacity_blocks(&self) -> usize {
        self.capacity_blocks
    }

    /// Number of leading `hashes` present in the cache; those blocks become most recently used.
    pub fn lookup(&mut self, hashes: &[u64]) -> usize {
        let mut hits = 0;
        for hash in hashes {
            let Some(&slot) = self.index.get(hash) else {
                break;
            };
            self.touch(slot);
            hits += 1;
        }
        hits
    }

    /// Adds every block of a prompt that ran, evicting least recently used blocks when full.
    /// Returns how many blocks were not cached before.
    ///
    /// Blocks are touched from the last to the first, so the first block ends up most recently
    /// used and a prompt's tail is evicted before its head (as vLLM frees blocks in reverse order):
    /// losing the head would make the whole chain unreachable.
    pub fn insert(&mut self, hashes: &[u64]) -> usize {
        if self.capacity_blocks == 0 {
            return 0;
        }
        let mut inserted = 0;
        for &hash in hashes.iter().rev() {
            if let Some(&slot) = self.index.get(&hash) {
                self.touch(slot);
                continue;
            }
            inserted += 1;
            let slot = if self.nodes.len() < self.capacity_blocks {
                self.nodes.push(Node {
                    hash,
                    newer: NONE,
                    older: NONE,
                });
                self.nodes.len() - 1
            } else {
                let victim = self.oldest;
                self.unlink(victim);
                self.index.remove(&self.nodes[victim].hash);
                self.nodes[victim].hash = hash;
                victim
            };
            self.index.insert(hash, slot);
            self.push_newest(slot);
        }
        inserted
    }

    fn touch(&mut self, slot: usize) {
        if self.newest != slot {
            self.unlink(slot);
            self.push_newest(slot);
        }
    }

    fn unlink(&mut self, slot: usize) {
        let Node { newer, older, .. } = self.nodes[slot];
        if newer == NONE {
            self.newest = older;
        } else {
            self.nodes[newer].older = older;
        }
        if older == NONE {
            self.oldest = newer;
        } else {
            self.nodes[older].newer = newer;
        }
    }

    fn push_newest(&mut self, slot: usize) {
        self.nodes[slot].newer = NONE;
        self.nodes[slot].older = self.newest;
        if self.newest != NONE {
            self.nodes[self.newest].newer = slot;
        }
        self.newest = slot;
        if self.oldest == NONE {
            self.oldest = slot;
        }
    }
}

/// Keys are already well-mixed 64-bit hashes; hashing them again would only cost time.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_hashes_cover_full_blocks_only() {
        let text = vec![b'x'; 64 * 3 + 10];
        let hashes = block_hashes(7, &text, 64);
        assert_eq!(hashes.len(), 3);
        // Same bytes in each block, different hashes: each depends on the prefix.
        assert_ne!(hashes[0], hashes[1]);
        assert_ne!(hashes[1], hashes[2]);
        assert_eq!(hashes, block_hashes(7, &text, 64));
        assert_ne!(hashes, block_hashes(8, &text, 64), "salt separates models");
        // A different first block changes every later hash.
        let mut other = text.clone();
        other[0] = b'y';
        let other = block_hashes(7, &other, 64);
        assert!(hashes.iter().zip(&other).all(|(a, b)| a != b));
    }

    #[test]
    fn hits_are_leading_blocks() {
        let mut cache = PrefixCache::new(16);
        assert_eq!(cache.lookup(&[1, 2, 3]), 0);
        assert_eq!(cache.insert(&[1, 2, 3]), 3);
        assert_eq!(cache.lookup(&[1, 2, 3, 4]), 3);
        assert_eq!(cache.lookup(&[1, 9, 3]), 1, "a miss ends the prefix");
        assert_eq!(cache.lookup(&[2, 3]), 2);
        assert_eq!(cache.insert(&[1, 2, 3, 4]), 1, "only the new block counts");
        assert_eq!(cache.len_blocks(), 4);
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut cache = PrefixCache::new(3);
        cache.insert(&[1, 2, 3]); // recency, newest first: 1 2 3
        cache.lookup(&[3]); // 3 1 2
        assert_eq!(cache.insert(&[4]), 1); // evicts 2: 4 3 1
        assert_eq!(cache.len_blocks(), 3);
        assert_eq!(cache.lookup(&[2]), 0);
        assert_eq!(cache.lookup(&[1]), 1); // 1 4 3
        assert_eq!(cache.insert(&[5, 6]), 2); // evicts 3 then 4: 5 6 1
        assert_eq!(cache.lookup(&[3]), 0);
        assert_eq!(cache.lookup(&[4]), 0);
        assert_eq!(cache.lookup(&[5]), 1);
        assert_eq!(cache.lookup(&[6]), 1);
        assert_eq!(cache.lookup(&[1]), 1);
    }

    #[test]
    fn a_prompt_longer_than_the_cache_keeps_its_head() {
        let mut cache = PrefixCache::new(2);
        assert_eq!(cache.insert(&[1, 2, 3]), 3);
        assert_eq!(cache.lookup(&[1, 2, 3]), 2);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let mut cache = PrefixCache::new(0);
        assert_eq!(cache.insert(&[1, 2]), 0);
        assert_eq!(cache.lookup(&[1, 2]), 0);
        assert_eq!(cache.len_blocks(), 0);
    }
}
