//! Host facts and mounts the loader needs: where cgroup v2 is mounted, whether a path is on
//! cgroup2 or bpffs, mounting bpffs, and the process's effective capabilities.
//!
//! Owns no state. Runs only at load (never on the hot path). Never mounts anything but bpffs,
//! and only at the standard `/sys/fs/bpf`.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
pub(crate) const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
/// `BPF_FS_MAGIC` from linux/magic.h.
pub(crate) const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
/// Where bpffs lives by convention.
pub(crate) const BPFFS_ROOT: &str = "/sys/fs/bpf";

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The mount point of the cgroup v2 hierarchy, from /proc/mounts: `/sys/fs/cgroup` on
/// unified hosts, `/sys/fs/cgroup/unified` on hybrid ones. `None` when there is none.
pub fn detect_cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    cgroup2_mount_in(&mounts)
}

/// The first cgroup2 mount point listed in a /proc/mounts text.
pub(crate) fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_field(dir)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file system magic number of the file system holding `path` (statfs `f_type`).
pub(crate) fn fs_magic(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero `statfs` is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call and `st` is a valid, writable
    // `statfs` the kernel fills in.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type is a signed word whose value is a 32-bit magic; go through u32 to avoid sign
    // extension of magics with the top bit set (BPF_FS_MAGIC).
    Ok(u64::from(st.f_type as u32))
}

/// Mounts bpffs at `target` (`mount -t bpf bpf <target>`).
pub(crate) fn mount_bpffs(target: &Path) -> io::Result<()> {
    let target = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; `data` may be
    // null for bpffs.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub(crate) fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    caps_in(&status)
}

fn caps_in(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// `None` when `caps` allow loading and attaching the programs, else which are missing.
pub(crate) fn missing_caps(caps: u64) -> Option<String> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) && has(CAP_NET_ADMIN) {
        return None;
    }
    if has(CAP_BPF) && has(CAP_NET_ADMIN) && has(CAP_PERFMON) {
        return None;
    }
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_SYS_ADMIN) && !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_SYS_ADMIN) && !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    Some(format!(
        "effective capabilities {caps:#x} lack {}",
        missing.join(", ")
    ))
}

/// Whether the running kernel exposes its BTF (CONFIG_DEBUG_INFO_BTF), which CO-RE and
/// `tp_btf` programs need.
pub(crate) fn kernel_btf_present() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
        let spaced = "none /mnt/my\\040cg cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount_in(spaced), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn capability_rules() {
        assert_eq!(missing_caps(u64::MAX), None);
        let bpf_set = (1 << CAP_BPF) | (1 << CAP_NET_ADMIN) | (1 << CAP_PERFMON);
        assert_eq!(missing_caps(bpf_set), None);
        let msg = missing_caps(1 << CAP_BPF).unwrap_or_default();
        assert!(
            msg.contains("CAP_NET_ADMIN") && msg.contains("CAP_PERFMON"),
            "{msg}"
        );
        assert_eq!(
            caps_in("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
    }
}
