// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect6: the IPv6 twin of connect4. An IPv4-mapped destination
 * (::ffff:a.b.c.d on a dual-stack socket) is matched as IPv4 and redirected
 * to the agent's IPv4 listener, written back in mapped form; a native IPv6
 * destination needs an IPv6 listener (a connect cannot change family).
 */
#include "tollgate/attr.h"

static __always_inline void tg_write_ip6(struct bpf_sock_addr *ctx, const __u32 ip6[4])
{
	ctx->user_ip6[0] = ip6[0];
	ctx->user_ip6[1] = ip6[1];
	ctx->user_ip6[2] = ip6[2];
	ctx->user_ip6[3] = ip6[3];
}

static __always_inline void tg_on_connect6(struct bpf_sock_addr *ctx)
{
	const struct tg_config *cfg;
	struct tg_intercept_entry *ic;
	struct tg_addr_key dst;
	__u32 ip6[4];

	if (!tg_is_tcp(ctx))
		return;
	cfg = tg_cfg();
	if (!cfg)
		return;
	tg_stat_inc(TG_STAT_CONNECT);
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	tg_key_v6(&dst, ip6, bpf_ntohs((__u16)ctx->user_port));

	ic = tg_intercepted(cfg, &dst);
	if (ic) {
		const struct tg_addr_key *to;

		if (dst.family == TG_AF_INET) {
			if (!(cfg->flags & TG_CFG_REDIRECT4)) {
				tg_stat_inc(TG_STAT_NO_TARGET);
				return;
			}
			to = &cfg->redirect4;
			ip6[0] = 0;
			ip6[1] = 0;
			ip6[2] = bpf_htonl(0x0000ffff);
			__builtin_memcpy(&ip6[3], to->addr, 4);
		} else {
			if (!(cfg->flags & TG_CFG_REDIRECT6)) {
				tg_stat_inc(TG_STAT_NO_TARGET);
				return;
			}
			to = &cfg->redirect6;
			__builtin_memcpy(ip6, to->addr, 16);
		}
		tg_write_ip6(ctx, ip6);
		ctx->user_port = bpf_htons(to->port);
		__sync_fetch_and_add(&ic->hits, 1);
		tg_stat_inc(TG_STAT_REDIRECT);
		tg_record(bpf_get_socket_cookie(ctx), &dst);
		return;
	}
	if (tg_is_listen(&dst))
		tg_record(bpf_get_socket_cookie(ctx), 0);
}

SEC("cgroup/connect6")
int tg_connect6(struct bpf_sock_addr *ctx)
{
	tg_on_connect6(ctx);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
