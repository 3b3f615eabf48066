// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sk_reuseport/migrate: attached to the agent's SO_REUSEPORT listening group, it turns on
 * request migration for that group only (as net.ipv4.tcp_migrate_req does for the whole
 * host). When a listener of the group closes (an agent stopping while its successor serves
 * the same port), the connections in its accept queue, and those still in the handshake, move
 * to a listener that stays instead of being reset. New connections are spread as without a
 * program: SK_PASS without a selection leaves the choice to the kernel's hash, and so does a
 * migration.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("sk_reuseport/migrate")
int tg_reuseport(struct sk_reuseport_md *md)
{
	(void)md;
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
