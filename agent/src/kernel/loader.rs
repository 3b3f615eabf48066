//! [`Kernel`]: loading, attaching, configuring and detaching the programs, and owning their
//! maps and pins.
//!
//! Load order: the map-only object creates and pins every map (so counters work even where a
//! hook is refused), then connect4 and sockops (required), connect6 and the close tracepoint
//! (optional: their absence is reported in [`Features`]) attach at the cgroup v2 root with
//! `BPF_F_ALLOW_MULTI`, so they coexist with other programs there. Then the agent's identity and
//! listen addresses are written, a self-test connects to a probe listener to check attribution
//! end to end and learn the agent's tgid as the kernel sees it (it differs inside a pid
//! namespace), and only then are intercepts enabled: a redirect must never catch the agent's
//! own upstream connections.
//!
//! The pin directory is locked (`flock`) for the agent's lifetime, so a second agent on the same
//! directory runs without kernel features instead of replacing the first one's pins, and
//! `tollgate kernel detach` can tell a stale directory from a live one.
//!
//! Teardown (explicit [`Kernel::detach`] or `Drop`, also on a failed load): disable the programs
//! through `tg_config`, drop the links (cgroup and tracing links are fd-based, so a killed agent
//! detaches too), unload, remove the pins and the pin directory when empty. Not on the hot path.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps};
use aya::util::KernelVersion;
use aya::{Btf, Ebpf, EbpfLoader};
use tollgate_common::{attribution, cg_usage, config, gpu, intercept, key_usage, listen};
use tollgate_common::{model_usage, replica, sched, stats};
use tollgate_common::{AddrKey, Attribution, Config, InterceptEntry, ListenEntry};
use tracing::{info, warn};

use super::attribution::{addr_of, key_of, AttributionReader};
use super::counters::{CounterMaps, CounterWriter};
use super::handover::{claim, running_config, Ownership, RELEASE_WAIT};
use super::{objects, sys, FeatureState, Features, KernelConfig, KernelError};

/// Every map maps.h declares, i.e. every pin this loader creates and removes.
pub(crate) const MAP_NAMES: &[&str] = &[
    config::MAP_NAME,
    intercept::MAP_NAME,
    listen::MAP_NAME,
    attribution::PENDING_MAP_NAME,
    attribution::ATTR_MAP_NAME,
    stats::MAP_NAME,
    cg_usage::MAP_NAME,
    key_usage::MAP_NAME,
    model_usage::MAP_NAME,
    replica::MAP_NAME,
    gpu::MAP_NAME,
    sched::SCHED_MAP_NAME,
    sched::QUEUE_MAP_NAME,
];

/// The close tracepoint the cleanup program attaches to.
const SOCK_STATE_TRACEPOINT: &str = "inet_sock_set_state";
/// How long the self-test waits for each step.
const SELF_TEST_STEP: Duration = Duration::from_secs(1);

/// Sums of the kernel programs' event counters (`tg_stats`), since load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// TCP connects seen.
    pub connects: u64,
    /// Connects redirected to the agent.
    pub redirects: u64,
    /// Intercepted connects left alone for want of a listener of their family.
    pub no_target: u64,
    /// Attribution records written.
    pub records: u64,
    /// Records re-keyed on establishment.
    pub established: u64,
    /// Attribution entries removed on close.
    pub closes: u64,
    /// TCP state transitions seen.
    pub state_changes: u64,
}

/// The maps the loader itself writes: identity, redirect targets, listen and intercept sets.
pub(super) struct Control {
    config_map: Array<MapData, Config>,
    config: Config,
    intercept: HashMap<MapData, AddrKey, InterceptEntry>,
    listen: HashMap<MapData, AddrKey, ListenEntry>,
    listen_keys: Vec<AddrKey>,
}

/// Programs and pins to undo; dropping it detaches and unpins, so a half-finished load cleans
/// up after itself.
struct Attached {
    programs: Vec<(&'static str, Ebpf)>,
    pin_dir: PathBuf,
    pins: Vec<PathBuf>,
    /// Leave the pins (and the hand-over directory) in place: another agent's programs use
    /// the maps.
    keep_pins: bool,
}

impl Attached {
    fn teardown(&mut self) -> Result<(), KernelError> {
        // Dropping an object unloads its programs and closes their links: detached.
        while let Some((_name, ebpf)) = self.programs.pop() {
            drop(ebpf);
        }
        if self.keep_pins {
            self.pins.clear();
            return Ok(());
        }
        let mut first_err = None;
        for pin in self.pins.drain(..) {
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(KernelError::io(
                        format!("removing pin {}", pin.display()),
                        e,
                    ));
                }
            }
        }
        // Only succeed when empty: pins someone else put there stay, and so does the directory.
        let _ = std::fs::remove_dir(self.pin_dir.join(super::pins::HANDOVER));
        let _ = std::fs::remove_dir(&self.pin_dir);
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            warn!("kernel teardown: {e}");
        }
    }
}

/// The loaded and attached kernel side. Dropping it detaches everything and removes its pins.
pub struct Kernel {
    control: Arc<Mutex<Control>>,
    /// The `tg_config.generation` this agent's programs serve.
    generation: u32,
    /// The configuration of the agent this one took over from (a successor), written back if
    /// this one stops before that agent has gone.
    previous: Option<Config>,
    ownership: Arc<Ownership>,
    released: bool,
    attr: Arc<HashMap<MapData, AddrKey, Attribution>>,
    stats: PerCpuArray<MapData, u64>,
    counters: CounterWriter,
    features: Features,
    program_ids: Vec<(&'static str, u32)>,
    cgroup_root: PathBuf,
    /// Declared last so that it is dropped after `Drop::drop` disabled the programs.
    attached: Attached,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("features", &self.features)
            .field("program_ids", &self.program_ids)
            .field("cgroup_root", &self.cgroup_root)
            .field("pin_dir", &self.attached.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// Loads, attaches and configures the kernel programs. On error nothing stays attached or
    /// pinned, and the message says what the kernel or host refused and how to fix it.
    pub fn load(cfg: &KernelConfig) -> Result<Kernel, KernelError> {
        if !objects::built() {
            let reason = if objects::BUILD_MISSING.is_empty() {
                "the embedded objects are empty".to_owned()
            } else {
                objects::BUILD_MISSING.to_owned()
            };
            return Err(KernelError::NotBuilt { reason });
        }
        let plan = Plan::new(cfg)?;
        if let Some(caps) = sys::effective_caps() {
            if let Some(detail) = sys::missing_caps(caps) {
                return Err(KernelError::Privilege { detail });
            }
        }
        let cgroup_root = cgroup2_root(cfg)?;
        let cgroup = File::open(&cgroup_root)
            .map_err(|e| KernelError::io(format!("opening cgroup {}", cgroup_root.display()), e))?;
        prepare_pin_dir(&cfg.pin_dir)?;
        // The pin directory has one owner. An agent that finds it owned takes over from the
        // running one (an upgrade: see `handover.rs`), holding the hand-over lock meanwhile.
        let (lock, _handover) = claim(&cfg.pin_dir)?;
        if lock.is_some() {
            remove_stale_pins(&cfg.pin_dir)?;
        }

        let mut attached = Attached {
            programs: Vec::new(),
            pin_dir: cfg.pin_dir.clone(),
            pins: Vec::new(),
            keep_pins: lock.is_none(),
        };
        let btf = if sys::kernel_btf_present() {
            Btf::from_sys_fs().ok()
        } else {
            None
        };

        // Maps first (a successor opens the running agent's pins). From here on `attached`
        // removes the pins on any early return, unless they are the running agent's.
        attached.pins = MAP_NAMES.iter().map(|n| cfg.pin_dir.join(n)).collect();
        let mut maps = load_object(btf.as_ref(), &cfg.pin_dir, "maps", objects::MAPS, None)?;
        let config_map: Array<MapData, Config> = take_map(&mut maps, config::MAP_NAME)?;
        let previous = match lock {
            Some(_) => None,
            None => Some(running_config(&config_map, &cfg.pin_dir)?),
        };
        let generation = previous.map_or(1, |p| p.generation.checked_add(1).unwrap_or(1));
        let control = Control {
            config_map,
            config: previous.unwrap_or_default(),
            intercept: take_map(&mut maps, intercept::MAP_NAME)?,
            listen: take_map(&mut maps, listen::MAP_NAME)?,
            listen_keys: plan.listen_keys.clone(),
        };
        let attr: HashMap<MapData, AddrKey, Attribution> =
            take_map(&mut maps, attribution::ATTR_MAP_NAME)?;
        let stats: PerCpuArray<MapData, u64> = take_map(&mut maps, stats::MAP_NAME)?;
        let counters = CounterWriter::new(CounterMaps {
            cg: take_map(&mut maps, cg_usage::MAP_NAME)?,
            key: take_map(&mut maps, key_usage::MAP_NAME)?,
            model: take_map(&mut maps, model_usage::MAP_NAME)?,
            replica: take_map(&mut maps, replica::MAP_NAME)?,
            gpu: take_map(&mut maps, gpu::MAP_NAME)?,
            sched: take_map(&mut maps, sched::SCHED_MAP_NAME)?,
            queue: take_map(&mut maps, sched::QUEUE_MAP_NAME)?,
        });
        drop(maps);

        let mut features = Features {
            interception: FeatureState::Active,
            interception_v6: FeatureState::Active,
            attribution: FeatureState::Active,
            close_cleanup: FeatureState::Active,
            counters: FeatureState::Active,
        };
        let mut program_ids = Vec::new();
        let pin_dir = cfg.pin_dir.as_path();

        // Required: without them there is neither interception nor attribution.
        let (ebpf, id) = attach_sock_addr(
            btf.as_ref(),
            pin_dir,
            generation,
            ("connect4", objects::CONNECT4, "tg_connect4"),
            &cgroup,
        )?;
        attached.programs.push(("connect4", ebpf));
        program_ids.push(("tg_connect4", id));
        let (ebpf, id) = attach_sockops(btf.as_ref(), pin_dir, generation, &cgroup)?;
        attached.programs.push(("sockops", ebpf));
        program_ids.push(("tg_sockops", id));

        // Optional: reported, not fatal.
        match attach_sock_addr(
            btf.as_ref(),
            pin_dir,
            generation,
            ("connect6", objects::CONNECT6, "tg_connect6"),
            &cgroup,
        ) {
            Ok((ebpf, id)) => {
                attached.programs.push(("connect6", ebpf));
                program_ids.push(("tg_connect6", id));
                if plan.redirect6.is_none() {
                    features.interception_v6 =
                        FeatureState::off("the agent has no IPv6 listen address to redirect to");
                }
            }
            Err(e) => features.interception_v6 = FeatureState::off(e.to_string()),
        }
        match btf.as_ref() {
            None => {
                features.close_cleanup = FeatureState::off(
                    "the kernel exposes no BTF (/sys/kernel/btf/vmlinux; needs CONFIG_DEBUG_INFO_BTF=y), \
                     so attribution entries age out of the LRU map instead",
                )
            }
            Some(btf) => match attach_sock_state(btf, pin_dir, generation) {
                Ok((ebpf, id)) => {
                    attached.programs.push(("sock_state", ebpf));
                    program_ids.push(("tg_sock_state", id));
                }
                Err(e) => features.close_cleanup = FeatureState::off(e.to_string()),
            },
        }

        let kernel = Kernel {
            control: Arc::new(Mutex::new(control)),
            generation,
            previous,
            ownership: Arc::new(Ownership::new(lock)),
            released: false,
            attr: Arc::new(attr),
            stats,
            counters,
            features,
            program_ids,
            cgroup_root,
            attached,
        };
        let kernel = kernel.finish(cfg, &plan)?;
        if let Some(previous) = kernel.previous {
            info!(
                generation,
                from_pid = previous.agent_tgid,
                "took the kernel programs over from the running agent; it is exempt until it exits"
            );
            kernel.ownership.promote_when_free(
                cfg.pin_dir.clone(),
                kernel.control.clone(),
                generation,
            );
        }
        Ok(kernel)
    }

    /// Writes the configuration, runs the self-test, then enables the intercepts.
    fn finish(mut self, cfg: &KernelConfig, plan: &Plan) -> Result<Kernel, KernelError> {
        let mut flags = config::FLAG_ENABLED;
        if plan.redirect4.is_some() {
            flags |= config::FLAG_REDIRECT4;
        }
        if plan.redirect6.is_some() {
            flags |= config::FLAG_REDIRECT6;
        }
        let conf = Config {
            agent_tgid: cfg.agent_pid,
            flags,
            agent_cgroup_id: cfg.exempt_cgroup_id.unwrap_or(0),
            redirect4: plan.redirect4.unwrap_or_default(),
            redirect6: plan.redirect6.unwrap_or_default(),
            // Writing it makes this agent's programs the ones that act.
            generation: self.generation,
            agent_tgid2: self.previous.map_or(0, |p| p.agent_tgid),
        };
        {
            let mut c = self.lock();
            for key in &plan.listen_keys {
                c.listen
                    .insert(key, ListenEntry::default(), 0)
                    .map_err(KernelError::map(listen::MAP_NAME))?;
            }
            c.write_config(conf)?;
        }

        match self.self_test() {
            Ok(test) => {
                if test.tgid != cfg.agent_pid && cfg.agent_pid == std::process::id() {
                    info!(
                        pid = cfg.agent_pid,
                        host_tgid = test.tgid,
                        "the agent runs in a pid namespace; exempting it by its host tgid"
                    );
                    let mut c = self.lock();
                    let conf = Config {
                        agent_tgid: test.tgid,
                        ..c.config
                    };
                    c.write_config(conf)?;
                }
                if !test.cleaned && self.features.close_cleanup.is_active() {
                    self.features.close_cleanup = FeatureState::off(
                        "the self-test connection's entry was not removed on close",
                    );
                }
                self.set_intercepts(&cfg.intercept)?;
            }
            Err(reason) if self.previous.is_some() => {
                // Without its own tgid this agent cannot be exempted: hand the maps back
                // (dropping `self` writes the running agent's configuration again).
                return Err(KernelError::Handover {
                    detail: format!("the attribution self-test failed: {reason}"),
                });
            }
            Err(reason) => {
                warn!("kernel attribution self-test failed: {reason}");
                self.features.attribution =
                    FeatureState::off(format!("self-test failed: {reason}"));
                self.features.interception = FeatureState::off(
                    "not enabled because the attribution self-test failed, so the agent's own \
                     connects could not be told apart from its clients'",
                );
                self.features.interception_v6 = self.features.interception.clone();
            }
        }
        Ok(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects to a probe listener the way a client would and checks that the attribution
    /// record arrives (and, with the close hook, leaves again).
    fn self_test(&self) -> Result<SelfTest, String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("binding a probe listener: {e}"))?;
        let probe = listener.local_addr().map_err(|e| e.to_string())?;
        let probe_key = key_of(probe);
        self.lock()
            .listen
            .insert(
                probe_key,
                ListenEntry {
                    flags: listen::FLAG_PROBE,
                    _pad: 0,
                },
                0,
            )
            .map_err(|e| format!("adding the probe address: {e}"))?;
        let result = self.probe(&listener, probe);
        if let Err(e) = self.lock().listen.remove(&probe_key) {
            warn!("removing the self-test probe address: {e}");
        }
        result
    }

    fn probe(&self, listener: &TcpListener, probe: SocketAddr) -> Result<SelfTest, String> {
        let client = TcpStream::connect_timeout(&probe, SELF_TEST_STEP)
            .map_err(|e| format!("connecting to the probe listener {probe}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + SELF_TEST_STEP;
        let (server, peer) = loop {
            match listener.accept() {
                Ok(pair) => break pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(format!("accepting the probe connection: {e}")),
            }
        };
        let reader = self.attribution_reader();
        let record = reader
            .lookup_raw(peer)
            .map_err(|e| format!("looking up {peer}: {e}"))?
            .ok_or_else(|| {
                format!(
                    "no record for the probe connection from {peer} (connect4 or sockops did not run; \
                     is another cgroup program overriding them?)"
                )
            })?;
        drop(server);
        drop(client);
        let deadline = Instant::now() + SELF_TEST_STEP / 2;
        let cleaned = loop {
            match reader.lookup_raw(peer) {
                Ok(None) => break true,
                _ if Instant::now() >= deadline => break false,
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        Ok(SelfTest {
            tgid: record.tgid,
            cleaned,
        })
    }

    /// Which kernel features are active, and why the others are not.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// A reader for the accept path. Cheap; clone it or call this once per worker.
    pub fn attribution_reader(&self) -> AttributionReader {
        AttributionReader::new(Arc::clone(&self.attr))
    }

    /// A writer for the node counters. Cheap; clone it freely.
    pub fn counter_writer(&self) -> CounterWriter {
        self.counters.clone()
    }

    /// The loaded programs' names and kernel ids (as `bpftool prog show` lists them).
    pub fn program_ids(&self) -> &[(&'static str, u32)] {
        &self.program_ids
    }

    /// The cgroup v2 mount the programs are attached at.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.attached.pin_dir
    }

    /// Replaces the intercept set (on config reload). Counts of kept destinations survive.
    pub fn set_intercepts(&self, dsts: &[SocketAddr]) -> Result<(), KernelError> {
        let mut c = self.lock();
        let mut want = Vec::with_capacity(dsts.len());
        for dst in dsts {
            let key = key_of(*dst);
            if key.is_unspecified() || dst.port() == 0 {
                return Err(KernelError::Config(format!(
                    "intercept address {dst} must name one address and port, not a wildcard"
                )));
            }
            if c.listen_keys.iter().any(|l| {
                *l == key || (l.is_unspecified() && l.port == key.port && l.family == key.family)
            }) {
                return Err(KernelError::Config(format!(
                    "intercept address {dst} is one of the agent's own listen addresses; redirecting it would loop"
                )));
            }
            want.push(key);
        }
        if want.len() > intercept::MAX_ENTRIES as usize {
            return Err(KernelError::Config(format!(
                "{} intercept addresses exceed the {} that {} holds",
                want.len(),
                intercept::MAX_ENTRIES,
                intercept::MAP_NAME
            )));
        }
        let have: Vec<AddrKey> = c.intercept.keys().filter_map(Result::ok).collect();
        for key in have.iter().filter(|k| !want.contains(k)) {
            match c.intercept.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(KernelError::Map {
                        map: intercept::MAP_NAME,
                        source: e,
                    })
                }
            }
        }
        for key in want.iter().filter(|k| !have.contains(k)) {
            c.intercept
                .insert(key, InterceptEntry::default(), 0)
                .map_err(KernelError::map(intercept::MAP_NAME))?;
        }
        Ok(())
    }

    /// The intercepted destinations and how many connects each had redirected.
    pub fn intercepts(&self) -> Vec<(SocketAddr, u64)> {
        let c = self.lock();
        c.intercept
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| addr_of(&k).map(|a| (a, v.hits)))
            .collect()
    }

    /// The programs' event counters summed over CPUs.
    pub fn stats(&self) -> Result<KernelStats, KernelError> {
        let get = |idx: u32| -> Result<u64, KernelError> {
            let per_cpu = self
                .stats
                .get(&idx, 0)
                .map_err(KernelError::map(stats::MAP_NAME))?;
            Ok(per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(KernelStats {
            connects: get(stats::CONNECT)?,
            redirects: get(stats::REDIRECT)?,
            no_target: get(stats::NO_TARGET)?,
            records: get(stats::RECORD)?,
            established: get(stats::ESTABLISHED)?,
            closes: get(stats::CLOSE)?,
            state_changes: get(stats::STATE)?,
        })
    }

    /// Detaches every program and removes the pins, reporting what could not be removed.
    /// (Dropping the `Kernel` does the same and logs instead.)
    pub fn detach(mut self) -> Result<(), KernelError> {
        self.release()
    }

    /// Whether this agent's programs are the ones acting (false once a successor took over).
    pub fn is_current(&self) -> bool {
        self.lock()
            .current()
            .is_ok_and(|cur| cur.generation == self.generation)
    }

    /// The tgid of the agent this one took over from at load (an upgrade), if it did.
    pub fn took_over_from(&self) -> Option<u32> {
        self.previous.map(|p| p.agent_tgid)
    }

    /// Whether this agent owns the pin directory (a successor does once its predecessor exits).
    pub fn owns_pin_dir(&self) -> bool {
        self.ownership.holds_lock()
    }

    /// Stops this agent's programs: an owner that is still current disables them and removes
    /// the pins; one that was taken over from leaves the maps to its successor; a successor
    /// whose predecessor still runs gives the maps back to it. Runs once.
    fn release(&mut self) -> Result<(), KernelError> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        self.ownership.stop_promoter();
        // Not while a successor is taking over (it holds this lock from its check to its switch).
        let handover = super::pins::lock_handover(&self.attached.pin_dir, RELEASE_WAIT);
        if let Err(e) = &handover {
            warn!("stopping without the hand-over lock: {e}");
        }
        let owner = self.ownership.holds_lock();
        let keep_pins = {
            let control = Arc::clone(&self.control);
            let mut c = control.lock().unwrap_or_else(PoisonError::into_inner);
            let current = c.current().unwrap_or(c.config);
            if current.generation != self.generation {
                info!(
                    pid = current.agent_tgid,
                    "kernel programs handed over to the agent that took over; leaving its maps"
                );
                true
            } else if owner {
                let conf = Config {
                    flags: 0,
                    ..current
                };
                if let Err(e) = c.write_config(conf) {
                    warn!("disabling the kernel programs: {e}");
                }
                false
            } else {
                if let Some(previous) = self.previous {
                    info!(
                        pid = previous.agent_tgid,
                        "giving the kernel programs back to the running agent"
                    );
                    if let Err(e) = c.write_config(previous) {
                        warn!("giving the kernel programs back: {e}");
                    }
                }
                true
            }
        };
        self.attached.keep_pins = keep_pins;
        let result = self.attached.teardown();
        drop(handover);
        self.ownership.give_up();
        result
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            warn!("kernel teardown: {e}");
        }
    }
}

impl Control {
    /// `tg_config` as the programs see it now (another agent may have written it).
    pub(super) fn current(&self) -> Result<Config, KernelError> {
        self.config_map
            .get(&config::INDEX, 0)
            .map_err(KernelError::map(config::MAP_NAME))
    }

    pub(super) fn write_config(&mut self, conf: Config) -> Result<(), KernelError> {
        self.config_map
            .set(config::INDEX, conf, 0)
            .map_err(KernelError::map(config::MAP_NAME))?;
        self.config = conf;
        Ok(())
    }
}

struct SelfTest {
    /// The agent's tgid as the kernel saw it.
    tgid: u32,
    /// Whether the close hook removed the entry afterwards.
    cleaned: bool,
}

/// The configuration turned into map keys.
struct Plan {
    listen_keys: Vec<AddrKey>,
    redirect4: Option<AddrKey>,
    redirect6: Option<AddrKey>,
}

impl Plan {
    fn new(cfg: &KernelConfig) -> Result<Self, KernelError> {
        if cfg.listen.is_empty() && !cfg.intercept.is_empty() {
            return Err(KernelError::Config(
                "intercepts need at least one listen address to redirect to".to_owned(),
            ));
        }
        let mut listen_keys = Vec::new();
        let mut redirect4 = None;
        let mut redirect6 = None;
        for addr in &cfg.listen {
            let port = addr.port();
            if port == 0 {
                return Err(KernelError::Config(format!(
                    "listen address {addr} has no port"
                )));
            }
            match addr {
                SocketAddr::V4(a) => {
                    listen_keys.push(AddrKey::v4(a.ip().octets(), port));
                    let ip = if a.ip().is_unspecified() {
                        Ipv4Addr::LOCALHOST
                    } else {
                        *a.ip()
                    };
                    redirect4.get_or_insert(AddrKey::v4(ip.octets(), port));
                }
                SocketAddr::V6(a) if a.ip().is_unspecified() => {
                    // A dual-stack wildcard accepts both families.
                    listen_keys.push(AddrKey::v6([0; 16], port));
                    listen_keys.push(AddrKey::v4([0; 4], port));
                    redirect4.get_or_insert(AddrKey::v4(Ipv4Addr::LOCALHOST.octets(), port));
                    redirect6.get_or_insert(AddrKey::v6(Ipv6Addr::LOCALHOST.octets(), port));
                }
                SocketAddr::V6(a) => {
                    let key = key_of(SocketAddr::V6(*a));
                    listen_keys.push(key);
                    if key.family == tollgate_common::AF_INET {
                        redirect4.get_or_insert(key);
                    } else {
                        redirect6.get_or_insert(key);
                    }
                }
            }
        }
        listen_keys.dedup();
        intercept_keys(&cfg.intercept, &listen_keys)?;
        if listen_keys.len() + 1 > listen::MAX_ENTRIES as usize {
            return Err(KernelError::Config(format!(
                "{} listen addresses exceed the {} that {} holds",
                listen_keys.len(),
                listen::MAX_ENTRIES - 1,
                listen::MAP_NAME
            )));
        }
        Ok(Self {
            listen_keys,
            redirect4,
            redirect6,
        })
    }
}

/// The map keys for an intercept list, refusing wildcards and the agent's own addresses.
fn intercept_keys(
    dsts: &[SocketAddr],
    listen_keys: &[AddrKey],
) -> Result<Vec<AddrKey>, KernelError> {
    let mut want = Vec::with_capacity(dsts.len());
    for dst in dsts {
        let key = key_of(*dst);
        if key.is_unspecified() || dst.port() == 0 {
            return Err(KernelError::Config(format!(
                "intercept address {dst} must name one address and port, not a wildcard"
            )));
        }
        let is_listen = |l: &AddrKey| {
            *l == key || (l.is_unspecified() && l.port == key.port && l.family == key.family)
        };
        if listen_keys.iter().any(is_listen) {
            return Err(KernelError::Config(format!(
                "intercept address {dst} is one of the agent's own listen addresses; redirecting it would loop"
            )));
        }
        if !want.contains(&key) {
            want.push(key);
        }
    }
    if want.len() > intercept::MAX_ENTRIES as usize {
        return Err(KernelError::Config(format!(
            "{} intercept addresses exceed the {} that {} holds",
            want.len(),
            intercept::MAX_ENTRIES,
            intercept::MAP_NAME
        )));
    }
    Ok(want)
}

fn cgroup2_root(cfg: &KernelConfig) -> Result<PathBuf, KernelError> {
    let root = match &cfg.cgroup_root {
        Some(p) => p.clone(),
        None => sys::detect_cgroup2_mount().ok_or_else(|| KernelError::NoCgroup2 {
            detail: "/proc/mounts lists no cgroup2 file system".to_owned(),
        })?,
    };
    match sys::fs_magic(&root) {
        Ok(sys::CGROUP2_SUPER_MAGIC) => Ok(root),
        Ok(magic) => Err(KernelError::NoCgroup2 {
            detail: format!(
                "{} is not a cgroup v2 mount (file system magic {magic:#x})",
                root.display()
            ),
        }),
        Err(e) => Err(KernelError::NoCgroup2 {
            detail: format!("{}: {e}", root.display()),
        }),
    }
}

/// Makes sure `dir` can hold pins: bpffs mounted (at /sys/fs/bpf if need be), `dir` created.
fn prepare_pin_dir(dir: &Path) -> Result<(), KernelError> {
    let bpffs_err = |detail: String| KernelError::Bpffs {
        path: dir.to_owned(),
        detail,
    };
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let magic =
        sys::fs_magic(existing).map_err(|e| bpffs_err(format!("{}: {e}", existing.display())))?;
    if magic != sys::BPF_FS_MAGIC {
        let root = Path::new(sys::BPFFS_ROOT);
        let under_root = dir.starts_with(root) && existing.starts_with(root)
            || existing == root.parent().unwrap_or(root);
        if !(under_root && root.is_dir()) {
            return Err(bpffs_err(format!(
                "{} is not on bpffs (mount one with `mount -t bpf bpf {}`)",
                existing.display(),
                sys::BPFFS_ROOT
            )));
        }
        sys::mount_bpffs(root).map_err(|e| {
            bpffs_err(format!(
                "bpffs is not mounted at {} and mounting it failed: {e}",
                sys::BPFFS_ROOT
            ))
        })?;
        info!("mounted bpffs at {}", sys::BPFFS_ROOT);
    }
    std::fs::create_dir_all(dir).map_err(|e| bpffs_err(format!("creating it: {e}")))
}

/// Pins left by an agent that did not shut down cleanly would be reused as they are (aya
/// opens a pinned map instead of creating it), layouts and stale entries included.
fn remove_stale_pins(dir: &Path) -> Result<(), KernelError> {
    for name in MAP_NAMES {
        let pin = dir.join(name);
        if pin.exists() {
            warn!(
                "removing stale pin {} left by an earlier run",
                pin.display()
            );
            std::fs::remove_file(&pin)
                .map_err(|e| KernelError::io(format!("removing stale pin {}", pin.display()), e))?;
        }
    }
    Ok(())
}

/// Loads `bytes`; a program object is told the `generation` it serves.
fn load_object(
    btf: Option<&Btf>,
    pin_dir: &Path,
    object: &'static str,
    bytes: &[u8],
    generation: Option<u32>,
) -> Result<Ebpf, KernelError> {
    let mut loader = EbpfLoader::new();
    loader.btf(btf).default_map_pin_directory(pin_dir);
    if let Some(g) = &generation {
        loader.override_global(config::GENERATION_SYMBOL, g, true);
    }
    loader
        .load(bytes)
        .map_err(|source| KernelError::Load { object, source })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| KernelError::Mismatch {
        object: "maps",
        detail: format!("it has no map {name}"),
    })?;
    T::try_from(map).map_err(KernelError::map(name))
}

fn prog_err(
    action: &'static str,
    program: &'static str,
) -> impl FnOnce(ProgramError) -> KernelError {
    move |source| KernelError::Program {
        action,
        program,
        source,
    }
}

fn prog_id(
    info: Result<aya::programs::ProgramInfo, ProgramError>,
    program: &'static str,
) -> Result<u32, KernelError> {
    info.map(|i| i.id())
        .map_err(prog_err("inspecting", program))
}

fn missing_program(object: &'static str, program: &str) -> KernelError {
    KernelError::Mismatch {
        object,
        detail: format!("it has no program {program}"),
    }
}

/// Cgroup links (5.7+, which aya uses there) always coexist with other programs on the cgroup
/// and the kernel rejects any attach flag on them (EINVAL); older kernels attach with
/// `BPF_PROG_ATTACH`, which needs `BPF_F_ALLOW_MULTI` to not evict or block others.
fn cgroup_attach_mode() -> CgroupAttachMode {
    let links = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0));
    if links {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    }
}

fn attach_sock_addr(
    btf: Option<&Btf>,
    pin_dir: &Path,
    generation: u32,
    (object, bytes, program): (&'static str, &[u8], &'static str),
    cgroup: &File,
) -> Result<(Ebpf, u32), KernelError> {
    let mut ebpf = load_object(btf, pin_dir, object, bytes, Some(generation))?;
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(program)
        .ok_or_else(|| missing_program(object, program))?
        .try_into()
        .map_err(prog_err("loading", program))?;
    prog.load().map_err(prog_err("loading", program))?;
    prog.attach(cgroup, cgroup_attach_mode())
        .map_err(prog_err("attaching", program))?;
    let id = prog_id(prog.info(), program)?;
    Ok((ebpf, id))
}

fn attach_sockops(
    btf: Option<&Btf>,
    pin_dir: &Path,
    generation: u32,
    cgroup: &File,
) -> Result<(Ebpf, u32), KernelError> {
    const PROGRAM: &str = "tg_sockops";
    let mut ebpf = load_object(btf, pin_dir, "sockops", objects::SOCKOPS, Some(generation))?;
    let prog: &mut SockOps = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| missing_program("sockops", PROGRAM))?
        .try_into()
        .map_err(prog_err("loading", PROGRAM))?;
    prog.load().map_err(prog_err("loading", PROGRAM))?;
    prog.attach(cgroup, cgroup_attach_mode())
        .map_err(prog_err("attaching", PROGRAM))?;
    let id = prog_id(prog.info(), PROGRAM)?;
    Ok((ebpf, id))
}

fn attach_sock_state(
    btf: &Btf,
    pin_dir: &Path,
    generation: u32,
) -> Result<(Ebpf, u32), KernelError> {
    const PROGRAM: &str = "tg_sock_state";
    let mut ebpf = load_object(
        Some(btf),
        pin_dir,
        "sock_state",
        objects::SOCK_STATE,
        Some(generation),
    )?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| missing_program("sock_state", PROGRAM))?
        .try_into()
        .map_err(prog_err("loading", PROGRAM))?;
    prog.load(SOCK_STATE_TRACEPOINT, btf)
        .map_err(prog_err("loading", PROGRAM))?;
    prog.attach().map_err(prog_err("attaching", PROGRAM))?;
    let id = prog_id(prog.info(), PROGRAM)?;
    Ok((ebpf, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(listen: &[&str]) -> Plan {
        let listen = listen
            .iter()
            .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
            .collect();
        Plan::new(&KernelConfig::new(listen, Vec::new())).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn wildcards_redirect_to_loopback_and_dual_stack_listens_on_both() {
        let p = plan(&["0.0.0.0:8080"]);
        assert_eq!(p.redirect4, Some(AddrKey::v4([127, 0, 0, 1], 8080)));
        assert_eq!(p.redirect6, None);
        assert_eq!(p.listen_keys, vec![AddrKey::v4([0; 4], 8080)]);

        let p = plan(&["[::]:9000"]);
        assert_eq!(p.redirect4, Some(AddrKey::v4([127, 0, 0, 1], 9000)));
        assert_eq!(
            p.redirect6.map(|k| k.family),
            Some(tollgate_common::AF_INET6)
        );
        assert_eq!(p.listen_keys.len(), 2);

        let p = plan(&["10.0.0.5:8080", "[::1]:8081"]);
        assert_eq!(p.redirect4, Some(AddrKey::v4([10, 0, 0, 5], 8080)));
        assert_eq!(
            p.redirect6,
            Some(key_of(
                "[::1]:8081".parse().unwrap_or_else(|e| panic!("{e}"))
            ))
        );
    }

    #[test]
    fn intercepts_need_a_listener() {
        let cfg = KernelConfig::new(
            Vec::new(),
            vec!["127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"))],
        );
        assert!(matches!(Plan::new(&cfg), Err(KernelError::Config(_))));
    }
}
