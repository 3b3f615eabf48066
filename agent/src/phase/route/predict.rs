//! `POST /admin/route/predict`: for a request a client would send, each replica's predicted
//! prefix match and load, and the one the `prefix` balancer would choose now. A cluster router
//! in front of many nodes asks each node's agent and picks the node (and an operator can see
//! why a session lands where it does). Runs on the admin thread: it reads every worker's
//! prefix index under that worker's lock (held by the worker only for its own lookups, so the
//! wait is one lookup at most) and takes the best match per replica; the load is the engine's
//! scraped queue when fresh, plus the requests the agent has in flight there when the model
//! has a gate (`queue.rs`); a worker's own uncapped in-flight counts are not visible here.

use std::sync::{Arc, Mutex};

use crate::api::Api;
use crate::config::routing::Balance;
use crate::snapshot::Snapshot;
use crate::telemetry::replicas::ReplicaBoard;

use super::balance::{self, PrefixIndex};

/// Why a prediction could not be made (the admin listener answers 400 or 404).
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(
        "the body must be a JSON request with `model` and `messages`, `input` or `prompt`: {0}"
    )]
    Body(String),
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
}

impl PredictError {
    pub fn status(&self) -> u16 {
        match self {
            PredictError::Body(_) => 400,
            PredictError::UnknownModel(_) => 404,
        }
    }
}

/// The prediction for `body` (a chat, Responses, Messages or completions request).
pub fn predict(
    snap: &Snapshot,
    indexes: &[Arc<Mutex<PrefixIndex>>],
    replicas: &ReplicaBoard,
    body: &[u8],
) -> Result<serde_json::Value, PredictError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| PredictError::Body(e.to_string()))?;
    let name = v["model"]
        .as_str()
        .ok_or_else(|| PredictError::Body("no `model`".into()))?;
    let cfg = &snap.cfg;
    let (m, _) = cfg
        .model_by_name(name)
        .ok_or_else(|| PredictError::UnknownModel(name.into()))?;
    let model = &cfg.models[m];
    let api = if v.get("prompt").is_some() {
        Api::Completions
    } else {
        Api::ChatCompletions
    };
    let settings = &cfg.routing.prefix;
    let text = balance::render_prompt(api, body);
    let hashes = balance::block_hashes(&model.name, text.as_bytes(), settings.block_bytes);
    // Best match per stable provider id over every worker's index.
    let mut best: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for index in indexes {
        let index = index.lock().unwrap_or_else(|e| e.into_inner());
        for (provider, blocks) in index.matches(&hashes, settings.ttl) {
            let e = best.entry(provider).or_insert(0);
            *e = (*e).max(blocks);
        }
    }
    let board = replicas.load();
    let gate = snap.gates.get(m).and_then(Option::as_ref);
    let blocks = hashes.len().max(1);
    let mean_weight = model
        .targets
        .iter()
        .map(|t| f64::from(t.weight))
        .sum::<f64>()
        / model.targets.len().max(1) as f64;
    let mut rows = Vec::new();
    for (i, t) in model.targets.iter().enumerate() {
        let provider = &snap.providers[t.provider];
        let scraped = board
            .iter()
            .find(|r| r.provider_index == t.provider)
            .filter(|r| {
                r.updated
                    .is_some_and(|u| u.elapsed() <= settings.stale_after)
            })
            .and_then(|r| r.load);
        let (in_flight, cap) = gate.map_or((0, 0), |g| g.target_load(i));
        let engine_queue = scraped.map_or(0.0, |l| l.running + l.waiting);
        let kv = scraped.and_then(|l| l.kv_cache_ratio).unwrap_or(0.0);
        let queue =
            (engine_queue.max(f64::from(in_flight))) * mean_weight / f64::from(t.weight.max(1));
        let matched = best.get(&provider.id).copied().unwrap_or(0);
        let score = settings.weight_prefix * matched as f64 / blocks as f64
            - settings.weight_queue * queue
            - settings.weight_kv * kv;
        rows.push((
            i,
            matched,
            queue,
            kv,
            score,
            scraped.is_some(),
            in_flight,
            cap,
        ));
    }
    let shortest = rows.iter().map(|r| r.2).fold(f64::INFINITY, f64::min);
    let longest = rows.iter().map(|r| r.2).fold(0.0, f64::max);
    let imbalanced = longest - shortest >= settings.imbalance;
    let rank = |r: &(usize, usize, f64, f64, f64, bool, u32, u32)| match model.balance {
        Balance::LeastLoad => -r.2,
        Balance::Prefix if !imbalanced => r.4,
        Balance::Prefix => -r.2,
        _ => 0.0,
    };
    let deterministic = matches!(model.balance, Balance::LeastLoad | Balance::Prefix);
    let choice = rows
        .iter()
        .filter(|_| deterministic)
        .filter(|r| r.7 == 0 || r.6 < r.7)
        .max_by(|a, b| rank(a).total_cmp(&rank(b)))
        .map(|r| snap.breakers[m][r.0].label.clone());
    let replicas: Vec<serde_json::Value> = rows
        .iter()
        .map(|&(i, matched, queue, kv, score, fresh, in_flight, cap)| {
            let t = &model.targets[i];
            serde_json::json!({
                "target": snap.breakers[m][i].label,
                "provider": cfg.providers[t.provider].name,
                "matched_blocks": matched,
                "matched_bytes": matched * settings.block_bytes,
                "matched_fraction": matched as f64 / blocks as f64,
                "queue": queue,
                "kv_cache_ratio": kv,
                "load_fresh": fresh,
                "in_flight": in_flight,
                "max_in_flight": cap,
                "score": score,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "model": model.name,
        "balance": model.balance.as_str(),
        "prompt_blocks": hashes.len(),
        "block_bytes": settings.block_bytes,
        "imbalanced": imbalanced,
        "choice": choice,
        "replicas": replicas,
    }))
}
