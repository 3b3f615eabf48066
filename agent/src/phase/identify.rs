//! Phase 3, identify: who is asking. Today this reads the identity envelope headers
//! (`x-tollgate-team`, `-project`, `-user`, `-session`, `-workflow`, `-cost-center`); virtual
//! keys and kernel attribution fill the same `Identity` as they land.
//! Reads: `ctx.head`. Writes: `ctx.identity`. Hot path (a few header lookups).

use crate::identity::Identity;
use crate::pipeline::RequestCtx;

/// Longest identity value kept; longer values are cut (they are labels, not payloads).
const MAX_VALUE: usize = 256;

pub fn run(ctx: &mut RequestCtx) {
    let get = |name: &str| {
        ctx.head
            .header_str(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                let mut end = v.len().min(MAX_VALUE);
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v[..end].to_string()
            })
    };
    ctx.identity = Identity {
        team: get("x-tollgate-team"),
        project: get("x-tollgate-project"),
        user: get("x-tollgate-user"),
        session: get("x-tollgate-session"),
        workflow: get("x-tollgate-workflow"),
        cost_center: get("x-tollgate-cost-center"),
    };
}
