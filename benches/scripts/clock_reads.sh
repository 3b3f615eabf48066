#!/usr/bin/env bash
# Clock reads per request on an agent's worker: a uprobe on glibc's `__clock_gettime`, counted
# on the worker thread (`tollgate-w0` of PID) while `tollgate-load` sends 3 s of load at C
# connections to ADDR, divided by the requests it completed (every call is counted, the coarse
# clocks too; benches/results/2026-12-03-clock-reads.md). The probe slows the agent: only the
# ratio means anything. Needs root and perf.
# usage: benches/scripts/clock_reads.sh PID ADDR [CONNECTIONS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
pid=$1 addr=$2 c=${3:-16}
libc=$(ldd "$(readlink -f /proc/"$pid"/exe)" | awk '/libc.so.6/ {print $3}')
work=$(mktemp -d)
perf probe -q -x "$libc" -a __clock_gettime 2>/dev/null || true
trap 'perf probe -q -d "probe_libc:__clock_gettime" 2>/dev/null || true; rm -rf "$work"' EXIT
worker=$(grep -l '^tollgate-w0$' /proc/"$pid"/task/*/comm | head -1 | cut -d/ -f5)
perf stat -x, -e probe_libc:__clock_gettime -t "$worker" -o "$work/stat" -- \
  "$root/target/release/tollgate-load" --target "$addr" --connections "$c" --duration 3 \
  --drain 1 --prompt-bytes 2048 >"$work/load.json" 2>/dev/null
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
calls = int(next(l for l in open(f"{work}/stat") if "clock_gettime" in l).split(",")[0])
n = json.load(open(f"{work}/load.json"))["requests"]
print(f"{calls / n:.2f} clock_gettime calls per request ({calls} over {n} requests)")
PY
