#!/usr/bin/env bash
# Latency of two running agents side by side: alternating 5 s windows of `tollgate-load`
# (old, new, new, old per round) at C connections with a 2 KB prompt; prints each window and
# the means of req/s, p50, p99, p999 and the slowest request, and the median of the windows'
# p99 (the "alternating windows" latency figures of 2026-12-03, e.g.
# benches/results/2026-12-03-writer-yield.md). Build first:
#   cargo build --release -p tollgate-benches --bin tollgate-load
# usage: benches/scripts/latency_ab.sh OLD_ADDR NEW_ADDR [CONNECTIONS [ROUNDS]]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
old=$1 new=$2 c=${3:-16} rounds=${4:-6}
for _ in $(seq "$rounds"); do
  for side in "old $old" "new $new" "new $new" "old $old"; do
    set -- $side
    "$root/target/release/tollgate-load" --target "$2" --connections "$c" --duration 5 \
      --drain 0 --prompt-bytes 2048 2>/dev/null |
      python3 -c 'import json, sys
d = json.load(sys.stdin); l = d["latency_us"]
print(sys.argv[1], round(d["rps"]), l["p50"], l["p99"], l["p999"], l["max"])' "$1"
    sleep 1
  done
done | tee /dev/stderr | python3 -c 'import sys, statistics
rows = {}
for line in sys.stdin:
    f = line.split(); rows.setdefault(f[0], []).append([float(x) for x in f[1:]])
for side in ("old", "new"):
    v = rows[side]; m = [sum(x[i] for x in v) / len(v) for i in range(5)]
    print(f"{side}: {m[0]:.0f} req/s, p50 {m[1]:.0f} us, p99 {m[2]:.0f} (median {statistics.median(x[2] for x in v):.0f}), p999 {m[3]:.0f}, slowest {m[4]:.0f} us")'
