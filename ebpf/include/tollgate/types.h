/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Key and value types of every map Tollgate shares between its kernel
 * programs and userspace.
 *
 * This header owns layouts only; the maps themselves are declared in
 * maps.h. Each struct has a twin in the `tollgate-common` crate
 * (common/src/<map>.rs) with the same field order, the same explicit `_pad`
 * fields and the same size. Both sides assert the size; the agent's layout
 * test compares every field offset against the BTF of the built objects
 * (like cilium's alignchecker). Never reorder or remove a field: retired
 * fields become `_reserved*` so old readers keep working.
 *
 * Conventions: addresses are in network byte order, ports in host byte
 * order, times in nanoseconds (CLOCK_MONOTONIC, `_ns`) or Unix milliseconds
 * (`_unix_ms`), money in micro-USD.
 */
#ifndef __TOLLGATE_TYPES_H
#define __TOLLGATE_TYPES_H

#include <linux/types.h>

/* Values from the kernel's socket.h/in.h/tcp_states.h; the BPF target has no libc headers. */
#define TG_AF_INET 2
#define TG_AF_INET6 10
#define TG_SOCK_STREAM 1
#define TG_IPPROTO_TCP 6
#define TG_TCP_CLOSE 7

#define TG_COMM_LEN 16
#define TG_NAME_LEN 64

/*
 * A socket address, used as the key of tg_intercept, tg_listen and tg_attr.
 * IPv4 addresses use addr[0..4] with the other 12 bytes zero (an IPv4-mapped
 * IPv6 address is stored as IPv4). An all-zero addr is the wildcard address
 * of its family (only meaningful in tg_listen). 20 bytes.
 */
struct tg_addr_key {
	__u8 addr[16];  /* network byte order */
	__u16 port;     /* host byte order */
	__u16 family;   /* TG_AF_INET or TG_AF_INET6 */
};
_Static_assert(sizeof(struct tg_addr_key) == 20, "tg_addr_key layout");

/* tg_config flags. */
#define TG_CFG_ENABLED (1U << 0)    /* programs act; cleared first on detach */
#define TG_CFG_REDIRECT4 (1U << 1)  /* redirect4 is valid */
#define TG_CFG_REDIRECT6 (1U << 2)  /* redirect6 is valid */

/*
 * tg_config[0]: written by the agent at load, read by every program. 64 bytes.
 * Only the programs loaded for `generation` act (their tg_generation); the
 * others stay inert, so an upgrade hands the maps to the new agent's programs
 * with one write of this entry.
 */
struct tg_config {
	__u32 agent_tgid;       /* connects from this tgid (init pid namespace) are never redirected */
	__u32 flags;            /* TG_CFG_* */
	__u64 agent_cgroup_id;  /* connects from this cgroup are never redirected; 0 = none */
	struct tg_addr_key redirect4;  /* where redirected IPv4 connects go */
	struct tg_addr_key redirect6;  /* where redirected IPv6 connects go */
	__u32 generation;       /* the programs that act: those loaded with this tg_generation */
	__u32 agent_tgid2;      /* during a hand-over, the other agent: never redirected either; 0 = none */
};
_Static_assert(sizeof(struct tg_config) == 64, "tg_config layout");

/* tg_intercept value: one per destination that is redirected to the agent. 8 bytes. */
struct tg_intercept_entry {
	__u64 hits;  /* connects redirected so far */
};
_Static_assert(sizeof(struct tg_intercept_entry) == 8, "tg_intercept_entry layout");

/* tg_listen flags. */
#define TG_LISTEN_PROBE (1U << 0)  /* the agent's own start-up self-test address */

/* tg_listen value: one per address the agent listens on. 8 bytes. */
struct tg_listen_entry {
	__u32 flags;  /* TG_LISTEN_* */
	__u32 _pad;
};
_Static_assert(sizeof(struct tg_listen_entry) == 8, "tg_listen_entry layout");

/* tg_attribution flags. */
#define TG_ATTR_REDIRECTED (1U << 0)  /* orig_dst is where the client meant to go */

/*
 * Who opened a connection to the agent: value of tg_pending (keyed by the
 * client socket's cookie, between connect and establishment) and tg_attr
 * (keyed by the client's address, from establishment until close). 72 bytes.
 */
struct tg_attribution {
	__u32 pid;            /* thread id of the connecting thread (init pid namespace) */
	__u32 tgid;           /* process id (init pid namespace) */
	__u32 uid;
	__u32 gid;
	__u64 cgroup_id;      /* cgroup v2 id = inode number of the cgroup directory */
	__u64 connect_ns;     /* bpf_ktime_get_ns() at connect, CLOCK_MONOTONIC */
	char comm[TG_COMM_LEN];  /* thread name, NUL-padded */
	struct tg_addr_key orig_dst;  /* destination before redirection; zero unless TG_ATTR_REDIRECTED */
	__u32 flags;          /* TG_ATTR_* */
};
_Static_assert(sizeof(struct tg_attribution) == 72, "tg_attribution layout");

/* tg_stats indices (per-CPU __u64 event counters). */
#define TG_STAT_CONNECT 0       /* TCP connects seen by the connect programs */
#define TG_STAT_REDIRECT 1      /* connects redirected to the agent */
#define TG_STAT_NO_TARGET 2     /* intercepted but no redirect target of that family */
#define TG_STAT_RECORD 3        /* attribution records written (redirected or direct) */
#define TG_STAT_ESTABLISHED 4   /* records re-keyed by client address on establishment */
#define TG_STAT_CLOSE 5         /* tg_attr entries removed on close */
#define TG_STAT_STATE 6         /* TCP state transitions seen */
#define TG_STAT_MAX 8

/*
 * Usage counters written by the agent (value of tg_cg_usage, tg_key_usage
 * and tg_model_usage). Monotonic totals since the map was created. 40 bytes.
 */
struct tg_usage {
	__u64 input_tokens;    /* prompt tokens, cached ones included */
	__u64 cached_tokens;   /* prompt tokens served from a prefix cache */
	__u64 output_tokens;   /* completion tokens */
	__u64 requests;
	__u64 cost_micro_usd;  /* priced cost, 1e-6 USD */
};
_Static_assert(sizeof(struct tg_usage) == 40, "tg_usage layout");

/* Key of tg_model_usage: the model name as the client asked for it, NUL-padded. */
struct tg_model_key {
	char name[TG_NAME_LEN];
};
_Static_assert(sizeof(struct tg_model_key) == 64, "tg_model_key layout");

/* Key of tg_replica: the replica's configured name, NUL-padded. */
struct tg_replica_key {
	char name[TG_NAME_LEN];
};
_Static_assert(sizeof(struct tg_replica_key) == 64, "tg_replica_key layout");

/* Value of tg_replica: the latest load figures scraped from a replica. 24 bytes. */
struct tg_replica_load {
	__u32 running;            /* requests being decoded */
	__u32 waiting;            /* requests queued */
	__u32 kv_cache_permille;  /* KV cache in use, 0..=1000 */
	__u32 _pad;
	__u64 updated_unix_ms;    /* when the agent wrote it */
};
_Static_assert(sizeof(struct tg_replica_load) == 24, "tg_replica_load layout");

/* Value of tg_gpu (array indexed by GPU index). 32 bytes. */
struct tg_gpu_stats {
	__u32 util_pct;           /* SM utilisation, 0..=100 */
	__u32 _pad;
	__u64 mem_used_bytes;
	__u64 mem_total_bytes;
	__u64 updated_unix_ms;    /* when the agent wrote it; 0 = no such GPU */
};
_Static_assert(sizeof(struct tg_gpu_stats) == 32, "tg_gpu_stats layout");

/* Value of tg_sched (key: struct tg_replica_key holding the target's "provider/model"): what
 * the agent's scheduler did with a target. 48 bytes. */
struct tg_sched_stats {
	__u64 routed;             /* requests it served (settled) */
	__u64 prefix_hits;        /* of those, sent where their prompt prefix was recently sent */
	__u64 prefix_bytes;       /* matched prompt bytes over those requests */
	__u32 in_flight;          /* requests the agent has there now (gated models) */
	__u32 max_in_flight;      /* its cap; 0 = none */
	__u32 waiting;            /* requests waiting for a slot of its model */
	__u32 index_blocks;       /* prefix index entries, all workers */
	__u64 updated_unix_ms;    /* when the agent last wrote it */
};
_Static_assert(sizeof(struct tg_sched_stats) == 48, "tg_sched_stats layout");

/* Key of tg_queue: a gated model and a tenant ("team:x", "key:tg-abc", "anonymous"). */
struct tg_queue_key {
	char model[TG_NAME_LEN];
	char tenant[TG_NAME_LEN];
};
_Static_assert(sizeof(struct tg_queue_key) == 128, "tg_queue_key layout");

/* Value of tg_queue: the tenant's place in the model's fair queue. 24 bytes. */
struct tg_queue_stats {
	__u32 waiting_interactive;
	__u32 waiting_batch;
	__u64 served_tokens;      /* its virtual token counter */
	__u64 updated_unix_ms;
};
_Static_assert(sizeof(struct tg_queue_stats) == 24, "tg_queue_stats layout");

#endif /* __TOLLGATE_TYPES_H */
