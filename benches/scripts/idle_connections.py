#!/usr/bin/env python3
"""What idle keep-alive connections cost a server: opens N connections to ADDR, sends one
GET /healthz on each and reads the answer, then leaves them idle; prints the server's RSS
(VmRSS of PID) before, 1 s and 3 s and 6 s into the idle period, and 2 s after closing them all.

    ulimit -n 65536   # N connections need N file descriptors here and in the server
    python3 benches/scripts/idle_connections.py 127.0.0.1:4000 "$(pgrep -f 'tollgate serve')" 5000

Used for the idle-connection figures in README.md and ARCHITECTURE.md (one agent worker,
`io.driver` set to the driver being measured). nginx, measured for comparison, needs
`worker_connections` above N (the bench's 4096 makes it close idle connections past it) and a
`location = /healthz { return 200; }` so that it answers the GET itself as Tollgate does.
"""

import socket
import sys
import time


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    pid, n = int(sys.argv[2]), int(sys.argv[3])
    print(f"before: {rss_kib(pid)} KiB")
    socks = [socket.create_connection((host, int(port))) for _ in range(n)]
    for s in socks:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    for s in socks:
        s.recv(4096)
    waited = 0
    for at in (1, 3, 6):
        time.sleep(at - waited)
        waited = at
        print(f"idle {at} s: {rss_kib(pid)} KiB")
    for s in socks:
        s.close()
    time.sleep(2)
    print(f"closed: {rss_kib(pid)} KiB")


if __name__ == "__main__":
    main()
