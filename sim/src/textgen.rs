//! Token arithmetic and the simulated model's output.
//!
//! The simulator has no tokenizer: a prompt of `n` bytes is `ceil(n / 4)` tokens, and the output is
//! words drawn from a fixed vocabulary, one token per word (with its leading space), seeded by a
//! hash of the prompt so that the same prompt always produces the same text. The hash here is also
//! the one the prefix cache chains over blocks. Everything is on the request path and allocation
//! free except [`generate`].

use std::borrow::Cow;
use std::sync::Arc;

/// Bytes of prompt text per token.
pub const BYTES_PER_TOKEN: usize = 4;

/// Prompt tokens for a prompt of `bytes` bytes.
pub fn count_tokens(bytes: usize) -> u64 {
    count_tokens_at(bytes, BYTES_PER_TOKEN)
}

/// Prompt tokens for `bytes` bytes under a tokenizer of `bytes_per_token` (`--bytes-per-token`).
pub fn count_tokens_at(bytes: usize, bytes_per_token: usize) -> u64 {
    bytes.div_ceil(bytes_per_token.max(1)) as u64
}

/// Output vocabulary; every entry is one token and carries its leading space.
const VOCABULARY: [&str; 64] = [
    " the",
    " model",
    " token",
    " cache",
    " gateway",
    " replica",
    " prompt",
    " stream",
    " latency",
    " budget",
    " request",
    " answer",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " lazy",
    " dog",
    " and",
    " then",
    " it",
    " routes",
    " every",
    " block",
    " to",
    " a",
    " warm",
    " node",
    " while",
    " counting",
    " cost",
    " per",
    " team",
    " with",
    " care",
    " so",
    " that",
    " nothing",
    " is",
    " lost",
    " when",
    " load",
    " grows",
    " queue",
    " waits",
    " its",
    " turn",
    " before",
    " decode",
    " begins",
    " again",
    " under",
    " steady",
    " traffic",
    " from",
    " many",
    " agents",
    " each",
    " asking",
    " for",
    " more",
    " words",
    " now",
];

/// The finaliser of splitmix64: a bijective 64-bit mix with full avalanche.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A fast, deterministic (across runs and builds) 64-bit hash of `bytes`, chained from `seed`.
/// Not collision resistant against an adversary; prompts here are not adversarial.
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    mix64(h)
}

/// The endless token sequence of one choice: deterministic in (prompt seed, choice index).
/// Echoing (`x-sim-echo`), the first tokens are the prompt text itself in pieces of
/// [`ECHO_PIECE`] bytes, then words as usual: a test can see what the model "read" come back,
/// split across stream events the way real models split words.
#[derive(Debug, Clone)]
pub struct Words {
    state: u64,
    echo: Option<Arc<str>>,
    at: usize,
}

/// Bytes of echoed prompt per token (rounded up to a character boundary).
pub const ECHO_PIECE: usize = 3;

impl Words {
    pub fn new(prompt_seed: u64, choice: u32) -> Self {
        Words {
            state: prompt_seed ^ mix64(u64::from(choice).wrapping_add(1)),
            echo: None,
            at: 0,
        }
    }

    /// Words that start by echoing `text`.
    pub fn echoing(prompt_seed: u64, choice: u32, text: Option<Arc<str>>) -> Self {
        Words {
            echo: text,
            ..Words::new(prompt_seed, choice)
        }
    }
}

impl Iterator for Words {
    type Item = Cow<'static, str>;

    fn next(&mut self) -> Option<Cow<'static, str>> {
        if let Some(text) = &self.echo {
            if self.at < text.len() {
                let mut end = (self.at + ECHO_PIECE).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                let piece = text[self.at..end].to_string();
                self.at = end;
                return Some(Cow::Owned(piece));
            }
        }
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let index = (mix64(self.state) % VOCABULARY.len() as u64) as usize;
        Some(Cow::Borrowed(VOCABULARY[index]))
    }
}

/// The full text of one choice: `tokens` tokens.
pub fn generate(prompt_seed: u64, choice: u32, tokens: u64, echo: Option<Arc<str>>) -> String {
    let mut text = String::with_capacity(tokens as usize * 7);
    Words::echoing(prompt_seed, choice, echo)
        .take(tokens as usize)
        .for_each(|w| text.push_str(&w));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_comes_first_in_small_pieces_then_words() {
        let text: Arc<str> = Arc::from("héllo, x@y.io");
        let pieces: Vec<_> = Words::echoing(1, 0, Some(text.clone())).take(7).collect();
        assert_eq!(pieces[..5].concat(), "héllo, x@y.io");
        assert!(pieces.iter().take(5).all(|p| p.len() <= ECHO_PIECE + 1));
        assert!(pieces[5].starts_with(' '));
        assert!(generate(1, 0, 9, Some(text)).starts_with("héllo, x@y.io "));
    }

    #[test]
    fn tokens_round_up() {
        assert_eq!(count_tokens(0), 0);
        assert_eq!(count_tokens(1), 1);
        assert_eq!(count_tokens(4), 1);
        assert_eq!(count_tokens(5), 2);
        assert_eq!(count_tokens(400), 100);
    }

    #[test]
    fn generation_is_deterministic_and_one_token_per_word() {
        let seed = hash_bytes(0, b"hello there");
        let a = generate(seed, 0, 20, None);
        assert_eq!(a, generate(seed, 0, 20, None));
        assert_eq!(a.split_whitespace().count(), 20);
        assert!(a.starts_with(' '));
        assert_ne!(a, generate(seed, 1, 20, None), "choices differ");
        assert_ne!(a, generate(hash_bytes(0, b"hello there!"), 0, 20, None));
        // A prefix of a longer generation is the shorter generation.
        assert!(generate(seed, 0, 40, None).starts_with(&a));
    }

    #[test]
    fn every_word_is_one_space_and_letters() {
        for word in VOCABULARY {
            assert!(word.starts_with(' ') && word.len() > 1, "{word:?}");
            assert!(
                word[1..].chars().all(|c| c.is_ascii_alphabetic()),
                "{word:?}"
            );
        }
    }

    #[test]
    fn hash_sees_every_byte_and_the_seed() {
        let base = hash_bytes(1, b"abcdefghij");
        assert_ne!(base, hash_bytes(1, b"abcdefghik"));
        assert_ne!(base, hash_bytes(2, b"abcdefghij"));
        assert_ne!(hash_bytes(0, b"a"), hash_bytes(0, b"a\0"));
        assert_eq!(base, hash_bytes(1, b"abcdefghij"));
    }
}
