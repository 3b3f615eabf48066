// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Map-only object: the agent loads it first so that every map in maps.h is
 * created with its BTF types and pinned, even when a program object is
 * refused by the kernel. Node tools read the counter maps through the pins.
 */
#include "tollgate/maps.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
