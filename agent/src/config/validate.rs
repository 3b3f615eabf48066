//! Turns the file structs into runtime types (parsed addresses, `Duration`s, resolved indices)
//! and collects every problem instead of stopping at the first one.
//!
//! Intercepted destinations are routed here, once: each gets a provider per wire family, a
//! configured one at exactly that address when there is one, else an implicit passthrough
//! provider appended to `Config::providers` (so pools, TLS and DNS slots exist for it).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::admin::AdminSettings;
use super::file::{
    BatchJobsFile, FileConfig, LimitsFile, ModelFile, ProviderFile, ReplicasFile, TargetFile,
};
use super::kernel::{AttributionSettings, InterceptRoute, KernelSettings};
use super::lines::LineIndex;
use super::routing::{
    self, BreakerPolicy, Hours, RetryPolicy, RoutingDefaults, Serves, Tier, Timeouts,
};
use super::validate_governance::GovernanceFile;
use super::validate_kernel::{canonical, intercept_routes};

/// Name of the implicit providers created for intercepted destinations; reserved.
pub const INTERCEPTED: &str = "intercepted";

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

/// All problems found in one file.
#[derive(Debug)]
pub struct ConfigProblems(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.path.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.path, self.message),
            (None, false) => write!(f, "{}: {}", self.path, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

impl fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigProblems {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
}

/// Limits on what a client may send.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub max_json_depth: usize,
    /// Deadline for a whole head, from its first byte.
    pub header_timeout: Duration,
    /// Deadline for a whole body, from the end of its head.
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections_per_worker: usize,
    pub max_buffered_bytes_per_worker: u64,
    /// Above this many connections, a worker waits for every next request without a read
    /// buffer (`phase/read.rs`, `arm_idle_wait`).
    pub buffered_wait_connections_per_worker: usize,
}

/// How Tollgate talks to providers.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub read_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    pub drain_timeout: Duration,
    pub drain_max_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct LedgerSettings {
    pub flush_interval: Duration,
    pub batch_max: usize,
    /// Per-worker journals make records crash-safe before they are committed (default on).
    pub journal: bool,
    /// One request in this many whose provider reports usage is also estimated, to measure
    /// the estimator (`ledger.accuracy_sample_every`, default 100; 0 = never).
    pub accuracy_sample_every: u32,
    /// Copy the ledger to an organisation-wide store (`ledger.ship`), when configured.
    pub ship: Option<super::ship::ShipSettings>,
}

/// Scraping the replicas' `/metrics` for their load (`replicas:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSettings {
    pub scrape: bool,
    pub scrape_interval: Duration,
    pub timeout: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            scrape: true,
            scrape_interval: Duration::from_millis(1000),
            timeout: Duration::from_millis(500),
        }
    }
}

/// The Batch API and its runner (`batch_jobs:`). Restart-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchJobsSettings {
    pub enabled: bool,
    /// Lines of a batch in flight at once.
    pub concurrency: usize,
    /// One line's request, connect to last byte.
    pub request_timeout: Duration,
}

impl Default for BatchJobsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 4,
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// A provider endpoint with everything the forward phase needs precomputed.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix of the base URL without a trailing slash (`""` or `/openai`).
    pub base_path: String,
    /// Value for the `Host` header (`host` or `host:port`).
    pub host_header: String,
    /// The secret, read from `api_key_env` at load time. Never logged.
    pub api_key: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub anthropic_version: String,
    /// Created for an intercepted destination that no configured provider serves: plain
    /// HTTP, no provider key, and the client's own credentials are forwarded.
    pub implicit: bool,
    /// Pass the client's `OpenAI-Organization`/`OpenAI-Project` on.
    pub forward_organization_headers: bool,
    /// Most header lines the provider accepts; a request that would carry more is refused
    /// with 431 before it is sent.
    pub max_request_headers: usize,
    /// Outside the cluster (a cloud API): `egress` rules apply.
    pub public: bool,
    /// Active health check (plain-http providers).
    pub health_check: Option<routing::HealthCheck>,
    /// `/v1/responses` requests are translated to chat completions (`responses_api: chat`).
    pub responses_via_chat: bool,
}

/// OpenAI's servers answer 431 past 100 request headers.
pub const DEFAULT_MAX_REQUEST_HEADERS: usize = 100;

/// A client-visible model name and the deployments that serve it.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    /// At least one; in configuration order.
    pub targets: Vec<ModelTarget>,
    /// Output tokens reserved against budgets for a request that sets no maximum (default:
    /// `default_max_output_tokens`).
    pub max_output_tokens: Option<u64>,
    /// Models tried, in order, when every target of this one failed or is open.
    pub fallback: Vec<usize>,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    pub timeouts: Timeouts,
    /// Cost tiers (a virtual model with tiers has no targets of its own).
    pub tiers: Vec<Tier>,
    /// How a replica is chosen among available targets (default: `prefix` with several
    /// targets).
    pub balance: routing::Balance,
    /// The family's own tokenizer for usage estimates (`tokenizer:`); o200k without one.
    pub tokenizer: Option<crate::metering::tokenizer::ModelTokenizer>,
}

/// One deployment of a model: a provider and the name it knows the model by.
#[derive(Debug, Clone)]
pub struct ModelTarget {
    pub provider: usize,
    /// What the provider receives as `model`.
    pub upstream_model: String,
    /// Relative share of traffic within its priority group (1 by default).
    pub weight: u32,
    /// Lower groups are used first; a higher one only when no target of a lower one is available.
    pub priority: u8,
    /// Largest estimated prompt plus output this target takes.
    pub context_window: Option<u64>,
    pub serves: Serves,
    /// UTC hours the target is used (an off-peak pool); always when `None`.
    pub hours: Option<Hours>,
    /// Requests the agent sends this replica at once; 0: no limit (`phase/route/queue.rs`).
    pub max_in_flight: u32,
    /// What this target's tokens cost: the catalog price of the model's name, else of
    /// `upstream_model`; resolved once when the configuration is built, not per request.
    pub price: Option<crate::metering::prices::Price>,
    /// Where this target's engine counts prompts (`tokenizer: {engine: true}`), built once
    /// here rather than for each estimate.
    pub tokenize: Option<std::sync::Arc<crate::metering::engine_tokenize::EngineTokenize>>,
}

impl Model {
    /// The first target on `provider`, if this model has one there.
    pub fn target_on(&self, provider: usize) -> Option<usize> {
        self.targets.iter().position(|t| t.provider == provider)
    }
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub workers: usize,
    /// How long a stopping agent lets running requests finish before it cuts them.
    pub shutdown_grace: Duration,
    pub io_driver: IoDriver,
    pub uring_entries: u32,
    pub limits: Limits,
    pub upstream: UpstreamSettings,
    pub ledger: LedgerSettings,
    /// Configured providers, then the implicit ones of `intercept_routes`.
    pub providers: Vec<Provider>,
    pub models: Vec<Model>,
    model_index: ModelIndex,
    pub kernel: KernelSettings,
    /// Destinations the kernel redirects to the agent.
    pub intercept: Vec<SocketAddr>,
    /// How requests redirected from each of `intercept` are routed (same order).
    pub intercept_routes: Vec<InterceptRoute>,
    pub attribution: AttributionSettings,
    pub replicas: ReplicaSettings,
    /// The operators' listener, when configured.
    pub admin: Option<AdminSettings>,
    /// Whether the client port answers `GET /metrics` too.
    pub metrics_on_client_port: bool,
    /// Keys, limits, budgets, model access, loop guard (`validate_governance.rs`).
    pub governance: crate::governance::policy::Policy,
    /// USD per 1M tokens: the built-in catalog plus `prices:`.
    pub prices: crate::metering::prices::PriceCatalog,
    /// Routing defaults (`routing:`); each model carries its resolved retry, breaker and timeouts.
    pub routing: RoutingDefaults,
    /// The Batch API (`/v1/files`, `/v1/batches`) and its background runner.
    pub batch_jobs: BatchJobsSettings,
    /// `cluster:` — shared budgets through Redis; `None` enforces alone. Restart-only.
    pub cluster: Option<super::cluster::ClusterSettings>,
    /// `guardrails:`, in configuration order.
    pub guardrails: Vec<crate::guard::Guardrail>,
    /// `cache:`.
    pub cache: super::validate_guard::CacheSettings,
    /// Request spans to an OpenTelemetry collector (`otlp:`), when configured.
    pub otlp: Option<super::otlp::OtlpSettings>,
    /// GPU-based cost of self-hosted replicas (`gpu_pricing:`, `gpu_accounting:`).
    pub gpu_accounting: Option<super::gpu::GpuAccounting>,
}

/// Model name → index in `Config::models`. Looked up three times per request by a name the
/// client sent; foldhash instead of SipHash: the lookups' hashing was ~460 of the worker's
/// ~48,500 instructions per request (callgrind). The table is the configuration's, never
/// grown by clients, so a collision-seeking client can only slow its own lookup.
type ModelIndex = HashMap<String, usize, foldhash::fast::RandomState>;

impl Config {
    pub fn model_by_name(&self, name: &str) -> Option<(usize, &Model)> {
        let i = *self.model_index.get(name)?;
        Some((i, &self.models[i]))
    }

    /// The route for connections redirected from `dst`, if `dst` is intercepted.
    pub fn intercept_route(&self, dst: SocketAddr) -> Option<&InterceptRoute> {
        let dst = canonical(dst);
        self.intercept_routes.iter().find(|r| r.dst == dst)
    }

    /// Providers from the configuration file (the implicit ones excluded).
    pub fn configured_providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.iter().filter(|p| !p.implicit)
    }

    /// Parses and validates YAML. `env` resolves `api_key_env` names (injected for tests).
    pub fn from_yaml(
        src: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigProblems> {
        let lines = LineIndex::build(src);
        let mut v = Validator {
            lines: &lines,
            problems: Vec::new(),
        };
        let file: FileConfig = match v.deserialize_root(src) {
            Some(f) => f,
            None => return Err(ConfigProblems(v.problems)),
        };
        let cfg = v.build(file, env);
        if v.problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigProblems(v.problems))
        }
    }
}

pub(super) struct Validator<'a> {
    lines: &'a LineIndex,
    problems: Vec<ConfigProblem>,
}

fn ms(v: Option<u64>, default_ms: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default_ms))
}

impl Validator<'_> {
    pub(super) fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = self.lines.line_of(&path);
        self.problems.push(ConfigProblem {
            path,
            line,
            message: message.into(),
        });
    }

    fn deserialize_root(&mut self, src: &str) -> Option<FileConfig> {
        if src.trim().is_empty() {
            return Some(FileConfig::default());
        }
        let de = serde_yaml_ng::Deserializer::from_str(src);
        match serde_path_to_error::deserialize::<_, FileConfig>(de) {
            Ok(f) => Some(f),
            Err(e) => {
                let path = e.path().to_string();
                let line = e
                    .inner()
                    .location()
                    .map(|l| l.line())
                    .or_else(|| self.lines.line_of(&path));
                let path = if path == "." { String::new() } else { path };
                let mut message = e.inner().to_string();
                let text = line.and_then(|l| src.lines().nth(l.saturating_sub(1)));
                if text.is_some_and(|t| t.contains('[') && t.contains("]:")) {
                    message.push_str(
                        " (an IPv6 address with a port must be quoted in YAML: \"[::1]:8000\")",
                    );
                }
                self.problems.push(ConfigProblem {
                    path,
                    line,
                    message,
                });
                None
            }
        }
    }

    /// Deserializes one list item on its own, so a bad item does not hide problems in others.
    pub(super) fn item<T: DeserializeOwned>(
        &mut self,
        path: &str,
        value: serde_yaml_ng::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let full = if inner == "." {
                    path.to_string()
                } else {
                    format!("{path}.{inner}")
                };
                let msg = e.inner().to_string();
                self.problem(full, msg);
                None
            }
        }
    }

    fn build(&mut self, f: FileConfig, env: &dyn Fn(&str) -> Option<String>) -> Config {
        let listen_src = f.listen.as_deref().unwrap_or("127.0.0.1:4000");
        let listen = match listen_src.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.problem(
                    "listen",
                    format!("`{listen_src}` is not an address like 127.0.0.1:4000 or [::1]:4000"),
                );
                SocketAddr::from(([127, 0, 0, 1], 4000))
            }
        };
        let workers = match f.workers {
            Some(0) => {
                self.problem("workers", "must be at least 1");
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        let io_driver = match f.io.driver.as_deref().unwrap_or("auto") {
            "auto" => IoDriver::Auto,
            "io_uring" | "iouring" | "uring" => IoDriver::IoUring,
            "epoll" | "legacy" => IoDriver::Epoll,
            other => {
                self.problem(
                    "io.driver",
                    format!("`{other}` is not one of auto, io_uring, epoll"),
                );
                IoDriver::Auto
            }
        };
        // `limits:` is either the transport limits (a map) or a list of rate limits.
        let mut rate_limits: Vec<(String, serde_yaml_ng::Value)> = Vec::new();
        let limits_file: LimitsFile = match f.limits.clone() {
            Some(serde_yaml_ng::Value::Sequence(items)) => {
                rate_limits.extend(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (format!("limits[{i}]"), v)),
                );
                LimitsFile::default()
            }
            Some(v) => self.item::<LimitsFile>("limits", v).unwrap_or_default(),
            None => LimitsFile::default(),
        };
        rate_limits.extend(
            f.rate_limits
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, v)| (format!("rate_limits[{i}]"), v)),
        );
        let l = &limits_file;
        let limits = Limits {
            max_head_bytes: l.max_head_bytes.unwrap_or(64 * 1024),
            max_headers: l.max_headers.unwrap_or(100),
            max_body_bytes: l.max_body_bytes.unwrap_or(32 * 1024 * 1024),
            max_json_depth: l.max_json_depth.unwrap_or(crate::json::DEFAULT_MAX_DEPTH),
            header_timeout: ms(l.header_timeout_ms, 10_000),
            body_timeout: ms(l.body_timeout_ms, 60_000),
            idle_timeout: ms(l.idle_timeout_ms, 75_000),
            max_connections_per_worker: l.max_connections_per_worker.unwrap_or(16_384),
            // Four maximum-size bodies at the default body limit; never less than one body.
            max_buffered_bytes_per_worker: l
                .max_buffered_bytes_per_worker
                .unwrap_or((128 * 1024 * 1024).max(l.max_body_bytes.unwrap_or(32 * 1024 * 1024))),
            buffered_wait_connections_per_worker: l
                .buffered_wait_connections_per_worker
                .unwrap_or(crate::phase::read::BUFFERED_WAIT_CONNECTIONS),
        };
        if limits.max_json_depth == 0 || limits.max_json_depth > 1024 {
            self.problem("limits.max_json_depth", "must be between 1 and 1024");
        }
        if limits.max_connections_per_worker == 0 {
            self.problem("limits.max_connections_per_worker", "must be at least 1");
        }
        if limits.max_buffered_bytes_per_worker < limits.max_body_bytes {
            self.problem(
                "limits.max_buffered_bytes_per_worker",
                "must be at least limits.max_body_bytes (one request must fit)",
            );
        }
        if limits.max_head_bytes < 1024 {
            self.problem("limits.max_head_bytes", "must be at least 1024");
        }
        if limits.max_headers == 0 || limits.max_headers > 1024 {
            self.problem("limits.max_headers", "must be between 1 and 1024");
        }
        let u = &f.upstream;
        let upstream = UpstreamSettings {
            connect_timeout: ms(u.connect_timeout_ms, 5_000),
            response_timeout: ms(u.response_timeout_ms, 600_000),
            read_timeout: ms(u.read_timeout_ms, 300_000),
            pool_idle_timeout: ms(u.pool_idle_timeout_ms, 60_000),
            pool_max_idle: u.pool_max_idle_per_provider.unwrap_or(256),
            drain_timeout: ms(u.drain_timeout_ms, 30_000),
            drain_max_bytes: u.drain_max_bytes.unwrap_or(8 * 1024 * 1024),
        };
        let ledger = LedgerSettings {
            // A commit writes the pages it touched to the WAL whatever the rows in it: fewer,
            // larger commits cost the writer less per row (20 ms / 512 before: at c=64 about
            // 1 µs more per request, most of it the WAL's `pwrite`). The journal keeps records
            // crash-safe until their commit, so only how soon rows are visible changes.
            flush_interval: ms(f.ledger.flush_interval_ms, 100),
            batch_max: f.ledger.batch_max.unwrap_or(2048).max(1),
            journal: f.ledger.journal.unwrap_or(true),
            accuracy_sample_every: f.ledger.accuracy_sample_every.unwrap_or(100),
            ship: self.ship(f.ledger.ship.clone(), env),
        };

        let mut providers = self.providers(f.providers, env);
        let routing = self.routing_defaults(
            &f.routing,
            Timeouts {
                connect: upstream.connect_timeout,
                first_token: upstream.response_timeout,
                request: None,
                idle: upstream.read_timeout,
            },
        );
        let (mut models, model_index) = self.models(f.models, &providers, &routing);
        let kernel = self.kernel(&f.kernel);
        let intercept = self.intercepts(f.intercept, listen);
        let intercept_routes = intercept_routes(&intercept, &mut providers);
        let attribution = self.attribution(f.attribution);
        let replicas = self.replicas(&f.replicas);
        let batch_jobs = self.batch_jobs(&f.batch_jobs);
        let cluster = self.cluster(f.cluster.as_ref(), env);
        let kinds: Vec<ProviderKind> = providers.iter().map(|(p, _)| p.kind).collect();
        let guardrails = self.guardrails(f.guardrails, &models, &kinds);
        let cache = self.cache(f.cache, &models, &kinds);
        let otlp = self.otlp(f.otlp, env);
        let (admin, metrics_on_client_port) = self.admin(&f.admin, env);
        let (governance, prices) = self.governance(
            GovernanceFile {
                auth: f.auth,
                require_headers: f.require_headers,
                prices: f.prices,
                rate_limits,
                budgets: f.budgets,
                model_access: f.model_access,
                model_tiers: f.model_tiers,
                workload_classes: f.workload_classes,
                loop_guard: f.loop_guard,
                alerts: f.alerts,
                default_max_output_tokens: f.default_max_output_tokens,
                unmetered_post_paths: f.unmetered_post_paths,
                egress: f.egress,
            },
            &models,
        );
        for m in &mut models {
            for t in &mut m.targets {
                t.price = prices.lookup(&[m.name.as_str(), t.upstream_model.as_str()]);
            }
        }

        let provider_names: Vec<String> = providers.iter().map(|(p, _)| p.name.clone()).collect();
        let gpu_accounting =
            self.gpu_accounting(&f.gpu_pricing, f.gpu_accounting, &provider_names, &prices);
        Config {
            listen,
            data_dir: PathBuf::from(f.data_dir.as_deref().unwrap_or("./tollgate-data")),
            workers,
            shutdown_grace: ms(f.shutdown_grace_ms, 30_000),
            io_driver,
            uring_entries: f.io.uring_entries.unwrap_or(1024),
            limits,
            upstream,
            ledger,
            providers: providers.into_iter().map(|(p, _)| p).collect(),
            models,
            model_index,
            kernel,
            intercept,
            intercept_routes,
            attribution,
            replicas,
            admin,
            metrics_on_client_port,
            governance,
            prices,
            routing,
            batch_jobs,
            cluster,
            guardrails,
            cache,
            otlp,
            gpu_accounting,
        }
    }

    fn batch_jobs(&mut self, b: &BatchJobsFile) -> BatchJobsSettings {
        let d = BatchJobsSettings::default();
        if b.concurrency.is_some_and(|c| !(1..=64).contains(&c)) {
            self.problem("batch_jobs.concurrency", "must be between 1 and 64");
        }
        if b.request_timeout_ms
            .is_some_and(|v| !(100..=86_400_000).contains(&v))
        {
            self.problem(
                "batch_jobs.request_timeout_ms",
                "must be between 100 and 86400000 (one day)",
            );
        }
        BatchJobsSettings {
            enabled: b.enabled.unwrap_or(d.enabled),
            concurrency: b.concurrency.unwrap_or(d.concurrency),
            request_timeout: b
                .request_timeout_ms
                .map_or(d.request_timeout, Duration::from_millis),
        }
    }

    fn replicas(&mut self, r: &ReplicasFile) -> ReplicaSettings {
        let d = ReplicaSettings::default();
        let out = ReplicaSettings {
            scrape: r.scrape.unwrap_or(d.scrape),
            scrape_interval: r
                .scrape_interval_ms
                .map_or(d.scrape_interval, Duration::from_millis),
            timeout: r.timeout_ms.map_or(d.timeout, Duration::from_millis),
        };
        if r.scrape_interval_ms
            .is_some_and(|v| !(10..=3_600_000).contains(&v))
        {
            self.problem(
                "replicas.scrape_interval_ms",
                "must be between 10 and 3600000 (one hour)",
            );
        }
        if r.timeout_ms.is_some_and(|v| !(1..=60_000).contains(&v)) {
            self.problem("replicas.timeout_ms", "must be between 1 and 60000");
        }
        out
    }

    fn providers(
        &mut self,
        items: Vec<serde_yaml_ng::Value>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<(Provider, String)> {
        let mut out: Vec<(Provider, String)> = Vec::new();
        for (i, raw) in items.into_iter().enumerate() {
            let path = format!("providers[{i}]");
            let Some(p) = self.item::<ProviderFile>(&path, raw) else {
                continue;
            };
            if p.name == INTERCEPTED {
                self.problem(
                    format!("{path}.name"),
                    format!("`{INTERCEPTED}` is reserved for the implicit providers of intercepted destinations"),
                );
            }
            if out.iter().any(|(o, _)| o.name == p.name) {
                self.problem(
                    format!("{path}.name"),
                    format!("provider `{}` is defined twice", p.name),
                );
            }
            // Names reach response headers (`x-tollgate-target`) and metric labels.
            if p.name.chars().any(char::is_control) {
                self.problem(
                    format!("{path}.name"),
                    "must not contain control characters",
                );
            }
            let kind = match p.kind.as_str() {
                "openai" => ProviderKind::OpenAi,
                "anthropic" => ProviderKind::Anthropic,
                other => {
                    self.problem(
                        format!("{path}.kind"),
                        format!("`{other}` is not one of openai, anthropic"),
                    );
                    ProviderKind::OpenAi
                }
            };
            // An invalid URL is reported but the provider is still registered, so every other
            // problem is found and models naming it are not reported as unknown.
            let url = self
                .parse_base_url(&format!("{path}.base_url"), &p.base_url)
                .unwrap_or(BaseUrl {
                    tls: false,
                    host: String::new(),
                    port: 0,
                    base_path: String::new(),
                    host_header: String::new(),
                });
            let api_key = match &p.api_key_env {
                Some(var) => match env(var) {
                    Some(k) if !k.is_empty() => Some(k),
                    _ => {
                        self.problem(
                            format!("{path}.api_key_env"),
                            format!("environment variable `{var}` is not set"),
                        );
                        None
                    }
                },
                None => None,
            };
            if let Some(ca) = &p.ca_file {
                if !std::path::Path::new(ca).is_file() {
                    self.problem(
                        format!("{path}.ca_file"),
                        format!("`{ca}` is not a readable file"),
                    );
                }
            }
            let public = p
                .public
                .unwrap_or_else(|| routing::host_is_public(&url.host));
            let health_check = p
                .health_check
                .as_ref()
                .and_then(|h| self.health_check(&format!("{path}.health_check"), h, url.tls));
            let responses_via_chat = match p.responses_api.as_deref() {
                None | Some("native") => false,
                Some("chat") if kind == ProviderKind::OpenAi => true,
                Some("chat") => {
                    self.problem(
                        format!("{path}.responses_api"),
                        "only `kind: openai` providers serve chat completions",
                    );
                    false
                }
                Some(other) => {
                    self.problem(
                        format!("{path}.responses_api"),
                        format!("`{other}` is not one of native, chat"),
                    );
                    false
                }
            };
            out.push((
                Provider {
                    name: p.name.clone(),
                    kind,
                    tls: url.tls,
                    host: url.host,
                    port: url.port,
                    base_path: url.base_path,
                    host_header: url.host_header,
                    api_key,
                    ca_file: p.ca_file.map(PathBuf::from),
                    anthropic_version: p.anthropic_version.unwrap_or_else(|| "2023-06-01".into()),
                    implicit: false,
                    forward_organization_headers: p.forward_organization_headers.unwrap_or(false),
                    max_request_headers: p
                        .max_request_headers
                        .unwrap_or(DEFAULT_MAX_REQUEST_HEADERS),
                    public,
                    health_check,
                    responses_via_chat,
                },
                path,
            ));
        }
        out
    }

    /// Loads a model's `tokenizer.json` (relative paths from the working directory).
    fn tokenizer(
        &mut self,
        path: &str,
        t: &super::file::TokenizerFile,
    ) -> Option<crate::metering::tokenizer::ModelTokenizer> {
        use super::file::TokenizerFile;
        let (file, per_message, per_request) = match t {
            TokenizerFile::Path(f) => (f, None, None),
            TokenizerFile::Framed {
                file: Some(file),
                per_message,
                per_request,
                ..
            } => (file, *per_message, *per_request),
            TokenizerFile::Framed {
                file: None, engine, ..
            } => {
                if *engine != Some(true) {
                    self.problem(
                        path,
                        "needs `file` (a tokenizer.json), `engine: true` (the engine's /tokenize), or both",
                    );
                }
                return None;
            }
        };
        let loaded = crate::metering::tokenizer::ModelTokenizer::load(
            std::path::Path::new(file),
            per_message.unwrap_or(3),
            per_request.unwrap_or(3),
        );
        match loaded {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(
                    path,
                    format!("`{file}` is not a usable tokenizer.json: {e}"),
                );
                None
            }
        }
    }

    fn models(
        &mut self,
        items: Vec<serde_yaml_ng::Value>,
        providers: &[(Provider, String)],
        routing: &RoutingDefaults,
    ) -> (Vec<Model>, ModelIndex) {
        let mut models = Vec::new();
        let mut index = ModelIndex::default();
        let mut pending = Vec::new();
        for (i, raw) in items.into_iter().enumerate() {
            let path = format!("models[{i}]");
            let Some(m) = self.item::<ModelFile>(&path, raw) else {
                continue;
            };
            if m.name.is_empty() {
                self.problem(format!("{path}.name"), "must not be empty");
                continue;
            }
            // Names reach response headers (`x-tollgate-target`) and metric labels.
            if m.name.chars().any(char::is_control) {
                self.problem(
                    format!("{path}.name"),
                    "must not contain control characters",
                );
                continue;
            }
            let tiers = m
                .tiers
                .as_deref()
                .map(|t| self.tier_rules(&format!("{path}.tiers"), t))
                .unwrap_or_default();
            let mut targets = if m.tiers.is_some() {
                if tiers.is_empty() {
                    self.problem(format!("{path}.tiers"), "must list at least one tier");
                }
                if m.provider.is_some() || m.targets.is_some() {
                    self.problem(
                        format!("{path}.tiers"),
                        "a model with tiers sends each request to a tier's model; it has no \
                         `provider` or `targets` of its own",
                    );
                }
                Vec::new()
            } else {
                let Some(targets) = self.model_targets(&path, &m, providers, routing) else {
                    continue;
                };
                targets
            };
            if index.contains_key(&m.name) {
                self.problem(
                    format!("{path}.name"),
                    format!("model `{}` is defined twice", m.name),
                );
                continue;
            }
            if matches!(
                m.tokenizer,
                Some(super::file::TokenizerFile::Framed {
                    engine: Some(true),
                    ..
                })
            ) {
                for t in &mut targets {
                    t.tokenize = providers.get(t.provider).map(|(p, _)| {
                        std::sync::Arc::new(
                            crate::metering::engine_tokenize::EngineTokenize::for_provider(
                                p,
                                &t.upstream_model,
                            ),
                        )
                    });
                }
            }
            index.insert(m.name.clone(), models.len());
            if m.max_output_tokens == Some(0) {
                self.problem(format!("{path}.max_output_tokens"), "must be at least 1");
            }
            pending.push(routing::Pending {
                model: models.len(),
                path: path.clone(),
                fallback: m.fallback.clone().unwrap_or_default(),
                tiers,
            });
            models.push(Model {
                retry: self.retry(&format!("{path}.retry"), m.retry.as_ref(), &routing.retry),
                breaker: self.breaker(
                    &format!("{path}.breaker"),
                    m.breaker.as_ref(),
                    routing.breaker,
                ),
                timeouts: self.timeouts(
                    &format!("{path}.timeouts"),
                    m.timeouts.as_ref(),
                    routing.timeouts,
                ),
                // Unequal weights say "split traffic in these proportions" (a canary): drawn by
                // weight unless a balancer is named. Equal weights: replicas of one model.
                balance: self.balance(&path, m.balance.as_deref()).unwrap_or(
                    if targets.windows(2).all(|w| w[0].weight == w[1].weight) {
                        routing::Balance::Prefix
                    } else {
                        routing::Balance::Weighted
                    },
                ),
                tokenizer: m
                    .tokenizer
                    .as_ref()
                    .and_then(|t| self.tokenizer(&format!("{path}.tokenizer"), t)),
                name: m.name,
                targets,
                max_output_tokens: m.max_output_tokens,
                fallback: Vec::new(),
                tiers: Vec::new(),
            });
        }
        routing::resolve(self, &mut models, pending);
        (models, index)
    }

    /// The targets of one model: the `provider`/`model` shorthand or a `targets` list.
    fn model_targets(
        &mut self,
        path: &str,
        m: &ModelFile,
        providers: &[(Provider, String)],
        routing: &RoutingDefaults,
    ) -> Option<Vec<ModelTarget>> {
        let shorthand;
        let given: Vec<(String, &TargetFile)> = match (&m.provider, &m.targets) {
            (Some(p), None) => {
                shorthand = TargetFile {
                    provider: p.clone(),
                    model: m.model.clone(),
                    weight: None,
                    priority: None,
                    context_window: None,
                    serves: None,
                    hours: None,
                    max_in_flight: None,
                };
                vec![(format!("{path}.provider"), &shorthand)]
            }
            (None, Some(list)) if !list.is_empty() => {
                if m.model.is_some() {
                    self.problem(
                        format!("{path}.model"),
                        "goes inside each target when `targets` is used",
                    );
                }
                list.iter()
                    .enumerate()
                    .map(|(i, t)| (format!("{path}.targets[{i}]"), t))
                    .collect()
            }
            (None, Some(_)) => {
                self.problem(format!("{path}.targets"), "must list at least one target");
                return None;
            }
            (None, None) => {
                self.problem(
                    path,
                    "needs `provider` (one target), `targets` (several) or `tiers`",
                );
                return None;
            }
            (Some(_), Some(_)) => {
                self.problem(
                    format!("{path}.targets"),
                    "use either `provider`/`model` or `targets`, not both",
                );
                return None;
            }
        };
        let mut out = Vec::with_capacity(given.len());
        for (field, t) in given {
            let name = t.provider.as_str();
            let provider_field = if field.ends_with(".provider") {
                field.clone()
            } else {
                format!("{field}.provider")
            };
            let Some(provider) = providers.iter().position(|(p, _)| p.name == name) else {
                let known: Vec<&str> = providers.iter().map(|(p, _)| p.name.as_str()).collect();
                self.problem(
                    provider_field,
                    format!("unknown provider `{name}` (defined: {})", known.join(", ")),
                );
                return None;
            };
            if t.weight == Some(0) {
                self.problem(
                    format!("{field}.weight"),
                    "must be at least 1 (remove the target to send it nothing)",
                );
            }
            if t.model
                .as_deref()
                .is_some_and(|n| n.chars().any(char::is_control))
            {
                self.problem(
                    format!("{field}.model"),
                    "must not contain control characters",
                );
            }
            let cond = self.target_conditions(&field, t);
            out.push(ModelTarget {
                provider,
                upstream_model: t.model.clone().unwrap_or_else(|| m.name.clone()),
                weight: t.weight.unwrap_or(1),
                priority: cond.priority,
                context_window: cond.context_window,
                serves: cond.serves,
                hours: cond.hours,
                max_in_flight: cond.max_in_flight.unwrap_or(routing.queue.max_in_flight),
                price: None,
                tokenize: None,
            });
        }
        Some(out)
    }

    /// A provider's `base_url`, parsed by the `url` crate (WHATWG rules: IPv6 literals,
    /// default ports, percent-encoding). A trailing `/v1` is dropped: Tollgate appends the API
    /// path (`/v1/chat/completions`) itself.
    fn parse_base_url(&mut self, path: &str, raw: &str) -> Option<BaseUrl> {
        let parsed = match url::Url::parse(raw) {
            Ok(u) => u,
            Err(e) => {
                self.problem(path, format!("`{raw}` is not a URL: {e}"));
                return None;
            }
        };
        let tls = match parsed.scheme() {
            "https" => true,
            "http" => false,
            _ => {
                self.problem(path, format!("`{raw}` must start with http:// or https://"));
                return None;
            }
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            self.problem(
                path,
                format!("`{raw}` carries credentials; put the key in an environment variable and name it in api_key_env"),
            );
            return None;
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            self.problem(
                path,
                format!("`{raw}` has a query or fragment; give the base URL only"),
            );
            return None;
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => {
                self.problem(path, format!("`{raw}` has no host"));
                return None;
            }
        };
        let port = parsed
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let base_path = parsed.path().trim_end_matches('/');
        let base_path = base_path.strip_suffix("/v1").unwrap_or(base_path);
        Some(BaseUrl {
            tls,
            host_header: match parsed.port() {
                None => authority_host(&host),
                Some(p) => format!("{}:{p}", authority_host(&host)),
            },
            host,
            port,
            base_path: base_path.to_string(),
        })
    }
}

pub(super) fn authority_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

struct BaseUrl {
    tls: bool,
    host: String,
    port: u16,
    base_path: String,
    host_header: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::kernel::{Anonymous, Glob, KernelMode};

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const GOOD: &str = "listen: 127.0.0.1:4000
data_dir: ./d
workers: 2
providers:
  - name: local
    kind: openai
    base_url: http://127.0.0.1:8000
  - name: claude
    kind: anthropic
    base_url: https://api.anthropic.com/v1/
    api_key_env: ANTHROPIC_KEY
models:
  - name: smol
    provider: local
    model: smollm2
  - name: sonnet
    provider: claude
";

    #[test]
    fn parses_minimal_contract() {
        let env = |k: &str| (k == "ANTHROPIC_KEY").then(|| "sk-test".to_string());
        let c = Config::from_yaml(GOOD, &env).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.providers[0].port, 8000);
        assert!(!c.providers[0].tls);
        assert_eq!(c.providers[1].port, 443);
        assert_eq!(c.providers[1].base_path, "");
        assert_eq!(c.providers[1].host_header, "api.anthropic.com");
        assert_eq!(c.providers[1].api_key.as_deref(), Some("sk-test"));
        let (_, m) = c.model_by_name("smol").unwrap();
        assert_eq!(m.targets[0].upstream_model, "smollm2");
        assert_eq!(
            c.model_by_name("sonnet").unwrap().1.targets[0].upstream_model,
            "sonnet"
        );
        assert_eq!(c.limits.max_body_bytes, 32 * 1024 * 1024);
    }

    #[test]
    fn reports_every_problem_with_path_and_line() {
        let src = "listen: nowhere
providers:
  - name: a
    kind: grpc
    base_url: ftp://x
  - name: b
    kind: openai
    base_url: http://h:1
    api_key_env: MISSING
models:
  - name: m
    provider: zzz
  - name: n
    provider: b
    colour: blue
";
        let errs = Config::from_yaml(src, &no_env).unwrap_err().0;
        let find = |p: &str| {
            errs.iter()
                .find(|e| e.path == p)
                .unwrap_or_else(|| panic!("no problem at {p}: {errs:?}"))
        };
        assert_eq!(find("listen").line, Some(1));
        assert_eq!(find("providers[0].kind").line, Some(4));
        assert_eq!(find("providers[0].base_url").line, Some(5));
        assert_eq!(find("providers[1].api_key_env").line, Some(9));
        assert!(find("models[0].provider").message.contains("zzz"));
        assert_eq!(find("models[0].provider").line, Some(12));
        assert!(errs
            .iter()
            .any(|e| e.path.starts_with("models[1]") && e.message.contains("colour")));
        assert_eq!(errs.len(), 6, "{errs:?}");
    }

    #[test]
    fn unknown_top_level_key_has_a_line() {
        let errs = Config::from_yaml("listen: 127.0.0.1:1\nlisten_port: 3\n", &no_env)
            .unwrap_err()
            .0;
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("listen_port"));
        assert_eq!(errs[0].line, Some(2));
    }

    const KERNEL: &str = "listen: 127.0.0.1:4000
providers:
  - name: local
    kind: openai
    base_url: http://127.0.0.1:8000
models:
  - name: smol
    provider: local
    model: smollm2
kernel:
  enabled: auto
  pin_dir: /sys/fs/bpf/tg-test
intercept:
  - 127.0.0.1:8000
  - \"[::1]:8000\"
attribution:
  anonymous: attribute_by_kernel
  rules:
    - match: { cgroup: \"/system.slice/batch-*.scope\" }
      team: batch
      project: nightly
    - match: { comm: \"python*\", pod: \"*\" }
      team: pods
";

    #[test]
    fn kernel_intercept_and_attribution() {
        let c = Config::from_yaml(KERNEL, &no_env).unwrap();
        assert_eq!(c.kernel.enabled, KernelMode::Auto);
        assert_eq!(c.kernel.pin_dir, PathBuf::from("/sys/fs/bpf/tg-test"));
        let v4: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let v6: SocketAddr = "[::1]:8000".parse().unwrap();
        assert_eq!(c.intercept, vec![v4, v6]);
        // 127.0.0.1:8000 is the configured openai provider; the rest are implicit.
        let r4 = c.intercept_route(v4).unwrap();
        assert_eq!(r4.openai, 0);
        let a4 = &c.providers[r4.anthropic];
        assert!(a4.implicit && a4.kind == ProviderKind::Anthropic && a4.api_key.is_none());
        let r6 = c.intercept_route(v6).unwrap();
        let o6 = &c.providers[r6.openai];
        assert!(o6.implicit && !o6.tls);
        assert_eq!((o6.host.as_str(), o6.port), ("::1", 8000));
        assert_eq!(o6.host_header, "[::1]:8000");
        assert_eq!(o6.name, INTERCEPTED);
        assert_eq!(c.providers.len(), 4);
        assert_eq!(c.configured_providers().count(), 1);
        // An IPv4-mapped destination is the IPv4 one.
        assert!(c
            .intercept_route("[::ffff:127.0.0.1]:8000".parse().unwrap())
            .is_some());
        assert!(c
            .intercept_route("127.0.0.1:8001".parse().unwrap())
            .is_none());

        assert_eq!(c.attribution.anonymous, Anonymous::AttributeByKernel);
        assert_eq!(c.attribution.rules.len(), 2);
        let r = &c.attribution.rules[0];
        assert_eq!(r.fills.team.as_deref(), Some("batch"));
        assert_eq!(r.fills.project.as_deref(), Some("nightly"));
        assert_eq!(
            r.cgroup.as_ref().map(Glob::as_str),
            Some("/system.slice/batch-*.scope")
        );
    }

    #[test]
    fn kernel_defaults_and_list_form() {
        let c = Config::from_yaml("listen: 127.0.0.1:4000\n", &no_env).unwrap();
        assert_eq!(c.kernel.enabled, KernelMode::Auto);
        assert_eq!(
            c.kernel.pin_dir,
            PathBuf::from(crate::kernel::DEFAULT_PIN_DIR)
        );
        assert!(c.intercept.is_empty() && c.attribution.rules.is_empty());

        let src = "kernel: { enabled: off }
attribution:
  - match: { container: \"4c8d*\" }
    user: svc
";
        let c = Config::from_yaml(src, &no_env).unwrap();
        assert_eq!(c.kernel.enabled, KernelMode::Off);
        assert_eq!(c.attribution.rules.len(), 1);
        let c = Config::from_yaml("kernel: { enabled: false }\n", &no_env).unwrap();
        assert_eq!(c.kernel.enabled, KernelMode::Off);
    }

    #[test]
    fn kernel_problems_have_lines() {
        let src = "listen: 0.0.0.0:4000
providers:
  - name: intercepted
    kind: openai
    base_url: http://127.0.0.1:1
kernel:
  enabled: sometimes
  pin_dir: relative/dir
intercept:
  - nowhere
  - 0.0.0.0:80
  - 127.0.0.1:4000
  - [a, b]
  - 10.0.0.1:80
  - 10.0.0.1:80
attribution:
  anonymous: maybe
  rules:
    - match: {}
      team: t
    - match: { comm: curl }
    - match: { comm: curl, colour: blue }
      team: t
";
        let errs = Config::from_yaml(src, &no_env).unwrap_err().0;
        let find = |p: &str| {
            errs.iter()
                .find(|e| e.path == p)
                .unwrap_or_else(|| panic!("no problem at {p}: {errs:#?}"))
        };
        assert_eq!(find("providers[0].name").line, Some(3));
        assert!(find("providers[0].name").message.contains("reserved"));
        assert_eq!(find("kernel.enabled").line, Some(7));
        assert!(find("kernel.enabled").message.contains("sometimes"));
        assert_eq!(find("kernel.pin_dir").line, Some(8));
        assert_eq!(find("intercept[0]").line, Some(10));
        assert!(find("intercept[1]").message.contains("wildcard"));
        assert!(find("intercept[2]").message.contains("loop"));
        assert!(find("intercept[3]").message.contains("quoted"));
        assert_eq!(find("intercept[3]").line, Some(13));
        assert!(find("intercept[5]").message.contains("twice"));
        assert_eq!(find("intercept[5]").line, Some(15));
        assert_eq!(find("attribution.anonymous").line, Some(17));
        assert_eq!(find("attribution.rules[0].match").line, Some(19));
        assert!(find("attribution.rules[1]")
            .message
            .contains("no identity field"));
        assert_eq!(find("attribution.rules[1]").line, Some(21));
        assert!(errs
            .iter()
            .any(|e| e.path.starts_with("attribution.rules[2]") && e.message.contains("colour")));
        assert_eq!(errs.len(), 12, "{errs:#?}");

        // An unquoted IPv6 address with a port is a YAML syntax error; the message says why.
        let errs = Config::from_yaml("intercept:\n  - [::1]:8000\n", &no_env)
            .unwrap_err()
            .0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(2));
        assert!(errs[0].message.contains("quote"), "{errs:?}");
    }

    #[test]
    fn batch_jobs_section() {
        let c = Config::from_yaml("listen: 127.0.0.1:4000\n", &no_env).unwrap();
        assert_eq!(c.batch_jobs, BatchJobsSettings::default());
        assert!(c.batch_jobs.enabled);
        let c = Config::from_yaml(
            "batch_jobs: { enabled: false, concurrency: 8, request_timeout_ms: 1000 }\n",
            &no_env,
        )
        .unwrap();
        assert!(!c.batch_jobs.enabled);
        assert_eq!(c.batch_jobs.concurrency, 8);
        assert_eq!(c.batch_jobs.request_timeout, Duration::from_secs(1));
        let errs = Config::from_yaml("batch_jobs: { concurrency: 0 }\n", &no_env)
            .unwrap_err()
            .0;
        assert_eq!(errs[0].path, "batch_jobs.concurrency");
    }

    #[test]
    fn replicas_section() {
        let c = Config::from_yaml("listen: 127.0.0.1:4000\n", &no_env).unwrap();
        assert_eq!(c.replicas, ReplicaSettings::default());
        assert!(c.replicas.scrape);
        assert_eq!(c.replicas.scrape_interval, Duration::from_millis(1000));
        let c = Config::from_yaml(
            "replicas: { scrape: false, scrape_interval_ms: 250, timeout_ms: 100 }\n",
            &no_env,
        )
        .unwrap();
        assert!(!c.replicas.scrape);
        assert_eq!(c.replicas.scrape_interval, Duration::from_millis(250));
        assert_eq!(c.replicas.timeout, Duration::from_millis(100));

        let src = "listen: 127.0.0.1:4000\nreplicas:\n  scrape_interval_ms: 0\n  timeout_ms: 0\n";
        let errs = Config::from_yaml(src, &no_env).unwrap_err().0;
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert_eq!(errs[0].path, "replicas.scrape_interval_ms");
        assert_eq!(errs[0].line, Some(3));
        assert_eq!(errs[1].path, "replicas.timeout_ms");
        assert_eq!(errs[1].line, Some(4));
        let errs = Config::from_yaml("replicas: { scrap: true }\n", &no_env)
            .unwrap_err()
            .0;
        assert!(errs[0].message.contains("scrap"), "{errs:#?}");
        assert_eq!(errs[0].line, Some(1));
    }
}
