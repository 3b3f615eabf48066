#!/usr/bin/env python3
"""Agent CPU per request, split by thread name: runs `tollgate-load` against ADDR for 5 s and
prints, for each thread of PID that ran, user and kernel µs per request, voluntary and
involuntary context switches per request and minor page faults per request (the per-thread
figures in ARCHITECTURE.md, e.g. the accuracy sampler's). Build first: `cargo build --release
-p tollgate-benches --bin tollgate-load`.

usage: thread_cpu.py PID ADDR [CONNECTIONS [tollgate-load args...]]   (default 64 connections)
"""

import json
import os
import subprocess
import sys

LOAD = os.path.join(os.path.dirname(__file__), "../../target/release/tollgate-load")
TICK = os.sysconf("SC_CLK_TCK")


def snapshot(pid):
    """thread name -> [user ticks, system ticks, voluntary, involuntary switches, minor faults]"""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{t}/comm").read().strip()
            fields = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
            status = open(f"/proc/{pid}/task/{t}/status").read()
        except OSError:
            continue  # the thread ended
        vol = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        nonvol = int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
        sums = out.setdefault(comm, [0, 0, 0, 0, 0])
        for i, v in enumerate((int(fields[11]), int(fields[12]), vol, nonvol, int(fields[7]))):
            sums[i] += v
    return out


def main():
    pid, target = int(sys.argv[1]), sys.argv[2]
    connections = sys.argv[3] if len(sys.argv) > 3 else "64"
    before = snapshot(pid)
    run = subprocess.check_output(
        [LOAD, "--target", target, "--connections", connections, "--duration", "5", "--drain", "1"]
        + sys.argv[4:],
        stderr=subprocess.DEVNULL,
    )
    after = snapshot(pid)
    result = json.loads(run)
    n = result["requests"]
    print(f"{round(result['rps'])} req/s, p50 {result['latency_us']['p50']} us")
    for name in sorted(after):
        d = [after[name][i] - before.get(name, [0] * 5)[i] for i in range(5)]
        if not any(d):
            continue
        print(
            f"{name:20s} user {d[0] / TICK / n * 1e6:6.2f} sys {d[1] / TICK / n * 1e6:6.2f} us/req"
            f"  vcs {d[2] / n:.3f} nvcs {d[3] / n:.3f} minflt {d[4] / n:.4f} /req"
        )


if __name__ == "__main__":
    main()
