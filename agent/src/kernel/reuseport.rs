//! Request migration for the agent's listening group (`reuseport.bpf.c`).
//!
//! Every worker listens on the same address with `SO_REUSEPORT`, and so does an agent's
//! successor during an upgrade. When the old agent stops, closing a listener resets the
//! connections still in its accept queue (the kernel has completed their handshake, but no
//! `accept` has taken them yet): under load, a client of the old agent sees a reset. An
//! `sk_reuseport/migrate` program attached to the group turns on migration for that group
//! alone: those connections move to a listener that stays. The host-wide switch
//! (`net.ipv4.tcp_migrate_req`) is left as it is.
//!
//! The program is attached through one listener and applies to the whole group, including
//! listeners that join later (a successor's); the group keeps it while any listener is open,
//! so nothing is pinned. Needs `CAP_BPF` and `CAP_NET_ADMIN` (or root); without them, or
//! without a build of the kernel objects, the agent runs as before and says so.

use std::os::fd::AsFd;

use aya::programs::SkReuseport;

use super::{objects, KernelError};

/// Loads the program and attaches it to the `SO_REUSEPORT` group of `listener`.
pub fn enable_migration(listener: impl AsFd) -> Result<(), KernelError> {
    if !objects::built() {
        return Err(KernelError::NotBuilt {
            reason: objects::BUILD_MISSING.to_string(),
        });
    }
    let mut ebpf = aya::EbpfLoader::new()
        .load(objects::REUSEPORT)
        .map_err(|source| KernelError::Load {
            object: "reuseport",
            source,
        })?;
    let program: &mut SkReuseport = ebpf
        .program_mut("tg_reuseport")
        .ok_or_else(|| KernelError::Mismatch {
            object: "reuseport",
            detail: "no program tg_reuseport".into(),
        })?
        .try_into()
        .map_err(|source| KernelError::Program {
            action: "typing",
            program: "tg_reuseport",
            source,
        })?;
    let program_error = |action| {
        move |source| KernelError::Program {
            action,
            program: "tg_reuseport",
            source,
        }
    };
    program.load().map_err(program_error("loading"))?;
    // The group holds the program from here; dropping `ebpf` closes only this process's fd.
    program.attach(listener).map_err(program_error("attaching"))
}
