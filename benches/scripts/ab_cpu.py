"""Agent CPU per request of two agent binaries, side by side, in ABBA windows at 64
connections against one zero-delay simulator (the method behind the "ABBA" figures in
ARCHITECTURE.md). Build first: `cargo build --release -p tollgate -p tollgate-sim -p
tollgate-benches --bin tollgate-load`.

usage: ab_cpu.py OLD_TOLLGATE[:DRIVER] NEW_TOLLGATE[:DRIVER] [ROUNDS [CONNECTIONS [LOAD ARGS...]]]
       (default 3 rounds of ABBA, 5 s windows, 64 connections; each window also prints its p50
       and its user and kernel share; DRIVER is io_uring (the default) or epoll, e.g.
       `T:io_uring T:epoll` compares the drivers; LOAD ARGS go to tollgate-load, e.g.
       `--prompt-bytes 2048`)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

RELEASE = os.path.join(os.path.dirname(__file__), "../../target/release")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """(user, kernel) seconds of all of PID's threads."""
    user = kernel = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        fields = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        kernel += int(fields[12])
    return user / TICK, kernel / TICK


def start(cmd, log):
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_line(log, prefix):
    for _ in range(200):
        for line in open(log):
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        time.sleep(0.05)
    sys.exit(f"no `{prefix}` in {log}")


def paired(results):
    """Each ABBA round's new-minus-old CPU per request (the two windows of each side
    averaged), their mean with its standard error, and in how many rounds the new binary
    was lower: on this host a window moves by ±2 µs, so a difference under about two
    standard errors is noise."""
    old, new = results["old"], results["new"]
    diffs = [(new[i][1] + new[i + 1][1] - old[i][1] - old[i + 1][1]) / 2
             for i in range(0, min(len(old), len(new)) - 1, 2)]
    if len(diffs) < 2:
        return "paired: too few rounds for a spread"
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    lower = sum(d < 0 for d in diffs)
    return (f"paired: new - old {mean:+.2f} us/req, standard error {sd / len(diffs) ** 0.5:.2f}, "
            f"new lower in {lower} of {len(diffs)} rounds")


def main():
    old, new = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    connections = sys.argv[4] if len(sys.argv) > 4 else "64"
    load_args = sys.argv[5:]
    work = tempfile.mkdtemp(prefix="tollgate-ab-")
    procs = []
    try:
        sim_log = os.path.join(work, "sim.log")
        procs.append(start([f"{RELEASE}/tollgate-sim", "--listen", "127.0.0.1:0", "--model", "smol", "--zero-delay"], sim_log))
        sim = wait_line(sim_log, "tollgate-sim listening on ")
        agents = {}
        for name, spec in (("old", old), ("new", new)):
            binary, driver = spec, "io_uring"
            if spec.rsplit(":", 1)[-1] in ("io_uring", "epoll"):
                binary, driver = spec.rsplit(":", 1)
            cfg = os.path.join(work, f"{name}.yaml")
            open(cfg, "w").write(
                f"listen: 127.0.0.1:0\ndata_dir: {work}/data-{name}\nworkers: 1\n"
                f"auth: {{ mode: open }}\nio: {{ driver: {driver} }}\n"
                f"providers:\n  - {{name: local, kind: openai, base_url: \"http://{sim}\"}}\n"
                "models:\n  - {name: smol, provider: local, model: smol}\n"
            )
            log = os.path.join(work, f"{name}.log")
            p = start([binary, "serve", "--config", cfg], log)
            procs.append(p)
            agents[name] = (p.pid, wait_line(log, "tollgate listening on "))
        results = {"old": [], "new": []}
        for name in ["old", "new", "new", "old"] * rounds:
            pid, addr = agents[name]
            before = cpu_seconds(pid)
            out = subprocess.check_output(
                [f"{RELEASE}/tollgate-load", "--target", addr, "--connections", connections,
                 "--duration", "5", "--warmup", "1", "--drain", "1"] + load_args,
                stderr=subprocess.DEVNULL,
            )
            after = cpu_seconds(pid)
            d = json.loads(out)
            # CPU covers warm-up and window; requests are counted in the window: scale by time.
            per = [(a - b) / (d["requests"] * 6.0 / 5.0) * 1e6 for a, b in zip(after, before)]
            us = per[0] + per[1]
            p50 = d["latency_us"]["p50"]
            results[name].append((d["rps"], us, p50))
            print(f"{name} {d['rps']:.0f} req/s {us:.2f} us/req (user {per[0]:.2f}, kernel "
                  f"{per[1]:.2f}) p50 {p50:.1f} us", flush=True)
        for name, rows in results.items():
            print(f"{name}: mean {sum(r[0] for r in rows) / len(rows):.0f} req/s, "
                  f"{sum(r[1] for r in rows) / len(rows):.2f} us of agent CPU per request, "
                  f"p50 {sum(r[2] for r in rows) / len(rows):.1f} us")
        print(paired(results))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
