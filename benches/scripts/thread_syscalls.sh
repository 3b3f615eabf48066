#!/bin/bash
# Syscalls, context switches and migrations per request of one thread (a Tollgate worker or
# writer, an nginx worker) under closed-loop load: perf's tracepoint counts over a 5 s window
# of a 7 s `tollgate-load` run, divided by the requests in that window.
#
#   usage: thread_syscalls.sh TID HOST:PORT [CONNECTIONS]   (default 16; needs perf, root)
#
# Find a thread's id with `for t in /proc/PID/task/*; do echo "$(cat $t/comm) ${t##*/}"; done`.
# Build the generator first: `cargo build --release -p tollgate-benches --bin tollgate-load`.
set -euo pipefail
TID=$1; TARGET=$2; C=${3:-16}
LOAD="$(dirname "$0")/../../target/release/tollgate-load"
out=$(mktemp -d)
"$LOAD" --target "$TARGET" --connections "$C" --duration 7 --warmup 0 --drain 0 \
    --prompt-bytes 2048 > "$out/load.json" 2>/dev/null &
load=$!
sleep 1
perf stat -x, -e raw_syscalls:sys_enter,context-switches,cpu-migrations -t "$TID" -- sleep 5 \
    2> "$out/perf.txt"
wait "$load"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rps = json.load(open(f"{out}/load.json"))["rps"]
requests = rps * 5
counts = {}
for line in open(f"{out}/perf.txt"):
    f = line.strip().split(",")
    if len(f) > 3 and f[0].replace(".", "").isdigit():
        counts[f[2]] = float(f[0])
print(f"{rps:.0f} req/s: " + ", ".join(f"{k} {v / requests:.3f}/req" for k, v in counts.items()))
PY
rm -rf "$out"
