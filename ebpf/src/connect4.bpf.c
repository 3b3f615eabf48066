// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect4: redirects TCP connects to intercepted IPv4 destinations
 * to the agent's listener and records who connected (redirected, or directly
 * to one of the agent's listen addresses) by socket cookie in tg_pending.
 * Attached at the cgroup v2 root, so it runs for every IPv4 connect() on the
 * host; it always allows the connect.
 */
#include "tollgate/attr.h"

static __always_inline void tg_on_connect4(struct bpf_sock_addr *ctx)
{
	const struct tg_config *cfg;
	struct tg_intercept_entry *ic;
	struct tg_addr_key dst;
	__u32 ip4;

	if (!tg_is_tcp(ctx))
		return;
	cfg = tg_cfg();
	if (!cfg)
		return;
	tg_stat_inc(TG_STAT_CONNECT);
	tg_key_v4(&dst, ctx->user_ip4, bpf_ntohs((__u16)ctx->user_port));

	ic = tg_intercepted(cfg, &dst);
	if (ic) {
		if (!(cfg->flags & TG_CFG_REDIRECT4)) {
			tg_stat_inc(TG_STAT_NO_TARGET);
			return;
		}
		__builtin_memcpy(&ip4, cfg->redirect4.addr, 4);
		ctx->user_ip4 = ip4;
		ctx->user_port = bpf_htons(cfg->redirect4.port);
		__sync_fetch_and_add(&ic->hits, 1);
		tg_stat_inc(TG_STAT_REDIRECT);
		tg_record(bpf_get_socket_cookie(ctx), &dst);
		return;
	}
	if (tg_is_listen(&dst))
		tg_record(bpf_get_socket_cookie(ctx), 0);
}

SEC("cgroup/connect4")
int tg_connect4(struct bpf_sock_addr *ctx)
{
	tg_on_connect4(ctx);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
