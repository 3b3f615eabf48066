//! Defects found by trying the agent as a hostile client would; each module reproduces a class
//! of them and shows it fixed.

/// Generated fault sequences: one record per request, never negative, estimates flagged.
mod accounting;
/// Deep nesting, duplicate keys, `stream_options: null`, overlong names.
mod bodies;
/// SIGKILL under load: every 200 a client received has its ledger row.
mod crash;
/// A bare LF in the head must not hide a second request.
mod head_smuggling;
/// Multi-MiB bodies in both directions with slow readers, on both drivers.
mod large_bodies;
/// Absolute deadlines, connection and buffered-bytes caps.
mod slow_clients;
/// Odd statuses, empty error bodies, no resend, stale keep-alives, org headers, header count.
mod upstream_quirks;
