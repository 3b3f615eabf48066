//! Tollgate: a node agent that governs LLM token traffic. See ARCHITECTURE.md for the map;
//! `pipeline.rs` is the request lifecycle, top to bottom.

pub mod abort;
pub mod admin;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod fuzzing;
pub mod governance;
pub mod http;
pub mod identity;
pub mod import;
pub mod json;
pub mod kernel;
pub mod ledger;
pub mod local;
pub mod metering;
pub mod phase;
pub mod pipeline;
pub mod reload;
pub mod server;
pub mod shared;
pub mod snapshot;
pub mod telemetry;
pub mod upstream;
pub mod worker;
