#!/usr/bin/env python3
"""What idle keep-alive connections cost a server: opens N connections to ADDR, sends one
GET /healthz on each and reads the answer, then leaves them idle; prints the server's RSS
(VmRSS of PID) before, 1 s and 3 s and 6 s into the idle period, and 2 s after closing them all.

    ulimit -n 20000   # N connections need N file descriptors here and in the server
    python3 benches/scripts/idle_connections.py 127.0.0.1:4000 "$(pgrep -f 'tollgate serve')" 5000

Options, for what stays after the close (ARCHITECTURE.md, "Read buffers in jemalloc's small
classes"): `--silent` opens connections that never send a request; `--waves K` repeats the
wave K times on the same process; `--requests-after M` then sends M `GET /healthz` on one
connection and prints RSS again. When ADDR serves Tollgate's `/metrics`, each line also carries
its heap gauges (`tollgate_heap_bytes`, KiB).

Used for the idle-connection figures in README.md and ARCHITECTURE.md (one agent worker,
`io.driver` set to the driver being measured). nginx, measured for comparison, needs
`worker_connections` above N (the bench's 4096 makes it close idle connections past it) and a
`location = /healthz { return 200; }` so that it answers the GET itself as Tollgate does.
"""

import argparse
import socket
import time
import urllib.request

GET = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def heap(addr: str) -> str:
    """Tollgate's heap gauges in KiB, or nothing when ADDR does not serve them."""
    try:
        text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    except Exception:  # noqa: BLE001  (nginx, or no metrics: the figures are optional)
        return ""
    kinds = []
    for line in text.splitlines():
        if line.startswith("tollgate_heap_bytes{"):
            kind = line.split('"')[1]
            kinds.append(f"{kind} {int(line.rsplit(' ', 1)[1]) // 1024}")
    return f"; heap KiB: {', '.join(kinds)}" if kinds else ""


def report(label: str, pid: int, addr: str) -> None:
    print(f"{label}: {rss_kib(pid)} KiB{heap(addr)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("pid", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--silent", action="store_true", help="connections never send a request")
    ap.add_argument("--waves", type=int, default=1)
    ap.add_argument("--requests-after", type=int, default=0)
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    report("before", args.pid, args.addr)
    for wave in range(1, args.waves + 1):
        tag = f" (wave {wave})" if args.waves > 1 else ""
        socks = [socket.create_connection((host, int(port))) for _ in range(args.n)]
        if not args.silent:
            for s in socks:
                s.sendall(GET)
            for s in socks:
                s.recv(4096)
        waited = 0
        for at in (1, 3, 6):
            time.sleep(at - waited)
            waited = at
            report(f"idle {at} s{tag}", args.pid, args.addr)
        for s in socks:
            s.close()
        time.sleep(2)
        report(f"closed{tag}", args.pid, args.addr)
    if args.requests_after:
        s = socket.create_connection((host, int(port)))
        for _ in range(args.requests_after):
            s.sendall(GET)
            s.recv(4096)
        s.close()
        time.sleep(2)
        report(f"after {args.requests_after} more requests", args.pid, args.addr)


if __name__ == "__main__":
    main()
