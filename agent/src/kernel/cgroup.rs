//! cgroup ids to paths, and paths to container and pod identity.
//!
//! Why: the kernel attributes a connection to a cgroup v2 id (the inode number of the cgroup's
//! directory); people and policies speak of containers and pods. [`CgroupResolver`] finds the
//! directory with that inode by walking the v2 hierarchy, caching what it saw, and
//! [`parse_cgroup_path`] reads the container id, runtime and pod UID out of the path shapes that
//! containerd, CRI-O, Docker, Podman and the kubelet (systemd and cgroupfs drivers) create.
//!
//! Hot path: a cache hit is one hash lookup under a mutex. A miss walks the whole hierarchy
//! (milliseconds on a busy node), at most once per [`MISS_RETRY`] for an unknown id, so callers
//! on the request path should treat `None` as "not yet known". Never writes to cgroupfs.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an id that no walk found stays unknown before the next walk.
pub const MISS_RETRY: Duration = Duration::from_secs(2);
/// Most directories one walk visits (a bound on a pathological hierarchy).
const MAX_WALK_ENTRIES: usize = 200_000;
/// Deepest directory one walk descends to.
const MAX_WALK_DEPTH: usize = 32;

/// The container runtime that named a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    /// Lower-case name for labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }
}

/// What a cgroup path says about the container and pod it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerIdentity {
    /// The runtime, when the path names it (cgroupfs-driver paths do not).
    pub runtime: Option<Runtime>,
    /// The 64-hex container id.
    pub container_id: Option<String>,
    /// The Kubernetes pod UID with dashes (`0a1b2c3d-...`).
    pub pod_uid: Option<String>,
}

/// A resolved cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    /// The cgroup v2 id (inode number of its directory).
    pub id: u64,
    /// Path relative to the v2 mount, starting with `/` (the root is `/`).
    pub path: String,
    /// Container and pod identity parsed from `path`.
    pub identity: ContainerIdentity,
}

#[derive(Default)]
struct Cache {
    by_id: HashMap<u64, Arc<CgroupInfo>>,
    misses: HashMap<u64, Instant>,
}

/// Resolves cgroup ids to paths under one cgroup v2 mount, with a cache. `Send + Sync`.
pub struct CgroupResolver {
    root: PathBuf,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for CgroupResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupResolver")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl CgroupResolver {
    /// A resolver for the v2 hierarchy mounted at `root` (e.g. `/sys/fs/cgroup`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The cgroup v2 mount this resolver walks.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cgroup with id `id`, walking the hierarchy on a cache miss (see the module docs).
    pub fn resolve(&self, id: u64) -> Option<Arc<CgroupInfo>> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(info) = cache.by_id.get(&id) {
            return Some(Arc::clone(info));
        }
        if cache
            .misses
            .get(&id)
            .is_some_and(|t| t.elapsed() < MISS_RETRY)
        {
            return None;
        }
        // A fresh walk replaces the cache, so removed cgroups drop out of it.
        let mut by_id = HashMap::new();
        walk(&self.root, &self.root, 0, &mut by_id, &mut 0);
        cache.by_id = by_id;
        cache.misses.retain(|_, t| t.elapsed() < MISS_RETRY);
        match cache.by_id.get(&id) {
            Some(info) => Some(Arc::clone(info)),
            None => {
                cache.misses.insert(id, Instant::now());
                None
            }
        }
    }

    /// The absolute directory of cgroup `id`.
    pub fn dir_of(&self, id: u64) -> Option<PathBuf> {
        let info = self.resolve(id)?;
        Some(self.root.join(info.path.trim_start_matches('/')))
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut HashMap<u64, Arc<CgroupInfo>>,
    seen: &mut usize,
) {
    *seen += 1;
    if *seen > MAX_WALK_ENTRIES {
        return;
    }
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let path = format!("/{}", rel.to_string_lossy());
    let identity = parse_cgroup_path(&path);
    out.insert(
        meta.ino(),
        Arc::new(CgroupInfo {
            id: meta.ino(),
            path,
            identity,
        }),
    );
    if depth >= MAX_WALK_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &entry.path(), depth + 1, out, seen);
        }
    }
}

/// The cgroup v2 id of the cgroup directory `dir` (its inode number).
pub fn cgroup_id_of(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// The cgroup v2 path of this process (the `0::` line of /proc/self/cgroup).
pub fn own_cgroup_path() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

/// Container id, runtime and pod UID from a cgroup path. Understands:
///
/// - systemd driver: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with
///   underscores>.slice/cri-containerd-<id>.scope` (also `crio-<id>.scope`, `docker-<id>.scope`),
///   and Docker or Podman outside Kubernetes: `/system.slice/docker-<id>.scope`,
///   `/machine.slice/libpod-<id>.scope`;
/// - cgroupfs driver: `/kubepods/besteffort/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>`,
///   `/docker/<id>`.
///
/// Components after the container's own (a sub-cgroup inside the container) are ignored; the
/// conmon and `*-conmon-*` monitor scopes are not containers.
pub fn parse_cgroup_path(path: &str) -> ContainerIdentity {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut id = ContainerIdentity::default();
    let mut container_at = None;
    for (i, part) in parts.iter().enumerate().rev() {
        if let Some((runtime, cid)) = container_of(part, parts[..i].last().copied()) {
            id.runtime = runtime;
            id.container_id = Some(cid.to_owned());
            container_at = Some(i);
            break;
        }
    }
    let pod_search = &parts[..container_at.unwrap_or(parts.len())];
    id.pod_uid = pod_search.iter().rev().find_map(|p| pod_uid_of(p));
    id
}

fn container_of<'a>(part: &'a str, parent: Option<&str>) -> Option<(Option<Runtime>, &'a str)> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    if name.contains("-conmon-") || name.starts_with("conmon") {
        return None;
    }
    const PREFIXES: &[(&str, Runtime)] = &[
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            return is_container_id(rest).then_some((Some(*runtime), rest));
        }
    }
    if is_container_id(name) {
        let runtime = match parent {
            Some("docker") => Some(Runtime::Docker),
            _ => None,
        };
        return Some((runtime, name));
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn pod_uid_of(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let raw = if let Some(rest) = name.strip_prefix("pod") {
        rest
    } else {
        &name[name.rfind("-pod")? + 4..]
    };
    let uid = raw.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "4c8d8f2a1b3e5d7c9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";
    const UID: &str = "0f3b6c1e-9a2d-4b7e-8c5f-1d2e3f4a5b6c";

    fn parse(p: &str) -> ContainerIdentity {
        parse_cgroup_path(p)
    }

    #[test]
    fn kubelet_systemd_driver_containerd() {
        let uid_ = UID.replace('-', "_");
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{CID}.scope"
        );
        let id = parse(&p);
        assert_eq!(id.runtime, Some(Runtime::Containerd));
        assert_eq!(id.container_id.as_deref(), Some(CID));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn kubelet_systemd_driver_crio_and_guaranteed_pod() {
        let uid_ = UID.replace('-', "_");
        let p = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{CID}.scope");
        let id = parse(&p);
        assert_eq!(id.runtime, Some(Runtime::CriO));
        assert_eq!(id.container_id.as_deref(), Some(CID));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        // The conmon monitor is not the container.
        let conmon = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{CID}.scope");
        let id = parse(&conmon);
        assert_eq!(id.container_id, None);
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        let id = parse(&format!("/kubepods/besteffort/pod{UID}/{CID}"));
        assert_eq!(id.runtime, None);
        assert_eq!(id.container_id.as_deref(), Some(CID));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        let id = parse(&format!("/kubepods/pod{UID}/{CID}"));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        // The pod's own cgroup (no container yet).
        let id = parse(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!((id.container_id, id.pod_uid.as_deref()), (None, Some(UID)));
    }

    #[test]
    fn docker_and_podman_outside_kubernetes() {
        let id = parse(&format!("/system.slice/docker-{CID}.scope"));
        assert_eq!(
            (id.runtime, id.container_id.as_deref(), id.pod_uid),
            (Some(Runtime::Docker), Some(CID), None)
        );
        let id = parse(&format!("/docker/{CID}"));
        assert_eq!(
            (id.runtime, id.container_id.as_deref()),
            (Some(Runtime::Docker), Some(CID))
        );
        let id = parse(&format!("/machine.slice/libpod-{CID}.scope/container"));
        assert_eq!(
            (id.runtime, id.container_id.as_deref()),
            (Some(Runtime::Podman), Some(CID))
        );
    }

    #[test]
    fn kind_nested_kubelet_slice() {
        let uid_ = UID.replace('-', "_");
        let p = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/cri-containerd-{CID}.scope"
        );
        let id = parse(&p);
        assert_eq!(
            (id.container_id.as_deref(), id.pod_uid.as_deref()),
            (Some(CID), Some(UID))
        );
    }

    #[test]
    fn host_paths_have_no_identity() {
        for p in [
            "/",
            "/user.slice/user-1000.slice/session-2.scope",
            "/system.slice/sshd.service",
        ] {
            assert_eq!(parse(p), ContainerIdentity::default(), "{p}");
        }
        // Not quite a container id (63 hex) or a uid.
        assert_eq!(
            parse(&format!("/system.slice/docker-{}.scope", &CID[1..])).container_id,
            None
        );
        assert_eq!(parse("/kubepods/podnot-a-uid").pod_uid, None);
    }

    #[test]
    fn resolver_walks_a_directory_tree() {
        let base = std::env::temp_dir().join(format!("tg-cgwalk-{}", std::process::id()));
        let leaf = base.join(format!("system.slice/docker-{CID}.scope"));
        std::fs::create_dir_all(&leaf).unwrap_or_else(|e| panic!("{e}"));
        let r = CgroupResolver::new(&base);
        let id = cgroup_id_of(&leaf).unwrap_or_else(|e| panic!("{e}"));
        let info = r
            .resolve(id)
            .unwrap_or_else(|| panic!("walk found no {id}"));
        assert_eq!(info.path, format!("/system.slice/docker-{CID}.scope"));
        assert_eq!(info.identity.container_id.as_deref(), Some(CID));
        assert_eq!(r.dir_of(id), Some(leaf));
        assert_eq!(r.resolve(u64::MAX - 7), None);
        let _ = std::fs::remove_dir_all(&base);
    }
}
