#!/usr/bin/env bash
# User-space copies per request of a running server, by thread: a uprobe on the glibc routine
# this CPU resolves memcpy/memmove to, with its length argument, recorded while tollgate-load
# sends 3 s of load at 16 connections (2 KB prompts); prints calls and bytes per request per
# thread name (the "user-space copies" row of README.md's "where the difference goes" and
# benches/results/2026-12-03-copies.md). Copies the compiler inlines are not seen. The probes
# slow the server; only the counts are meant. Needs perf and root; build tollgate-load first.
# usage: benches/scripts/user_copies.sh PID HOST:PORT
set -euo pipefail
pid=$1
target=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
libc=$(ldd "$(readlink -f /proc/"$pid"/exe)" | awk '/libc\.so/ {print $3}')
# The implementation glibc picked (perf report names it as the hot copy on this machine).
impl=${COPY_FN:-__memmove_avx512_unaligned_erms}
work=$(mktemp -d)
trap 'perf probe -q -d "probe_libc:tg_copy" 2>/dev/null || true; rm -rf "$work"' EXIT
perf probe -q -x "$libc" "tg_copy=$impl len=%dx:u64"
perf record -q -e probe_libc:tg_copy -p "$pid" -o "$work/copies.data" -- sleep 6 2>/dev/null &
rec=$!
sleep 2
requests=$("$root/target/release/tollgate-load" --target "$target" --connections 16 --duration 3 \
  --drain 0 --prompt-bytes 2048 | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
wait "$rec"
perf script -i "$work/copies.data" -F comm,trace 2>/dev/null | python3 -c "
import collections, re, sys
calls, size = collections.Counter(), collections.Counter()
for line in sys.stdin:
    m = re.search(r'len=(\S+)', line)
    if m:
        comm = line.split()[0]
        calls[comm] += 1
        size[comm] += int(m.group(1), 0)
for comm in sorted(calls, key=calls.get, reverse=True):
    print(f'{comm}: {calls[comm] / $requests:.1f} calls, {size[comm] / $requests:.0f} bytes per request')
print(f'({$requests} requests)')
"
