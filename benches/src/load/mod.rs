//! `tollgate-load`'s engine: a lean HTTP/1.1 load generator for loopback benchmarks.
//!
//! Why it exists: on a two-core machine the generator shares the CPU with the server it measures, so a
//! general-purpose client (async runtime, full HTTP stack) would itself be the largest cost in the numbers.
//! This one runs on one thread with level-triggered epoll, writes pre-built request bytes on keep-alive
//! connections and reads only the status line and the body framing.
//!
//! - [`request`]: builds the request bytes once.
//! - [`framing`]: incremental response framing (content-length, chunked, until-close), TTFT detection.
//! - [`schedule`]: open-loop intended send times (no coordinated omission).
//! - [`conn`]: one connection's socket and in-flight state.
//! - [`engine`]: the event loop, closed and open loop.
//! - [`report`]: the JSON printed for `cargo xtask bench`.
//! - [`sys`]: the only `unsafe`: epoll, timerfd, prctl, getrusage.

pub mod conn;
pub mod engine;
pub mod framing;
pub mod report;
pub mod request;
pub mod schedule;
pub mod sys;
