//! Who spent: the identity envelope recorded with every request (team, project, user, session,
//! workflow, cost center). Filled by the identify phase from headers, by attribution rules from
//! kernel facts, and (with governance) by virtual keys; read by the ledger and the journal. Its
//! own module so that config, ledger and phases depend on it, not on each other.

use serde::{Deserialize, Serialize};

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
