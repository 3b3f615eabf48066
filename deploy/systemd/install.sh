#!/bin/sh
# Installs Tollgate as a systemd service: the binary, a dedicated user, the unit, a starter
# config and an env file for secrets. Run as root from a checkout after
# `cargo build --release -p tollgate`, or pass the binary: install.sh [path/to/tollgate]
# (the profile-guided build, faster per request: `cargo xtask pgo`, then
# install.sh target/pgo/tollgate).
# Idempotent: an existing config or env file is kept; the binary and unit are replaced and the
# service restarted (SIGTERM drains in-flight requests first).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/tollgate}
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
[ -x "$bin" ] || { echo "install.sh: no tollgate binary at $bin (cargo build --release -p tollgate)" >&2; exit 1; }

if ! getent passwd tollgate >/dev/null; then
    useradd --system --home-dir /var/lib/tollgate --no-create-home --shell /usr/sbin/nologin tollgate
fi
install -D -m 0755 "$bin" /usr/local/bin/tollgate
install -d -m 0755 /etc/tollgate
if [ ! -e /etc/tollgate/tollgate.yaml ]; then
    cat > /etc/tollgate/tollgate.yaml <<'YAML'
listen: 127.0.0.1:4000
data_dir: /var/lib/tollgate
kernel: {enabled: auto, pin_dir: /sys/fs/bpf/tollgate}
admin: {listen: 127.0.0.1:4001, token_env: TOLLGATE_ADMIN_TOKEN}
providers:
  - {name: local, kind: openai, base_url: "http://127.0.0.1:8000"}
models:
  - {name: default, targets: [{provider: local}]}
YAML
fi
if [ ! -e /etc/tollgate/env ]; then
    umask 077
    printf 'TOLLGATE_ADMIN_TOKEN=%s\n' "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" > /etc/tollgate/env
fi
(set -a; . /etc/tollgate/env; set +a; /usr/local/bin/tollgate validate --config /etc/tollgate/tollgate.yaml)
install -D -m 0644 "$here/tollgate.service" /etc/systemd/system/tollgate.service
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable tollgate.service
    systemctl restart tollgate.service
    echo "tollgate: installed and started (systemctl status tollgate)"
else
    echo "tollgate: installed; systemd is not running here, so start it with: systemctl start tollgate"
fi
