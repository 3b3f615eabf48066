//! The price catalog: USD per 1M tokens for input, cached input, cache writes and output. A
//! built-in, dated table of public list prices for common OpenAI and Anthropic models, which
//! the config's `prices:` section overrides and extends (keyed by a configured model's name or
//! by a provider's model name). A usage record's cost is computed from the price of the model
//! that served it, in micro-USD (integers, so sums are exact).

use std::collections::HashMap;

use crate::metering::Usage;

/// When the built-in table was last checked against the providers' public price pages.
pub const CATALOG_DATE: &str = "2025-08-01";

/// USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Price {
    pub input: f64,
    /// Input tokens read from the provider's prompt cache (default: `input`).
    pub cached_input: f64,
    /// Input tokens written to the prompt cache (Anthropic; default: `input`).
    pub cache_write: f64,
    pub output: f64,
}

impl Price {
    const fn new(input: f64, cached_input: f64, cache_write: f64, output: f64) -> Price {
        Price {
            input,
            cached_input,
            cache_write,
            output,
        }
    }

    /// The cost of `u` in micro-USD. `u.input_tokens` includes cached and cache-write tokens.
    pub fn micro_usd(&self, u: &Usage) -> u64 {
        let cached = u.cached_tokens.min(u.input_tokens);
        let written = u.cache_write_tokens.min(u.input_tokens - cached);
        let plain = u.input_tokens - cached - written;
        // Tokens × USD/1M = micro-USD.
        let total = plain as f64 * self.input
            + cached as f64 * self.cached_input
            + written as f64 * self.cache_write
            + u.output_tokens as f64 * self.output;
        total.max(0.0).round() as u64
    }

    /// The cost of `input` plain input tokens and `output` output tokens (reservations).
    pub fn estimate_micro_usd(&self, input: u64, output: u64) -> u64 {
        (input as f64 * self.input + output as f64 * self.output)
            .max(0.0)
            .ceil() as u64
    }
}

/// List prices (USD per 1M tokens) as published by OpenAI and Anthropic, as of [`CATALOG_DATE`].
/// Dated variants (`gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`) match their family by the
/// longest prefix.
const BUILT_IN: &[(&str, Price)] = &[
    ("gpt-5", Price::new(1.25, 0.125, 1.25, 10.0)),
    ("gpt-5-mini", Price::new(0.25, 0.025, 0.25, 2.0)),
    ("gpt-5-nano", Price::new(0.05, 0.005, 0.05, 0.40)),
    ("gpt-4.1", Price::new(2.0, 0.50, 2.0, 8.0)),
    ("gpt-4.1-mini", Price::new(0.40, 0.10, 0.40, 1.60)),
    ("gpt-4.1-nano", Price::new(0.10, 0.025, 0.10, 0.40)),
    ("gpt-4o", Price::new(2.50, 1.25, 2.50, 10.0)),
    ("gpt-4o-mini", Price::new(0.15, 0.075, 0.15, 0.60)),
    ("o1", Price::new(15.0, 7.50, 15.0, 60.0)),
    ("o3", Price::new(2.0, 0.50, 2.0, 8.0)),
    ("o3-mini", Price::new(1.10, 0.55, 1.10, 4.40)),
    ("o4-mini", Price::new(1.10, 0.275, 1.10, 4.40)),
    ("gpt-3.5-turbo", Price::new(0.50, 0.50, 0.50, 1.50)),
    ("text-embedding-3-small", Price::new(0.02, 0.02, 0.02, 0.0)),
    ("text-embedding-3-large", Price::new(0.13, 0.13, 0.13, 0.0)),
    ("claude-opus-4", Price::new(15.0, 1.50, 18.75, 75.0)),
    ("claude-opus-4-1", Price::new(15.0, 1.50, 18.75, 75.0)),
    ("claude-sonnet-4", Price::new(3.0, 0.30, 3.75, 15.0)),
    ("claude-sonnet-4-5", Price::new(3.0, 0.30, 3.75, 15.0)),
    ("claude-3-7-sonnet", Price::new(3.0, 0.30, 3.75, 15.0)),
    ("claude-3-5-sonnet", Price::new(3.0, 0.30, 3.75, 15.0)),
    ("claude-haiku-4-5", Price::new(1.0, 0.10, 1.25, 5.0)),
    ("claude-3-5-haiku", Price::new(0.80, 0.08, 1.0, 4.0)),
    ("claude-3-haiku", Price::new(0.25, 0.03, 0.30, 1.25)),
];

/// Built-in prices plus the configuration's.
#[derive(Debug, Clone, Default)]
pub struct PriceCatalog {
    configured: HashMap<String, Price>,
}

impl PriceCatalog {
    pub fn new(configured: HashMap<String, Price>) -> PriceCatalog {
        PriceCatalog { configured }
    }

    /// The price of a model: a configured price for any of `names` (in order: the name the
    /// client asked for, then the provider's model name), else the built-in family of the
    /// provider's model name.
    pub fn lookup(&self, names: &[&str]) -> Option<Price> {
        names
            .iter()
            .find_map(|n| self.configured.get(*n).copied())
            .or_else(|| names.iter().rev().find_map(|n| built_in(n)))
    }

    pub fn configured(&self) -> &HashMap<String, Price> {
        &self.configured
    }
}

/// The built-in price of `model`: exact, else the longest family prefix followed by `-`.
pub fn built_in(model: &str) -> Option<Price> {
    let model = model.rsplit('/').next().unwrap_or(model);
    BUILT_IN
        .iter()
        .filter(|(name, _)| {
            model == *name
                || (model.starts_with(name) && model.as_bytes().get(name.len()) == Some(&b'-'))
        })
        .max_by_key(|(name, _)| name.len())
        .map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_variants_find_their_family() {
        assert_eq!(built_in("gpt-4o-2024-08-06"), built_in("gpt-4o"));
        assert_eq!(
            built_in("gpt-4o-mini-2024-07-18").map(|p| p.input),
            Some(0.15)
        );
        assert_eq!(
            built_in("claude-sonnet-4-20250514").map(|p| p.output),
            Some(15.0)
        );
        assert_eq!(built_in("openai/gpt-4.1-mini").map(|p| p.input), Some(0.40));
        assert!(built_in("gpt-4oops").is_none());
        assert!(built_in("llama-3-8b").is_none());
    }

    #[test]
    fn cost_counts_each_kind_of_token_at_its_price() {
        let p = Price::new(3.0, 0.30, 3.75, 15.0);
        let u = Usage {
            input_tokens: 1_000_000 + 2_000_000 + 100_000,
            cached_tokens: 2_000_000,
            cache_write_tokens: 100_000,
            output_tokens: 10_000,
            reasoning_tokens: 0,
        };
        // 3.00 + 0.60 + 0.375 + 0.15 USD.
        assert_eq!(p.micro_usd(&u), 4_125_000);
        // Inconsistent counts from a provider never underflow.
        let odd = Usage {
            input_tokens: 5,
            cached_tokens: 9,
            cache_write_tokens: 9,
            ..Usage::default()
        };
        assert_eq!(p.micro_usd(&odd), 2);
    }

    #[test]
    fn configured_prices_win() {
        let mut m = HashMap::new();
        m.insert("smol".to_string(), Price::new(0.10, 0.01, 0.10, 0.40));
        let c = PriceCatalog::new(m);
        assert_eq!(c.lookup(&["smol", "gpt-4o"]).map(|p| p.input), Some(0.10));
        assert_eq!(c.lookup(&["fast", "gpt-4o"]).map(|p| p.input), Some(2.50));
        assert!(c.lookup(&["fast", "local-llama"]).is_none());
    }
}
