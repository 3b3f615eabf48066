//! Writing the node counters that schedulers and node tools read with bpftool:
//! `tg_cg_usage`, `tg_key_usage`, `tg_model_usage` (token and cost totals), `tg_replica`
//! (replica load) and `tg_gpu` (GPU figures).
//!
//! Not on the request path: the settle phase hands usage to the control thread, which calls
//! these. Each add is a read-modify-write of one entry, serialised by one mutex (the agent is
//! the maps' only writer, so that is all the atomicity the totals need). `CounterWriter` is
//! `Clone + Send + Sync`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use aya::maps::{Array, HashMap, MapData, MapError};
use tollgate_common::{cg_usage, gpu, key_usage, model_usage, replica, sched};
use tollgate_common::{GpuStats, ModelKey, QueueKey, QueueStats, ReplicaKey, ReplicaLoad};
use tollgate_common::{SchedStats, Usage};

use super::KernelError;

pub(crate) struct CounterMaps {
    pub(crate) cg: HashMap<MapData, u64, Usage>,
    pub(crate) key: HashMap<MapData, u64, Usage>,
    pub(crate) model: HashMap<MapData, ModelKey, Usage>,
    pub(crate) replica: HashMap<MapData, ReplicaKey, ReplicaLoad>,
    pub(crate) gpu: Array<MapData, GpuStats>,
    pub(crate) sched: HashMap<MapData, ReplicaKey, SchedStats>,
    pub(crate) queue: HashMap<MapData, QueueKey, QueueStats>,
}

/// A target's scheduling gauges, set by the telemetry thread (`tg_sched`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedGauges {
    pub in_flight: u32,
    pub max_in_flight: u32,
    pub waiting: u32,
    pub index_blocks: u32,
}

/// Adds to and sets the counter maps. Cheap to clone.
#[derive(Clone)]
pub struct CounterWriter {
    maps: Arc<Mutex<CounterMaps>>,
}

impl std::fmt::Debug for CounterWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterWriter").finish_non_exhaustive()
    }
}

fn add<K: aya::Pod>(
    map: &mut HashMap<MapData, K, Usage>,
    name: &'static str,
    key: K,
    delta: &Usage,
) -> Result<(), KernelError> {
    let cur = match map.get(&key, 0) {
        Ok(v) => v,
        Err(MapError::KeyNotFound) => Usage::default(),
        Err(e) => {
            return Err(KernelError::Map {
                map: name,
                source: e,
            })
        }
    };
    map.insert(key, cur.saturating_add(delta), 0)
        .map_err(KernelError::map(name))
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CounterWriter {
    pub(crate) fn new(maps: CounterMaps) -> Self {
        Self {
            maps: Arc::new(Mutex::new(maps)),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut CounterMaps) -> R) -> R {
        let mut guard = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// Adds `delta` to the totals of the client cgroup `cgroup_id`.
    pub fn add_cgroup_usage(&self, cgroup_id: u64, delta: &Usage) -> Result<(), KernelError> {
        self.with(|m| add(&mut m.cg, cg_usage::MAP_NAME, cgroup_id, delta))
    }

    /// Adds `delta` to the totals of the virtual key whose ledger hash is `key_hash`.
    pub fn add_key_usage(&self, key_hash: u64, delta: &Usage) -> Result<(), KernelError> {
        self.with(|m| add(&mut m.key, key_usage::MAP_NAME, key_hash, delta))
    }

    /// Adds `delta` to the totals of `model` (truncated to 63 bytes).
    pub fn add_model_usage(&self, model: &str, delta: &Usage) -> Result<(), KernelError> {
        self.with(|m| {
            add(
                &mut m.model,
                model_usage::MAP_NAME,
                ModelKey::new(model),
                delta,
            )
        })
    }

    /// Sets the load of replica `name`; `updated_unix_ms` is stamped with now when zero.
    pub fn set_replica_load(&self, name: &str, mut load: ReplicaLoad) -> Result<(), KernelError> {
        if load.updated_unix_ms == 0 {
            load.updated_unix_ms = now_unix_ms();
        }
        self.with(|m| {
            m.replica
                .insert(ReplicaKey::new(name), load, 0)
                .map_err(KernelError::map(replica::MAP_NAME))
        })
    }

    /// Forgets replica `name` (it left the configuration); absent is not an error.
    pub fn remove_replica(&self, name: &str) -> Result<(), KernelError> {
        self.with(|m| match m.replica.remove(&ReplicaKey::new(name)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(KernelError::Map {
                map: replica::MAP_NAME,
                source: e,
            }),
        })
    }

    /// Sets the figures of GPU `index` (0..16); `updated_unix_ms` is stamped with now when zero.
    pub fn set_gpu_stats(&self, index: u32, mut stats: GpuStats) -> Result<(), KernelError> {
        if index >= gpu::MAX_ENTRIES {
            return Err(KernelError::Config(format!(
                "GPU index {index} is beyond the {} slots of {}",
                gpu::MAX_ENTRIES,
                gpu::MAP_NAME
            )));
        }
        if stats.updated_unix_ms == 0 {
            stats.updated_unix_ms = now_unix_ms();
        }
        self.with(|m| {
            m.gpu
                .set(index, stats, 0)
                .map_err(KernelError::map(gpu::MAP_NAME))
        })
    }

    /// Reads `tg_sched`'s entry for `target`, changes it, writes it back stamped with now.
    fn update_sched(
        &self,
        target: &str,
        f: impl FnOnce(&mut SchedStats),
    ) -> Result<(), KernelError> {
        let key = ReplicaKey::new(target);
        self.with(|m| {
            let mut v = match m.sched.get(&key, 0) {
                Ok(v) => v,
                Err(MapError::KeyNotFound) => SchedStats::default(),
                Err(e) => {
                    return Err(KernelError::Map {
                        map: sched::SCHED_MAP_NAME,
                        source: e,
                    })
                }
            };
            f(&mut v);
            v.updated_unix_ms = now_unix_ms();
            m.sched
                .insert(key, v, 0)
                .map_err(KernelError::map(sched::SCHED_MAP_NAME))
        })
    }

    /// Adds served requests to `target`'s totals in `tg_sched`: how many, how many were sent
    /// where their prefix was, and the matched bytes.
    pub fn add_target_routing(
        &self,
        target: &str,
        routed: u64,
        prefix_hits: u64,
        prefix_bytes: u64,
    ) -> Result<(), KernelError> {
        self.update_sched(target, |v| {
            v.routed = v.routed.saturating_add(routed);
            v.prefix_hits = v.prefix_hits.saturating_add(prefix_hits);
            v.prefix_bytes = v.prefix_bytes.saturating_add(prefix_bytes);
        })
    }

    /// Sets `target`'s scheduling gauges in `tg_sched`, keeping its totals.
    pub fn set_target_gauges(&self, target: &str, g: SchedGauges) -> Result<(), KernelError> {
        self.update_sched(target, |v| {
            v.in_flight = g.in_flight;
            v.max_in_flight = g.max_in_flight;
            v.waiting = g.waiting;
            v.index_blocks = g.index_blocks;
        })
    }

    /// `tg_sched`'s entry for `target`, if any.
    pub fn target_sched(&self, target: &str) -> Result<Option<SchedStats>, KernelError> {
        self.with(|m| match m.sched.get(&ReplicaKey::new(target), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(KernelError::Map {
                map: sched::SCHED_MAP_NAME,
                source: e,
            }),
        })
    }

    /// Sets a tenant's place in a gated model's queue (`tg_queue`), stamped with now.
    pub fn set_queue(
        &self,
        model: &str,
        tenant: &str,
        mut stats: QueueStats,
    ) -> Result<(), KernelError> {
        stats.updated_unix_ms = now_unix_ms();
        self.with(|m| {
            m.queue
                .insert(QueueKey::new(model, tenant), stats, 0)
                .map_err(KernelError::map(sched::QUEUE_MAP_NAME))
        })
    }

    /// Forgets a tenant the model's queue no longer tracks; absent is not an error.
    pub fn remove_queue(&self, model: &str, tenant: &str) -> Result<(), KernelError> {
        self.with(|m| match m.queue.remove(&QueueKey::new(model, tenant)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(KernelError::Map {
                map: sched::QUEUE_MAP_NAME,
                source: e,
            }),
        })
    }

    /// `tg_queue`'s entry for a model and tenant, if any.
    pub fn queue(&self, model: &str, tenant: &str) -> Result<Option<QueueStats>, KernelError> {
        self.with(|m| match m.queue.get(&QueueKey::new(model, tenant), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(KernelError::Map {
                map: sched::QUEUE_MAP_NAME,
                source: e,
            }),
        })
    }

    /// The current totals of `model`, if any (for tests and `tollgate status`).
    pub fn model_usage(&self, model: &str) -> Result<Option<Usage>, KernelError> {
        self.with(|m| match m.model.get(&ModelKey::new(model), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(KernelError::Map {
                map: model_usage::MAP_NAME,
                source: e,
            }),
        })
    }
}
