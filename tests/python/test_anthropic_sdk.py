"""The official `anthropic` SDK against the agent's /v1/messages: plain and streamed, with cache
reads and writes, usage equal to the ledger row (input = input + cache_read + cache_creation)."""

from __future__ import annotations

import anthropic
import pytest

from conftest import prompt_tokens


@pytest.fixture()
def client(stack):
    return anthropic.Anthropic(base_url=stack.agent_url, api_key=stack.key, max_retries=0)


def ledger_input(usage) -> int:
    return usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)


def test_message(client, stack):
    system, prompt = "Be brief.", "Hello from the Anthropic SDK"
    raw = client.messages.with_raw_response.create(
        model="claude", max_tokens=5, system=system, messages=[{"role": "user", "content": prompt}]
    )
    message = raw.parse()
    assert message.content[0].text
    assert message.usage.output_tokens == 5
    assert ledger_input(message.usage) == prompt_tokens(system + prompt)
    row = stack.ledger_row(raw.headers["x-tollgate-request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (ledger_input(message.usage), 5)
    assert row["cache_write_tokens"] == (message.usage.cache_creation_input_tokens or 0)
    assert row["provider"] == "sim-anthropic"


def test_raw_event_stream(client, stack):
    system, prompt = "Stream raw events.", "Count to four."
    raw = client.messages.with_raw_response.create(
        model="claude", max_tokens=4, system=system, messages=[{"role": "user", "content": prompt}], stream=True
    )
    events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    start = events[0].message.usage
    output = [e.usage.output_tokens for e in events if e.type == "message_delta"]
    assert output == [4]
    assert ledger_input(start) == prompt_tokens(system + prompt)
    row = stack.ledger_row(raw.headers["x-tollgate-request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (ledger_input(start), 4, 0)


def test_stream_helper(client, stack):
    system = "Another system prompt long enough, well over sixty-four bytes, for the prefix cache."
    messages = [{"role": "user", "content": "Stream, please."}]
    client.messages.create(model="claude", max_tokens=1, system=system, messages=messages)
    with client.messages.stream(model="claude", max_tokens=6, system=system, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-tollgate-request-id"]
    assert text
    assert final.usage.output_tokens == 6
    assert (final.usage.cache_read_input_tokens or 0) > 0
    row = stack.ledger_row(request_id)
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (
        ledger_input(final.usage),
        final.usage.cache_read_input_tokens,
        6,
    )
    assert row["estimated"] == 0


def test_unknown_model_raises_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="nope", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404


def test_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=1, messages=[{"role": "user", "content": "x"}])
