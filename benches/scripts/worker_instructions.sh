#!/usr/bin/env bash
# User-space instructions per request of each agent thread, counted by callgrind: deterministic,
# where CPU time on a shared VM moves by 20 % between runs (the "instructions" figures in
# ARCHITECTURE.md). Runs TOLLGATE (default: target/release/tollgate) under callgrind with one
# io_uring worker in front of a zero-delay simulator, warms it for 5 s, zeroes the counters,
# sends 10 s of load on 4 connections, dumps, and prints each busy thread's instructions per
# request (the worker's is the figure ARCHITECTURE.md cites; the sampler's is a fixed 20
# estimates a second spread over the requests). Needs valgrind; build first:
#   cargo build --release -p tollgate -p tollgate-sim -p tollgate-benches --bin tollgate-load
# usage: benches/scripts/worker_instructions.sh [TOLLGATE]
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(realpath "${1:-$root/target/release/tollgate}")
load=$root/target/release/tollgate-load
work=$(mktemp -d)
trap 'kill $sim $vg 2>/dev/null || true; rm -rf "$work"' EXIT

"$root/target/release/tollgate-sim" --listen 127.0.0.1:18180 --model smol --zero-delay >"$work/sim.log" 2>&1 &
sim=$!
cat >"$work/cfg.yaml" <<EOF
listen: 127.0.0.1:18181
data_dir: $work/data
workers: 1
auth: { mode: open }
io: { driver: io_uring }
providers:
  - {name: local, kind: openai, base_url: "http://127.0.0.1:18180"}
models:
  - {name: smol, provider: local, model: smol}
EOF
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$work/cg.%p" \
  "$bin" serve --config "$work/cfg.yaml" >"$work/agent.log" 2>&1 &
vg=$!
for _ in $(seq 120); do curl -s -m 1 127.0.0.1:18181/healthz >/dev/null && break; sleep 1; done
"$load" --target 127.0.0.1:18181 --connections 4 --duration 5 >/dev/null 2>&1
sleep 3
callgrind_control -z "$vg" >/dev/null
requests=$("$load" --target 127.0.0.1:18181 --connections 4 --duration 10 2>/dev/null |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])')
sleep 1
callgrind_control -d "$vg" >/dev/null
sleep 1
echo "$requests requests"
for f in "$work"/cg."$vg".*-*; do
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
  [ "${total:-0}" -gt 1000000 ] || continue
  # The thread's entry function names it: the worker, the ledger writer, the accuracy sampler.
  what=$(callgrind_annotate --inclusive=yes "$f" 2>/dev/null |
    grep -oE 'tollgate::(worker::run|ledger::writer::run|ledger::accuracy|metering::estimate|telemetry::[a-z_]+::run)' | head -1)
  echo "${what:-other}: $((total / requests)) instructions per request"
done
