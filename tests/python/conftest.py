"""Fixtures for the SDK tests: a real tollgate-sim and tollgate agent on loopback.

Binaries come from TOLLGATE_BIN_DIR, else <repo>/target/debug (`cargo xtask test` builds them
first). Processes are started the way the Rust e2e harness starts them: port 0, wait for the
`... listening on IP:PORT` line, kill by pid when the session ends.
"""

from __future__ import annotations

import json
import os
import queue
import urllib.request
import sqlite3
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("TOLLGATE_BIN_DIR", REPO / "target" / "debug"))
OPENAI_PROVIDER_KEY = "sk-provider-openai-py"
ANTHROPIC_PROVIDER_KEY = "sk-provider-anthropic-py"
ADMIN_TOKEN = "admin-token-for-the-python-tests"
START_TIMEOUT_S = 30
LEDGER_WAIT_S = 5


def _binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `cargo build -p tollgate -p tollgate-sim` first")
    return path


class Process:
    """A child process that announced `<announce> listening on ADDR` on stdout."""

    def __init__(self, args: list[str], announce: str, log_dir: Path, name: str, env=None):
        self.name = name
        self.stderr_path = log_dir / f"{name}.stderr"
        self.stdout_lines: list[str] = []
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=open(self.stderr_path, "wb"),
            env={**os.environ, **(env or {}), "NO_COLOR": "1"},
            text=True,
        )
        found: queue.Queue[str] = queue.Queue()
        prefix = f"{announce} listening on "

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout_lines.append(line)
                if line.startswith(prefix):
                    found.put(line[len(prefix):].strip())

        threading.Thread(target=pump, daemon=True).start()
        try:
            self.addr = found.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.kill()
            raise RuntimeError(
                f"{name} did not start: {''.join(self.stdout_lines)}\n{self.stderr_path.read_text()}"
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL to this child's pid only
            self.proc.wait(timeout=10)


@dataclass
class Stack:
    agent_url: str
    sim_url: str
    data_dir: Path
    admin_url: str
    key: str
    """A virtual key of team `sdk` (no limits): what the SDK clients authenticate with."""

    def create_key(self, **spec) -> str:
        """Creates a virtual key through the admin API and returns it."""
        req = urllib.request.Request(
            f"{self.admin_url}/admin/keys",
            data=json.dumps(spec).encode(),
            headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["key"]

    @property
    def openai_base_url(self) -> str:
        return f"{self.agent_url}/v1"

    def ledger_row(self, request_id: str) -> dict:
        """The ledger row of a request, waiting (bounded) for it to be committed."""
        db = self.data_dir / "ledger.sqlite"
        deadline = time.monotonic() + LEDGER_WAIT_S
        while True:
            if db.exists():
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
                conn.row_factory = sqlite3.Row
                try:
                    row = conn.execute("SELECT * FROM usage WHERE id = ?", (request_id,)).fetchone()
                except sqlite3.OperationalError:
                    row = None
                finally:
                    conn.close()
                if row is not None:
                    return dict(row)
            if time.monotonic() > deadline:
                raise AssertionError(f"ledger row {request_id} not committed within {LEDGER_WAIT_S}s")
            time.sleep(0.01)


def _config(sim_addr: str, data_dir: Path) -> str:
    return f"""\
listen: 127.0.0.1:0
data_dir: {data_dir}
workers: 2
auth: {{ mode: keys }}
admin: {{ listen: 127.0.0.1:0, token_env: TOLLGATE_ADMIN_TOKEN }}
rate_limits:
  - scope: {{ team: limited }}
    requests_per_minute: 2
budgets:
  - name: capped
    scope: {{ team: capped }}
    tokens: 60
io: {{ driver: auto }}
limits: {{ max_body_bytes: 1048576, header_timeout_ms: 1000, body_timeout_ms: 1000, idle_timeout_ms: 5000, max_head_bytes: 65536, max_headers: 100 }}
upstream: {{ connect_timeout_ms: 1000, response_timeout_ms: 2000, read_timeout_ms: 2000, drain_timeout_ms: 5000 }}
ledger: {{ flush_interval_ms: 20 }}
providers:
  - name: sim
    kind: openai
    base_url: http://{sim_addr}
    api_key_env: SIM_KEY
  - name: sim-anthropic
    kind: anthropic
    base_url: http://{sim_addr}
    api_key_env: SIM_ANTHROPIC_KEY
  - name: sim-chat-only
    kind: openai
    base_url: http://{sim_addr}
    api_key_env: SIM_KEY
    responses_api: chat
models:
  - name: smol
    provider: sim
    model: smollm2
  - name: claude
    provider: sim-anthropic
    model: smollm2
  - name: chat-only
    provider: sim-chat-only
    model: smollm2
{_kernel_off()}"""


def _kernel_off() -> str:
    """`kernel: { enabled: off }` when this agent build knows the section (asked with `validate`):
    the SDK tests are about the proxy, not the eBPF side."""
    with tempfile.TemporaryDirectory(prefix="tollgate-probe-") as tmp:
        probe = Path(tmp) / "kernel.yaml"
        probe.write_text("kernel: { enabled: off }\n")
        result = subprocess.run(
            [str(_binary("tollgate")), "validate", "--config", str(probe)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
    return "kernel: { enabled: off }\n" if result.returncode == 0 else ""


@pytest.fixture(scope="session")
def stack():
    with tempfile.TemporaryDirectory(prefix="tollgate-py-") as tmp:
        tmp_path = Path(tmp)
        sim = Process(
            [str(_binary("tollgate-sim")), "--listen", "127.0.0.1:0", "--model", "smollm2", "--zero-delay"],
            "tollgate-sim",
            tmp_path,
            "tollgate-sim",
        )
        agent = None
        try:
            data_dir = tmp_path / "data"
            config = tmp_path / "tollgate.yaml"
            config.write_text(_config(sim.addr, data_dir))
            agent = Process(
                [str(_binary("tollgate")), "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
                "tollgate",
                tmp_path,
                "tollgate",
                env={
                    "SIM_KEY": OPENAI_PROVIDER_KEY,
                    "SIM_ANTHROPIC_KEY": ANTHROPIC_PROVIDER_KEY,
                    "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
                },
            )
            admin = next(
                line.split("listening on ", 1)[1].strip()
                for line in agent.stdout_lines
                if line.startswith("tollgate admin listening on ")
            )
            stack = Stack(
                agent_url=f"http://{agent.addr}",
                sim_url=f"http://{sim.addr}",
                data_dir=data_dir,
                admin_url=f"http://{admin}",
                key="",
            )
            stack.key = stack.create_key(team="sdk", project="python")
            yield stack
        finally:
            if agent is not None:
                agent.kill()
            sim.kill()


def prompt_tokens(text: str) -> int:
    """What the simulator counts: ceil(bytes / 4)."""
    return (len(text.encode()) + 3) // 4
