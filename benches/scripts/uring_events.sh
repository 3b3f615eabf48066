#!/usr/bin/env bash
# io_uring events per request of one worker thread under closed-loop load: submissions,
# completions, and the receives that found the socket empty and armed a poll
# (`io_uring_poll_arm`), from the kernel's tracepoints over a 5 s window of a 7 s
# `tollgate-load` run, divided by the requests in that window (README's "Where the difference
# goes" table). Needs perf and root; build the generator first.
#   usage: uring_events.sh TID HOST:PORT [CONNECTIONS]   (default 16)
# Find the worker's thread id with `for t in /proc/PID/task/*; do echo "$(cat $t/comm) ${t##*/}"; done`.
set -euo pipefail
TID=$1; TARGET=$2; C=${3:-16}
LOAD="$(dirname "$0")/../../target/release/tollgate-load"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$LOAD" --target "$TARGET" --connections "$C" --duration 7 --warmup 0 --drain 0 \
    --prompt-bytes 2048 > "$out/load.json" 2>/dev/null &
load=$!
sleep 1
perf stat -x, -t "$TID" -e io_uring:io_uring_submit_req,io_uring:io_uring_complete \
    -e io_uring:io_uring_poll_arm,io_uring:io_uring_local_work_run \
    -e io_uring:io_uring_cqring_wait,raw_syscalls:sys_enter -- sleep 5 2> "$out/perf.txt"
wait "$load"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
requests = json.load(open(f"{out}/load.json"))["rps"] * 5
for line in open(f"{out}/perf.txt"):
    f = line.strip().split(",")
    if len(f) > 3 and f[0].replace(".", "").isdigit():
        print(f"{f[2]:36} {float(f[0]) / requests:.3f} per request")
PY
