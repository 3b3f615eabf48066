//! `tollgate kernel detach`: cleans up after an agent that was killed (SIGKILL, OOM) and so
//! could not remove its pins. Its programs are already detached (their links are fd-based and
//! died with it); what stays is the pin directory, which keeps the maps alive and shows stale
//! totals to node tools. This removes Tollgate's pins and the directory, and says what it
//! removed. It refuses while a running agent holds the directory (stop that agent instead:
//! SIGTERM detaches and removes everything). Not on any hot path.

use std::path::PathBuf;

use anyhow::bail;

use crate::kernel::{pins, KernelError};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Remove the pins and pin directory a killed agent left behind.
    Detach {
        /// The agent's pin directory (`kernel.pin_dir`).
        #[arg(long, default_value = crate::kernel::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Detach { pin_dir } => detach(&pin_dir),
    }
}

fn detach(dir: &std::path::Path) -> anyhow::Result<()> {
    let removed = match pins::remove_stale(dir) {
        Ok(r) => r,
        Err(KernelError::Busy { owner, .. }) => {
            let who = owner.map_or_else(String::new, |p| format!(" (pid {p})"));
            bail!(
                "{} belongs to a running agent{who}; stop it with SIGTERM instead, which detaches \
                 its programs and removes the pins",
                dir.display()
            );
        }
        Err(e) => return Err(e.into()),
    };
    if removed.pins.is_empty() && !removed.dir_removed && removed.left.is_empty() {
        println!("nothing to detach: {} does not exist", dir.display());
    }
    for pin in &removed.pins {
        println!("removed pin {}", pin.display());
    }
    for other in &removed.left {
        println!("left {} (not one of Tollgate's maps)", other.display());
    }
    if removed.dir_removed {
        println!("removed {}", dir.display());
    }
    let loaded = pins::loaded_tollgate_programs();
    if loaded.is_empty() {
        println!("no Tollgate programs are loaded");
    } else {
        // Another agent (its own pin directory) or a process holding program fds.
        let list: Vec<String> = loaded
            .iter()
            .map(|(name, id)| format!("{name} (id {id})"))
            .collect();
        println!(
            "still loaded, held by another process: {} (see `bpftool prog show`)",
            list.join(", ")
        );
    }
    Ok(())
}
