#!/usr/bin/env bash
# nginx's user-space instructions per proxied request, counted by callgrind the way
# `worker_instructions.sh` counts Tollgate's worker: nginx 1.22 in one process
# (`master_process off`, the bench's proxy configuration, `access_log off`) in front of a
# zero-delay simulator, 5 s of warm-up, counters zeroed, 10 s of load on 4 connections, dump.
# Needs nginx and valgrind; build the simulator and the generator first.
# usage: [PROMPT_BYTES=N] benches/scripts/nginx_instructions.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
load=$root/target/release/tollgate-load
work=$(mktemp -d)
prompt=()
[ -z "${PROMPT_BYTES:-}" ] || prompt=(--prompt-bytes "$PROMPT_BYTES")
trap 'kill $sim $vg 2>/dev/null || true; rm -rf "$work"' EXIT
"$root/target/release/tollgate-sim" --listen 127.0.0.1:18190 --model smol --zero-delay >"$work/sim.log" 2>&1 &
sim=$!
mkdir -p "$work/tmp"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
    uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
    keepalive_requests 1000000;
    upstream sim { server 127.0.0.1:18190; keepalive 64; }
    server {
        listen 127.0.0.1:18191;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
CONF
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" nginx -c "$work/nginx.conf" >"$work/vg.log" 2>&1 &
vg=$!
for _ in $(seq 60); do curl -s -m 1 -o /dev/null 127.0.0.1:18191/ && break; sleep 1; done
"$load" --target 127.0.0.1:18191 --connections 4 --duration 5 "${prompt[@]}" >/dev/null 2>&1
sleep 1
callgrind_control -z "$vg" >/dev/null
requests=$("$load" --target 127.0.0.1:18191 --connections 4 --duration 10 "${prompt[@]}" 2>/dev/null |
  python3 "$root/benches/scripts/load_requests.py")
sleep 1
callgrind_control -d "$vg" >/dev/null
sleep 2
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$work"/cg.out.1)
echo "nginx: $((total / requests)) instructions per request ($requests requests)"
