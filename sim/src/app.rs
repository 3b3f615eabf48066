//! The state every request handler shares: configuration, the engine, faults, metrics and the
//! last-request recorder. Built once at startup; read-only apart from the engine's and recorder's
//! own interior state.

use std::sync::Arc;

use crate::config::Config;
use crate::engine::Engine;
use crate::error::SimError;
use crate::faults::Faults;
use crate::last_request::LastRequest;
use crate::metrics::Metrics;

pub struct App {
    pub config: Config,
    pub engine: Engine,
    pub faults: Faults,
    pub metrics: Arc<Metrics>,
    pub last_request: LastRequest,
}

impl App {
    pub fn new(config: Config) -> Self {
        let metrics = Arc::new(Metrics::new(&config.models));
        App {
            engine: Engine::new(&config, metrics.clone()),
            faults: Faults::new(config.faults.clone()),
            metrics,
            last_request: LastRequest::default(),
            config,
        }
    }

    /// The served model a request names, as (index, name); a request that names none gets the
    /// first, as vLLM does.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<(usize, &str), SimError> {
        let models = &self.config.models;
        let found = match requested {
            None => models.first().map(|m| (0, m.as_str())),
            Some(name) => models
                .iter()
                .position(|m| m == name)
                .map(|i| (i, models[i].as_str())),
        };
        found.ok_or_else(|| SimError::ModelNotFound(requested.unwrap_or_default().to_owned()))
    }
}
