"""The official `openai` SDK against the agent: every OpenAI endpoint, plain and streamed, with the
usage the SDK sees equal to the ledger row (and to the simulator's arithmetic)."""

from __future__ import annotations

import openai
import pytest

from conftest import prompt_tokens


@pytest.fixture()
def client(stack):
    return openai.OpenAI(base_url=stack.openai_base_url, api_key=stack.key, max_retries=0)


def request_id(raw) -> str:
    rid = raw.headers.get("x-tollgate-request-id")
    assert rid, f"no x-tollgate-request-id in {dict(raw.headers)}"
    return rid


def test_chat_completion(client, stack):
    prompt = "Hello from the OpenAI SDK"
    raw = client.chat.completions.with_raw_response.create(
        model="smol", messages=[{"role": "user", "content": prompt}], max_tokens=6
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage.prompt_tokens == prompt_tokens(prompt)
    assert completion.usage.completion_tokens == 6
    row = stack.ledger_row(request_id(raw))
    assert (row["input_tokens"], row["output_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert row["requested_model"] == "smol" and row["served_model"] == "smollm2"
    assert row["estimated"] == 0


def test_chat_stream_without_usage_is_still_metered(client, stack):
    prompt = "Stream to the OpenAI SDK"
    raw = client.chat.completions.with_raw_response.create(
        model="smol", messages=[{"role": "user", "content": prompt}], max_tokens=5, stream=True
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    row = stack.ledger_row(request_id(raw))
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (prompt_tokens(prompt), 5, 0)


def test_chat_stream_with_include_usage(client, stack):
    prompt = "Stream with usage to the OpenAI SDK"
    raw = client.chat.completions.with_raw_response.create(
        model="smol",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (prompt_tokens(prompt), 4)
    row = stack.ledger_row(request_id(raw))
    assert (row["input_tokens"], row["output_tokens"]) == (usage[0].prompt_tokens, usage[0].completion_tokens)


def test_cached_tokens_on_a_repeated_prompt(client, stack):
    prompt = "A long enough prompt for the prefix cache of the simulator to hit on the second call."
    assert len(prompt) >= 64
    ids = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="smol", messages=[{"role": "user", "content": prompt}], max_tokens=1
        )
        ids.append((request_id(raw), raw.parse().usage))
    (_, first), (second_id, second) = ids
    assert first.prompt_tokens_details.cached_tokens == 0
    assert second.prompt_tokens_details.cached_tokens > 0
    assert stack.ledger_row(second_id)["cached_tokens"] == second.prompt_tokens_details.cached_tokens


def test_completions_plain_and_streamed(client, stack):
    prompt = "The SDK completes"
    raw = client.completions.with_raw_response.create(model="smol", prompt=prompt, max_tokens=3)
    completion = raw.parse()
    assert completion.choices[0].text
    assert stack.ledger_row(request_id(raw))["output_tokens"] == completion.usage.completion_tokens == 3

    raw = client.completions.with_raw_response.create(model="smol", prompt=prompt, max_tokens=3, stream=True)
    text = "".join(c.choices[0].text for c in raw.parse() if c.choices)
    assert text
    row = stack.ledger_row(request_id(raw))
    assert (row["input_tokens"], row["output_tokens"]) == (prompt_tokens(prompt), 3)


def test_embeddings(client, stack):
    inputs = ["embed this", "and this one too"]
    raw = client.embeddings.with_raw_response.create(model="smol", input=inputs)
    result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    assert result.usage.prompt_tokens == sum(prompt_tokens(i) for i in inputs)
    assert stack.ledger_row(request_id(raw))["input_tokens"] == result.usage.prompt_tokens


def test_responses_plain_and_streamed(client, stack):
    text = "Respond via the Responses API"
    raw = client.responses.with_raw_response.create(model="smol", input=text, max_output_tokens=5)
    response = raw.parse()
    assert response.output_text
    assert (response.usage.input_tokens, response.usage.output_tokens) == (prompt_tokens(text), 5)
    row = stack.ledger_row(request_id(raw))
    assert (row["input_tokens"], row["output_tokens"]) == (response.usage.input_tokens, 5)

    raw = client.responses.with_raw_response.create(
        model="smol", input=text, max_output_tokens=5, stream=True, reasoning={"effort": "low"}
    )
    events = list(raw.parse())
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1
    usage = completed[0].response.usage
    assert usage.output_tokens_details.reasoning_tokens == 2
    row = stack.ledger_row(request_id(raw))
    assert (row["output_tokens"], row["reasoning_tokens"]) == (usage.output_tokens, 2)


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["smol", "claude", "chat-only"]
    assert client.models.retrieve("claude").id == "claude"


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    assert caught.value.status_code == 404
