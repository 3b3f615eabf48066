//! `tollgate-sim`: an OpenAI- and Anthropic-compatible inference server that behaves like a vLLM
//! replica, for Tollgate's demo, end-to-end tests and benchmarks.
//!
//! It models what routing and metering care about: time to first token growing with uncached
//! prompt tokens, inter-token latency growing with the batch, a block-hashed prefix cache with
//! LRU eviction, `usage` with cached tokens, vLLM-named Prometheus metrics, and fault injection
//! (errors, delays, resets mid-stream, missing usage). It does no inference: output is
//! deterministic words seeded by the prompt.
//!
//! Modules, request path first:
//! - `server` accepts connections, `conn` can reset one, `routes` runs each endpoint;
//! - `api` parses each API's requests and shapes its responses, `stream` and `sse` emit and
//!   pace streams, `body` holds response bodies;
//! - `engine` schedules and times sequences over the `prefix_cache`; `textgen` counts
//!   tokens and makes text; `faults`, `metrics`, `last_request` observe and perturb;
//! - `config` is the command line, `app` the shared state, `error` every failure.

mod api;
mod app;
mod body;
pub mod config;
mod conn;
mod engine;
mod error;
mod faults;
mod last_request;
mod metrics;
mod prefix_cache;
mod routes;
mod server;
mod sse;
mod stream;
mod textgen;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{Args, Config, ConfigError};
pub use faults::{HEADER_DELAY_MS, HEADER_FAIL, HEADER_NO_USAGE, HEADER_RESET_AFTER};

/// Serves on `listener` until `shutdown` resolves. Must run inside a Tokio runtime with time and
/// I/O enabled.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    server::serve(Arc::new(app::App::new(config)), listener, shutdown).await;
}

/// A simulator on its own thread and runtime, for tests and tools that run it in process.
/// Dropping it stops the server and joins the thread.
pub struct Simulator {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Simulator {
    /// Binds `config.listen` (port 0 picks one) and starts serving.
    pub fn start(config: Config) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers)
            .thread_name("tollgate-sim")
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tollgate-sim".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            serve(config, listener, async {
                                let _ = stopped.await;
                            })
                            .await;
                        }
                        Err(error) => tracing::error!(%error, "registering the listener"),
                    }
                });
            })?;
        Ok(Simulator {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
