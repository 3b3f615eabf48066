//! Reading who opened a connection: [`AttributionReader`] looks the agent's accepted peer
//! address up in `tg_attr`, which the sockops program fills when a client's connect completes.
//!
//! Hot path: the accept phase calls [`AttributionReader::lookup`] once per accepted connection
//! (one `bpf(BPF_MAP_LOOKUP_ELEM)` syscall, about a microsecond). The reader is `Clone + Send +
//! Sync` (an `Arc` over one map fd), so each worker can hold its own clone. It never writes the
//! map: entries are removed by the kernel's close hook, or age out of the LRU.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use aya::maps::{HashMap, MapData, MapError};
use tollgate_common::attribution::FLAG_REDIRECTED;
use tollgate_common::{AddrKey, Attribution, AF_INET, AF_INET6};

/// What the kernel recorded about the process behind a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAttribution {
    /// Thread id of the connecting thread, as the host's pid namespace numbers it.
    pub pid: u32,
    /// Process id, as the host's pid namespace numbers it.
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Thread name at connect time (at most 15 bytes).
    pub comm: String,
    /// cgroup v2 id (the inode number of the cgroup directory); resolve it with
    /// [`super::cgroup::CgroupResolver`].
    pub cgroup_id: u64,
    /// Where the client meant to connect, when the connect was redirected to the agent.
    pub original_dst: Option<SocketAddr>,
    /// When the connect happened, CLOCK_MONOTONIC nanoseconds.
    pub connect_ns: u64,
}

impl From<&Attribution> for ConnAttribution {
    fn from(a: &Attribution) -> Self {
        Self {
            pid: a.pid,
            tgid: a.tgid,
            uid: a.uid,
            gid: a.gid,
            comm: a.comm_str().to_owned(),
            cgroup_id: a.cgroup_id,
            original_dst: if a.flags & FLAG_REDIRECTED != 0 {
                addr_of(&a.orig_dst)
            } else {
                None
            },
            connect_ns: a.connect_ns,
        }
    }
}

/// Looks connections up by the client's address. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct AttributionReader {
    map: Arc<HashMap<MapData, AddrKey, Attribution>>,
}

impl std::fmt::Debug for AttributionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttributionReader").finish_non_exhaustive()
    }
}

impl AttributionReader {
    pub(crate) fn new(map: Arc<HashMap<MapData, AddrKey, Attribution>>) -> Self {
        Self { map }
    }

    /// The attribution of the connection whose client end is `peer` (the address `accept`
    /// returned), or `None` when the kernel saw no connect from this host to the agent for it
    /// (a remote client, or a connection made before the programs were attached).
    pub fn lookup(&self, peer: SocketAddr) -> Option<ConnAttribution> {
        self.lookup_raw(peer)
            .ok()
            .flatten()
            .map(|a| ConnAttribution::from(&a))
    }

    /// Like [`Self::lookup`] but keeps the raw record and reports map errors.
    pub fn lookup_raw(&self, peer: SocketAddr) -> Result<Option<Attribution>, MapError> {
        match self.map.get(&key_of(peer), 0) {
            Ok(a) => Ok(Some(a)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The map key the kernel programs use for `addr` (IPv4-mapped IPv6 becomes IPv4).
pub fn key_of(addr: SocketAddr) -> AddrKey {
    match addr {
        SocketAddr::V4(a) => AddrKey::v4(a.ip().octets(), a.port()),
        SocketAddr::V6(a) => AddrKey::v6(a.ip().octets(), a.port()),
    }
}

/// The socket address a map key stands for; `None` for an unknown family.
pub fn addr_of(key: &AddrKey) -> Option<SocketAddr> {
    match key.family {
        AF_INET => {
            let ip = Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, key.port)))
        }
        AF_INET6 => Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(key.addr),
            key.port,
            0,
            0,
        ))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_mapped_addresses_fold_to_v4() {
        let v4: SocketAddr = "127.0.0.1:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(addr_of(&key_of(v4)), Some(v4));
        let v6: SocketAddr = "[::1]:443".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(addr_of(&key_of(v6)), Some(v6));
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:99"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key_of(mapped), AddrKey::v4([10, 1, 2, 3], 99));
    }

    #[test]
    fn original_dst_only_when_redirected() {
        let mut a = Attribution {
            orig_dst: AddrKey::v4([1, 2, 3, 4], 5),
            ..Default::default()
        };
        a.comm[..4].copy_from_slice(b"curl");
        assert_eq!(ConnAttribution::from(&a).original_dst, None);
        a.flags = FLAG_REDIRECTED;
        let c = ConnAttribution::from(&a);
        assert_eq!(
            c.original_dst,
            Some("1.2.3.4:5".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        assert_eq!(c.comm, "curl");
    }
}
