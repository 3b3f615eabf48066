"""Any client, any backend: the official `openai` SDK on a model served by an Anthropic
provider, and the official `anthropic` SDK on a model served by an OpenAI-compatible one
(the simulator speaks both). Plain, streamed and with tools; the usage each SDK reports equals
the ledger row, and the provider received its own format (`/sim/last-request`)."""

from __future__ import annotations

import json
import urllib.request

import anthropic
import openai
import pytest

from conftest import prompt_tokens

TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture()
def oai(stack):
    return openai.OpenAI(base_url=stack.openai_base_url, api_key=stack.key, max_retries=0)


@pytest.fixture()
def ant(stack):
    return anthropic.Anthropic(base_url=stack.agent_url, api_key=stack.key, max_retries=0)


def last_request(stack) -> tuple[str, dict]:
    with urllib.request.urlopen(f"{stack.sim_url}/sim/last-request", timeout=5) as r:
        seen = json.loads(r.read())
    return seen["path"], json.loads(seen["body"])


def test_openai_sdk_on_an_anthropic_provider(oai, stack):
    system, prompt = "Be brief.", "Hello through a translation"
    raw = oai.chat.completions.with_raw_response.create(
        model="claude",
        max_tokens=5,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens == prompt_tokens(system + prompt)
    assert raw.headers["x-tollgate-target"] == "sim-anthropic/smollm2"
    path, body = last_request(stack)
    assert path == "/v1/messages"
    assert body["system"] == system
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    row = stack.ledger_row(raw.headers["x-tollgate-request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (completion.usage.prompt_tokens, 5)
    assert (row["provider"], row["api"], row["estimated"]) == ("sim-anthropic", "chat", 0)


def test_openai_sdk_streams_from_an_anthropic_provider(oai, stack):
    prompt = "Stream through a translation"
    raw = oai.chat.completions.with_raw_response.create(
        model="claude",
        max_tokens=4,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 4
    assert usage[0].prompt_tokens == prompt_tokens(prompt)
    row = stack.ledger_row(raw.headers["x-tollgate-request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (usage[0].prompt_tokens, 4, 0)


def test_openai_tools_and_tool_results_reach_an_anthropic_provider(oai, stack):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, clear"},
    ]
    completion = oai.chat.completions.create(
        model="claude", max_tokens=3, messages=messages, tools=[TOOL_OPENAI], tool_choice="auto"
    )
    assert completion.usage.completion_tokens == 3
    path, body = last_request(stack)
    assert path == "/v1/messages"
    assert body["tools"] == [TOOL_ANTHROPIC]
    assert body["tool_choice"] == {"type": "auto"}
    assistant, result = body["messages"][1], body["messages"][2]
    assert assistant["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]
    assert result["role"] == "user"
    assert result["content"][0]["type"] == "tool_result" and result["content"][0]["tool_use_id"] == "call_1"


def test_anthropic_sdk_on_an_openai_provider(ant, stack):
    system, prompt = "Be brief.", "Hello from Anthropic through a translation"
    raw = ant.messages.with_raw_response.create(
        model="smol", max_tokens=5, system=system, messages=[{"role": "user", "content": prompt}]
    )
    message = raw.parse()
    assert message.type == "message" and message.content[0].text
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5
    total_input = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert total_input == prompt_tokens(system + prompt)
    path, body = last_request(stack)
    assert path == "/v1/chat/completions"
    assert body["messages"][0] == {"role": "system", "content": system}
    row = stack.ledger_row(raw.headers["x-tollgate-request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (total_input, 5)
    assert (row["provider"], row["api"]) == ("sim", "messages")


def test_anthropic_sdk_streams_from_an_openai_provider(ant, stack):
    prompt = "Stream from an OpenAI provider"
    with ant.messages.stream(model="smol", max_tokens=6, messages=[{"role": "user", "content": prompt}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-tollgate-request-id"]
    assert text and final.content[0].text == text
    assert final.usage.output_tokens == 6
    assert final.stop_reason == "max_tokens"
    row = stack.ledger_row(request_id)
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (prompt_tokens(prompt), 6, 0)
    _, body = last_request(stack)
    # Tollgate asked for the usage chunk, and hid it behind Anthropic's message_delta.
    assert body["stream_options"] == {"include_usage": True}


def test_anthropic_tools_and_tool_results_reach_an_openai_provider(ant, stack):
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "2 C, snow"}]},
    ]
    message = ant.messages.create(
        model="smol", max_tokens=3, messages=messages, tools=[TOOL_ANTHROPIC], tool_choice={"type": "any"}
    )
    assert message.usage.output_tokens == 3
    path, body = last_request(stack)
    assert path == "/v1/chat/completions"
    assert body["tools"] == [TOOL_OPENAI]
    assert body["tool_choice"] == "required"
    call = body["messages"][1]["tool_calls"][0]
    assert call["id"] == "toolu_1" and json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "2 C, snow"}


def test_responses_api_on_a_chat_only_provider(oai, stack):
    instructions, prompt = "Be brief.", "Hello from the Responses API"
    raw = oai.responses.with_raw_response.create(
        model="chat-only", instructions=instructions, input=prompt, max_output_tokens=5
    )
    response = raw.parse()
    assert response.object == "response" and response.output_text
    assert response.usage.output_tokens == 5
    assert response.usage.input_tokens == prompt_tokens(instructions + prompt)
    path, body = last_request(stack)
    assert path == "/v1/chat/completions"
    assert body["messages"][0] == {"role": "system", "content": instructions}
    row = stack.ledger_row(raw.headers["x-tollgate-request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (response.usage.input_tokens, 5)
    assert (row["provider"], row["api"]) == ("sim-chat-only", "responses")


def test_responses_api_streams_from_a_chat_only_provider(oai, stack):
    prompt = "Stream the Responses API from chat"
    raw = oai.responses.with_raw_response.create(
        model="chat-only", input=prompt, max_output_tokens=4, stream=True
    )
    events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete"), kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text
    usage = events[-1].response.usage
    assert usage.output_tokens == 4 and usage.input_tokens == prompt_tokens(prompt)
    row = stack.ledger_row(raw.headers["x-tollgate-request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (usage.input_tokens, 4, 0)


def test_responses_function_tools_reach_a_chat_only_provider(oai, stack):
    oai.responses.create(
        model="chat-only",
        input=[
            {"role": "user", "content": "Weather in Rome?"},
            {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": '{"city": "Rome"}'},
            {"type": "function_call_output", "call_id": "call_9", "output": "25 C"},
        ],
        tools=[{"type": "function", "name": "get_weather", "description": "Weather for a city",
                "parameters": TOOL_OPENAI["function"]["parameters"]}],
        max_output_tokens=2,
    )
    path, body = last_request(stack)
    assert path == "/v1/chat/completions"
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["messages"][1]["tool_calls"][0]["id"] == "call_9"
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "call_9", "content": "25 C"}
