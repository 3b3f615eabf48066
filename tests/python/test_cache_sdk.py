"""The exact response cache through the official `openai` SDK: a repeated deterministic call is a
hit (plain and streamed) with the same answer, another key never gets it, and the ledger shows
the hit at zero cost with what it saved.

This module starts its own agent (the session agent has no cache, so the other SDK tests see
every call reach the provider)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import openai
import pytest

from conftest import Process, Stack, _binary, _config
from test_batch_sdk import Agent, create_key

CACHE = "cache:\n  exact: {enabled: true, ttl_s: 600, max_mb: 8, scope: key}\n"


@pytest.fixture(scope="module")
def env():
    with tempfile.TemporaryDirectory(prefix="tollgate-cache-") as tmp:
        tmp_path = Path(tmp)
        sim = Process(
            [str(_binary("tollgate-sim")), "--listen", "127.0.0.1:0", "--model", "smollm2", "--zero-delay"],
            "tollgate-sim", tmp_path, "sim",
        )
        agent = None
        try:
            data_dir = tmp_path / "data"
            path = tmp_path / "tollgate.yaml"
            path.write_text(_config(sim.addr, data_dir) + CACHE)
            agent = Agent(path, tmp_path)
            yield agent, data_dir
        finally:
            if agent is not None:
                agent.kill()
            sim.kill()


def sdk(agent: Agent, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{agent.url}/v1", api_key=key, max_retries=0)


def ask(c: openai.OpenAI, prompt: str, **kw):
    return c.chat.completions.with_raw_response.create(
        model="smol", messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0, **kw
    )


def test_hits_through_the_sdk_are_isolated_per_key(env):
    agent, data_dir = env
    stack = Stack(agent_url=agent.url, sim_url="", data_dir=data_dir, admin_url=agent.admin_url, key="")
    alice, _ = create_key(agent, team="a")
    bob, _ = create_key(agent, team="a")

    first = ask(sdk(agent, alice), "cache me")
    second = ask(sdk(agent, alice), "cache me")
    assert first.headers["x-tollgate-cache"] == "miss"
    assert second.headers["x-tollgate-cache"] == "hit"
    a, b = first.parse(), second.parse()
    assert b.choices[0].message.content == a.choices[0].message.content
    assert b.usage.completion_tokens == a.usage.completion_tokens

    other = ask(sdk(agent, bob), "cache me")
    assert other.headers["x-tollgate-cache"] == "miss", "another key got alice's entry"

    miss_row = stack.ledger_row(first.headers["x-tollgate-request-id"])
    hit_row = stack.ledger_row(second.headers["x-tollgate-request-id"])
    assert hit_row["cache"] == "exact" and miss_row["cache"] == "miss"
    assert (hit_row["input_tokens"], hit_row["output_tokens"]) == (0, 0)
    assert hit_row["saved_tokens"] == miss_row["input_tokens"] + miss_row["output_tokens"]


def test_a_streamed_hit_reads_like_the_original_stream(env):
    agent, _ = env
    key, _ = create_key(agent, team="s")
    c = sdk(agent, key)

    def run():
        raw = ask(c, "stream from cache", stream=True)
        text = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
        return raw.headers["x-tollgate-cache"], text

    assert run()[0] == "miss"
    state, text = run()
    assert state == "hit"
    assert text and text == run()[1]
