//! Phase 3, identify: who is asking. Today this reads the identity envelope headers
//! (`x-tollgate-team`, `-project`, `-user`, `-session`, `-workflow`, `-cost-center`); virtual
//! keys and kernel attribution fill the same `Identity` as they land.
//! Reads: `ctx.head`. Writes: `ctx.identity`. Hot path (a few header lookups).

use serde::{Deserialize, Serialize};

use crate::pipeline::RequestCtx;

/// The identity envelope recorded with every request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub team: Option<String>,
    pub project: Option<String>,
    pub user: Option<String>,
    pub session: Option<String>,
    pub workflow: Option<String>,
    pub cost_center: Option<String>,
}

impl Identity {
    /// Fills the fields that are still empty from `other` (what was set first wins).
    pub fn fill_missing_from(&mut self, other: &Identity) {
        let pairs = [
            (&mut self.team, &other.team),
            (&mut self.project, &other.project),
            (&mut self.user, &other.user),
            (&mut self.session, &other.session),
            (&mut self.workflow, &other.workflow),
            (&mut self.cost_center, &other.cost_center),
        ];
        for (field, value) in pairs {
            if field.is_none() {
                field.clone_from(value);
            }
        }
    }

    /// True when no field carries a value.
    pub fn is_empty(&self) -> bool {
        [
            &self.team,
            &self.project,
            &self.user,
            &self.session,
            &self.workflow,
            &self.cost_center,
        ]
        .iter()
        .all(|f| f.as_deref().is_none_or(str::is_empty))
    }
}

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
