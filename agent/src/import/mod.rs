//! `tollgate import`: configurations of other gateways turned into Tollgate's. Offline, CLI only.

pub mod litellm;
