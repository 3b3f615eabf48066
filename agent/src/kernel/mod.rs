//! Kernel side: loads Tollgate's eBPF programs (attribution, interception, counters) with aya.
//! Owned by the kernel work (issue 3); the data plane only calls what this module exports.
