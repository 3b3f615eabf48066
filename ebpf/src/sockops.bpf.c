// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockops: when a client's connect completes (ACTIVE_ESTABLISHED_CB, before
 * the final ACK reaches the agent, so before the agent can accept), move the
 * record written at connect time from tg_pending (socket cookie) to tg_attr
 * (the client's own address: exactly the peer address the agent sees on
 * accept). Runs in softirq context, which is why the process details were
 * captured at connect time.
 */
#include "tollgate/attr.h"

static __always_inline void tg_on_established(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct tg_attribution *a;
	struct tg_addr_key client;
	__u32 ip6[4];

	a = bpf_map_lookup_elem(&tg_pending, &cookie);
	if (!a)
		return;
	if (skops->family == TG_AF_INET) {
		tg_key_v4(&client, skops->local_ip4, (__u16)skops->local_port);
	} else if (skops->family == TG_AF_INET6) {
		ip6[0] = skops->local_ip6[0];
		ip6[1] = skops->local_ip6[1];
		ip6[2] = skops->local_ip6[2];
		ip6[3] = skops->local_ip6[3];
		tg_key_v6(&client, ip6, (__u16)skops->local_port);
	} else {
		return;
	}
	bpf_map_update_elem(&tg_attr, &client, a, BPF_ANY);
	bpf_map_delete_elem(&tg_pending, &cookie);
	tg_stat_inc(TG_STAT_ESTABLISHED);
}

SEC("sockops")
int tg_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && tg_current())
		tg_on_established(skops);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
