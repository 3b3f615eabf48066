//! The configuration file as the user writes it: serde structs that mirror the YAML, with
//! `deny_unknown_fields` so a typo is an error, not a silently ignored key.
//! Nothing here is interpreted; `validate.rs` turns these into runtime types. Fields whose items
//! are validated one by one (providers, models, intercepts, attribution rules) stay
//! `serde_yaml_ng::Value` here so a bad item does not hide the problems of the others.

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<String>,
    pub workers: Option<usize>,
    /// How long a stopping agent lets running requests finish before it cuts (and records) them.
    pub shutdown_grace_ms: Option<u64>,
    #[serde(default)]
    pub io: IoFile,
    /// Transport limits (a map: body size, timeouts, ...) or rate limits (a list of rules).
    pub limits: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub ledger: LedgerFile,
    #[serde(default)]
    pub providers: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub models: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub kernel: KernelFile,
    /// Destinations (`IP:PORT`) whose TCP connects the kernel redirects to the agent.
    #[serde(default)]
    pub intercept: Vec<serde_yaml_ng::Value>,
    /// Either a list of rules or `{ anonymous, rules }`; see [`AttributionFile`].
    pub attribution: Option<serde_yaml_ng::Value>,
    /// Scraping the replicas' own `/metrics` for their load.
    #[serde(default)]
    pub replicas: ReplicasFile,
    /// The operators' listener (`/metrics`, `/readyz`, later reloads and keys), token-protected.
    #[serde(default)]
    pub admin: AdminFile,
    /// Governance (`validate_governance.rs`): `{mode: keys}` (default) or `{mode: open}`.
    pub auth: Option<serde_yaml_ng::Value>,
    /// Identity headers every request must carry (or its key or kernel identity must fill).
    #[serde(default)]
    pub require_headers: Vec<String>,
    /// USD per 1M tokens, by configured or provider model name (extends the built-in catalog).
    #[serde(default)]
    pub prices: std::collections::HashMap<String, serde_yaml_ng::Value>,
    /// Rate limits, when `limits:` holds transport limits.
    #[serde(default)]
    pub rate_limits: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub budgets: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub model_access: Vec<serde_yaml_ng::Value>,
    /// Tier name → model globs.
    #[serde(default)]
    pub model_tiers: std::collections::HashMap<String, Vec<String>>,
    /// `x-tollgate-workflow` class (glob) → the tiers it may use.
    #[serde(default)]
    pub workload_classes: std::collections::HashMap<String, serde_yaml_ng::Value>,
    pub loop_guard: Option<serde_yaml_ng::Value>,
    pub alerts: Option<serde_yaml_ng::Value>,
    /// Output tokens reserved against budgets for a request that sets no maximum (4096).
    pub default_max_output_tokens: Option<u64>,
    /// Paths an intercepted client may POST to unmetered under `auth: keys`.
    pub unmetered_post_paths: Option<Vec<String>>,
    /// Routing defaults for every model: retries, breakers, timeouts, the retry budget.
    #[serde(default)]
    pub routing: RoutingFile,
    /// Who may use public providers: `{public: allow|deny, allow: [scopes], deny: [scopes]}`.
    pub egress: Option<serde_yaml_ng::Value>,
    /// The OpenAI Batch API (`/v1/files`, `/v1/batches`) and its background runner.
    #[serde(default)]
    pub batch_jobs: BatchJobsFile,
    /// Budgets shared by many agents through Redis.
    pub cluster: Option<super::cluster::ClusterFile>,
    /// Detectors and what to do with their findings, per scope and destination.
    #[serde(default)]
    pub guardrails: Vec<serde_yaml_ng::Value>,
    /// Response caches: `{exact: {...}, semantic: {...}}`.
    pub cache: Option<serde_yaml_ng::Value>,
    /// Traces to an OpenTelemetry collector: `{endpoint: http://..., ...}`.
    pub otlp: Option<serde_yaml_ng::Value>,
    /// USD per GPU-hour by GPU model: `{H100: 2.50}`.
    #[serde(default)]
    pub gpu_pricing: std::collections::HashMap<String, f64>,
    /// Which self-hosted providers run on which GPUs (`config/gpu.rs`).
    pub gpu_accounting: Option<serde_yaml_ng::Value>,
}

/// `batch_jobs:` — the Batch API and the thread that runs its jobs.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BatchJobsFile {
    /// Serve `/v1/files` and `/v1/batches` and run their jobs (default true).
    pub enabled: Option<bool>,
    /// Lines of a batch in flight at once (default 4).
    pub concurrency: Option<usize>,
    /// Time allowed for one line's request, connect to last byte, in milliseconds (default 600000).
    pub request_timeout_ms: Option<u64>,
}

/// `routing:` (defaults) and the same keys on a model (overrides).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    pub retry: Option<RetryFile>,
    pub breaker: Option<BreakerFile>,
    pub timeouts: Option<TimeoutsFile>,
    /// Retries allowed per worker: `ratio` of its requests, at least `min_per_second`.
    pub retry_budget: Option<RetryBudgetFile>,
    /// The `prefix` balancer: block size, index bounds, score weights.
    pub prefix: Option<PrefixFile>,
    /// When `x-tollgate-priority: batch` requests may run.
    pub batch: Option<BatchFile>,
    /// Requests in flight per replica, and the fair queue past that.
    pub queue: Option<QueueFile>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    /// Requests the agent sends a replica at once (0, the default: no limit, no queue). A
    /// target's own `max_in_flight` overrides it.
    pub max_in_flight: Option<u32>,
    /// Requests waiting per model at most (past it: 503 `queue_full`).
    pub max_waiting: Option<u32>,
    /// Requests one tenant may have waiting per model (past it: 429 `tenant_queue_full`).
    pub max_waiting_per_tenant: Option<u32>,
    /// How long a request waits for a slot before 503 `queue_timeout`.
    pub max_wait_ms: Option<u64>,
    /// Who shares fairly: `team` (the default; a request without one counts as its key) or `key`.
    pub tenant: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    /// A batch request runs while some replica's queue is below this.
    pub max_queue: Option<f64>,
    /// UTC hours (`"01:00-06:00"`) in which batch requests run whatever the load.
    pub hours: Option<String>,
    /// How long a batch request waits for room before 503 `batch_deferred`.
    pub max_wait_ms: Option<u64>,
    /// Batch runs only while some GPU of the node is below this utilisation, percent (NVML).
    pub max_gpu_util: Option<u32>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct PrefixFile {
    pub block_bytes: Option<usize>,
    /// Blocks the per-worker prefix index holds at most.
    pub max_blocks: Option<usize>,
    pub ttl_s: Option<u64>,
    pub weight_prefix: Option<f64>,
    pub weight_queue: Option<f64>,
    pub weight_kv: Option<f64>,
    /// Queue difference past which the shortest queue wins over affinity.
    pub imbalance: Option<f64>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// How many further targets a request may try after the first.
    pub attempts: Option<u32>,
    /// What is retried: `connect`, `5xx`, `4xx`, or a status (`"429"`, `503`).
    pub on: Option<Vec<serde_yaml_ng::Value>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    /// Default true once `breaker` is written; without it, on for models with an alternative.
    pub enabled: Option<bool>,
    /// Failures in a row within `window_ms` that open a target's breaker.
    pub failures: Option<u32>,
    pub window_ms: Option<u64>,
    /// How long an open breaker keeps requests away before a half-open probe.
    pub cooldown_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub connect_ms: Option<u64>,
    /// From the request written to the first response byte (head).
    pub first_token_ms: Option<u64>,
    /// The whole request, first byte read to last byte sent.
    pub request_ms: Option<u64>,
    /// The longest gap between two pieces of a response body.
    pub idle_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetFile {
    pub ratio: Option<f64>,
    pub min_per_second: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address of the admin listener (off when absent).
    pub listen: Option<String>,
    /// Environment variable holding the bearer token the admin listener requires.
    pub token_env: Option<String>,
    /// Whether the client port also serves `/metrics` (default true, for compatibility).
    pub metrics_on_client_port: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplicasFile {
    /// Scrape `<base_url>/metrics` of every plain-http `kind: openai` provider (default true).
    pub scrape: Option<bool>,
    /// How often, in milliseconds (default 1000).
    pub scrape_interval_ms: Option<u64>,
    /// Time allowed for one scrape, connect to last byte, in milliseconds (default 500).
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KernelFile {
    /// `auto` (load the eBPF programs when the host allows it) or `off`; `true`/`false` too.
    pub enabled: Option<serde_yaml_ng::Value>,
    /// Where the maps are pinned (on bpffs).
    pub pin_dir: Option<String>,
    /// The cgroup v2 mount to attach at (default: the first cgroup2 in /proc/mounts). In a
    /// container, the host's hierarchy mounted somewhere, since the container's own
    /// /sys/fs/cgroup is its cgroup namespace and would cover only the pod.
    pub cgroup_root: Option<String>,
}

/// `attribution:` in its map form.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AttributionFile {
    /// `attribute_by_kernel` (default) or `leave_anonymous`.
    pub anonymous: Option<String>,
    #[serde(default)]
    pub rules: Vec<serde_yaml_ng::Value>,
}

/// One attribution rule: kernel facts to match, identity fields to fill.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(rename = "match")]
    pub matches: MatchFile,
    pub team: Option<String>,
    pub project: Option<String>,
    pub user: Option<String>,
    pub session: Option<String>,
    pub workflow: Option<String>,
    pub cost_center: Option<String>,
}

/// Globs (`*`, `?`) on what the kernel knows about a client; every given one must match.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// cgroup v2 path, e.g. `/system.slice/batch-*.scope`.
    pub cgroup: Option<String>,
    /// Thread name at connect time (at most 15 bytes).
    pub comm: Option<String>,
    /// Container id (64 hex) parsed from the cgroup path.
    pub container: Option<String>,
    /// Kubernetes pod UID parsed from the cgroup path.
    pub pod: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IoFile {
    /// `auto` (io_uring when the kernel allows it, else epoll), `io_uring` or `epoll`.
    pub driver: Option<String>,
    /// io_uring submission queue entries per worker.
    pub uring_entries: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_head_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_body_bytes: Option<u64>,
    /// Deepest JSON nesting accepted in a request body.
    pub max_json_depth: Option<usize>,
    /// Time allowed to receive a whole request head once its first byte arrived (absolute).
    pub header_timeout_ms: Option<u64>,
    /// Time allowed to receive a whole request body once its head was read (absolute).
    pub body_timeout_ms: Option<u64>,
    /// Most client connections one worker holds; more are answered 503 and closed.
    pub max_connections_per_worker: Option<usize>,
    /// Most request-body bytes one worker buffers at once across its connections.
    pub max_buffered_bytes_per_worker: Option<u64>,
    /// Connections a worker may hold and still wait for each one's next request with a read
    /// (and its buffer) posted; above it, every wait holds no buffer.
    pub buffered_wait_connections_per_worker: Option<usize>,
    /// How long an idle keep-alive client connection is kept.
    pub idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub connect_timeout_ms: Option<u64>,
    /// Time from sending the request to the provider's response head.
    pub response_timeout_ms: Option<u64>,
    /// Longest silence between two reads of a response body.
    pub read_timeout_ms: Option<u64>,
    pub pool_idle_timeout_ms: Option<u64>,
    pub pool_max_idle_per_provider: Option<usize>,
    /// After a client disconnects mid-stream, keep reading the provider this long for usage.
    pub drain_timeout_ms: Option<u64>,
    /// ... and at most this many bytes.
    pub drain_max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LedgerFile {
    /// Longest time a usage record waits in memory before it is committed.
    pub flush_interval_ms: Option<u64>,
    pub batch_max: Option<usize>,
    /// Append every record to a per-worker journal before queueing it (crash safety).
    pub journal: Option<bool>,
    /// Estimate one in this many requests that carry provider usage too (0 = never).
    pub accuracy_sample_every: Option<u32>,
    /// Copy the ledger to an organisation-wide store (`config/ship.rs`); off when absent.
    pub ship: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub api_key_env: Option<String>,
    /// PEM file with extra trust anchors for https providers (private CAs).
    pub ca_file: Option<String>,
    /// Sent as `anthropic-version` when the client sent none (Anthropic providers).
    pub anthropic_version: Option<String>,
    /// Pass the client's `OpenAI-Organization` and `OpenAI-Project` headers on (default: drop
    /// them; they would apply the client's organization to the provider key's account).
    pub forward_organization_headers: Option<bool>,
    /// Most header lines the provider accepts in a request (default 100, as OpenAI's servers).
    pub max_request_headers: Option<usize>,
    /// A public provider (a cloud API) that `egress` rules may keep teams away from (default:
    /// true unless the host is loopback, private, link-local or a cluster-internal name).
    pub public: Option<bool>,
    /// Active health check: `GET path` every `interval_ms`; `failures` in a row take the
    /// provider's targets out of routing until a check passes.
    pub health_check: Option<HealthCheckFile>,
    /// `native` (default): `/v1/responses` is sent as it is; `chat`: the provider serves chat
    /// completions only, and Responses requests are translated.
    pub responses_api: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub failures: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: String,
    /// The one-target shorthand: `provider` (and `model`) instead of `targets`.
    pub provider: Option<String>,
    pub model: Option<String>,
    /// The deployments that serve this model.
    pub targets: Option<Vec<TargetFile>>,
    /// Output tokens reserved against budgets when a request sets no maximum.
    pub max_output_tokens: Option<u64>,
    /// Models tried, in order, when every target of this one failed or is open.
    pub fallback: Option<Vec<String>>,
    pub retry: Option<RetryFile>,
    pub breaker: Option<BreakerFile>,
    pub timeouts: Option<TimeoutsFile>,
    /// Cost tiers: each request goes to the first tier whose `when` it satisfies.
    pub tiers: Option<Vec<TierFile>>,
    /// How a replica is chosen among available targets: `weighted`, `round_robin`,
    /// `least_load` or `prefix` (default for several targets).
    pub balance: Option<String>,
    /// The model family's `tokenizer.json` for usage estimates: a path, or
    /// `{file, per_message, per_request}` with its chat framing; `engine: true` counts prompts
    /// with the serving engine's own `/tokenize` (its chat template applied), off the request
    /// path, and falls back to `file` (or o200k) when the engine cannot answer.
    pub tokenizer: Option<TokenizerFile>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum TokenizerFile {
    Path(String),
    Framed {
        file: Option<String>,
        engine: Option<bool>,
        per_message: Option<u64>,
        per_request: Option<u64>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    pub model: String,
    #[serde(default)]
    pub when: TierWhenFile,
}

/// A tier's rule; every condition given must hold.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TierWhenFile {
    pub max_prompt_tokens: Option<u64>,
    pub min_prompt_tokens: Option<u64>,
    /// Whether the request defines tools.
    pub tools: Option<bool>,
    /// `reasoning_effort` (or `reasoning.effort`) values, e.g. `[low, minimal]`.
    pub reasoning_effort: Option<Vec<String>>,
    /// `x-tollgate-workflow` globs.
    pub workflow: Option<Vec<String>>,
    /// Words (case-insensitive) of which the last user message contains at least one.
    pub keywords: Option<Vec<String>>,
    /// A regex the last user message matches.
    pub regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    pub provider: String,
    /// What the provider receives as `model` (default: the model's name).
    pub model: Option<String>,
    /// Relative share of traffic within its priority group (default 1).
    pub weight: Option<u32>,
    /// 0 (default) is used first; a higher group only when no target of a lower one is available.
    pub priority: Option<u8>,
    /// Largest prompt (estimated input + maximum output tokens) this target takes.
    pub context_window: Option<u64>,
    /// Request types this target serves: `chat`, `embeddings`, `tools`, `images` (default all).
    pub serves: Option<Vec<String>>,
    /// UTC hours this target is used, `"22:00-06:00"` (default always).
    pub hours: Option<String>,
    /// Requests the agent sends this replica at once (default `routing.queue.max_in_flight`).
    pub max_in_flight: Option<u32>,
}
