#!/usr/bin/env python3
"""Checks Switchyard's OpenAI- and Anthropic-compatible APIs with the official Python SDKs.

Usage: gateway_check.py ENGINE_URL   (e.g. http://127.0.0.1:43121)

The engine must run with fake-llm behind it and the models that gateway_run.sh configures:
`steady` (answers normally), `primary` (breaks after 3 tokens, falls back to `fallback`,
an Anthropic endpoint), and the alias `auto`. Prints PASS/FAIL per check and a last line
`N passed, N failed`; exits non-zero on any failure.
"""

import os
import sys
import traceback

import anthropic
import openai

PROMPT = "Tell me about the switchyard"
# A tenant API key (gateway_run.sh creates one); never printed.
API_KEY = os.environ["SWITCHYARD_API_KEY"]


def openai_client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)


def anthropic_client(base):
    return anthropic.Anthropic(base_url=base, api_key=API_KEY, max_retries=0)


def reference_text(base):
    """The fake's answer to PROMPT, from the model that never fails."""
    resp = openai_client(base).chat.completions.create(
        model="steady", messages=[{"role": "user", "content": PROMPT}]
    )
    return resp.choices[0].message.content


def check_openai_plain(base, reference):
    raw = openai_client(base).chat.completions.with_raw_response.create(
        model="steady",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PROMPT},
        ],
        temperature=0.2,
        max_tokens=200,
        user="sdk-check",
    )
    assert raw.headers["x-switchyard-model"] == "steady", raw.headers
    assert raw.headers["x-switchyard-failovers"] == "0"
    assert raw.headers["x-switchyard-cache"] in ("miss", "exact", "semantic")
    assert raw.headers.get("x-request-id")
    resp = raw.parse()
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-"), resp
    choice = resp.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop", choice
    assert choice.message.role == "assistant"
    assert choice.message.content == reference, (choice.message.content, reference)
    usage = resp.usage
    assert usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def check_openai_stream(base, reference):
    stream = openai_client(base).chat.completions.create(
        model="steady",
        messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            if chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    assert "".join(parts) == reference, ("".join(parts), reference)
    assert finish == "stop", finish
    assert usage is not None and usage.completion_tokens > 0, usage


def check_openai_unknown_model(base):
    try:
        openai_client(base).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": PROMPT}]
        )
    except openai.NotFoundError as e:
        assert e.status_code == 404
        assert e.code == "model_not_found", e.code
        assert e.param == "model", e.param
        return
    raise AssertionError("no NotFoundError")


def check_openai_bad_key(base):
    client = openai.OpenAI(base_url=base + "/v1", api_key="sy_notakey_0000", max_retries=0)
    try:
        client.chat.completions.create(model="steady", messages=[{"role": "user", "content": PROMPT}])
    except openai.AuthenticationError as e:
        assert e.status_code == 401
        return
    raise AssertionError("no AuthenticationError")


def check_anthropic_bad_key(base):
    client = anthropic.Anthropic(base_url=base, api_key="sy_notakey_0000", max_retries=0)
    try:
        client.messages.create(model="steady", max_tokens=64, messages=[{"role": "user", "content": PROMPT}])
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401
        return
    raise AssertionError("no AuthenticationError")


def check_openai_unsupported(base):
    try:
        openai_client(base).chat.completions.create(
            model="steady",
            messages=[{"role": "user", "content": PROMPT}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    except openai.BadRequestError as e:
        assert e.param == "tools", e.param
        return
    raise AssertionError("tools were not refused")


def check_openai_failover_stream(base, reference):
    # `primary` breaks after 3 tokens; the SDK must see one clean stream.
    stream = openai_client(base).chat.completions.create(
        model="primary", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    parts, finish, last_model = [], None, None
    for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
        last_model = chunk.model
    text = "".join(parts)
    first_three = reference.split(" ")[:3]
    assert text.split(" ")[:3] == first_three, (text, reference)
    assert len(text) > len(" ".join(first_three)), text
    assert finish == "stop", finish
    assert last_model == "fallback", last_model


def check_openai_failover_headers(base):
    raw = openai_client(base).chat.completions.with_raw_response.create(
        model="primary", messages=[{"role": "user", "content": PROMPT}]
    )
    assert raw.headers["x-switchyard-failovers"] == "1", raw.headers
    assert raw.headers["x-switchyard-model"] == "fallback"
    assert raw.headers["x-switchyard-provider"] == "anthropic"
    assert raw.parse().model == "fallback"


def check_openai_models(base):
    ids = [m.id for m in openai_client(base).models.list()]
    for expected in ("steady", "primary", "fallback", "auto"):
        assert expected in ids, ids


def check_anthropic_plain(base, reference):
    resp = anthropic_client(base).messages.create(
        model="steady",
        max_tokens=200,
        system="Be brief.",
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert resp.type == "message" and resp.role == "assistant" and resp.id.startswith("msg_")
    assert resp.stop_reason == "end_turn", resp.stop_reason
    assert resp.content[0].type == "text" and resp.content[0].text == reference
    assert resp.usage.output_tokens > 0 and resp.usage.input_tokens > 0


def check_anthropic_raw_stream(base, reference):
    stream = anthropic_client(base).messages.create(
        model="steady",
        max_tokens=200,
        messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        stream=True,
    )
    kinds, parts = [], []
    for event in stream:
        kinds.append(event.type)
        if event.type == "content_block_delta":
            parts.append(event.delta.text)
    kinds = [k for k in kinds if k != "ping"]
    assert kinds[:2] == ["message_start", "content_block_start"], kinds
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"], kinds
    assert "".join(parts) == reference


def check_anthropic_stream_helper_failover(base, reference):
    with anthropic_client(base).messages.stream(
        model="primary", max_tokens=200, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.split(" ")[:3] == reference.split(" ")[:3], (text, reference)
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def check_anthropic_unknown_model(base):
    try:
        anthropic_client(base).messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    except anthropic.NotFoundError as e:
        assert e.status_code == 404
        assert e.body["error"]["type"] == "not_found_error", e.body
        return
    raise AssertionError("no NotFoundError")


def check_anthropic_models(base):
    ids = [m.id for m in anthropic_client(base).models.list()]
    assert "steady" in ids and "auto" in ids, ids


def main():
    base = sys.argv[1].rstrip("/")
    reference = reference_text(base)
    checks = [
        ("openai: plain completion, headers", lambda: check_openai_plain(base, reference)),
        ("openai: stream with include_usage", lambda: check_openai_stream(base, reference)),
        ("openai: unknown model is NotFoundError", lambda: check_openai_unknown_model(base)),
        ("openai: tools refused by name", lambda: check_openai_unsupported(base)),
        ("openai: a bad key is AuthenticationError", lambda: check_openai_bad_key(base)),
        ("openai: failover mid-stream is one clean stream", lambda: check_openai_failover_stream(base, reference)),
        ("openai: failover counted in headers", lambda: check_openai_failover_headers(base)),
        ("openai: models.list", lambda: check_openai_models(base)),
        ("anthropic: plain message", lambda: check_anthropic_plain(base, reference)),
        ("anthropic: raw event stream", lambda: check_anthropic_raw_stream(base, reference)),
        ("anthropic: messages.stream() across a failover", lambda: check_anthropic_stream_helper_failover(base, reference)),
        ("anthropic: unknown model is NotFoundError", lambda: check_anthropic_unknown_model(base)),
        ("anthropic: models.list", lambda: check_anthropic_models(base)),
        ("anthropic: a bad key is AuthenticationError", lambda: check_anthropic_bad_key(base)),
    ]
    passed = failed = 0
    for name, check in checks:
        try:
            check()
            passed += 1
            print(f"PASS {name}")
        except Exception:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed (openai {openai.__version__}, anthropic {anthropic.__version__})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
