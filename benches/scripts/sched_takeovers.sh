#!/usr/bin/env bash
# Who takes a running worker's CPU: `perf sched record` for 3 s while `tollgate-load` runs at C
# connections against ADDR, then, for every time the worker thread (`tollgate-w0` of PID) was
# switched out while still runnable, which task ran next on that CPU and for how long. Prints
# load figures and the turns, total and longest run of each of the agent's own threads (the
# "takeovers" in benches/results/2026-12-03-writer-yield.md). Needs root and perf.
# usage: benches/scripts/sched_takeovers.sh PID ADDR [CONNECTIONS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
pid=$1 addr=$2 c=${3:-16}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
worker=$(grep -l '^tollgate-w0$' /proc/"$pid"/task/*/comm | head -1 | cut -d/ -f5)
"$root/target/release/tollgate-load" --target "$addr" --connections "$c" --duration 5 \
  --drain 0 --prompt-bytes 2048 >"$work/load.json" 2>/dev/null &
sleep 1
perf sched record -o "$work/sched.data" -- sleep 3 >/dev/null 2>&1
wait
perf sched timehist -i "$work/sched.data" --state 2>/dev/null >"$work/timehist.txt"
python3 - "$worker" "$work" <<'PY'
import collections, json, re, sys
worker, work = sys.argv[1], sys.argv[2]
preempted, turns = set(), collections.defaultdict(list)
for line in open(f"{work}/timehist.txt"):
    f = line.split()
    if len(f) < 7 or "awakened" in line or not re.match(r"\d+\.\d+$", f[0]):
        continue
    cpu, task, state = f[1], f[2], f[-1]
    try:
        run = float(f[-2])
    except ValueError:
        continue
    if re.match(rf"tollgate-w0\[{worker}[/\]]", task):
        preempted.discard(cpu)
        if state == "R":
            preempted.add(cpu)
    elif cpu in preempted:
        turns[task.split("[")[0]].append(run)
        preempted.discard(cpu)
d = json.load(open(f"{work}/load.json")); l = d["latency_us"]
print(f"{d['rps']:.0f} req/s, p50 {l['p50']} p99 {l['p99']} p999 {l['p999']} max {l['max']} us")
for name, runs in sorted(turns.items(), key=lambda kv: -sum(kv[1])):
    print(f"  {name:18s} {len(runs):5d} turns, {sum(runs):8.2f} ms in all, longest {max(runs):.3f} ms")
PY
