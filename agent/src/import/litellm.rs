//! `tollgate import litellm`: a LiteLLM proxy `config.yaml` turned into a Tollgate config.
//!
//! Deployments in `model_list` are grouped by `model_name` into one Tollgate model each, with one
//! target per deployment. A deployment's `litellm_params.model` prefix names its provider
//! (`openai/gpt-4o`, `anthropic/claude-...`, `hosted_vllm/...`); `api_base` (its trailing `/v1`
//! dropped: Tollgate adds the API path itself), and `api_key: os.environ/NAME` (becomes
//! `api_key_env: NAME`) make one Tollgate provider per distinct (kind, base URL, key). Everything
//! that cannot be carried over is listed, never silently dropped: providers Tollgate does not
//! speak (Azure, Bedrock, Vertex, ...), literal keys (secrets stay out of config files), and
//! settings whose Tollgate counterparts land with later issues (per-deployment rpm/tpm, router
//! and general settings).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_yaml_ng::Value;

/// Why a file could not be converted at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("no `model_list` with deployments in this file")]
    NoModelList,
}

/// The converted config and what could not be converted.
#[derive(Debug)]
pub struct Converted {
    pub yaml: String,
    pub notes: Vec<String>,
}

/// LiteLLM prefixes Tollgate can serve: kind, default base URL (`None`: `api_base` required).
fn known_prefix(prefix: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match prefix {
        "openai" | "text-completion-openai" => ("openai", Some("https://api.openai.com")),
        "anthropic" => ("anthropic", Some("https://api.anthropic.com")),
        "hosted_vllm" | "vllm" | "openai_like" | "lm_studio" | "llamafile" | "sglang" => {
            ("openai", None)
        }
        "ollama" | "ollama_chat" => ("openai", Some("http://localhost:11434")),
        "deepseek" => ("openai", Some("https://api.deepseek.com")),
        "groq" => ("openai", Some("https://api.groq.com/openai")),
        "mistral" => ("openai", Some("https://api.mistral.ai")),
        "together_ai" => ("openai", Some("https://api.together.xyz")),
        _ => return None,
    })
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ProviderKey {
    kind: &'static str,
    base_url: String,
    key_env: Option<String>,
}

struct Target {
    provider: usize,
    model: String,
    weight: Option<u64>,
}

/// Converts the text of a LiteLLM proxy config.
pub fn convert(text: &str) -> Result<Converted, ImportError> {
    let doc: Value = serde_yaml_ng::from_str(text)?;
    let list = doc
        .get("model_list")
        .and_then(Value::as_sequence)
        .filter(|l| !l.is_empty())
        .ok_or(ImportError::NoModelList)?;
    let mut notes = Vec::new();
    let mut providers: Vec<(ProviderKey, String)> = Vec::new();
    // Model names in first-seen order, with their targets.
    let mut order: Vec<String> = Vec::new();
    let mut models: BTreeMap<String, Vec<Target>> = BTreeMap::new();

    for (i, d) in list.iter().enumerate() {
        let name = d.get("model_name").and_then(Value::as_str).unwrap_or("");
        let params = d.get("litellm_params");
        let model = params
            .and_then(|p| p.get("model"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let at = format!("model_list[{i}] (`{name}`)");
        if name.is_empty() || model.is_empty() {
            notes.push(format!(
                "{at}: skipped: needs model_name and litellm_params.model"
            ));
            continue;
        }
        if name.contains('*') || model.contains('*') {
            notes.push(format!(
                "{at}: skipped: wildcard routes have no Tollgate equivalent yet"
            ));
            continue;
        }
        let (prefix, upstream) = match model.split_once('/') {
            Some((p, m)) => (p, m),
            None => ("openai", model),
        };
        let Some((kind, default_base)) = known_prefix(prefix) else {
            notes.push(format!(
                "{at}: skipped: provider `{prefix}/` is not one Tollgate speaks (OpenAI- and Anthropic-compatible APIs only)"
            ));
            continue;
        };
        let get = |k: &str| params.and_then(|p| p.get(k));
        let base = match get("api_base").and_then(Value::as_str) {
            Some(b) => normalise_base(b),
            None => match default_base {
                Some(b) => b.to_string(),
                None => {
                    notes.push(format!("{at}: skipped: `{prefix}/` needs an api_base"));
                    continue;
                }
            },
        };
        let key_env = match get("api_key").and_then(Value::as_str) {
            Some(k) => match k.strip_prefix("os.environ/") {
                Some(var) => Some(var.to_string()),
                None => {
                    notes.push(format!(
                        "{at}: a literal api_key was not copied (secrets stay out of config files): put it in an environment variable and set api_key_env"
                    ));
                    None
                }
            },
            None => None,
        };
        for unsupported in [
            "rpm",
            "tpm",
            "max_parallel_requests",
            "order",
            "timeout",
            "stream_timeout",
            "max_budget",
            "budget_duration",
        ] {
            if get(unsupported).is_some() {
                notes.push(format!(
                    "{at}: `{unsupported}` not converted (per-deployment limits, budgets and priorities come with governance and routing)"
                ));
            }
        }
        if prefix.starts_with("ollama") {
            notes.push(format!(
                "{at}: ollama is reached through its OpenAI-compatible /v1 API"
            ));
        }
        let key = ProviderKey {
            kind,
            base_url: base,
            key_env,
        };
        let provider = match providers.iter().position(|(k, _)| *k == key) {
            Some(p) => p,
            None => {
                let name = provider_name(prefix, &key, default_base, &providers);
                providers.push((key, name));
                providers.len() - 1
            }
        };
        if !models.contains_key(name) {
            order.push(name.to_string());
        }
        models.entry(name.to_string()).or_default().push(Target {
            provider,
            model: upstream.to_string(),
            weight: get("weight").and_then(Value::as_u64),
        });
    }
    if let Some(map) = doc.as_mapping() {
        for (k, _) in map {
            if let Some(k) = k.as_str().filter(|k| *k != "model_list") {
                notes.push(format!(
                    "`{k}` not converted: Tollgate's settings differ; see README (keys, limits and budgets come with governance)"
                ));
            }
        }
    }
    Ok(Converted {
        yaml: render(&providers, &order, &models),
        notes,
    })
}

/// `http://host:8000/v1/` → `http://host:8000` (Tollgate appends `/v1/chat/completions`).
fn normalise_base(b: &str) -> String {
    let b = b.trim_end_matches('/');
    b.strip_suffix("/v1").unwrap_or(b).to_string()
}

/// `openai` for the default endpoint of a prefix; otherwise the prefix and the host, made
/// unique.
fn provider_name(
    prefix: &str,
    key: &ProviderKey,
    default_base: Option<&str>,
    taken: &[(ProviderKey, String)],
) -> String {
    let base = if default_base == Some(key.base_url.as_str()) {
        prefix.replace('_', "-")
    } else {
        let host = key
            .base_url
            .split("://")
            .nth(1)
            .unwrap_or(&key.base_url)
            .split('/')
            .next()
            .unwrap_or("");
        let host: String = host
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("{}-{host}", prefix.replace('_', "-"))
    };
    let mut name = base.clone();
    let mut n = 2;
    while taken.iter().any(|(_, t)| *t == name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// A YAML scalar for any string (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn render(
    providers: &[(ProviderKey, String)],
    order: &[String],
    models: &BTreeMap<String, Vec<Target>>,
) -> String {
    let mut y = String::from(
        "# Converted from a LiteLLM proxy config by `tollgate import litellm`.\n\
         listen: 127.0.0.1:4000\n\
         data_dir: ./tollgate-data\n\
         providers:\n",
    );
    for (k, name) in providers {
        let _ = writeln!(y, "  - name: {}", q(name));
        let _ = writeln!(y, "    kind: {}", k.kind);
        let _ = writeln!(y, "    base_url: {}", q(&k.base_url));
        if let Some(env) = &k.key_env {
            let _ = writeln!(y, "    api_key_env: {}", q(env));
        }
    }
    y.push_str("models:\n");
    for name in order {
        let Some(targets) = models.get(name) else {
            continue;
        };
        let _ = writeln!(y, "  - name: {}", q(name));
        match targets.as_slice() {
            [one] if one.weight.is_none() => {
                let _ = writeln!(y, "    provider: {}", q(&providers[one.provider].1));
                let _ = writeln!(y, "    model: {}", q(&one.model));
            }
            many => {
                y.push_str("    targets:\n");
                for t in many {
                    let _ = write!(
                        y,
                        "      - {{provider: {}, model: {}",
                        q(&providers[t.provider].1),
                        q(&t.model)
                    );
                    if let Some(w) = t.weight {
                        let _ = write!(y, ", weight: {w}");
                    }
                    y.push_str("}\n");
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Shaped like the LiteLLM proxy docs' examples: one model on Azure and OpenAI, a local
    /// vLLM replica pair, Anthropic, Ollama, literal and env keys, limits and settings.
    const LITELLM: &str = r#"
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-eu
      api_base: https://my-endpoint-europe.openai.azure.com/
      api_key: os.environ/AZURE_API_KEY
      rpm: 6
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      tpm: 100000
  - model_name: qwen
    litellm_params:
      model: hosted_vllm/Qwen/Qwen2.5-7B-Instruct
      api_base: http://10.0.0.5:8000/v1
      rpm: 600
  - model_name: qwen
    litellm_params:
      model: hosted_vllm/Qwen/Qwen2.5-7B-Instruct
      api_base: http://10.0.0.6:8000/v1/
      weight: 2
  - model_name: claude-sonnet
    litellm_params:
      model: anthropic/claude-3-5-sonnet-20241022
      api_key: os.environ/ANTHROPIC_API_KEY
  - model_name: llama3
    litellm_params:
      model: ollama_chat/llama3.1
      api_base: http://localhost:11434
  - model_name: "mistral: small"
    litellm_params:
      model: mistral/mistral-small-latest
      api_key: sk-literal-secret
  - model_name: "*"
    litellm_params:
      model: "openai/*"
litellm_settings:
  drop_params: true
general_settings:
  master_key: sk-1234
"#;

    #[test]
    fn a_realistic_config_converts_and_validates() {
        let c = convert(LITELLM).unwrap();
        let cfg = Config::from_yaml(&c.yaml, &|name| Some(format!("value-of-{name}")))
            .unwrap_or_else(|e| panic!("{e}\n{}", c.yaml));
        let names: Vec<&str> = cfg.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gpt-4o",
                "qwen",
                "claude-sonnet",
                "llama3",
                "mistral: small"
            ]
        );
        let target = |model: &str, i: usize| {
            let (_, m) = cfg.model_by_name(model).unwrap();
            let t = &m.targets[i];
            let p = &cfg.providers[t.provider];
            (
                p.name.clone(),
                t.upstream_model.clone(),
                p.base_path.clone(),
                t.weight,
            )
        };
        // Azure was skipped; the OpenAI deployment stays.
        assert_eq!(cfg.model_by_name("gpt-4o").unwrap().1.targets.len(), 1);
        assert_eq!(target("gpt-4o", 0).1, "gpt-4o");
        // Two replicas of one model: two providers, model names with slashes kept, /v1 dropped.
        assert_eq!(target("qwen", 0).1, "Qwen/Qwen2.5-7B-Instruct");
        assert_eq!((target("qwen", 1).3, target("qwen", 1).2.as_str()), (2, ""));
        assert_ne!(target("qwen", 0).0, target("qwen", 1).0);
        let claude = cfg.model_by_name("claude-sonnet").unwrap().1.targets[0].provider;
        assert_eq!(
            cfg.providers[claude].kind,
            crate::config::ProviderKind::Anthropic
        );
        assert_eq!(
            cfg.providers[claude].api_key.as_deref(),
            Some("value-of-ANTHROPIC_API_KEY")
        );
        // Nothing is dropped silently.
        let notes = c.notes.join("\n");
        for needle in [
            "`azure/`",
            "`rpm`",
            "`tpm`",
            "literal api_key",
            "wildcard",
            "`general_settings`",
            "`litellm_settings`",
            "ollama",
        ] {
            assert!(notes.contains(needle), "{needle} missing from:\n{notes}");
        }
        assert!(!c.yaml.contains("sk-literal-secret") && !c.yaml.contains("sk-1234"));
    }

    #[test]
    fn not_a_litellm_config() {
        assert!(matches!(convert("a: [").unwrap_err(), ImportError::Yaml(_)));
        assert!(matches!(
            convert("model_list: []").unwrap_err(),
            ImportError::NoModelList
        ));
    }
}
