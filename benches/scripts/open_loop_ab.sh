#!/usr/bin/env bash
# Open-loop latency of several servers in alternating rounds: each round sends RATE requests a
# second (2 KB prompts, 4 s after 1 s of warm-up) to every HOST:PORT in turn and prints p50,
# p99 and the generator's send lag p50 in µs. With the simulator itself as the first target,
# each other's p50 minus the simulator's is what it adds (performance-history.md, session 37).
#   usage: open_loop_ab.sh RATE ROUNDS NAME=HOST:PORT...
#   e.g.   open_loop_ab.sh 2000 4 direct=127.0.0.1:18080 uring=127.0.0.1:18081 nginx=127.0.0.1:18090
set -euo pipefail
RATE=$1; ROUNDS=$2; shift 2
LOAD="$(dirname "$0")/../../target/release/tollgate-load"
for r in $(seq "$ROUNDS"); do
  for side in "$@"; do
    "$LOAD" --target "${side#*=}" --rate "$RATE" --duration 4 --warmup 1 --prompt-bytes 2048 \
        --drain 1 2>/dev/null |
      python3 -c "import json, sys
d = json.load(sys.stdin); l = d['latency_us']
print('$r ${side%%=*}', round(l['p50']), round(l['p99']), round(d['send_lag_us']['p50']))"
  done
done
