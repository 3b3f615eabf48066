//! `gpu_pricing:` — what a GPU-hour costs, by GPU model (`{H100: 2.50}`), and `gpu_accounting:`
//! — which self-hosted providers run on how many of them, so their tokens get a GPU-based cost
//! (`ledger/gpu_cost.rs`).
//!
//! ```yaml
//! gpu_pricing: {H100: 2.50, L4: 0.80}          # USD per GPU-hour
//! gpu_accounting:
//!   interval_s: 60                              # one cost line per replica per interval
//!   prefill_weight: 1                           # a request's share of busy GPU time: its
//!   decode_weight: 3                            #   input tokens × 1 + output tokens × 3
//!   replicas:
//!     - {provider: vllm-a, gpu: H100, count: 1, compare_to: gpt-4o-mini}
//!     - {provider: vllm-b, gpu: H100, count: 2, nvml_gpus: [2, 3]}   # busy share from NVML
//! ```
//!
//! `nvml_gpus` names the NVML device indices (on this node) the replica runs on: its busy share
//! is then their mean utilisation over the interval, as NVML measures it, instead of the share
//! of engine scrapes that saw work.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct GpuAccountingFile {
    interval_s: Option<u64>,
    prefill_weight: Option<f64>,
    decode_weight: Option<f64>,
    #[serde(default)]
    replicas: Vec<GpuReplicaFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuReplicaFile {
    provider: String,
    gpu: String,
    count: Option<u32>,
    compare_to: Option<String>,
    nvml_gpus: Option<Vec<u32>>,
}

/// One self-hosted provider's GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReplica {
    pub provider: usize,
    pub provider_name: String,
    pub gpu: String,
    pub count: u32,
    pub usd_per_hour: f64,
    /// A priced (cloud) model to compare this replica's tokens with, and its price per 1M
    /// input and output tokens.
    pub compare_to: Option<(String, f64, f64)>,
    /// NVML device indices whose utilisation is the busy share (empty: engine scrapes).
    pub nvml_gpus: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuAccounting {
    pub interval: Duration,
    pub prefill_weight: f64,
    pub decode_weight: f64,
    pub replicas: Vec<GpuReplica>,
}

impl Validator<'_> {
    pub(super) fn gpu_accounting(
        &mut self,
        pricing: &HashMap<String, f64>,
        raw: Option<serde_yaml_ng::Value>,
        providers: &[String],
        prices: &crate::metering::prices::PriceCatalog,
    ) -> Option<GpuAccounting> {
        for (gpu, p) in pricing {
            if !p.is_finite() || *p < 0.0 {
                self.problem(
                    format!("gpu_pricing.{gpu}"),
                    "must be a price in USD per GPU-hour, at least 0",
                );
            }
        }
        let f: GpuAccountingFile = self.item("gpu_accounting", raw?)?;
        let mut replicas = Vec::new();
        for (i, r) in f.replicas.into_iter().enumerate() {
            let path = format!("gpu_accounting.replicas[{i}]");
            let Some(provider) = providers.iter().position(|p| *p == r.provider) else {
                self.problem(
                    format!("{path}.provider"),
                    format!("`{}` is not a configured provider", r.provider),
                );
                continue;
            };
            let Some(usd_per_hour) = pricing.get(&r.gpu).copied() else {
                self.problem(
                    format!("{path}.gpu"),
                    format!("`{}` has no price in gpu_pricing", r.gpu),
                );
                continue;
            };
            let compare_to = match r.compare_to {
                None => None,
                Some(m) => match prices.lookup(&[m.as_str()]) {
                    Some(p) => Some((m, p.input, p.output)),
                    None => {
                        self.problem(
                            format!("{path}.compare_to"),
                            format!("`{m}` has no price in the catalog"),
                        );
                        None
                    }
                },
            };
            let nvml_gpus = r.nvml_gpus.unwrap_or_default();
            let mut distinct = nvml_gpus.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() != nvml_gpus.len() {
                self.problem(format!("{path}.nvml_gpus"), "names a GPU index twice");
            }
            replicas.push(GpuReplica {
                provider,
                provider_name: r.provider,
                gpu: r.gpu,
                count: r.count.unwrap_or(1).max(1),
                usd_per_hour,
                compare_to,
                nvml_gpus,
            });
        }
        let weight = |w: Option<f64>, d: f64, name: &str, me: &mut Self| match w {
            Some(w) if !w.is_finite() || w < 0.0 => {
                me.problem(
                    format!("gpu_accounting.{name}"),
                    "must be a weight of at least 0",
                );
                d
            }
            Some(w) => w,
            None => d,
        };
        let prefill_weight = weight(f.prefill_weight, 1.0, "prefill_weight", self);
        let decode_weight = weight(f.decode_weight, 3.0, "decode_weight", self);
        (!replicas.is_empty()).then(|| GpuAccounting {
            interval: Duration::from_secs(f.interval_s.unwrap_or(60).max(1)),
            prefill_weight,
            decode_weight,
            replicas,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(extra: &str) -> Result<Config, String> {
        let src = format!(
            "providers:\n  - {{name: vllm, kind: openai, base_url: \"http://127.0.0.1:8001\"}}\n\
             models:\n  - {{name: m, targets: [{{provider: vllm, model: q}}]}}\n{extra}"
        );
        Config::from_yaml(&src, &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn replicas_need_a_known_provider_and_a_priced_gpu() {
        let c = load(
            "gpu_pricing: {H100: 2.5}\ngpu_accounting: {replicas: [{provider: vllm, gpu: H100, count: 4, compare_to: gpt-4o-mini}]}\n",
        )
        .unwrap();
        let g = c.gpu_accounting.unwrap();
        assert_eq!(
            (g.interval.as_secs(), g.prefill_weight, g.decode_weight),
            (60, 1.0, 3.0)
        );
        let r = &g.replicas[0];
        assert_eq!((r.provider, r.count, r.usd_per_hour), (0, 4, 2.5));
        assert_eq!(
            r.compare_to.as_ref().map(|c| c.0.as_str()),
            Some("gpt-4o-mini")
        );
        for (yaml, want) in [
            ("gpu_accounting: {replicas: [{provider: nope, gpu: H100}]}\n", "not a configured provider"),
            ("gpu_pricing: {H100: 1}\ngpu_accounting: {replicas: [{provider: vllm, gpu: H100, nvml_gpus: [1, 1]}]}\n", "names a GPU index twice"),
            ("gpu_accounting: {replicas: [{provider: vllm, gpu: H100}]}\n", "no price in gpu_pricing"),
            ("gpu_pricing: {H100: -1}\n", "gpu_pricing.H100"),
            ("gpu_pricing: {H100: 1}\ngpu_accounting: {replicas: [{provider: vllm, gpu: H100, compare_to: nothing}]}\n", "compare_to"),
        ] {
            let e = load(yaml).unwrap_err();
            assert!(e.contains(want), "{want} missing from {e}");
        }
    }
}
