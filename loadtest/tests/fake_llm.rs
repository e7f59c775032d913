//! fake-llm as a client sees it: both APIs streamed and not, every knob, and the stats.
//! One test binary for the crate keeps link time down.

// clippy.toml allows these inside `#[test]` functions only; the helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use loadtest::fake_llm::{FakeLlmServer, Scenario, deterministic_text};
use serde_json::{Value, json};

const PROMPT: &str = "Hello there";

fn start() -> FakeLlmServer {
    FakeLlmServer::start(Scenario::default()).unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": PROMPT}
    ], "stream": stream})
}

fn messages_body(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4", "max_tokens": 1024, "system": "You are terse.",
           "messages": [{"role": "user", "content": PROMPT}], "stream": stream})
}

async fn openai(srv: &FakeLlmServer, body: &Value, knobs: &str) -> reqwest::Response {
    client()
        .post(format!("{}/v1/chat/completions", srv.base_url()))
        .bearer_auth("sk-test")
        .header("x-fake-llm", knobs)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn anthropic(srv: &FakeLlmServer, body: &Value, knobs: &str) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", srv.base_url()))
        .header("x-api-key", "test-key")
        .header("anthropic-version", "2023-06-01")
        .header("x-fake-llm", knobs)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// SSE events as (event name, data), in order.
fn sse(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (event, data)
        })
        .collect()
}

fn expected(tokens: u32) -> String {
    deterministic_text(PROMPT, 0, tokens).concat()
}

/// Text of OpenAI chunk frames (ignoring `[DONE]` and non-JSON frames).
fn openai_text(events: &[(Option<String>, String)]) -> String {
    events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

fn anthropic_text(events: &[(Option<String>, String)]) -> String {
    events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("content_block_delta"))
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect()
}

/// Reads a streamed body until it ends or errors; returns the bytes and whether it errored.
async fn read_all(resp: reqwest::Response) -> (String, bool) {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => body.extend_from_slice(&b),
            Err(_) => return (String::from_utf8(body).unwrap(), true),
        }
    }
    (String::from_utf8(body).unwrap(), false)
}

async fn wait_for(srv: &FakeLlmServer, what: impl Fn(&loadtest::fake_llm::Stats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !what(&srv.stats()) {
        assert!(Instant::now() < deadline, "timed out; stats: {:?}", srv.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn openai_non_stream_returns_deterministic_text_and_usage() {
    let srv = start();
    let resp = openai(&srv, &chat_body(false), "").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    assert!(v["created"].is_u64());
    assert!(v["system_fingerprint"].as_str().unwrap().starts_with("fp_"));
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], expected(16));
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    // "You are terse." (3 words) + "Hello there" (2) + 3 per message + 3.
    assert_eq!(v["usage"]["prompt_tokens"], 14);
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(v["usage"]["total_tokens"], 30);
}

#[tokio::test]
async fn openai_stream_frames_without_usage() {
    let srv = start();
    let resp = openai(&srv, &chat_body(true), "tokens=5").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (body, errored) = read_all(resp).await;
    assert!(!errored);
    let events = sse(&body);
    assert_eq!(events.len(), 1 + 5 + 1 + 1, "{body}");
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert!(c.get("usage").is_none(), "usage only when asked: {c}");
    }
    for (c, tok) in chunks[1..6].iter().zip(deterministic_text(PROMPT, 0, 5)) {
        assert_eq!(c["choices"][0]["delta"], json!({ "content": tok }));
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
    }
    assert_eq!(chunks[6]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    assert_eq!(openai_text(&events), expected(5));
    wait_for(&srv, |s| s.completed_streams == 1 && s.active_streams == 0).await;
}

#[tokio::test]
async fn openai_stream_include_usage_adds_a_usage_chunk() {
    let srv = start();
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let (text, _) = read_all(openai(&srv, &body, "tokens=4").await).await;
    let events = sse(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    let (last, earlier) = chunks.split_last().unwrap();
    for c in earlier {
        assert_eq!(c["usage"], Value::Null);
        assert!(c.get("usage").is_some());
    }
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 14);
    assert_eq!(last["usage"]["completion_tokens"], 4);
    assert_eq!(last["usage"]["total_tokens"], 18);
}

#[tokio::test]
async fn openai_honours_max_tokens_and_stop() {
    let srv = start();
    for key in ["max_tokens", "max_completion_tokens"] {
        let mut body = chat_body(false);
        body[key] = json!(3);
        let v: Value = openai(&srv, &body, "").await.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], expected(3));
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 3);
    }
    let words = deterministic_text(PROMPT, 0, 16);
    let stop = words[6].trim().to_owned();
    let cut = words.iter().position(|w| w.contains(&stop)).unwrap();
    let mut body = chat_body(true);
    body["stop"] = json!([stop]);
    let (text, _) = read_all(openai(&srv, &body, "").await).await;
    let events = sse(&text);
    assert_eq!(openai_text(&events), words[..cut].concat());
    let finish: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn openai_rejects_invalid_requests_like_openai() {
    let srv = start();
    let cases = [
        (json!({"messages": [{"role": "user", "content": "hi"}]}), Value::Null),
        (json!({"model": "gpt-4o"}), json!("messages")),
        (json!({"model": "gpt-4o", "messages": [{"content": "hi"}]}), json!("messages[0].role")),
        (
            json!({"model": "gpt-4o", "n": 2, "messages": [{"role": "user", "content": "hi"}]}),
            json!("n"),
        ),
    ];
    for (body, param) in cases {
        let resp = openai(&srv, &body, "").await;
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        let err = &v["error"];
        assert_eq!(err["type"], "invalid_request_error");
        assert!(err["message"].as_str().unwrap().len() > 5);
        assert_eq!(err["param"], param);
        assert!(err.get("code").is_some());
    }
}

#[tokio::test]
async fn anthropic_non_stream_returns_deterministic_text_and_usage() {
    let srv = start();
    let resp = anthropic(&srv, &messages_body(false), "").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("request-id"));
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-sonnet-4");
    assert_eq!(v["content"], json!([{"type": "text", "text": expected(16)}]));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    // system (3 words) + "Hello there" (2) + 3 for the message + 3.
    assert_eq!(v["usage"]["input_tokens"], 11);
    assert_eq!(v["usage"]["output_tokens"], 16);
}

#[tokio::test]
async fn anthropic_stream_event_sequence() {
    let srv = start();
    let resp = anthropic(&srv, &messages_body(true), "tokens=3").await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (text, errored) = read_all(resp).await;
    assert!(!errored);
    let events = sse(&text);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let data: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    for ((name, _), d) in events.iter().zip(&data) {
        assert_eq!(d["type"].as_str(), name.as_deref());
    }
    let msg = &data[0]["message"];
    assert_eq!(msg["content"], json!([]));
    assert_eq!(msg["usage"]["input_tokens"], 11);
    assert_eq!(msg["usage"]["output_tokens"], 1);
    assert_eq!(
        data[1],
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(data[3]["delta"]["type"], "text_delta");
    assert_eq!(anthropic_text(&events), expected(3));
    assert_eq!(
        data[7],
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 3}})
    );
}

#[tokio::test]
async fn anthropic_honours_max_tokens_and_stop_sequences() {
    let srv = start();
    let mut body = messages_body(false);
    body["max_tokens"] = json!(2);
    let v: Value = anthropic(&srv, &body, "").await.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], expected(2));
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 2);

    let words = deterministic_text(PROMPT, 0, 16);
    let stop = words[4].trim().to_owned();
    let cut = words.iter().position(|w| w.contains(&stop)).unwrap();
    let mut body = messages_body(true);
    body["stop_sequences"] = json!(["never-generated", stop]);
    let (text, _) = read_all(anthropic(&srv, &body, "").await).await;
    let events = sse(&text);
    assert_eq!(anthropic_text(&events), words[..cut].concat());
    let delta: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "stop_sequence");
    assert_eq!(delta["delta"]["stop_sequence"], json!(stop));
    assert_eq!(delta["usage"]["output_tokens"], cut);
}

#[tokio::test]
async fn anthropic_requires_api_key_max_tokens_and_top_level_system() {
    let srv = start();
    let resp = client()
        .post(format!("{}/v1/messages", srv.base_url()))
        .header("anthropic-version", "2023-06-01")
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");

    // Current SDKs send the key as a bearer token, which the real API accepts too.
    let resp = client()
        .post(format!("{}/v1/messages", srv.base_url()))
        .bearer_auth("test-key")
        .header("anthropic-version", "2023-06-01")
        .json(&messages_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let mut body = messages_body(false);
    body.as_object_mut().unwrap().remove("max_tokens");
    let resp = anthropic(&srv, &body, "").await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_tokens"));

    let body = json!({"model": "claude", "max_tokens": 10, "messages": [
        {"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}]});
    let resp = anthropic(&srv, &body, "").await;
    assert_eq!(resp.status(), 400);

    // Block-array system and content are accepted.
    let body = json!({"model": "claude", "max_tokens": 10,
        "system": [{"type": "text", "text": "be terse"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]});
    let v: Value = anthropic(&srv, &body, "").await.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], expected(10));
}

#[tokio::test]
async fn injected_error_statuses_have_provider_shapes_and_retry_after() {
    let srv = start();
    let openai_cases = [
        (400, "invalid_request_error", None),
        (401, "invalid_request_error", None),
        (404, "invalid_request_error", None),
        (429, "requests", Some("1")),
        (500, "server_error", None),
        (503, "server_error", Some("1")),
    ];
    for (status, kind, retry) in openai_cases {
        let resp = openai(&srv, &chat_body(true), &format!("error_status={status}")).await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers().get("retry-after").map(|v| v.to_str().unwrap()), retry);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], kind, "{status}");
        assert!(v["error"].get("param").is_some() && v["error"].get("code").is_some());
    }
    let anthropic_cases = [
        (400, "invalid_request_error", None),
        (401, "authentication_error", None),
        (403, "permission_error", None),
        (404, "not_found_error", None),
        (413, "request_too_large", None),
        (429, "rate_limit_error", Some("1")),
        (500, "api_error", None),
        (529, "overloaded_error", Some("1")),
    ];
    for (status, kind, retry) in anthropic_cases {
        let resp = anthropic(&srv, &messages_body(false), &format!("error_status={status}")).await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers().get("retry-after").map(|v| v.to_str().unwrap()), retry);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind, "{status}");
    }
    let resp = anthropic(&srv, &messages_body(false), "error_status=500; retry_after=7").await;
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(srv.stats().errors_injected, 15);
}

#[tokio::test]
async fn context_length_errors_match_each_provider() {
    let srv = start();
    let knobs = "error_status=400; error_code=context_length_exceeded";
    let v: Value = openai(&srv, &chat_body(false), knobs).await.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("This model's maximum context length is ")
    );
    let v: Value = anthropic(&srv, &messages_body(false), knobs).await.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("prompt is too long: ") && msg.ends_with(" maximum"), "{msg}");
}

#[tokio::test]
async fn break_after_sends_in_band_error_after_exactly_n_tokens() {
    let srv = start();
    let (text, errored) = read_all(openai(&srv, &chat_body(true), "break_after=3").await).await;
    assert!(!errored, "the body ends cleanly");
    let events = sse(&text);
    assert_eq!(openai_text(&events), expected(3));
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert!(!text.contains("[DONE]"));

    let (text, errored) =
        read_all(anthropic(&srv, &messages_body(true), "break_after=2").await).await;
    assert!(!errored);
    let events = sse(&text);
    assert_eq!(anthropic_text(&events), expected(2));
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"));
    assert_eq!(
        serde_json::from_str::<Value>(data).unwrap(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    assert!(!text.contains("message_stop"));
    wait_for(&srv, |s| s.completed_streams == 2 && s.errors_injected == 2).await;
}

#[tokio::test]
async fn drop_after_truncates_the_body() {
    let srv = start();
    for knobs in ["drop_after=4", "drop_after=4; token_delay_ms=5"] {
        let (text, errored) = read_all(openai(&srv, &chat_body(true), knobs).await).await;
        assert!(errored, "the chunked body must not finish");
        assert_eq!(openai_text(&sse(&text)), expected(4));
        assert!(!text.contains("[DONE]"));
    }
    let (text, errored) =
        read_all(anthropic(&srv, &messages_body(true), "drop_after=1").await).await;
    assert!(errored);
    assert_eq!(anthropic_text(&sse(&text)), expected(1));
    // A non-streaming answer is cut mid-JSON.
    let resp = openai(&srv, &chat_body(false), "drop_after=1").await;
    assert!(resp.bytes().await.is_err());
    let stats = srv.stats();
    assert_eq!(stats.client_disconnects, 0, "our own aborts are not client disconnects");
    assert_eq!(stats.errors_injected, 4);
}

#[tokio::test]
async fn hang_after_goes_silent_and_the_client_disconnect_is_counted() {
    let srv = start();
    let resp = anthropic(&srv, &messages_body(true), "hang_after=2").await;
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    // Everything up to the hang point arrives...
    while anthropic_text(&sse(&text)) != expected(2) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the first tokens arrive")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // ...then nothing, with the connection still open.
    let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(next.is_err(), "expected silence, got {next:?}");
    assert_eq!(srv.stats().active_streams, 1);
    drop(stream);
    wait_for(&srv, |s| s.client_disconnects == 1 && s.active_streams == 0).await;
}

#[tokio::test]
async fn hang_never_answers() {
    let srv = start();
    let result = client()
        .post(format!("{}/v1/chat/completions", srv.base_url()))
        .header("x-fake-llm", "hang")
        .timeout(Duration::from_millis(300))
        .json(&chat_body(false))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
}

#[tokio::test]
async fn malformed_after_sends_one_invalid_frame_and_carries_on() {
    let srv = start();
    let (text, errored) = read_all(openai(&srv, &chat_body(true), "malformed_after=2").await).await;
    assert!(!errored);
    let events = sse(&text);
    let bad: Vec<_> = events
        .iter()
        .filter(|(_, d)| d != "[DONE]" && serde_json::from_str::<Value>(d).is_err())
        .collect();
    assert_eq!(bad.len(), 1);
    // The bad frame sits after the role chunk and two tokens.
    assert!(serde_json::from_str::<Value>(&events[3].1).is_err());
    assert_eq!(openai_text(&events), expected(16));
    assert_eq!(events.last().unwrap().1, "[DONE]");

    let (text, _) =
        read_all(anthropic(&srv, &messages_body(true), "malformed_after=0").await).await;
    let events = sse(&text);
    assert!(serde_json::from_str::<Value>(&events[3].1).is_err());
    assert_eq!(events.last().unwrap().0.as_deref(), Some("message_stop"));
}

#[tokio::test]
async fn reject_prefill_refuses_a_trailing_assistant_message() {
    let srv = start();
    let prefill =
        json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}]);
    let mut body = chat_body(false);
    body["messages"] = prefill.clone();
    let resp = openai(&srv, &body, "reject_prefill").await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("prefill"));

    let mut body = messages_body(false);
    body["messages"] = prefill;
    let resp = anthropic(&srv, &body, "reject_prefill").await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(
        v["error"]["message"],
        "This model does not support assistant message prefill. The conversation must end with a user message."
    );
    // Without the knob, prefill is accepted.
    assert_eq!(anthropic(&srv, &body, "").await.status(), 200);
}

#[tokio::test]
async fn fail_rate_is_deterministic_for_a_seed() {
    async fn pattern(knobs: &str) -> Vec<u16> {
        let srv = start();
        let mut out = Vec::new();
        for _ in 0..30 {
            out.push(openai(&srv, &chat_body(false), knobs).await.status().as_u16());
        }
        out
    }
    let a = pattern("fail_rate=0.5; seed=7").await;
    let b = pattern("fail_rate=0.5; seed=7").await;
    assert_eq!(a, b);
    assert!(a.iter().all(|s| [200, 500, 503].contains(s)), "{a:?}");
    let failures = a.iter().filter(|s| **s != 200).count();
    assert!((5..=25).contains(&failures), "{a:?}");
    assert_ne!(a, pattern("fail_rate=0.5; seed=8").await);
    assert!(pattern("fail_rate=0").await.iter().all(|s| *s == 200));
}

#[tokio::test]
async fn client_disconnect_mid_stream_is_counted() {
    let srv = start();
    let resp = openai(&srv, &chat_body(true), "tokens=100; token_delay_ms=20").await;
    let mut stream = resp.bytes_stream();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    assert_eq!(srv.stats().active_streams, 1);
    drop(stream);
    wait_for(&srv, |s| s.client_disconnects == 1 && s.active_streams == 0).await;
    assert_eq!(srv.stats().completed_streams, 0);
}

#[tokio::test]
async fn bad_knob_is_a_400_naming_the_knob() {
    let srv = start();
    let resp = openai(&srv, &chat_body(false), "tokens=lots").await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("`tokens`"));
    let resp = anthropic(&srv, &messages_body(false), "frobnicate=1").await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("`frobnicate`"));
}

#[tokio::test]
async fn ttft_delays_the_first_token() {
    let srv = start();
    let started = Instant::now();
    let resp = openai(&srv, &chat_body(false), "ttft_ms=150").await;
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let started = Instant::now();
    let (text, _) =
        read_all(openai(&srv, &chat_body(true), "ttft_ms=100; token_delay_ms=10; tokens=5").await)
            .await;
    assert!(started.elapsed() >= Duration::from_millis(140));
    assert_eq!(openai_text(&sse(&text)), expected(5));
}

#[tokio::test]
async fn server_defaults_apply_and_the_header_overrides_them() {
    let srv = FakeLlmServer::start(Scenario { tokens: 4, seed: 3, ..Scenario::default() }).unwrap();
    let v: Value = openai(&srv, &chat_body(false), "").await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], deterministic_text(PROMPT, 3, 4).concat());
    let v: Value = openai(&srv, &chat_body(false), "tokens=2").await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], deterministic_text(PROMPT, 3, 2).concat());
}

#[tokio::test]
async fn stats_record_the_last_request_without_secrets() {
    let srv = start();
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    read_all(openai(&srv, &body, "tokens=1").await).await;
    let stats: loadtest::fake_llm::Stats = client()
        .get(format!("{}/_fake/stats", srv.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.requests, 1);
    let last = stats.last_request.unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.body, body);
    assert!(last.authorization);
    assert!(!last.x_api_key);
    let raw = client()
        .get(format!("{}/_fake/stats", srv.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw.contains("sk-test"), "credential values are never recorded");

    anthropic(&srv, &messages_body(false), "").await;
    let last = srv.stats().last_request.unwrap();
    assert!(last.x_api_key && !last.authorization);
    assert_eq!(last.anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(last.body["system"], "You are terse.");
}

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors() {
    let srv = start();
    let url = format!("{}/v1/embeddings", srv.base_url());
    let v: Value = client()
        .post(&url)
        .json(&json!({"model": "text-embedding-3-small", "input": "reset my password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "embedding");
    let e: Vec<f64> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(e.len(), 384);
    assert!((e.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    assert_eq!(v["usage"]["prompt_tokens"], 3);

    let v: Value = client()
        .post(&url)
        .json(&json!({"model": "m", "input": ["a b", "reset my password"], "dimensions": 64}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 64);
    assert_eq!(
        v["data"][1]["embedding"],
        json!(loadtest::fake_llm::embed("reset my password", 64))
    );
    let resp = client().post(&url).json(&json!({"model": "m"})).send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn models_and_health() {
    let srv = start();
    let v: Value = client()
        .get(format!("{}/v1/models", srv.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let first = &v["data"][0];
    assert_eq!(first["object"], "model");
    assert!(first["id"].is_string() && first["created"].is_u64() && first["owned_by"].is_string());
    let health = client().get(format!("{}/health", srv.base_url())).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn dropping_the_server_does_not_wait_for_hung_requests() {
    let srv = start();
    let url = format!("{}/v1/chat/completions", srv.base_url());
    let pending = tokio::spawn(async move {
        client().post(url).header("x-fake-llm", "hang").json(&chat_body(false)).send().await
    });
    wait_for(&srv, |s| s.requests == 1).await;
    let started = Instant::now();
    drop(srv);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // The hung client sees its connection closed rather than an answer.
    assert!(pending.await.unwrap().is_err());
}
