/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map Tollgate's kernel programs and the agent share.
 *
 * All maps are pinned by name (LIBBPF_PIN_BY_NAME) under the loader's pin
 * directory, /sys/fs/bpf/tollgate/ by default: the first object the agent
 * loads (maps.bpf.o) creates them, every program object then reuses the pinned
 * map, and node tools read them with `bpftool map dump pinned ...`. Layouts
 * live in types.h; docs/kernel-maps.md documents them for third-party readers.
 * Names start with tg_ and stay within 15 characters (BPF_OBJ_NAME_LEN - 1).
 */
#ifndef __TOLLGATE_MAPS_H
#define __TOLLGATE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tollgate/types.h"

/* Agent identity and redirect targets; one entry, written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tg_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_config SEC(".maps");

/* Destinations whose TCP connects are redirected to the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct tg_addr_key);
	__type(value, struct tg_intercept_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_intercept SEC(".maps");

/* The agent's own listen addresses (all-zero addr = wildcard); connects to them are attributed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct tg_addr_key);
	__type(value, struct tg_listen_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_listen SEC(".maps");

/* Attribution between connect and establishment, keyed by the client socket's cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tg_attribution);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_pending SEC(".maps");

/* Attribution of established connections, keyed by the client's address (the agent's peer). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tg_addr_key);
	__type(value, struct tg_attribution);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_attr SEC(".maps");

/* Event counters (TG_STAT_*), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TG_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_stats SEC(".maps");

/*
 * Counters the agent writes for node tools and schedulers. No program
 * touches them; they live here so that they are created, typed and pinned
 * like the rest. LRU so that departed cgroups and revoked keys age out
 * instead of filling the map.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);  /* cgroup v2 id */
	__type(value, struct tg_usage);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_cg_usage SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);  /* hash of the virtual key, as the agent's ledger names it */
	__type(value, struct tg_usage);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_key_usage SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct tg_model_key);
	__type(value, struct tg_usage);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_model_usage SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct tg_replica_key);
	__type(value, struct tg_replica_load);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_replica SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct tg_replica_key);
	__type(value, struct tg_sched_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_sched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tg_queue_key);
	__type(value, struct tg_queue_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_queue SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);  /* GPU index as NVML numbers it */
	__type(value, struct tg_gpu_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_gpu SEC(".maps");

static __always_inline void tg_stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&tg_stats, &idx);

	if (v)
		*v += 1;
}

#endif /* __TOLLGATE_MAPS_H */
