//! Tollgate benchmarks: the end-to-end load generator (`tollgate-load`, see [`load`]) that
//! `cargo xtask bench` drives, plus shared helpers for the criterion benches in `benches/`.

pub mod load;
