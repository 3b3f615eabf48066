//! Every struct shared with the kernel programs, with its C name, size and field offsets, in the
//! style of cilium's `bpf_alignchecker.c`. The agent's layout test compares this table with the
//! BTF of the built `.bpf.o` files; a struct added to types.h must be added here too.

use core::mem::{offset_of, size_of};

use crate::{AddrKey, Attribution, Config, GpuStats, InterceptEntry, ListenEntry, ModelKey};
use crate::{QueueKey, QueueStats, ReplicaKey, ReplicaLoad, SchedStats, Usage};

/// One shared struct as Rust lays it out.
#[derive(Debug, Clone, Copy)]
pub struct StructLayout {
    /// The C struct tag in types.h (without `struct`).
    pub c_name: &'static str,
    /// `size_of` in bytes.
    pub size: usize,
    /// Field names (identical in C), byte offsets and sizes, in declaration order.
    pub fields: &'static [FieldLayout],
}

/// One field of a [`StructLayout`].
#[derive(Debug, Clone, Copy)]
pub struct FieldLayout {
    pub name: &'static str,
    /// Byte offset from the start of the struct.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// The size of the field that `f` projects to (type inference does the work).
const fn field_size<T, F>(_f: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! layout {
    ($c:literal, $ty:ty, [$($f:ident),+ $(,)?]) => {
        StructLayout {
            c_name: $c,
            size: size_of::<$ty>(),
            fields: &[$(FieldLayout {
                name: stringify!($f),
                offset: offset_of!($ty, $f),
                size: field_size(|s: &$ty| &s.$f),
            }),+],
        }
    };
}

/// All shared structs.
pub const ALL: &[StructLayout] = &[
    layout!("tg_addr_key", AddrKey, [addr, port, family]),
    layout!(
        "tg_config",
        Config,
        [
            agent_tgid,
            flags,
            agent_cgroup_id,
            redirect4,
            redirect6,
            generation,
            agent_tgid2
        ]
    ),
    layout!("tg_intercept_entry", InterceptEntry, [hits]),
    layout!("tg_listen_entry", ListenEntry, [flags, _pad]),
    layout!(
        "tg_attribution",
        Attribution,
        [pid, tgid, uid, gid, cgroup_id, connect_ns, comm, orig_dst, flags]
    ),
    layout!(
        "tg_usage",
        Usage,
        [
            input_tokens,
            cached_tokens,
            output_tokens,
            requests,
            cost_micro_usd
        ]
    ),
    layout!("tg_model_key", ModelKey, [name]),
    layout!("tg_replica_key", ReplicaKey, [name]),
    layout!(
        "tg_replica_load",
        ReplicaLoad,
        [running, waiting, kv_cache_permille, _pad, updated_unix_ms]
    ),
    layout!(
        "tg_gpu_stats",
        GpuStats,
        [
            util_pct,
            _pad,
            mem_used_bytes,
            mem_total_bytes,
            updated_unix_ms
        ]
    ),
    layout!(
        "tg_sched_stats",
        SchedStats,
        [
            routed,
            prefix_hits,
            prefix_bytes,
            in_flight,
            max_in_flight,
            waiting,
            index_blocks,
            updated_unix_ms
        ]
    ),
    layout!("tg_queue_key", QueueKey, [model, tenant]),
    layout!(
        "tg_queue_stats",
        QueueStats,
        [
            waiting_interactive,
            waiting_batch,
            served_tokens,
            updated_unix_ms
        ]
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_the_c_sizes() {
        let want = [
            ("tg_addr_key", 20),
            ("tg_config", 64),
            ("tg_intercept_entry", 8),
            ("tg_listen_entry", 8),
            ("tg_attribution", 72),
            ("tg_usage", 40),
            ("tg_model_key", 64),
            ("tg_replica_key", 64),
            ("tg_replica_load", 24),
            ("tg_gpu_stats", 32),
            ("tg_sched_stats", 48),
            ("tg_queue_key", 128),
            ("tg_queue_stats", 24),
        ];
        assert_eq!(ALL.len(), want.len());
        for (l, (name, size)) in ALL.iter().zip(want) {
            assert_eq!((l.c_name, l.size), (name, size));
        }
    }

    #[test]
    fn no_implicit_padding() {
        // Every byte belongs to a named field: each field starts where the previous one ends and
        // the last one ends at the struct's size. Padding must be an explicit `_pad`.
        for l in ALL {
            let mut end = 0;
            for f in l.fields {
                assert_eq!(
                    f.offset, end,
                    "{}.{}: implicit padding before it",
                    l.c_name, f.name
                );
                end = f.offset + f.size;
            }
            assert_eq!(end, l.size, "{}: implicit padding at the end", l.c_name);
        }
    }
}
