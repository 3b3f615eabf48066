/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Helpers shared by the program files: building tg_addr_key keys, matching
 * the agent's listen addresses, the exemption rule and writing attribution
 * records. Everything here is static __always_inline; the SEC() entries in
 * src/ stay thin and call these. All of it runs on connect/establish/close
 * of every TCP socket on the host, so it does a bounded number of map
 * lookups and nothing else.
 */
#ifndef __TOLLGATE_ATTR_H
#define __TOLLGATE_ATTR_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "tollgate/types.h"
#include "tollgate/maps.h"

/*
 * The configuration generation these programs serve, set by the loader
 * (rodata). During an upgrade two agents' programs are attached side by side
 * on the same pinned maps; only those of tg_config.generation act.
 */
volatile const __u32 tg_generation = 0;

/* The configuration, when these programs are the acting generation. */
static __always_inline const struct tg_config *tg_current(void)
{
	__u32 zero = 0;
	const struct tg_config *cfg = bpf_map_lookup_elem(&tg_config, &zero);

	if (!cfg || cfg->generation != tg_generation)
		return 0;
	return cfg;
}

/* The configuration, when these programs act and are enabled. */
static __always_inline const struct tg_config *tg_cfg(void)
{
	const struct tg_config *cfg = tg_current();

	if (!cfg || !(cfg->flags & TG_CFG_ENABLED))
		return 0;
	return cfg;
}

/* key = ip4:port. ip4 in network byte order, port in host byte order. */
static __always_inline void tg_key_v4(struct tg_addr_key *k, __u32 ip4, __u16 port)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->addr, &ip4, 4);
	k->port = port;
	k->family = TG_AF_INET;
}

static __always_inline int tg_is_v4mapped(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff);
}

/* key = [ip6]:port; an IPv4-mapped address becomes an IPv4 key. */
static __always_inline void tg_key_v6(struct tg_addr_key *k, const __u32 ip6[4], __u16 port)
{
	if (tg_is_v4mapped(ip6)) {
		tg_key_v4(k, ip6[3], port);
		return;
	}
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->addr, ip6, 16);
	k->port = port;
	k->family = TG_AF_INET6;
}

/* Is k one of the agent's listen addresses (exactly, or by its family's wildcard)? */
static __always_inline int tg_is_listen(const struct tg_addr_key *k)
{
	struct tg_addr_key any = {};

	if (bpf_map_lookup_elem(&tg_listen, k))
		return 1;
	any.port = k->port;
	any.family = k->family;
	return bpf_map_lookup_elem(&tg_listen, &any) != 0;
}

/* The agent's own connects (by tgid or cgroup) are never redirected: that would loop. */
static __always_inline int tg_is_exempt(const struct tg_config *cfg)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (tgid == cfg->agent_tgid || (cfg->agent_tgid2 && tgid == cfg->agent_tgid2))
		return 1;
	return cfg->agent_cgroup_id && bpf_get_current_cgroup_id() == cfg->agent_cgroup_id;
}

/* The intercept entry for dst when the caller's connect must be redirected, else NULL. */
static __always_inline struct tg_intercept_entry *tg_intercepted(const struct tg_config *cfg,
								  const struct tg_addr_key *dst)
{
	if (tg_is_exempt(cfg))
		return 0;
	return bpf_map_lookup_elem(&tg_intercept, dst);
}

/*
 * Record who is connecting, keyed by the socket cookie, until sockops
 * re-keys it by the client's address. Runs in the caller's context, so the
 * current task is the connecting thread.
 */
static __always_inline void tg_record(__u64 cookie, const struct tg_addr_key *orig_dst)
{
	struct tg_attribution a = {};
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	a.pid = (__u32)pid_tgid;
	a.tgid = pid_tgid >> 32;
	a.uid = (__u32)uid_gid;
	a.gid = uid_gid >> 32;
	a.cgroup_id = bpf_get_current_cgroup_id();
	a.connect_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(a.comm, sizeof(a.comm));
	if (orig_dst) {
		a.orig_dst = *orig_dst;
		a.flags = TG_ATTR_REDIRECTED;
	}
	bpf_map_update_elem(&tg_pending, &cookie, &a, BPF_ANY);
	tg_stat_inc(TG_STAT_RECORD);
}

static __always_inline int tg_is_tcp(const struct bpf_sock_addr *ctx)
{
	return ctx->type == TG_SOCK_STREAM && ctx->protocol == TG_IPPROTO_TCP;
}

#endif /* __TOLLGATE_ATTR_H */
