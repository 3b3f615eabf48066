"""Governance seen through the official SDKs: virtual keys in each SDK's own header
(`Authorization: Bearer` for openai, `x-api-key` for anthropic), the SDKs' own exception types
for 401 and 429, and the rate-limit headers they expose."""

from __future__ import annotations

import anthropic
import openai
import pytest


def chat(client, **kw):
    return client.chat.completions.with_raw_response.create(
        model="smol", messages=[{"role": "user", "content": "governed hello"}], max_tokens=3, **kw
    )


def test_openai_sdk_without_a_valid_key_raises_authentication_error(stack):
    bad = openai.OpenAI(base_url=stack.openai_base_url, api_key="tg-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        chat(bad)
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"


def test_anthropic_sdk_sends_x_api_key_and_gets_authentication_error(stack):
    good = anthropic.Anthropic(base_url=stack.agent_url, api_key=stack.key, max_retries=0)
    msg = good.messages.create(model="claude", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert msg.usage.output_tokens == 2
    bad = anthropic.Anthropic(base_url=stack.agent_url, api_key="tg-not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude", max_tokens=2, messages=[{"role": "user", "content": "hi"}])


def test_openai_sdk_sees_rate_limit_headers_and_rate_limit_error(stack):
    key = stack.create_key(team="limited")
    client = openai.OpenAI(base_url=stack.openai_base_url, api_key=key, max_retries=0)
    raw = chat(client)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    row = stack.ledger_row(raw.headers["x-tollgate-request-id"])
    assert row["team"] == "limited" and row["key_id"].startswith("k_")
    chat(client)
    with pytest.raises(openai.RateLimitError) as e:
        chat(client)
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert "team=limited/requests_per_minute" in e.value.message


def test_budget_exceeded_reaches_both_sdks_as_rate_limit_errors(stack):
    key = stack.create_key(team="capped")
    client = openai.OpenAI(base_url=stack.openai_base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(10):
            client.chat.completions.create(
                model="smol", messages=[{"role": "user", "content": "spend"}], max_tokens=20
            )
    assert e.value.code == "budget_exceeded"
    a = anthropic.Anthropic(base_url=stack.agent_url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError):
        a.messages.create(model="claude", max_tokens=20, messages=[{"role": "user", "content": "spend"}])
