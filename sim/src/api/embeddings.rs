//! `POST /v1/embeddings`: deterministic unit vectors, one per input.
//!
//! Each input is tokenised on its own (`ceil(bytes / 4)`). Its vector is a lexical embedding:
//! the input's words (lower-cased, a few stop words dropped, plural and tense endings cut) and
//! their character trigrams, feature-hashed into the dimensions with a sign and normalised. So
//! equal inputs embed equally, and texts that share words and word pieces land near each other
//! (cosine similarity), as a semantic cache needs; it is not a neural model, and paraphrases
//! with no words in common are far apart. An input with no words gets a vector drawn from its
//! hash. `encoding_format: "base64"` (what the OpenAI SDKs ask
//! for by default) returns little-endian f32 bytes in base64. Embeddings queue and prefill like
//! any request but never use the prefix cache, as vLLM's pooling models do not.

use serde::{Deserialize, Serialize};

use super::completions::TextInput;
use super::parse_json;
use crate::body::to_json;
use crate::engine::Prompt;
use crate::error::SimError;
use crate::textgen::{count_tokens, hash_bytes, mix64};

/// Largest `dimensions` accepted.
const MAX_DIMENSIONS: usize = 65_536;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: TextInput,
    dimensions: Option<usize>,
    encoding_format: Option<String>,
}

/// A parsed embeddings request.
#[derive(Debug)]
pub struct EmbeddingJob {
    pub model: Option<String>,
    pub inputs: Vec<Vec<u8>>,
    /// `None`: the server's `--embedding-dim`.
    pub dimensions: Option<usize>,
    pub base64: bool,
}

impl EmbeddingJob {
    /// The prompt the engine prefills: every input's tokens, no text (nothing is cached).
    pub fn prompt(&self) -> Prompt {
        Prompt {
            text: Vec::new(),
            tokens: self.inputs.iter().map(|i| count_tokens(i.len())).sum(),
        }
    }
}

pub fn parse(body: &[u8]) -> Result<EmbeddingJob, SimError> {
    let request: EmbeddingsRequest = parse_json(body)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(SimError::invalid_param(
                "encoding_format",
                format!("encoding_format must be \"float\" or \"base64\", not {other:?}"),
            ))
        }
    };
    if let Some(d) = request.dimensions {
        if !(1..=MAX_DIMENSIONS).contains(&d) {
            return Err(SimError::invalid_param(
                "dimensions",
                format!("dimensions must be between 1 and {MAX_DIMENSIONS}"),
            ));
        }
    }
    Ok(EmbeddingJob {
        model: request.model,
        inputs: request.input.into_items(),
        dimensions: request.dimensions,
        base64,
    })
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

pub fn render(model: &str, job: &EmbeddingJob, default_dimensions: usize) -> Vec<u8> {
    let dimensions = job.dimensions.unwrap_or(default_dimensions);
    let data = job
        .inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = unit_vector(input, dimensions);
            let embedding = if job.base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64(&bytes))
            } else {
                Vector::Floats(vector)
            };
            Embedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let tokens = job.prompt().tokens;
    to_json(&EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
}

/// Words too common to say what a text is about.
const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "be", "to", "of", "in", "on", "for", "and", "or", "it",
    "do", "does", "i", "me", "my", "you", "your", "can", "could", "please", "what", "how", "with",
];

/// A word with its plural or tense ending cut (`dogs` → `dog`, `running` → `runn`).
fn stem(w: &str) -> &str {
    for suffix in ["ing", "ed", "es", "s"] {
        if w.len() > suffix.len() + 2 {
            if let Some(s) = w.strip_suffix(suffix) {
                return s;
            }
        }
    }
    w
}

/// The lexical embedding of `input` (see the module comment); length 1.
pub fn unit_vector(input: &[u8], dimensions: usize) -> Vec<f32> {
    let text = String::from_utf8_lossy(input).to_lowercase();
    let mut v = vec![0f64; dimensions];
    let mut add = |feature: &[u8], weight: f64| {
        let h = hash_bytes(3, feature);
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[(h % dimensions as u64) as usize] += sign * weight;
    };
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !STOP_WORDS.contains(w))
    {
        let w = stem(word);
        add(w.as_bytes(), 1.0);
        let padded: Vec<char> = format!("<{w}>").chars().collect();
        for t in padded.windows(3) {
            add(t.iter().collect::<String>().as_bytes(), 0.4);
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        return hashed_unit_vector(input, dimensions);
    }
    v.iter().map(|x| (x / norm) as f32).collect()
}

/// A deterministic vector of length 1 drawn from the input's hash.
fn hashed_unit_vector(input: &[u8], dimensions: usize) -> Vec<f32> {
    let seed = hash_bytes(2, input);
    let raw: Vec<f64> = (0..dimensions as u64)
        .map(|i| (mix64(seed.wrapping_add(i)) >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    raw.iter().map(|x| (x / norm) as f32).collect()
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn vectors_are_deterministic_unit_length() {
        let a = unit_vector(b"hello", 16);
        assert_eq!(a.len(), 16);
        assert_eq!(a, unit_vector(b"hello", 16));
        assert_ne!(a, unit_vector(b"world", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        let b = unit_vector(b"!!", 16);
        assert!((b.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn texts_sharing_words_are_near() {
        let cos = |a: &str, b: &str| -> f32 {
            let (x, y) = (
                unit_vector(a.as_bytes(), 384),
                unit_vector(b.as_bytes(), 384),
            );
            x.iter().zip(&y).map(|(a, b)| a * b).sum()
        };
        let near = cos(
            "How do I reset my password?",
            "how can I reset the password",
        );
        let far = cos("How do I reset my password?", "Best pizza in Naples");
        assert!(near > 0.8 && far < 0.3, "near {near}, far {far}");
    }

    #[test]
    fn shape_and_usage() {
        let job = parse(br#"{"model":"e","input":["abcde","xy"]}"#).unwrap();
        assert_eq!(job.prompt().tokens, 3);
        let v: serde_json::Value = serde_json::from_slice(&render("e", &job, 8)).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["usage"]["total_tokens"], 3);

        let job = parse(br#"{"input":"abc","encoding_format":"base64","dimensions":4}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&render("e", &job, 8)).unwrap();
        assert_eq!(
            v["data"][0]["embedding"].as_str().unwrap().len(),
            24,
            "16 bytes in base64"
        );
        assert!(parse(br#"{"input":"abc","encoding_format":"hex"}"#).is_err());
    }
}
