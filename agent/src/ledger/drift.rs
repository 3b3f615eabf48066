//! Tokenizer drift, watched live: for each served model and each version the provider reports
//! (`model@system_fingerprint`, see `metering::usage::upstream_version`), the tokens per prompt
//! byte of requests with the provider's usage.
//!
//! When a new version has [`MIN_SAMPLES`] requests, its ratio is compared with the version
//! before it. A move of more than [`THRESHOLD`] counts in `tollgate_tokenizer_drift_total`,
//! writes a `tokenizer.drift` audit event, and is logged: a silent tokenizer change shows before
//! the bill does. `tollgate report findings` finds the same from the ledger, for any period.
//!
//! Runs on the ledger writer's thread; bounded to [`MAX_MODELS`] models × [`MAX_VERSIONS`].

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Requests a version needs before its ratio is compared.
pub const MIN_SAMPLES: u64 = 20;
/// The relative change in tokens per byte that counts as drift.
pub const THRESHOLD: f64 = 0.05;
const MAX_MODELS: usize = 64;
const MAX_VERSIONS: usize = 16;

#[derive(Default, Clone)]
struct Version {
    /// Order of first sight within its model.
    seq: u64,
    samples: u64,
    tokens: u64,
    bytes: u64,
    /// Compared already (once per version).
    judged: bool,
}

impl Version {
    fn ratio(&self) -> f64 {
        if self.bytes == 0 {
            0.0
        } else {
            self.tokens as f64 / self.bytes as f64
        }
    }
}

/// A drift seen: the model, the versions, and the ratios.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub model: String,
    pub from: String,
    pub to: String,
    pub before: f64,
    pub after: f64,
}

impl Drift {
    pub fn change(&self) -> f64 {
        (self.after - self.before) / self.before
    }
}

#[derive(Default)]
pub struct DriftTracker {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    models: BTreeMap<String, BTreeMap<String, Version>>,
    drifts: BTreeMap<String, u64>,
    seq: u64,
}

impl DriftTracker {
    /// Adds one request; returns the drift it completes, if any.
    pub fn observe(&self, model: &str, version: &str, tokens: u64, bytes: u64) -> Option<Drift> {
        if bytes == 0 || tokens == 0 {
            return None;
        }
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let State {
            models,
            drifts,
            seq,
        } = &mut *st;
        if !models.contains_key(model) && models.len() >= MAX_MODELS {
            return None;
        }
        if !models.contains_key(model) {
            models.insert(model.to_string(), BTreeMap::new());
        }
        let versions = models.get_mut(model)?;
        if !versions.contains_key(version) && versions.len() >= MAX_VERSIONS {
            // The oldest version goes (its comparison is long done).
            let oldest = versions
                .iter()
                .min_by_key(|(_, v)| v.seq)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                versions.remove(&k);
            }
        }
        // Allocates only for a version seen for the first time.
        if !versions.contains_key(version) {
            *seq += 1;
            let first = Version {
                seq: *seq,
                ..Version::default()
            };
            versions.insert(version.to_string(), first);
        }
        let v = versions.get_mut(version)?;
        v.samples += 1;
        v.tokens += tokens;
        v.bytes += bytes;
        if v.judged || v.samples < MIN_SAMPLES {
            return None;
        }
        v.judged = true;
        let (this_seq, after) = (v.seq, v.ratio());
        // The version seen last before this one, with enough samples.
        let previous = versions
            .iter()
            .filter(|(_, p)| p.seq < this_seq && p.samples >= MIN_SAMPLES)
            .max_by_key(|(_, p)| p.seq)
            .map(|(k, p)| (k.clone(), p.ratio()))?;
        let drift = Drift {
            model: model.to_string(),
            from: previous.0,
            to: version.to_string(),
            before: previous.1,
            after,
        };
        if drift.before > 0.0 && drift.change().abs() > THRESHOLD {
            *drifts.entry(model.to_string()).or_default() += 1;
            return Some(drift);
        }
        None
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let esc = crate::telemetry::metrics::escape;
        out.push_str("# HELP tollgate_tokens_per_prompt_byte Prompt tokens the provider reported per prompt byte, by model and the version it reported.\n# TYPE tollgate_tokens_per_prompt_byte gauge\n");
        for (m, versions) in &st.models {
            for (v, s) in versions {
                let _ = writeln!(
                    out,
                    "tollgate_tokens_per_prompt_byte{{model=\"{}\",version=\"{}\"}} {:.6}",
                    esc(m),
                    esc(v),
                    s.ratio()
                );
            }
        }
        out.push_str("# HELP tollgate_tokenizer_drift_total New model versions whose tokens per prompt byte moved more than 5 % from the version before.\n# TYPE tollgate_tokenizer_drift_total counter\n");
        for (m, n) in &st.drifts {
            let _ = writeln!(
                out,
                "tollgate_tokenizer_drift_total{{model=\"{}\"}} {n}",
                esc(m)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_version_that_counts_differently_is_drift_once() {
        let t = DriftTracker::default();
        for _ in 0..MIN_SAMPLES {
            assert!(t.observe("m", "m@fp1", 25, 100).is_none());
        }
        // The same tokenizer under a new fingerprint: no drift.
        for _ in 0..MIN_SAMPLES {
            assert!(t.observe("m", "m@fp2", 26, 100).is_none());
        }
        // 20 % more tokens for the same bytes.
        let mut seen = Vec::new();
        for _ in 0..MIN_SAMPLES * 2 {
            seen.extend(t.observe("m", "m@fp3", 31, 100));
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (seen[0].from.as_str(), seen[0].to.as_str()),
            ("m@fp2", "m@fp3")
        );
        assert!((seen[0].change() - (0.31 / 0.26 - 1.0)).abs() < 1e-9);
        let mut out = String::new();
        t.render(&mut out);
        assert!(
            out.contains("tollgate_tokenizer_drift_total{model=\"m\"} 1"),
            "{out}"
        );
        assert!(out.contains("version=\"m@fp3\"} 0.310000"), "{out}");
    }
}
