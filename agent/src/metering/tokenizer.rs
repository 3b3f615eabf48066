//! A model family's own tokenizer for usage estimates (`models[].tokenizer`): a Hugging Face
//! `tokenizer.json` (Llama, Qwen, SmolLM2, Mistral... ship one), loaded once at configuration
//! load and used on the ledger writer's thread, never on a worker. Models without one are
//! counted with o200k.
//!
//! Chat framing differs by family: `per_message` tokens are added per message (the role header
//! and end-of-turn markers of its chat template) and `per_request` once (the assistant header).
//! The defaults are OpenAI's (3 and 3); ChatML families (Qwen, SmolLM2) take 5 and 3.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded tokenizer and the chat framing of its family.
#[derive(Clone)]
pub struct ModelTokenizer {
    pub path: PathBuf,
    inner: Arc<tokenizers::Tokenizer>,
    pub per_message: u64,
    pub per_request: u64,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("path", &self.path)
            .field("per_message", &self.per_message)
            .field("per_request", &self.per_request)
            .finish_non_exhaustive()
    }
}

impl ModelTokenizer {
    /// Loads `path`; the error says why it is not a usable `tokenizer.json`.
    pub fn load(path: &Path, per_message: u64, per_request: u64) -> Result<Self, String> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| e.to_string())?;
        Ok(ModelTokenizer {
            path: path.to_path_buf(),
            inner: Arc::new(inner),
            per_message,
            per_request,
        })
    }

    /// Tokens of `text`, without the special tokens a template would add (the framing counts
    /// those).
    pub fn count(&self, text: &str) -> u64 {
        match self.inner.encode(text, false) {
            Ok(e) => e.len() as u64,
            // An input the tokenizer refuses: the o200k count, rather than nothing.
            Err(_) => super::estimate::count_tokens(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_level_tokenizer_counts_words_and_a_bad_file_says_why() {
        let dir = std::env::temp_dir().join(format!("tg-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(
            &path,
            include_str!("../../tests/fixtures/word-tokenizer.json"),
        )
        .unwrap();
        let t = ModelTokenizer::load(&path, 5, 3).unwrap();
        assert_eq!(t.count("hello big wide world"), 4);
        assert_eq!(t.count(""), 0);
        std::fs::write(&path, b"{\"not\": \"a tokenizer\"}").unwrap();
        assert!(ModelTokenizer::load(&path, 5, 3).is_err());
        assert!(ModelTokenizer::load(&dir.join("missing.json"), 5, 3).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
