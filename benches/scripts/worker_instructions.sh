#!/usr/bin/env bash
# User-space instructions per request of each agent thread, counted by callgrind: deterministic,
# where CPU time on a shared VM moves by 20 % between runs (the "instructions" figures in
# ARCHITECTURE.md). Runs TOLLGATE (default: target/release/tollgate) under callgrind with one
# io_uring worker in front of a zero-delay simulator, warms it for 5 s, zeroes the counters,
# sends 10 s of load on 4 connections (CONNECTIONS), dumps, and prints the worker thread's
# instructions per request with its main phases (the figures ARCHITECTURE.md and README.md
# cite). Needs
# valgrind; build first:
#   cargo build --release -p tollgate -p tollgate-sim -p tollgate-benches --bin tollgate-load
# With GOVERNED=1 the agent runs governance as `cargo xtask bench --governance` does (a key
# with limits and a budget, a team rate limit and budget, prices) and the load sends the key.
# GOVERNED=1 runs the epoll driver: valgrind 3.19 holds its thread lock across a blocking
# `io_uring_enter`, so once an io_uring worker waits, the main thread's start-up (the admin
# listener, which creates the key) crawls for minutes. Compare it with DRIVER=epoll.
# PROMPT_BYTES=2048 sends the bench's 2 KB prompts (default: the generator's short one).
# CONNECTIONS=N loads it on N connections instead of 4. CACHE_SIM=1 adds callgrind's cache
# simulation and prints the worker's I1 and D1 misses per request (e.g. 4 against 64
# connections).
# usage: [GOVERNED=1] [DRIVER=epoll] [KEEP=1] [PROMPT_BYTES=N] [CONNECTIONS=N] [CACHE_SIM=1] benches/scripts/worker_instructions.sh [TOLLGATE]
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(realpath "${1:-$root/target/release/tollgate}")
load=$root/target/release/tollgate-load
work=$(mktemp -d)
driver=${DRIVER:-io_uring}
prompt=()
[ -z "${PROMPT_BYTES:-}" ] || prompt=(--prompt-bytes "$PROMPT_BYTES")
[ -z "${GOVERNED:-}" ] || driver=epoll
echo "callgrind files in $work (kept with KEEP=1)"
trap 'kill $sim $vg 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

"$root/target/release/tollgate-sim" --listen 127.0.0.1:18180 --model smol --zero-delay >"$work/sim.log" 2>&1 &
sim=$!
cat >"$work/cfg.yaml" <<EOF
listen: 127.0.0.1:18181
data_dir: $work/data
workers: 1
io: { driver: $driver }
providers:
  - {name: local, kind: openai, base_url: "http://127.0.0.1:18180"}
models:
  - {name: smol, provider: local, model: smol}
EOF
if [ -n "${GOVERNED:-}" ]; then
  export TOLLGATE_ADMIN_TOKEN=worker-instructions-admin-token
  cat >>"$work/cfg.yaml" <<EOF
auth: { mode: keys }
admin: { listen: "127.0.0.1:18183", token_env: TOLLGATE_ADMIN_TOKEN }
prices:
  smol: { input: 0.10, output: 0.40 }
rate_limits:
  - scope: { team: bench }
    requests_per_minute: 100000000
    tokens_per_minute: 100000000000
budgets:
  - scope: { team: bench }
    tokens: 1000000000000
    usd: 1000000
    window: month
EOF
else
  echo "auth: { mode: open }" >>"$work/cfg.yaml"
fi
valgrind --tool=callgrind --separate-threads=yes ${CACHE_SIM:+--cache-sim=yes} --callgrind-out-file="$work/cg.%p" \
  "$bin" serve --config "$work/cfg.yaml" >"$work/agent.log" 2>&1 &
vg=$!
for _ in $(seq 120); do curl -s -m 1 127.0.0.1:18181/healthz >/dev/null && break; sleep 1; done
header=()
if [ -n "${GOVERNED:-}" ]; then
  # The admin listener comes up after /healthz answers, later still under valgrind.
  for _ in $(seq 60); do
    key=$("$bin" keys create --admin http://127.0.0.1:18183 --team bench --project load \
      --rpm 100000000 --tpm 100000000000 --budget-tokens 1000000000000 --budget-usd 100000 \
      2>"$work/keys.err") && break
    sleep 1
  done
  [ -n "${key:-}" ] || { cat "$work/keys.err"; exit 1; }
  header=(--header "Authorization: Bearer $key")
fi
"$load" --target 127.0.0.1:18181 --connections "${CONNECTIONS:-4}" --duration 5 "${header[@]}" "${prompt[@]}" >/dev/null 2>&1
sleep 3
callgrind_control -z "$vg" >/dev/null
requests=$("$load" --target 127.0.0.1:18181 --connections "${CONNECTIONS:-4}" --duration 10 "${header[@]}" "${prompt[@]}" 2>/dev/null |
  python3 "$root/benches/scripts/load_requests.py")
sleep 1
callgrind_control -d "$vg" >/dev/null
sleep 1
# The worker's thread is the one running `worker::run`. Its requests are counted by callgrind
# itself rather than by the load generator, whose window does not line up exactly with the
# zeroing and the dump: every plain request has its usage read exactly once, before the send or
# (the worker being alone) after it, so the calls of `plain_response_facts` from all of its call
# sites are the requests. (Counting the journal appends instead missed the records journalled
# with their body unread, ~8 % of them at 4 connections, and overstated every figure.) Other
# threads are not reported: valgrind runs one thread at a time, so the ledger writer and the
# sampler lag the requests and their instructions cannot be put per request.
for f in "$work"/cg."$vg".*-*; do
  report=$(callgrind_annotate --inclusive=yes "$f" 2>/dev/null)
  grep -q 'tollgate::worker::run' <<<"$report" || continue
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
  calls=$(callgrind_annotate --tree=caller --threshold=100 "$f" 2>/dev/null | awk '
    /^ *$/ { n = 0; next }
    /^ *[0-9,]+ .*< / { if (match($0, /\(([0-9,]+)x\)/)) { c = substr($0, RSTART + 1, RLENGTH - 3); gsub(",", "", c); n += c } }
    /\* .*tollgate::metering::usage::plain_response_facts \[/ { print n; exit }') || true  # awk's early exit: SIGPIPE
  # A build that inlines the read at some call sites only would count too few: fall back then.
  [ -n "$calls" ] && [ "$calls" -ge $((requests * 9 / 10)) ] || calls=$requests
  echo "worker: $((total / calls)) instructions per request ($calls requests; the generator counted $requests)"
  if [ -n "${CACHE_SIM:-}" ]; then
    # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
    awk -v n="$calls" '/^summary:/ {printf "  misses per request: I1 %.0f, D1 read %.1f, D1 write %.1f\n", $5 / n, $6 / n, $7 / n; exit}' "$f"
  fi
  # Where they go (inclusive, per request): the usage read, inspection, journal, ...
  grep -E '^ *[0-9,]+ .*tollgate::(metering::usage::plain_response_facts|phase::inspect::run|ledger::local::LedgerLocal::journal|phase::settle::seal|phase::relay::run|phase::forward::attempt|phase::admit::auth::authenticate|phase::admit::limits::render_quota|phase::admit::limits::rate_limits|phase::admit::budgets::attempt|phase::relay::response_head|phase::settle::run)[^ ]* \[' <<<"$report" |
    awk -v n="$calls" '{c=$1; gsub(",", "", c); sub(/.*tollgate::/, "tollgate::"); sub(/ .*/, ""); if (!seen[$0]++) printf "  %7.0f  %s\n", c / n, $0}' || true
done
