//! Changing a model's target weights through the admin API (canaries, draining a replica)
//! without editing the file by hand: `PUT /admin/models/{name}/weights` with
//! `{"weights": {"provider/upstream_model": 10, ...}}`. The change is written into the
//! configuration file (atomically: a temporary file renamed over it) and applied as a reload, so
//! it is validated like any edit, recorded as a numbered version, survives a restart, and is
//! undone with `tollgate config rollback` like any other version. The rewritten file is the
//! YAML serialiser's: comments are not kept in it (the previous version keeps them, byte for
//! byte, in the history). `GET /admin/models` lists each model's targets, weights and breaker
//! states. Control plane only.

use std::collections::HashMap;
use std::path::Path;

use serde_yaml_ng::Value;

use super::{ReloadError, Reloader, Trigger};
use crate::snapshot::Snapshot;

/// Why a weight change was refused (the file and the running configuration are unchanged).
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{0}")]
    Invalid(String),
    #[error("no model `{0}` in the configuration file")]
    UnknownModel(String),
    #[error("cannot rewrite {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Reload(#[from] ReloadError),
}

impl WeightsError {
    pub fn status(&self) -> u16 {
        match self {
            WeightsError::UnknownModel(_) => 404,
            WeightsError::Io { .. } => 500,
            _ => 400,
        }
    }
}

/// Sets the weights of `model`'s targets named in `weights` (by `provider/upstream_model`),
/// writes the file and reloads it. Returns the reload's generation and version.
pub fn set(
    reloader: &Reloader,
    model: &str,
    weights: &HashMap<String, u32>,
) -> Result<super::Applied, WeightsError> {
    if weights.is_empty() {
        return Err(WeightsError::Invalid(
            "`weights` must name at least one target".into(),
        ));
    }
    if let Some((t, _)) = weights.iter().find(|(_, w)| **w == 0) {
        return Err(WeightsError::Invalid(format!(
            "the weight of `{t}` must be at least 1 (remove the target to send it nothing)"
        )));
    }
    let path = reloader.path().to_path_buf();
    let io = |source| WeightsError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let mut doc: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        WeightsError::Invalid(format!("the configuration file does not parse: {e}"))
    })?;
    apply(&mut doc, model, weights)?;
    let out = serde_yaml_ng::to_string(&doc)
        .map_err(|e| WeightsError::Invalid(format!("cannot write the configuration: {e}")))?;
    write_atomically(&path, out.as_bytes()).map_err(io)?;
    match reloader.reload(Trigger::Admin) {
        Ok(applied) => Ok(applied),
        Err(e) => {
            // The running configuration stayed; put the file back as it was.
            write_atomically(&path, text.as_bytes()).map_err(io)?;
            Err(e.into())
        }
    }
}

/// Edits the parsed file: the `targets` of the model called `model`.
fn apply(doc: &mut Value, model: &str, weights: &HashMap<String, u32>) -> Result<(), WeightsError> {
    let models = doc
        .get_mut("models")
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| WeightsError::UnknownModel(model.into()))?;
    let entry = models
        .iter_mut()
        .find(|m| m.get("name").and_then(Value::as_str) == Some(model))
        .ok_or_else(|| WeightsError::UnknownModel(model.into()))?;
    let Some(targets) = entry.get_mut("targets").and_then(Value::as_sequence_mut) else {
        return Err(WeightsError::Invalid(format!(
            "the model `{model}` has a single target (`provider`), so it has no weights to change"
        )));
    };
    let mut known = Vec::new();
    let mut matched = 0;
    for t in targets.iter_mut() {
        let provider = t
            .get("provider")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let upstream = t.get("model").and_then(Value::as_str).unwrap_or(model);
        let label = format!("{provider}/{upstream}");
        if let (Some(w), Some(map)) = (weights.get(&label), t.as_mapping_mut()) {
            map.insert(Value::from("weight"), Value::from(*w));
            matched += 1;
        }
        known.push(label);
    }
    if matched != weights.len() {
        let unknown: Vec<&str> = weights
            .keys()
            .filter(|k| !known.contains(k))
            .map(String::as_str)
            .collect();
        return Err(WeightsError::Invalid(format!(
            "the model `{model}` has no target {} (its targets: {})",
            unknown.join(", "),
            known.join(", ")
        )));
    }
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path`, with `path`'s permissions, and renames it
/// over `path`: a reader (the file watch, a crash) sees the old file or the new one, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("weights.tmp");
    std::fs::write(&tmp, bytes)?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions())?;
    }
    std::fs::rename(&tmp, path)
}

/// `GET /admin/models`: each model's targets with weight, priority and breaker state.
pub fn list(snap: &Snapshot) -> serde_json::Value {
    let now = crate::governance::window::now_ms().max(0) as u64;
    let cfg = &snap.cfg;
    let models: Vec<serde_json::Value> = cfg
        .models
        .iter()
        .enumerate()
        .map(|(m, model)| {
            let targets: Vec<serde_json::Value> = model
                .targets
                .iter()
                .enumerate()
                .map(|(t, target)| {
                    let tb = &snap.breakers[m][t];
                    serde_json::json!({
                        "target": tb.label,
                        "weight": target.weight,
                        "priority": target.priority,
                        "breaker": if model.breaker.enabled {
                            tb.breaker.state(now).label()
                        } else {
                            "off"
                        },
                    })
                })
                .collect();
            serde_json::json!({
                "name": model.name,
                "targets": targets,
                "fallback": model.fallback.iter().map(|f| cfg.models[*f].name.as_str()).collect::<Vec<_>>(),
                "tiers": model.tiers.iter().map(|t| t.label.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "models": models })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_set_by_target_label_and_unknown_targets_refused() {
        let mut doc: Value = serde_yaml_ng::from_str(
            "models:\n  - name: m\n    targets:\n      - {provider: a, model: x, weight: 5}\n      - {provider: b}\n  - name: one\n    provider: a\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let w: HashMap<String, u32> = [("a/x".to_string(), 1), ("b/m".to_string(), 9)].into();
        apply(&mut doc, "m", &w).unwrap_or_else(|e| panic!("{e}"));
        let t = &doc["models"][0]["targets"];
        assert_eq!(
            (t[0]["weight"].as_u64(), t[1]["weight"].as_u64()),
            (Some(1), Some(9))
        );
        let bad: HashMap<String, u32> = [("c/x".to_string(), 1)].into();
        let e = apply(&mut doc, "m", &bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no target c/x") && e.contains("a/x, b/m"), "{e}");
        assert!(matches!(
            apply(&mut doc, "nope", &w),
            Err(WeightsError::UnknownModel(_))
        ));
        assert!(apply(&mut doc, "one", &w).is_err(), "single-target model");
    }
}
