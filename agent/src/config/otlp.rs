//! `otlp:` — traces of every request, sent to an OpenTelemetry collector (OTLP/HTTP).

use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct OtlpFile {
    enabled: Option<bool>,
    /// The collector's traces URL (`http://127.0.0.1:4318/v1/traces`).
    endpoint: Option<String>,
    service_name: Option<String>,
    timeout_ms: Option<u64>,
    /// Spans sent per request at most.
    batch: Option<usize>,
    /// Spans waiting at most; past it new ones are dropped (and counted).
    queue: Option<usize>,
    /// Longest a span waits for its batch to fill.
    flush_ms: Option<u64>,
    /// Headers sent with every export (`{x-api-key: ...}`), values read from these env variables.
    headers_env: Option<std::collections::BTreeMap<String, String>>,
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    pub endpoint: String,
    pub service_name: String,
    pub timeout: Duration,
    pub batch: usize,
    pub queue: usize,
    pub flush: Duration,
    /// Header name and value (read from the environment at load).
    pub headers: Vec<(String, String)>,
}

impl Validator<'_> {
    pub(super) fn otlp(
        &mut self,
        raw: Option<serde_yaml_ng::Value>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<OtlpSettings> {
        let f: OtlpFile = self.item("otlp", raw?)?;
        if !f.enabled.unwrap_or(true) {
            return None;
        }
        let endpoint = match f.endpoint {
            Some(e) if e.starts_with("http://") => e,
            Some(e) if e.starts_with("https://") => {
                self.problem(
                    "otlp.endpoint",
                    format!("`{e}`: only http:// collectors are supported (run a collector on the node, e.g. http://127.0.0.1:4318/v1/traces)"),
                );
                return None;
            }
            Some(e) => {
                self.problem("otlp.endpoint", format!("`{e}` is not an http:// URL"));
                return None;
            }
            None => {
                self.problem(
                    "otlp.endpoint",
                    "required (e.g. http://127.0.0.1:4318/v1/traces)",
                );
                return None;
            }
        };
        let batch = f.batch.unwrap_or(512);
        let queue = f.queue.unwrap_or(8192);
        if batch == 0 || queue < batch {
            self.problem("otlp", "batch must be at least 1 and queue at least batch");
        }
        let mut headers = Vec::new();
        for (name, var) in f.headers_env.unwrap_or_default() {
            match env(&var) {
                Some(v) => headers.push((name, v)),
                None => self.problem(
                    format!("otlp.headers_env.{name}"),
                    format!("environment variable `{var}` is not set"),
                ),
            }
        }
        Some(OtlpSettings {
            endpoint,
            service_name: f.service_name.unwrap_or_else(|| "tollgate".into()),
            timeout: Duration::from_millis(f.timeout_ms.unwrap_or(2000).max(1)),
            batch: batch.max(1),
            queue: queue.max(batch.max(1)),
            flush: Duration::from_millis(f.flush_ms.unwrap_or(1000).max(1)),
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(extra: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        let src = format!(
            "providers:\n  - {{name: a, kind: openai, base_url: \"http://127.0.0.1:8001\"}}\n\
             models:\n  - {{name: m, targets: [{{provider: a, model: q}}]}}\n{extra}"
        );
        Config::from_yaml(&src, env).map_err(|e| e.to_string())
    }

    #[test]
    fn otlp_is_off_unless_configured_and_its_endpoint_is_checked() {
        let none = |_: &str| None;
        assert!(load("", &none).unwrap().otlp.is_none());
        let c = load(
            "otlp: {endpoint: \"http://127.0.0.1:4318/v1/traces\", batch: 10, headers_env: {x-api-key: K}}\n",
            &|v| (v == "K").then(|| "secret".to_string()),
        )
        .unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(
            (o.batch, o.queue, o.service_name.as_str()),
            (10, 8192, "tollgate")
        );
        assert_eq!(
            o.headers,
            vec![("x-api-key".to_string(), "secret".to_string())]
        );
        for (yaml, want) in [
            ("otlp: {}\n", "otlp.endpoint"),
            (
                "otlp: {endpoint: \"https://c:4318/v1/traces\"}\n",
                "only http://",
            ),
            (
                "otlp: {endpoint: \"http://c\", batch: 10, queue: 5}\n",
                "queue at least batch",
            ),
            (
                "otlp: {endpoint: \"http://c\", headers_env: {a: MISSING}}\n",
                "MISSING",
            ),
            ("otlp: {endpoint: \"http://c\", port: 1}\n", "port"),
        ] {
            let e = load(yaml, &none).unwrap_err();
            assert!(e.contains(want), "{want} missing from {e}");
        }
        assert!(load("otlp: {enabled: false}\n", &none)
            .unwrap()
            .otlp
            .is_none());
    }
}
