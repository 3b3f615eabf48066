"""The OpenAI Batch API through the official SDK: files, batches, output and error files, cancel,
ownership by key, and a job that survives a SIGKILL of the agent.

The agent here is restartable (same config, same data_dir), so this module starts its own:
a fast simulator (`smol`) and a slow one (`slow`, `--delay-ms`) so a job is still running
when the agent is killed. Every line goes through the agent's own listener, so each has a
ledger row with the key's team."""

from __future__ import annotations

import io
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import (
    ADMIN_TOKEN,
    ANTHROPIC_PROVIDER_KEY,
    OPENAI_PROVIDER_KEY,
    Process,
    Stack,
    _binary,
    _config,
)

SLOW_DELAY_MS = 300
POLL_S = 0.05


class Agent:
    """An agent that can be SIGKILLed and started again on the same config and data_dir."""

    def __init__(self, config: Path, log_dir: Path):
        self.config = config
        self.log_dir = log_dir
        self.runs = 0
        self.proc: Process | None = None
        self.start()

    def start(self) -> None:
        self.runs += 1
        self.proc = Process(
            [str(_binary("tollgate")), "serve", "--config", str(self.config), "--listen", "127.0.0.1:0"],
            "tollgate",
            self.log_dir,
            f"tollgate-{self.runs}",
            env={
                "SIM_KEY": OPENAI_PROVIDER_KEY,
                "SIM_ANTHROPIC_KEY": ANTHROPIC_PROVIDER_KEY,
                "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            },
        )

    @property
    def url(self) -> str:
        assert self.proc is not None
        return f"http://{self.proc.addr}"

    @property
    def admin_url(self) -> str:
        assert self.proc is not None
        line = next(l for l in self.proc.stdout_lines if l.startswith("tollgate admin listening on "))
        return "http://" + line.split("listening on ", 1)[1].strip()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()


@pytest.fixture(scope="module")
def env():
    with tempfile.TemporaryDirectory(prefix="tollgate-batch-") as tmp:
        tmp_path = Path(tmp)
        sims = []
        agent = None
        try:
            fast = Process(
                [str(_binary("tollgate-sim")), "--listen", "127.0.0.1:0", "--model", "smollm2", "--zero-delay"],
                "tollgate-sim", tmp_path, "sim-fast",
            )
            sims.append(fast)
            slow = Process(
                [str(_binary("tollgate-sim")), "--listen", "127.0.0.1:0", "--model", "smollm2",
                 "--zero-delay", "--delay-ms", str(SLOW_DELAY_MS)],
                "tollgate-sim", tmp_path, "sim-slow",
            )
            sims.append(slow)
            data_dir = tmp_path / "data"
            config = _config(fast.addr, data_dir)
            config = config.replace(
                "providers:\n",
                f"providers:\n  - name: sim-slow\n    kind: openai\n    base_url: http://{slow.addr}\n    api_key_env: SIM_KEY\n",
                1,
            )
            config = config.replace("models:\n", "models:\n  - name: slow\n    provider: sim-slow\n    model: smollm2\n", 1)
            config += "batch_jobs: { concurrency: 4 }\nrouting: { batch: { max_queue: 64 } }\n"
            path = tmp_path / "tollgate.yaml"
            path.write_text(config)
            agent = Agent(path, tmp_path)
            yield agent, data_dir
        finally:
            if agent is not None:
                agent.kill()
            for s in sims:
                s.kill()


def stack_of(agent: Agent, data_dir: Path) -> Stack:
    return Stack(agent_url=agent.url, sim_url="", data_dir=data_dir, admin_url=agent.admin_url, key="")


def create_key(agent: Agent, **spec) -> tuple[str, str]:
    """A new virtual key and its id."""
    req = urllib.request.Request(
        f"{agent.admin_url}/admin/keys",
        data=json.dumps(spec).encode(),
        headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        body = json.loads(r.read())
    return body["key"], body["record"]["id"]


def client(agent: Agent, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{agent.url}/v1", api_key=key, max_retries=0)


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(l) + "\n" for l in lines).encode()


def chat_line(custom_id: str, model: str = "smol", text: str = "batch hello") -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 3},
    }


def wait_for(c: openai.OpenAI, batch_id: str, done, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        b = c.batches.retrieve(batch_id)
        if done(b):
            return b
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {b.status} {b.request_counts} after {timeout_s}s")
        time.sleep(POLL_S)


def result_lines(c: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(l) for l in c.files.content(file_id).text.splitlines() if l.strip()]


def test_batch_runs_through_the_pipeline_and_belongs_to_its_key(env):
    agent, data_dir = env
    key, key_id = create_key(agent, team="batchteam", project="py")
    c = client(agent, key)
    lines = [chat_line(f"req-{i}", text=f"batch hello {i}") for i in range(5)]
    lines.append(chat_line("unknown-model", model="no-such-model"))
    content = jsonl(lines)

    f = c.files.create(file=("input.jsonl", io.BytesIO(content)), purpose="batch")
    assert f.id.startswith("file-") and f.purpose == "batch" and f.bytes == len(content)
    assert c.files.retrieve(f.id).filename == "input.jsonl"
    assert c.files.content(f.id).read() == content

    b = c.batches.with_raw_response.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "t1"},
        extra_headers={"x-tollgate-workflow": "nightly-eval"},
    ).parse()
    assert b.id.startswith("batch_") and b.object == "batch"
    assert b.status in ("validating", "in_progress")
    assert b.metadata == {"job": "t1"}
    b = wait_for(c, b.id, lambda b: b.status == "completed")
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (6, 5, 1)
    assert b.in_progress_at and b.completed_at and b.completed_at >= b.created_at

    out = result_lines(c, b.output_file_id)
    assert sorted(l["custom_id"] for l in out) == [f"req-{i}" for i in range(5)]
    stack = stack_of(agent, data_dir)
    for l in out:
        assert l["error"] is None and l["id"].startswith("batch_req_")
        resp = l["response"]
        assert resp["status_code"] == 200
        assert resp["body"]["object"] == "chat.completion"
        assert resp["body"]["usage"]["completion_tokens"] == 3
        # Metered like any request: a ledger row under the key, with its team.
        row = stack.ledger_row(resp["request_id"])
        assert row["key_id"] == key_id
        assert row["team"] == "batchteam"
        assert row["workflow"] == "nightly-eval", "the creating request's identity goes with each line"
        assert row["status"] == 200
        assert row["output_tokens"] == 3

    errors = result_lines(c, b.error_file_id)
    assert [l["custom_id"] for l in errors] == ["unknown-model"]
    assert errors[0]["response"]["status_code"] == 404
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"

    assert b.id in [x.id for x in c.batches.list(limit=100).data]
    metrics = urllib.request.urlopen(f"{agent.url}/metrics", timeout=10).read().decode()
    done = next(l for l in metrics.splitlines() if l.startswith("tollgate_batch_lines_completed_total "))
    assert int(done.split()[1]) >= 5
    assert 'tollgate_batch_jobs_finished_total{status="completed"}' in metrics
    with pytest.raises(openai.BadRequestError):
        c.batches.cancel(b.id)  # completed

    # Another key sees none of it.
    other_key, _ = create_key(agent, team="other")
    other = client(agent, other_key)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(b.id)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(b.output_file_id).read()
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(b.id)
    assert b.id not in [x.id for x in other.batches.list().data]

    # Deleting the input file: gone for its owner too.
    assert c.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)


def test_uploads_are_checked_line_by_line_and_need_a_key(env):
    agent, _ = env
    key, _ = create_key(agent, team="batchteam")
    c = client(agent, key)
    dup = jsonl([chat_line("same"), chat_line("same")])
    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=("dup.jsonl", io.BytesIO(dup)), purpose="batch")
    assert "line 2" in e.value.message and "unique" in e.value.message
    bad_url = jsonl([{**chat_line("a"), "url": "/v1/images/generations"}])
    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=("url.jsonl", io.BytesIO(bad_url)), purpose="batch")
    assert "line 1" in e.value.message and "url" in e.value.message
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("x.jsonl", io.BytesIO(jsonl([chat_line("a")]))), purpose="fine-tune")
    with pytest.raises(openai.AuthenticationError):
        client(agent, "tg-not-a-key").files.create(
            file=("x.jsonl", io.BytesIO(jsonl([chat_line("a")]))), purpose="batch"
        )
    with pytest.raises(openai.AuthenticationError):
        client(agent, "tg-not-a-key").batches.list()
    # A line whose url is not the batch's endpoint fails the batch, naming the line.
    f = c.files.create(file=("mixed.jsonl", io.BytesIO(jsonl([chat_line("a")]))), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    assert b.status == "failed"
    assert b.errors.data[0].line == 1
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")


def test_the_runners_credential_cannot_be_guessed(env):
    """`x-tollgate-on-behalf-of` counts only with the agent's in-memory token."""
    agent, _ = env
    _, key_id = create_key(agent, team="batchteam")
    req = urllib.request.Request(
        f"{agent.url}/v1/chat/completions",
        data=json.dumps({"model": "smol", "messages": [{"role": "user", "content": "x"}]}).encode(),
        headers={
            "authorization": "Bearer tgi-" + "0" * 64,
            "x-tollgate-on-behalf-of": key_id,
            "content-type": "application/json",
        },
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401


def test_cancel_stops_a_running_batch(env):
    agent, _ = env
    key, _ = create_key(agent, team="batchteam")
    c = client(agent, key)
    n = 40
    f = c.files.create(
        file=("slow.jsonl", io.BytesIO(jsonl([chat_line(f"s-{i}", model="slow") for i in range(n)]))),
        purpose="batch",
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(c, b.id, lambda b: b.request_counts.completed >= 1)
    cancelled = c.batches.cancel(b.id)
    assert cancelled.status in ("cancelling", "cancelled")
    b = wait_for(c, b.id, lambda b: b.status == "cancelled")
    assert b.cancelled_at and b.cancelling_at
    assert 1 <= b.request_counts.completed < n
    out = result_lines(c, b.output_file_id)
    assert len(out) == b.request_counts.completed
    assert len({l["custom_id"] for l in out}) == len(out)
    assert c.batches.cancel(b.id).status == "cancelled", "cancelling again changes nothing"


def test_a_revoked_key_fails_its_remaining_lines_not_the_runner(env):
    agent, _ = env
    key, key_id = create_key(agent, team="batchteam")
    c = client(agent, key)
    n = 24
    f = c.files.create(
        file=("rev.jsonl", io.BytesIO(jsonl([chat_line(f"v-{i}", model="slow") for i in range(n)]))),
        purpose="batch",
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(c, b.id, lambda b: b.request_counts.completed >= 4)
    req = urllib.request.Request(
        f"{agent.admin_url}/admin/keys/{key_id}/revoke",
        data=b"{}",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=10).read()
    # The owner's key is gone, so the batch is read through the store directly.
    db = env[1] / "batch.sqlite"
    import sqlite3

    deadline = time.monotonic() + 60
    while True:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        status, done, failed, err_id = conn.execute(
            "SELECT status, completed, failed, error_file_id FROM batches WHERE id = ?", (b.id,)
        ).fetchone()
        conn.close()
        if status == "completed":
            break
        assert time.monotonic() < deadline, (status, done, failed)
        time.sleep(POLL_S)
    assert done + failed == n and failed >= 1 and done >= 4
    errors = [json.loads(l) for l in (env[1] / "files" / err_id).read_text().splitlines()]
    assert all(e["response"]["status_code"] == 401 for e in errors)
    assert errors[0]["response"]["body"]["error"]["code"] == "invalid_api_key"
    # The runner goes on with the next batch.
    key2, _ = create_key(agent, team="batchteam")
    c2 = client(agent, key2)
    f2 = c2.files.create(file=("ok.jsonl", io.BytesIO(jsonl([chat_line("after")]))), purpose="batch")
    b2 = c2.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert wait_for(c2, b2.id, lambda b: b.status == "completed").request_counts.completed == 1


def test_a_batch_survives_a_sigkill_of_the_agent(env):
    agent, data_dir = env
    key, key_id = create_key(agent, team="batchteam")
    c = client(agent, key)
    n = 48
    f = c.files.create(
        file=("long.jsonl", io.BytesIO(jsonl([chat_line(f"k-{i:02}", model="slow") for i in range(n)]))),
        purpose="batch",
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    before = wait_for(c, b.id, lambda b: b.request_counts.completed >= 8)
    agent.kill()  # SIGKILL mid-job: lines in flight are lost with the process
    assert before.status == "in_progress" and before.request_counts.completed < n

    agent.start()  # same config, same data_dir
    c = client(agent, key)
    b = wait_for(c, b.id, lambda b: b.status == "completed")
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (n, n, 0)
    assert b.error_file_id is None
    out = result_lines(c, b.output_file_id)
    ids = [l["custom_id"] for l in out]
    assert sorted(ids) == [f"k-{i:02}" for i in range(n)], "every line exactly once"
    assert all(l["response"]["status_code"] == 200 for l in out)
    log = agent.proc.stderr_path.read_text()
    assert "resuming a batch" in log and b.id in log, "the second run resumed the job"
    # Lines answered after the restart are metered by the new process too.
    stack = stack_of(agent, data_dir)
    assert stack.ledger_row(out[-1]["response"]["request_id"])["key_id"] == key_id


def test_a_batch_past_its_window_ends_expired_with_the_rest_in_the_error_file(env):
    """The 24 h window cannot pass in a test: the agent is killed mid-job, the stored
    `expires_at` moved into the past, and the resumed job must expire, not run on."""
    import sqlite3

    agent, data_dir = env
    key, _ = create_key(agent, team="batchteam")
    c = client(agent, key)
    n = 40
    f = c.files.create(
        file=("exp.jsonl", io.BytesIO(jsonl([chat_line(f"x-{i:02}", model="slow") for i in range(n)]))),
        purpose="batch",
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.expires_at == b.created_at + 24 * 3600
    wait_for(c, b.id, lambda b: b.request_counts.completed >= 4)
    agent.kill()
    conn = sqlite3.connect(data_dir / "batch.sqlite", timeout=5)
    with conn:
        conn.execute("UPDATE batches SET expires_at = created_at WHERE id = ?", (b.id,))
    conn.close()

    agent.start()
    c = client(agent, key)
    b = wait_for(c, b.id, lambda b: b.status == "expired", timeout_s=20)
    assert b.expired_at is not None
    out = result_lines(c, b.output_file_id)
    errors = result_lines(c, b.error_file_id)
    assert len(out) == b.request_counts.completed >= 4
    assert len(errors) == b.request_counts.failed == n - len(out) > 0
    assert all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in errors)
    ids = sorted(l["custom_id"] for l in out + errors)
    assert ids == [f"x-{i:02}" for i in range(n)], "every line exactly once across both files"


def test_a_graceful_stop_mid_job_records_what_was_in_flight_and_resumes(env):
    """SIGTERM while lines are in flight: the agent stops promptly (the batch thread does not
    hold it), and the next run finishes the job with every line once."""
    agent, _ = env
    key, _ = create_key(agent, team="batchteam")
    c = client(agent, key)
    n = 32
    f = c.files.create(
        file=("term.jsonl", io.BytesIO(jsonl([chat_line(f"t-{i:02}", model="slow") for i in range(n)]))),
        purpose="batch",
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(c, b.id, lambda b: b.request_counts.completed >= 4)
    assert agent.proc is not None
    started = time.monotonic()
    agent.proc.proc.terminate()
    assert agent.proc.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 10

    agent.start()
    c = client(agent, key)
    b = wait_for(c, b.id, lambda b: b.status == "completed")
    out = result_lines(c, b.output_file_id)
    assert sorted(l["custom_id"] for l in out) == [f"t-{i:02}" for i in range(n)]
    assert b.error_file_id is None


def test_open_mode_forwards_the_identity_the_batch_was_created_with(env, tmp_path):
    """`auth: {mode: open}`: no key to act for, so the lines carry the identity headers of the
    request that created the batch, and the ledger rows have that team."""
    agent, _ = env
    config = agent.config.read_text().replace("auth: { mode: keys }", "auth: { mode: open }", 1)
    assert "mode: open" in config
    data_dir = tmp_path / "data"
    config = config.replace(f"data_dir: {agent.config.parent / 'data'}", f"data_dir: {data_dir}", 1)
    assert f"data_dir: {data_dir}" in config
    path = tmp_path / "open.yaml"
    path.write_text(config)
    open_agent = Agent(path, tmp_path)
    try:
        c = openai.OpenAI(
            base_url=f"{open_agent.url}/v1",
            api_key="anything",
            max_retries=0,
            default_headers={"x-tollgate-team": "open-team"},
        )
        f = c.files.create(file=("o.jsonl", io.BytesIO(jsonl([chat_line("o-1"), chat_line("o-2")]))), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        b = wait_for(c, b.id, lambda b: b.status == "completed")
        out = result_lines(c, b.output_file_id)
        assert sorted(l["custom_id"] for l in out) == ["o-1", "o-2"]
        stack = stack_of(open_agent, data_dir)
        for l in out:
            row = stack.ledger_row(l["response"]["request_id"])
            assert row["team"] == "open-team" and row["key_id"] is None
    finally:
        open_agent.kill()
