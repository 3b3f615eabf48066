// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tp_btf/inet_sock_set_state: when either end of a connection to the agent
 * reaches TCP_CLOSE, drop its tg_attr entry (and any tg_pending entry left by
 * a connect that never established), so the LRU maps hold live connections
 * rather than stale tuples. Needs kernel BTF; uses CO-RE with minimal local
 * struct definitions instead of a generated vmlinux.h, so the build does not
 * depend on the build machine's kernel.
 */
#include "tollgate/attr.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

/* Only the fields read here; CO-RE finds them by name in the running kernel. */
struct in6_addr___tg {
	__u32 u6_addr32[4];
} __attribute__((preserve_access_index));

struct sock_common___tg {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr___tg skc_v6_daddr;
	struct in6_addr___tg skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock___tg {
	struct sock_common___tg __sk_common;
} __attribute__((preserve_access_index));

/*
 * The tracepoint fires after inet_put_port() has zeroed skc_num on the way to
 * TCP_CLOSE, so the local port comes from inet_sport, which stays set.
 */
struct inet_sock___tg {
	__be16 inet_sport;
} __attribute__((preserve_access_index));

static __always_inline void tg_on_close(struct sock___tg *sk)
{
	struct tg_addr_key local, remote;
	__u16 family, lport, rport;
	__u64 cookie;
	__u32 ip6[4];

	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	lport = bpf_ntohs(BPF_CORE_READ((struct inet_sock___tg *)sk, inet_sport));
	rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == TG_AF_INET) {
		tg_key_v4(&local, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr), lport);
		tg_key_v4(&remote, BPF_CORE_READ(sk, __sk_common.skc_daddr), rport);
	} else if (family == TG_AF_INET6) {
		BPF_CORE_READ_INTO(&ip6, sk, __sk_common.skc_v6_rcv_saddr);
		tg_key_v6(&local, ip6, lport);
		BPF_CORE_READ_INTO(&ip6, sk, __sk_common.skc_v6_daddr);
		tg_key_v6(&remote, ip6, rport);
	} else {
		return;
	}

	if (tg_is_listen(&remote)) {
		/* Client end of a connection to the agent: it is keyed by its local address. */
		cookie = bpf_get_socket_cookie(sk);
		bpf_map_delete_elem(&tg_pending, &cookie);
		if (bpf_map_delete_elem(&tg_attr, &local) == 0)
			tg_stat_inc(TG_STAT_CLOSE);
	} else if (tg_is_listen(&local)) {
		/* The agent's accepted end: its peer is the key. */
		if (bpf_map_delete_elem(&tg_attr, &remote) == 0)
			tg_stat_inc(TG_STAT_CLOSE);
	}
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tg_sock_state, struct sock___tg *sk, int oldstate, int newstate)
{
	if (!tg_current())
		return 0;
	tg_stat_inc(TG_STAT_STATE);
	if (newstate == TG_TCP_CLOSE)
		tg_on_close(sk);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
