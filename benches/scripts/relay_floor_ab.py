#!/usr/bin/env python3
"""CPU per proxied request of nginx, the agent, and the kernel's floor, in alternating rounds.

The floor is `tollgate-relay-floor`: a one-thread io_uring byte relay with no HTTP in it, run
three ways (one receive per read as monoio does, the same with IORING_RECVSEND_POLL_FIRST, and
a multishot receive into provided buffers). Each round sends 5 s of closed-loop load (2 KB
prompts) through every side in turn, all in front of one zero-delay simulator, and reads each
process's user and kernel CPU from /proc. Prints a Markdown table: per request, user and
kernel µs, the total's difference from nginx's in the same round (mean ± standard error), req/s
and p50; and the agent's worker and ledger writer apart. Needs root only for nginx (Debian's
`nginx` package); without nginx the first side is the single-receive relay.

Build first: cargo build --release -p tollgate -p tollgate-sim -p tollgate-benches
usage: relay_floor_ab.py [--rounds 6] [--connections 16] [--agent target/release/tollgate]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../.."))
sys.path.insert(0, HERE)
import thread_cpu  # noqa: E402  (its per-thread /proc reader)

REL = os.path.join(ROOT, "target/release")
BASE = 18280


def wait_http(port, path="/healthz", tries=100):
    for _ in range(tries):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
            return
        except Exception as e:  # noqa: BLE001  (not up yet: any error means wait)
            if getattr(e, "code", None):
                return  # it answered, with an HTTP error: it is up
            time.sleep(0.1)
    sys.exit(f"nothing answered on port {port}")


def nginx_conf(work, port, upstream):
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(f"{work}/ngx/{d}", exist_ok=True)
    path = f"{work}/ngx/nginx.conf"
    with open(path, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {work}/ngx/nginx.pid;
error_log {work}/ngx/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/ngx/client_body;
    proxy_temp_path {work}/ngx/proxy;
    fastcgi_temp_path {work}/ngx/fastcgi;
    uwsgi_temp_path {work}/ngx/uwsgi;
    scgi_temp_path {work}/ngx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream sim {{ server {upstream}; keepalive 256; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
""")
    return path


def agent_conf(work, port, upstream):
    path = f"{work}/agent.yaml"
    with open(path, "w") as f:
        f.write(f"""listen: 127.0.0.1:{port}
data_dir: {work}/data
workers: 1
io: {{ driver: io_uring }}
kernel: {{ enabled: off }}
auth: {{ mode: open }}
providers:
  - {{name: local, kind: openai, base_url: "http://{upstream}"}}
models:
  - {{name: smol, provider: local, model: smol}}
""")
    return path


def pids_of(proc):
    """The process and its children (nginx's worker)."""
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
    return [proc.pid] + [int(p) for p in out.split()]


def cpu(pids):
    """thread name -> [user ticks, system ticks, ...] summed over `pids`."""
    total = {}
    for pid in pids:
        for name, v in thread_cpu.snapshot(pid).items():
            acc = total.setdefault(name, [0] * len(v))
            for i, x in enumerate(v):
                acc[i] += x
    return total


def measure(side, connections):
    name, port, proc = side
    pids = pids_of(proc)
    before = cpu(pids)
    run = subprocess.check_output(
        [f"{REL}/tollgate-load", "--target", f"127.0.0.1:{port}", "--connections",
         str(connections), "--duration", "5", "--drain", "1", "--prompt-bytes", "2048"],
        stderr=subprocess.DEVNULL,
    )
    after = cpu(pids)
    r = json.loads(run)
    n = r["requests"]
    per = {}
    for t, v in after.items():
        b = before.get(t, [0] * len(v))
        per[t] = ((v[0] - b[0]) / thread_cpu.TICK / n * 1e6, (v[1] - b[1]) / thread_cpu.TICK / n * 1e6)
    return {"rps": r["rps"], "p50": r["latency_us"]["p50"], "threads": per}


def mean_se(xs):
    m = statistics.mean(xs)
    return m, (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--agent", default=f"{REL}/tollgate")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="relay-floor-")
    procs = []

    def start(cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        procs.append(p)
        return p

    try:
        sim = f"127.0.0.1:{BASE}"
        start([f"{REL}/tollgate-sim", "--listen", sim, "--model", "smol", "--zero-delay"])
        wait_http(BASE, "/v1/models")
        sides = []
        if shutil.which("nginx"):
            p = start(["nginx", "-c", nginx_conf(work, BASE + 1, sim)])
            sides.append(("nginx", BASE + 1, p))
        for i, mode in enumerate(["single", "poll-first", "multishot"]):
            port = BASE + 2 + i
            p = start([f"{REL}/tollgate-relay-floor", "--listen", f"127.0.0.1:{port}",
                       "--upstream", sim, "--mode", mode])
            sides.append((f"floor ({mode})", port, p))
        p = start([args.agent, "serve", "--config", agent_conf(work, BASE + 5, sim)])
        wait_http(BASE + 5)
        sides.append(("tollgate", BASE + 5, p))
        time.sleep(1)
        for s in sides:  # warm every side once, unmeasured
            subprocess.run([f"{REL}/tollgate-load", "--target", f"127.0.0.1:{s[1]}",
                            "--connections", str(args.connections), "--duration", "1",
                            "--prompt-bytes", "2048"], capture_output=True, check=True)
        rounds = {s[0]: [] for s in sides}
        for r in range(args.rounds):
            for s in sides:
                rounds[s[0]].append(measure(s, args.connections))
            print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    def total(m):
        return sum(u + k for u, k in m["threads"].values())

    first = sides[0][0]
    print(f"{args.connections} connections, 2 KB prompts, {args.rounds} alternating rounds of 5 s; "
          f"µs of CPU per request\n")
    print(f"| side | user | kernel | total | total − {first}, per round | req/s | p50 µs |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in rounds.items():
        user = statistics.mean(sum(u for u, _ in m["threads"].values()) for m in runs)
        kern = statistics.mean(sum(k for _, k in m["threads"].values()) for m in runs)
        d, se = mean_se([total(m) - total(b) for m, b in zip(runs, rounds[first])])
        print(f"| {name} | {user:.2f} | {kern:.2f} | {user + kern:.2f} | {d:+.2f} ± {se:.2f} | "
              f"{statistics.mean(m['rps'] for m in runs):.0f} | "
              f"{statistics.mean(m['p50'] for m in runs):.0f} |")
    agent = rounds["tollgate"]
    print("\nThe agent by thread (user / kernel µs per request):\n")
    names = sorted({t for m in agent for t in m["threads"]})
    for t in names:
        u = statistics.mean(m["threads"].get(t, (0, 0))[0] for m in agent)
        k = statistics.mean(m["threads"].get(t, (0, 0))[1] for m in agent)
        if u + k >= 0.05:
            print(f"- `{t}`: {u:.2f} / {k:.2f}")


if __name__ == "__main__":
    main()
