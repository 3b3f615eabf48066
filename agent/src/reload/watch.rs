//! Watches the configuration file and reloads when its content changes. Polls the file's bytes
//! (once a second) rather than relying on inotify: Kubernetes updates a mounted ConfigMap by
//! swapping a symlink, which inotify on the file itself does not report. Control plane thread.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{history, Reloader, Trigger};

/// How often the file is read.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Runs until the agent stops.
pub fn run(reloader: Arc<Reloader>) {
    let read = || {
        std::fs::read(reloader.path())
            .ok()
            .map(|t| history::sha256(&t))
    };
    let mut seen = read();
    let shared = reloader.shared.clone();
    let mut waited = Duration::ZERO;
    while !shared.shutting_down.load(Ordering::Acquire) {
        // Short steps, so a stop is noticed quickly.
        std::thread::sleep(Duration::from_millis(100));
        waited += Duration::from_millis(100);
        if waited < INTERVAL {
            continue;
        }
        waited = Duration::ZERO;
        let now = read();
        if now.is_some() && now != seen {
            seen = now;
            // The reloader compares with what is running, so an edit already applied by SIGHUP
            // or the admin API is a no-op here; a refused file is retried only when it changes.
            let _ = reloader.reload(Trigger::FileWatch);
        }
    }
}
