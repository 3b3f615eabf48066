//! Tollgate end-to-end tests: the real agent (`tollgate serve`) in front of the real simulator
//! (`tollgate-sim`) on loopback, driven over raw HTTP/1.1, with the SQLite ledger read back.
//!
//! One module per behaviour; `harness` holds the shared machinery. The binaries must be built
//! first (`cargo build -p tollgate -p tollgate-sim`); `cargo xtask test` does that and runs
//! everything, the Python SDK tests included.

mod harness;

/// The admin listener and its token.
mod admin;
/// The exact response cache: hits, isolation between keys, bypasses, streamed replay.
mod cache;
/// Repeated long prompts: cached tokens, and Anthropic cache read/creation normalisation.
mod cached_tokens;
/// `tollgate demo --no-wait` runs and prints usage.
mod cli_demo;
/// `tollgate import litellm` converts a LiteLLM config that then validates and serves.
mod cli_export;
mod cli_import;
/// `tollgate validate` reports every problem with its line.
mod cli_validate;
/// Cluster mode: agents sharing one budget through a real redis-server.
mod cluster;
/// Pipelining, chunked request bodies, keep-alive and connection: close.
mod connection;
/// SIGKILL before the ledger commit: the journal brings every record back on restart.
mod crash_recovery;
/// The web dashboard in headless Chromium against the reports.
mod dashboard;
/// A client that hangs up mid-stream is billed the full completion.
mod disconnect_billing;
/// Protocol errors: 431, 413, 408, 400 malformed, 404, 405.
mod errors_http;
/// Request errors: invalid JSON, missing or unknown model, unsupported API.
mod errors_request;
/// Provider errors: 502 unreachable, 504 timeout, provider statuses passed through.
mod errors_upstream;
/// Model rewrite, credential replacement and identity headers, seen from the provider.
mod forwarding;
/// Golden client-visible bodies and streams per API (tests/fixtures/<api>/<case>.snap).
mod golden;
/// Governance: virtual keys, rate limits, budgets, model access, exceptions, loop guard, audit.
mod governance;
mod gpu_cost;
/// Guardrails: block, redact, pseudonymize (restored in plain and streamed responses), log.
mod guardrails;
/// Hostile clients and providers: each defect the hardening review found, reproduced and fixed.
mod hardening;
/// `stream_options.include_usage` injection and removal of the extra usage chunk.
mod include_usage;
/// Kernel interception and attribution: unmodified clients metered and attributed, detach.
mod interception;
/// The epoll and io_uring drivers serve the same traffic.
mod io_drivers;
/// Large responses and long streams pass through intact.
mod large_responses;
/// The ledger survives a graceful restart; `tollgate usage` sums it.
mod ledger_restart;
/// `ledger.ship` to a real PostgreSQL: exact copy, outages caught up, nothing lost or doubled on SIGKILL.
mod ledger_ship;
/// Models with several targets: a compatible, healthy one serves.
mod model_targets;
/// `/v1/models`, health, readiness and Prometheus counters.
mod models_and_metrics;
mod observability;
mod otlp;

/// The kernel side with only the Helm chart's three capabilities, and with each one missing.
mod privileges;
/// The fair queue in front of saturated replicas: order by tokens served, caps, refusals.
mod queue;
/// Reasoning tokens on chat and the Responses API.
mod reasoning_tokens;
/// Hot reload (SIGHUP, file watch, admin API), history and rollback, reloads under load.
mod reload;
/// Replica load scraped from the engine's /metrics: agent gauges and the pinned tg_replica map.
mod replica_load;
/// Requests that arrive over several reads: split heads and bodies, large bodies.
mod request_reading;
/// Retries, circuit breakers, `Retry-After`, fallbacks, cost tiers and egress rules.
mod routing;
/// A request cut by the shutdown grace is recorded as `shutdown`.
mod shutdown;
/// Streams without usage are estimated and flagged.
mod stream_without_usage;
/// An https provider through nginx with a private CA: rustls, keep-alive, IP SAN, untrusted CA.
mod tls_upstream;
/// A provider's silent tokenizer change: metric, audit entry and finding.
mod tokenizer_drift;
/// A provider reset mid-stream: error event, cut connection, estimated usage.
mod upgrade;
mod upstream_reset;
/// Every POST endpoint without streaming: ledger usage equals the simulator's report.
mod usage_plain;
/// Every streaming endpoint: complete streams, ledger usage equals the simulator's report.
mod usage_stream;
