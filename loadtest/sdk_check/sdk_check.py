#!/usr/bin/env python3
"""Checks fake-llm against the official `openai` and `anthropic` Python SDKs.

Usage: sdk_check.py BASE_URL   (e.g. http://127.0.0.1:43121)

The SDKs are the strictest readily available parsers of both wire formats: if they accept
fake-llm's responses, streams and errors, so will adapters written against the real APIs.
Prints PASS/FAIL per check and a last line `N passed, N failed`; exits non-zero on failure.
"""

import sys
import traceback

import anthropic
import openai

PROMPT = "Say hello to the fake upstream"
TOKENS = 12


def words(text):
    # Every fake token is one word plus a trailing space, so words == tokens.
    return len(text.split())


def check_openai_non_stream(base):
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    resp = client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PROMPT},
        ],
        extra_headers={"x-fake-llm": f"tokens={TOKENS}"},
    )
    assert resp.object == "chat.completion", resp.object
    assert resp.id.startswith("chatcmpl-"), resp.id
    choice = resp.choices[0]
    assert choice.finish_reason == "stop", choice.finish_reason
    assert choice.message.role == "assistant"
    text = choice.message.content
    assert words(text) == TOKENS == resp.usage.completion_tokens, (text, resp.usage)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    return text


def check_openai_stream_include_usage(base, expected_text):
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PROMPT},
        ],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-llm": f"tokens={TOKENS}"},
    )
    parts, finish, usage, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.choices:
            delta = chunk.choices[0].delta
            if delta.content:
                parts.append(delta.content)
            finish = chunk.choices[0].finish_reason or finish
            assert chunk.usage is None
        else:
            usage = chunk.usage
    text = "".join(parts)
    assert text == expected_text, (text, expected_text)
    assert finish == "stop", finish
    assert usage is not None and usage.completion_tokens == TOKENS, usage
    assert chunks == TOKENS + 3, chunks


def check_openai_rate_limit(base):
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    try:
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-fake-llm": "error_status=429"},
        )
    except openai.RateLimitError as e:
        assert e.status_code == 429
        assert e.response.headers.get("retry-after") == "1"
        assert e.code == "rate_limit_exceeded", e.code
        return
    raise AssertionError("no RateLimitError raised")


def check_openai_stream_break(base):
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_headers={"x-fake-llm": "break_after=3"},
    )
    got = []
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    except openai.APIError:
        assert len(got) == 3, got
        return
    raise AssertionError("in-band stream error not raised")


def check_openai_embeddings(base):
    # The SDK asks for base64 by default and decodes it; both encodings must round-trip.
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    resp = client.embeddings.create(
        model="text-embedding-3-small", input=["reset my password", "reset password"]
    )
    assert [d.index for d in resp.data] == [0, 1]
    vectors = [d.embedding for d in resp.data]
    assert all(len(v) == 384 for v in vectors)
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-4 for v in vectors)
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="reset my password", dimensions=64,
        encoding_format="float",
    )
    assert len(floats.data[0].embedding) == 64
    assert resp.usage.prompt_tokens == 5, resp.usage


def check_openai_models(base):
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o" in ids, ids


def anthropic_client(base):
    return anthropic.Anthropic(base_url=base, api_key="test-key", max_retries=0)


def check_anthropic_non_stream(base):
    resp = anthropic_client(base).messages.create(
        model="claude-sonnet-4-20250514",
        max_tokens=1024,
        system="Be brief.",
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"x-fake-llm": f"tokens={TOKENS}"},
    )
    assert resp.type == "message" and resp.role == "assistant"
    assert resp.id.startswith("msg_"), resp.id
    assert resp.stop_reason == "end_turn", resp.stop_reason
    assert resp.stop_sequence is None
    text = resp.content[0].text
    assert resp.content[0].type == "text"
    assert words(text) == TOKENS == resp.usage.output_tokens, (text, resp.usage)
    assert resp.usage.input_tokens > 0
    return text


def check_anthropic_raw_stream(base, expected_text):
    stream = anthropic_client(base).messages.create(
        model="claude-sonnet-4-20250514",
        max_tokens=1024,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        stream=True,
        extra_headers={"x-fake-llm": f"tokens={TOKENS}"},
    )
    kinds, parts, stop_reason, output_tokens = [], [], None, None
    for event in stream:
        kinds.append(event.type)
        if event.type == "content_block_delta":
            parts.append(event.delta.text)
        elif event.type == "message_delta":
            stop_reason = event.delta.stop_reason
            output_tokens = event.usage.output_tokens
    # `ping` is swallowed by some SDK versions, so it is not required here.
    kinds = [k for k in kinds if k != "ping"]
    assert kinds[:2] == ["message_start", "content_block_start"], kinds
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"], kinds
    assert kinds.count("content_block_delta") == TOKENS, kinds
    assert "".join(parts) == expected_text
    assert stop_reason == "end_turn" and output_tokens == TOKENS


def check_anthropic_stream_helper(base, expected_text):
    with anthropic_client(base).messages.stream(
        model="claude-sonnet-4-20250514",
        max_tokens=1024,
        system="Be brief.",
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"x-fake-llm": f"tokens={TOKENS}"},
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == expected_text, (streamed, expected_text)
    assert final.content[0].text == expected_text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == TOKENS


def check_anthropic_stop_sequence(base, expected_text):
    stop = expected_text.split()[3]
    resp = anthropic_client(base).messages.create(
        model="claude-sonnet-4-20250514",
        max_tokens=1024,
        system="Be brief.",
        messages=[{"role": "user", "content": PROMPT}],
        stop_sequences=[stop],
        extra_headers={"x-fake-llm": f"tokens={TOKENS}"},
    )
    assert resp.stop_reason == "stop_sequence", resp.stop_reason
    assert resp.stop_sequence == stop
    assert stop not in resp.content[0].text


def check_anthropic_rate_limit(base):
    try:
        anthropic_client(base).messages.create(
            model="claude-sonnet-4-20250514",
            max_tokens=64,
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-fake-llm": "error_status=429"},
        )
    except anthropic.RateLimitError as e:
        assert e.status_code == 429
        assert e.response.headers.get("retry-after") == "1"
        assert e.body["error"]["type"] == "rate_limit_error", e.body
        return
    raise AssertionError("no RateLimitError raised")


def check_anthropic_overloaded(base):
    try:
        anthropic_client(base).messages.create(
            model="claude-sonnet-4-20250514",
            max_tokens=64,
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-fake-llm": "error_status=529"},
        )
    except anthropic.APIStatusError as e:
        assert e.status_code == 529
        assert e.body["error"]["type"] == "overloaded_error", e.body
        return
    raise AssertionError("no APIStatusError raised")


def main():
    if len(sys.argv) != 2:
        print("usage: sdk_check.py BASE_URL", file=sys.stderr)
        return 2
    base = sys.argv[1].rstrip("/")
    passed = failed = 0
    results = {}

    def run(name, fn, *args):
        nonlocal passed, failed
        try:
            results[name] = fn(base, *args)
            print(f"PASS {name}")
            passed += 1
        except Exception:  # noqa: BLE001 - any failure is reported, not raised
            print(f"FAIL {name}")
            traceback.print_exc(file=sys.stdout)
            failed += 1

    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}, against {base}")
    run("openai non-stream", check_openai_non_stream)
    oa_text = results.get("openai non-stream") or ""
    run("openai stream include_usage", check_openai_stream_include_usage, oa_text)
    run("openai 429 -> RateLimitError", check_openai_rate_limit)
    run("openai in-band stream error -> APIError", check_openai_stream_break)
    run("openai embeddings (base64 and float)", check_openai_embeddings)
    run("openai models.list()", check_openai_models)
    run("anthropic non-stream", check_anthropic_non_stream)
    an_text = results.get("anthropic non-stream") or ""
    run("anthropic raw stream events", check_anthropic_raw_stream, an_text)
    run("anthropic messages.stream() + get_final_message()", check_anthropic_stream_helper, an_text)
    run("anthropic stop_sequences", check_anthropic_stop_sequence, an_text)
    run("anthropic 429 -> RateLimitError", check_anthropic_rate_limit)
    run("anthropic 529 -> overloaded_error", check_anthropic_overloaded)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
