//! The pin directory seen from outside a running agent: who owns it, read-only access to the
//! pinned maps, and removing what a killed agent left behind.
//!
//! Why: node tools (`tollgate top`) read the counters without talking to the agent, and
//! `tollgate kernel detach` cleans up after an agent that could not remove its own pins. The
//! agent holds an exclusive `flock` on its pin directory while it runs ([`lock`]), so "is this
//! directory stale?" has a reliable answer: it is when nobody holds the lock.
//!
//! Never on the hot path. Maps are opened with `BPF_F_RDONLY`: the agent is their only writer.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData};
use tollgate_common::config;

use super::loader::MAP_NAMES;
use super::KernelError;

/// `BPF_OBJ_GET` from linux/bpf.h.
const BPF_OBJ_GET: libc::c_long = 7;
/// `BPF_F_RDONLY` from linux/bpf.h.
const BPF_F_RDONLY: u32 = 1 << 3;

/// The `BPF_OBJ_GET` part of `union bpf_attr`.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Takes the exclusive lock on `dir` that a running agent holds; `Busy` when another process
/// holds it. The lock lasts as long as the returned file is open (a killed agent releases it).
pub fn lock(dir: &Path) -> Result<File, KernelError> {
    let f = File::open(dir)
        .map_err(|e| KernelError::io(format!("opening pin directory {}", dir.display()), e))?;
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(f);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(KernelError::Busy {
            path: dir.to_owned(),
            owner: owner_tgid(dir),
        });
    }
    Err(KernelError::io(
        format!("locking pin directory {}", dir.display()),
        err,
    ))
}

/// The directory inside the pin directory whose lock serialises a hand-over: a successor
/// taking over and an agent tearing down never overlap (bpffs holds only directories and bpf
/// objects, and no name with a dot, so the lock is on a plain directory name).
pub const HANDOVER: &str = "handover";

/// Takes the hand-over lock of `dir`, waiting up to `wait` for whoever holds it.
pub fn lock_handover(dir: &Path, wait: std::time::Duration) -> Result<File, KernelError> {
    let path = dir.join(HANDOVER);
    match std::fs::create_dir(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(KernelError::io(format!("creating {}", path.display()), e)),
    }
    let deadline = std::time::Instant::now() + wait;
    loop {
        match lock(&path) {
            Err(KernelError::Busy { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Opens a pinned map read-only.
pub fn open_read_only(path: &Path) -> Result<MapData, KernelError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| {
        KernelError::io(
            format!("pin path {}", path.display()),
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })?;
    let attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: BPF_F_RDONLY,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: `attr` is a valid, initialised prefix of `union bpf_attr` for BPF_OBJ_GET whose
    // pathname points at `c`, which outlives the call; the size passed is its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(KernelError::io(
            format!("opening pinned map {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    MapData::from_fd(fd).map_err(|source| KernelError::Map {
        map: "pinned map",
        source,
    })
}

/// Opens a pinned map read-only as one of aya's typed maps.
pub fn open_typed<T>(path: &Path, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = open_read_only(path)?;
    let map = Map::from_map_data(data).map_err(KernelError::map(name))?;
    T::try_from(map).map_err(KernelError::map(name))
}

/// The pid of the agent that wrote `dir/tg_config`, if the programs are enabled there.
pub fn owner_tgid(dir: &Path) -> Option<u32> {
    let map: Array<MapData, tollgate_common::Config> =
        open_typed(&dir.join(config::MAP_NAME), config::MAP_NAME).ok()?;
    let conf = map.get(&config::INDEX, 0).ok()?;
    (conf.flags & config::FLAG_ENABLED != 0 && conf.agent_tgid != 0).then_some(conf.agent_tgid)
}

/// What [`remove_stale`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Pins removed.
    pub pins: Vec<PathBuf>,
    /// Entries left because they are not Tollgate's.
    pub left: Vec<PathBuf>,
    /// Whether the directory itself was removed.
    pub dir_removed: bool,
}

/// Removes the pins a killed agent left in `dir`, and `dir` when it ends up empty. Refuses
/// (`Busy`) while a running agent holds the directory. A missing directory is nothing to do.
pub fn remove_stale(dir: &Path) -> Result<Removed, KernelError> {
    let mut out = Removed::default();
    if !dir.exists() {
        return Ok(out);
    }
    let lock = lock(dir)?;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| KernelError::io(format!("reading {}", dir.display()), e))?;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str());
        if name == Some(HANDOVER) {
            // Empty unless someone put something there: then it stays, and is reported.
            if std::fs::remove_dir(&path).is_err() {
                out.left.push(path);
            }
            continue;
        }
        if !name.is_some_and(|n| MAP_NAMES.contains(&n)) {
            out.left.push(path);
            continue;
        }
        std::fs::remove_file(&path)
            .map_err(|e| KernelError::io(format!("removing {}", path.display()), e))?;
        out.pins.push(path);
    }
    if out.left.is_empty() {
        std::fs::remove_dir(dir)
            .map_err(|e| KernelError::io(format!("removing {}", dir.display()), e))?;
        out.dir_removed = true;
    }
    drop(lock);
    Ok(out)
}

/// Names and ids of loaded programs that look like Tollgate's (`tg_*`).
pub fn loaded_tollgate_programs() -> Vec<(String, u32)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_owned();
            name.starts_with("tg_").then(|| (name, p.id()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_exclusive_and_released_on_close() {
        let dir = std::env::temp_dir().join(format!("tg-pinlock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let held = lock(&dir).unwrap_or_else(|e| panic!("{e}"));
        match lock(&dir) {
            Err(KernelError::Busy { path, owner }) => {
                assert_eq!((path, owner), (dir.clone(), None));
            }
            other => panic!("second lock: {other:?}"),
        }
        // Busy also stops a cleanup.
        assert!(matches!(remove_stale(&dir), Err(KernelError::Busy { .. })));
        drop(held);
        // Not on bpffs, but the cleanup logic is the same: foreign files stay, and so does
        // the directory.
        std::fs::write(dir.join("tg_attr"), b"").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("notes.txt"), b"").unwrap_or_else(|e| panic!("{e}"));
        let removed = remove_stale(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(removed.pins, vec![dir.join("tg_attr")]);
        assert_eq!(removed.left, vec![dir.join("notes.txt")]);
        assert!(!removed.dir_removed && dir.is_dir());
        std::fs::remove_file(dir.join("notes.txt")).unwrap_or_else(|e| panic!("{e}"));
        let removed = remove_stale(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(removed.dir_removed && !dir.exists());
        assert_eq!(remove_stale(&dir).ok(), Some(Removed::default()));
    }
}
