//! The request lifecycle, one module per phase, called in order by `pipeline.rs`.
//! `accept` happens in `worker.rs` (per-core listener); `admit` lands with governance.

pub mod admit;
pub mod cache;
pub mod forward;
pub mod guard;
pub mod guard_model;
pub mod identify;
pub mod inspect;
pub mod passthrough;
pub mod read;
pub mod relay;
pub mod response_text;
pub mod route;
pub mod settle;
pub mod side_call;
