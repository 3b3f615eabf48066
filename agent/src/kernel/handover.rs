//! Upgrades without an interception gap: a new agent started on the pin directory of a running
//! one takes the kernel side over while both run, and owns it once the old one has exited.
//!
//! How (every step is a map write or a lock, nothing is detached while a client connects):
//! 1. The new agent finds the directory's lock held (`pins::lock` is `Busy`) and takes the
//!    hand-over lock instead, so it never overlaps with the old agent's teardown or another
//!    successor.
//! 2. It opens the pinned maps (so attribution records and counters are shared), and attaches
//!    its own programs beside the old ones, loaded for the next `tg_config.generation`: inert.
//! 3. One write of `tg_config` (its generation, its identity, and the old agent's tgid as
//!    `agent_tgid2`, still exempt) switches which programs act. Then its self-test runs; if it
//!    fails, it writes the old configuration back and runs without kernel features.
//! 4. The old agent, stopping, sees a generation that is not its own: it drops its programs and
//!    leaves the maps and pins alone. When it exits its lock is free; the new agent's promoter
//!    thread takes it, clears `agent_tgid2`, and from then on owns the directory (it removes
//!    the pins when it stops).
//!
//! A successor that stops before its predecessor has exited writes the predecessor's
//! configuration back, so interception returns to it. Only one hand-over runs at a time: an
//! agent that finds `agent_tgid2` set runs without kernel features, as does one whose maps do
//! not match the running agent's (a layout change between versions).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{Array, MapData};
use tollgate_common::{config, Config};
use tracing::{info, warn};

use super::loader::Control;
use super::{pins, KernelError};

/// How long a new agent waits for the hand-over lock (another successor, or a teardown).
const CLAIM_WAIT: Duration = Duration::from_secs(5);
/// How long a stopping agent waits for it.
pub(super) const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// How often a successor looks whether its predecessor has exited.
const PROMOTE_POLL: Duration = Duration::from_millis(20);

/// Claims `dir`: its lock when free (an owner); otherwise, while another agent runs there, the
/// hand-over lock (a successor, which holds it until its programs act).
pub(super) fn claim(dir: &Path) -> Result<(Option<File>, Option<File>), KernelError> {
    match pins::lock(dir) {
        Ok(lock) => return Ok((Some(lock), None)),
        Err(KernelError::Busy { .. }) => {}
        Err(e) => return Err(e),
    }
    let handover = pins::lock_handover(dir, CLAIM_WAIT)?;
    // The running agent may have exited while this one waited.
    match pins::lock(dir) {
        Ok(lock) => Ok((Some(lock), None)),
        Err(KernelError::Busy { .. }) => Ok((None, Some(handover))),
        Err(e) => Err(e),
    }
}

/// The running agent's configuration, when it can be taken over.
pub(super) fn running_config(
    map: &Array<MapData, Config>,
    dir: &Path,
) -> Result<Config, KernelError> {
    let conf = map
        .get(&config::INDEX, 0)
        .map_err(KernelError::map(config::MAP_NAME))?;
    if conf.flags & config::FLAG_ENABLED == 0 || conf.agent_tgid2 != 0 {
        // Stopping, or already handing over to another agent.
        return Err(KernelError::Busy {
            path: dir.to_owned(),
            owner: Some(conf.agent_tgid),
        });
    }
    Ok(conf)
}

/// Whether this agent owns the pin directory, and the thread that makes a successor the owner.
pub(super) struct Ownership {
    /// The directory's lock, once held.
    lock: Mutex<Option<File>>,
    stop: Arc<AtomicBool>,
    promoter: Mutex<Option<JoinHandle<()>>>,
}

impl Ownership {
    pub(super) fn new(lock: Option<File>) -> Ownership {
        Ownership {
            lock: Mutex::new(lock),
            stop: Arc::new(AtomicBool::new(false)),
            promoter: Mutex::new(None),
        }
    }

    pub(super) fn holds_lock(&self) -> bool {
        self.lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Releases the directory's lock (last, after the teardown).
    pub(super) fn give_up(&self) {
        self.lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Starts the thread that waits for the predecessor to exit, then takes the directory's
    /// lock and stops exempting the predecessor.
    pub(super) fn promote_when_free(
        self: &Arc<Self>,
        dir: PathBuf,
        control: Arc<Mutex<Control>>,
        generation: u32,
    ) {
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("tollgate-handover".into())
            .spawn(move || me.promote(&dir, &control, generation));
        match spawned {
            Ok(t) => *self.promoter.lock().unwrap_or_else(PoisonError::into_inner) = Some(t),
            Err(e) => warn!("starting the hand-over thread: {e}; this agent will not own the pins"),
        }
    }

    fn promote(&self, dir: &Path, control: &Mutex<Control>, generation: u32) {
        while !self.stop.load(Ordering::Acquire) {
            match pins::lock(dir) {
                Ok(lock) => {
                    let handover = pins::lock_handover(dir, RELEASE_WAIT);
                    let mut c = control.lock().unwrap_or_else(PoisonError::into_inner);
                    match c.current() {
                        Ok(cur) if cur.generation == generation => {
                            if let Err(e) = c.write_config(Config {
                                agent_tgid2: 0,
                                ..cur
                            }) {
                                warn!("clearing the previous agent's exemption: {e}");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => warn!("reading tg_config: {e}"),
                    }
                    drop(c);
                    drop(handover);
                    *self.lock.lock().unwrap_or_else(PoisonError::into_inner) = Some(lock);
                    info!(pin_dir = %dir.display(), "the previous agent has exited; this agent owns the kernel programs");
                    return;
                }
                Err(KernelError::Busy { .. }) => std::thread::sleep(PROMOTE_POLL),
                Err(e) => {
                    warn!("waiting for the pin directory: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    /// Stops the promoter (a successor stopping before its predecessor exited).
    pub(super) fn stop_promoter(&self) {
        self.stop.store(true, Ordering::Release);
        let t = self
            .promoter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}
