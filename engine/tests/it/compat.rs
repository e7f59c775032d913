//! The OpenAI- and Anthropic-compatible APIs as an SDK sees them: every response compared,
//! field by field, with the shapes in the providers' public API references (Chat
//! Completions, chat.completion.chunk, Models; Anthropic Messages, streaming events,
//! errors), against the real engine with fake-llm behind it.

use loadtest::fake_llm::{Scenario, deterministic_text};
use serde_json::{Value, json};

use crate::app::{TestApp, spawn_app, spawn_app_configured, spawn_app_with};

fn expected(prompt: &str, tokens: u32) -> String {
    deterministic_text(prompt, 0, tokens).concat()
}

fn chat(prompt: &str) -> Value {
    json!({
        "model": "primary",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": prompt},
        ],
    })
}

fn anthropic_body(prompt: &str) -> Value {
    json!({
        "model": "primary",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": prompt}],
    })
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

async fn post(
    app: &TestApp,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    // A fresh connection per request: when the engine refuses a request before reading its
    // body it closes that connection, and a pooled reuse racing the close would fail here.
    let mut request = app.http.post(app.url(path)).header("connection", "close").json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// `data:` payloads of an OpenAI SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|frame| !frame.trim().is_empty())
        .map(|frame| frame.strip_prefix("data: ").expect("every frame is a data line").to_owned())
        .collect()
}

/// `(event, data)` pairs of an Anthropic SSE body, in order.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|frame| !frame.trim().is_empty())
        .map(|frame| {
            let mut lines = frame.lines();
            let event = lines.next().unwrap().strip_prefix("event: ").unwrap().to_owned();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], event.as_str(), "data.type repeats the event name");
            (event, data)
        })
        .collect()
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn openai_completion_has_the_reference_shape_and_says_what_the_engine_did() {
    let app = spawn_app();
    let response = post(
        &app,
        "/v1/chat/completions",
        &chat("Hello gateway"),
        &[("x-request-id", "req-compat-1")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-request-id").as_deref(), Some("req-compat-1"));
    assert_eq!(header(&response, "x-switchyard-model").as_deref(), Some("primary"));
    assert_eq!(header(&response, "x-switchyard-provider").as_deref(), Some("openai_compatible"));
    assert_eq!(header(&response, "x-switchyard-cache").as_deref(), Some("miss"));
    assert_eq!(header(&response, "x-switchyard-failovers").as_deref(), Some("0"));
    assert_eq!(header(&response, "x-switchyard-cost-micros").as_deref(), Some("0"));
    let request_id = header(&response, "x-request-id").unwrap();
    let body: Value = response.json().await.unwrap();

    assert_eq!(
        keys(&body),
        ["choices", "created", "id", "model", "object", "system_fingerprint", "usage"]
    );
    assert_eq!(body["id"], format!("chatcmpl-{request_id}"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], "primary");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    let choice = &choices[0];
    assert_eq!(keys(choice), ["finish_reason", "index", "logprobs", "message"]);
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], expected("Hello gateway", 8));
    assert_eq!(choice["message"]["refusal"], Value::Null);
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 8);
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 8
    );

    // What reached the upstream: the system prompt and the user message.
    let sent = app.fake.stats().last_request.unwrap().body;
    assert_eq!(sent["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(sent["messages"][1]["content"], "Hello gateway");
}

#[tokio::test]
async fn a_model_at_its_in_flight_limit_sends_the_next_turn_to_its_fallback() {
    let slow = Scenario { ttft_ms: 1_500, ..Scenario::default() };
    let app = spawn_app_configured("", slow, "", |config| {
        let primary = config.models.iter_mut().find(|m| m.name == "primary").unwrap();
        primary.max_in_flight = Some(1);
        primary.queue_timeout_ms = Some(1);
    });
    let first_body = chat("first");
    let first = post(&app, "/v1/chat/completions", &first_body, &[]);
    let second = async {
        // Once the first is upstream, the primary's only slot is taken.
        while app.fake.stats().requests == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        post(&app, "/v1/chat/completions", &chat("second"), &[]).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    assert_eq!(header(&first, "x-switchyard-model").as_deref(), Some("primary"));
    assert_eq!(header(&second, "x-switchyard-model").as_deref(), Some("fallback"), "primary full");
}

#[tokio::test]
async fn openai_request_parameters_reach_the_upstream() {
    let app = spawn_app();
    let body = json!({
        "model": "primary",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Parts "}, {"type": "text", "text": "join"}]}],
        "temperature": 0.3,
        "max_completion_tokens": 5,
        "stop": ["zzz", "yyy"],
        "n": 1,
        "user": "end-user-1",
    });
    let response = post(&app, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(response.status(), 200);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["usage"]["completion_tokens"], 5, "max tokens honoured");
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    let sent = app.fake.stats().last_request.unwrap().body;
    assert_eq!(sent["messages"][0]["content"], "Parts join");
    assert_eq!(sent["stop"], json!(["zzz", "yyy"]));
    assert!((sent["temperature"].as_f64().unwrap() - 0.3).abs() < 1e-6);
}

#[tokio::test]
async fn openai_stream_is_chunks_then_usage_then_done() {
    let app = spawn_app();
    let mut body = chat("Stream to me");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response =
        post(&app, "/v1/chat/completions", &body, &[("x-request-id", "req-stream-1")]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type").as_deref(), Some("text/event-stream"));
    assert!(header(&response, "x-request-id").is_some());
    let request_id = header(&response, "x-request-id").unwrap();
    let frames = sse_data(&response.text().await.unwrap());

    assert_eq!(frames.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        frames[..frames.len() - 1].iter().map(|f| serde_json::from_str(f).unwrap()).collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], format!("chatcmpl-{request_id}"), "one id for the stream");
        assert!(chunk["created"].is_u64());
        assert!(chunk["model"].is_string());
        assert!(chunk.get("usage").is_some(), "include_usage: every chunk has a usage key");
    }
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["delta"]["role"], "assistant");
    assert_eq!(first["finish_reason"], Value::Null);
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 8);
    assert_eq!(
        usage_chunk["usage"]["total_tokens"].as_u64().unwrap(),
        usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap() + 8
    );
    let (finish_chunk, content_chunks) = rest.split_last().unwrap();
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish_chunk["choices"][0]["delta"], json!({}));
    assert_eq!(finish_chunk["model"], "primary", "the closing chunk names the model used");
    for chunk in content_chunks {
        assert_eq!(chunk["usage"], Value::Null);
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
    }
    let text: String = content_chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, expected("Stream to me", 8));

    // Without include_usage: no usage chunk and no usage keys.
    let mut plain = chat("Stream to me");
    plain["stream"] = json!(true);
    let response = post(&app, "/v1/chat/completions", &plain, &[]).await;
    let frames = sse_data(&response.text().await.unwrap());
    assert_eq!(frames.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        frames[..frames.len() - 1].iter().map(|f| serde_json::from_str(f).unwrap()).collect();
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none() && c["choices"].as_array().unwrap().len() == 1)
    );
}

#[tokio::test]
async fn a_primary_breaking_mid_stream_is_one_clean_stream_and_counted_in_headers() {
    let app = spawn_app_with("break_after=3", Scenario { tokens: 8, ..Scenario::default() }, "");
    let prompt = "Tell me about trains";
    let first_three: String = deterministic_text(prompt, 0, 8)[..3].concat();

    let mut body = chat(prompt);
    body["stream"] = json!(true);
    let response = post(&app, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(response.status(), 200);
    let frames = sse_data(&response.text().await.unwrap());
    assert_eq!(frames.last().unwrap(), "[DONE]", "{frames:?}");
    let chunks: Vec<Value> =
        frames[..frames.len() - 1].iter().map(|f| serde_json::from_str(f).unwrap()).collect();
    assert!(chunks.iter().all(|c| c.get("error").is_none()), "no error chunk: {chunks:?}");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(text.starts_with(&first_three) && text.len() > first_three.len(), "{text:?}");
    assert_eq!(chunks.last().unwrap()["model"], "fallback");

    let response = post(&app, "/v1/chat/completions", &chat(prompt), &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-failovers").as_deref(), Some("1"));
    assert_eq!(header(&response, "x-switchyard-model").as_deref(), Some("fallback"));
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["model"], "fallback");
    assert!(json["choices"][0]["message"]["content"].as_str().unwrap().starts_with(&first_three));
}

#[tokio::test]
async fn errors_use_each_providers_shape_and_status() {
    let app = spawn_app();
    let mut body = chat("x");
    body["model"] = json!("gpt-9");
    let response = post(&app, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(response.status(), 404);
    assert!(header(&response, "x-request-id").is_some());
    let json: Value = response.json().await.unwrap();
    assert_eq!(keys(&json["error"]), ["code", "message", "param", "type"]);
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert_eq!(json["error"]["code"], "model_not_found");
    assert_eq!(json["error"]["param"], "model");
    assert!(json["error"]["message"].as_str().unwrap().contains("gpt-9"));

    let mut body = anthropic_body("x");
    body["model"] = json!("claude-9");
    let response = post(&app, "/v1/messages", &body, &[("anthropic-version", "2023-06-01")]).await;
    assert_eq!(response.status(), 404);
    let request_id = header(&response, "request-id").unwrap();
    let json: Value = response.json().await.unwrap();
    assert_eq!(keys(&json), ["error", "request_id", "type"]);
    assert_eq!(json["type"], "error");
    assert_eq!(json["request_id"], request_id.as_str());
    assert_eq!(keys(&json["error"]), ["message", "type"]);
    assert_eq!(json["error"]["type"], "not_found_error");

    // Unsupported parameters are refused by name, never ignored.
    let cases = [
        (json!({"tools": [{"type": "function", "function": {"name": "f"}}]}), "tools"),
        (json!({"n": 2}), "n"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"response_format": {"type": "json_object"}}), "response_format"),
        (json!({"bogus": 1}), "bogus"),
    ];
    for (extra, param) in cases {
        let mut body = chat("x");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let response = post(&app, "/v1/chat/completions", &body, &[]).await;
        assert_eq!(response.status(), 400, "{param}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"]["param"], param);
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert!(json["error"]["message"].as_str().unwrap().contains(param));
    }
    let image = json!({"model": "primary", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]});
    let response = post(&app, "/v1/chat/completions", &image, &[]).await;
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["param"], "messages[0].content[1].type");

    let mut tools = anthropic_body("x");
    tools["tools"] = json!([{"name": "f", "input_schema": {}}]);
    let response = post(&app, "/v1/messages", &tools, &[]).await;
    assert_eq!(response.status(), 400);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert!(json["error"]["message"].as_str().unwrap().starts_with("tools"));

    // Size limits: a body over limits.max_body_bytes, and a message over max_message_bytes.
    let huge = chat(&"word ".repeat(60_000));
    let response = post(&app, "/v1/chat/completions", &huge, &[]).await;
    assert_eq!(response.status(), 413);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "request_too_large");
    let long = chat(&"y".repeat(40 * 1024));
    let response = post(&app, "/v1/chat/completions", &long, &[]).await;
    assert_eq!(response.status(), 400);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["param"], "messages[1].content");

    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "invalid_json");
}

#[tokio::test]
async fn upstream_failure_before_any_text_is_an_http_error_not_a_broken_stream() {
    let fake = Scenario { tokens: 8, error_status: Some(500), ..Scenario::default() };
    let app = spawn_app_with("", fake, "");
    let mut body = chat("x");
    body["stream"] = json!(true);
    let response = post(&app, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(response.status(), 502);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["type"], "server_error");
    assert_eq!(json["error"]["code"], "upstream_unavailable");

    let mut body = anthropic_body("x");
    body["stream"] = json!(true);
    let response = post(&app, "/v1/messages", &body, &[]).await;
    assert_eq!(response.status(), 502);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["type"], "api_error");
}

#[tokio::test]
async fn every_model_breaking_mid_stream_ends_the_stream_with_an_error() {
    // Both legs break after 3 tokens: the fallback cannot finish either.
    let fake = Scenario { tokens: 8, break_after: Some(3), ..Scenario::default() };
    let app = spawn_app_with("", fake, "");
    let mut body = chat("Break everything");
    body["stream"] = json!(true);
    let response = post(&app, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(response.status(), 200, "the stream had started");
    let frames = sse_data(&response.text().await.unwrap());
    assert_ne!(frames.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
    assert_eq!(keys(&last["error"]), ["code", "message", "param", "type"]);
    assert_eq!(last["error"]["type"], "server_error");

    let mut body = anthropic_body("Break everything");
    body["stream"] = json!(true);
    let response = post(&app, "/v1/messages", &body, &[]).await;
    assert_eq!(response.status(), 200);
    let events = sse_events(&response.text().await.unwrap());
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(keys(data), ["error", "type"]);
    assert_eq!(data["error"]["type"], "api_error");
    assert!(events.iter().all(|(name, _)| name != "message_stop"));
}

#[tokio::test]
async fn models_are_listed_in_both_shapes() {
    let app = spawn_app_with(
        "",
        Scenario { tokens: 8, ..Scenario::default() },
        "aliases = { auto = [\"primary\", \"fallback\"] }",
    );
    let (status, list) = app.get_json("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(keys(&list), ["data", "object"]);
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> =
        list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["primary", "fallback", "auto"]);
    for model in list["data"].as_array().unwrap() {
        assert_eq!(keys(model), ["created", "id", "object", "owned_by"]);
        assert_eq!(model["object"], "model");
        assert!(model["created"].is_u64());
    }
    assert_eq!(list["data"][0]["owned_by"], "openai_compatible");

    let response = app
        .http
        .get(app.url("/v1/models"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    let list: Value = response.json().await.unwrap();
    assert_eq!(keys(&list), ["data", "first_id", "has_more", "last_id"]);
    assert_eq!(list["has_more"], false);
    assert_eq!(list["first_id"], "primary");
    assert_eq!(list["last_id"], "auto");
    let model = &list["data"][0];
    assert_eq!(keys(model), ["created_at", "display_name", "id", "type"]);
    assert_eq!(model["type"], "model");
    assert!(model["created_at"].as_str().unwrap().ends_with('Z'));

    // An alias routes like a model.
    let mut body = chat("alias");
    body["model"] = json!("auto");
    let response = post(&app, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-model").as_deref(), Some("primary"));
    let (status, one) = app.get_json("/v1/models/auto").await;
    assert_eq!((status.as_u16(), one["id"].as_str()), (200, Some("auto")));
    let (status, _) = app.get_json("/v1/models/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn anthropic_message_has_the_reference_shape() {
    let app = spawn_app();
    let response = post(
        &app,
        "/v1/messages",
        &anthropic_body("Hi Claude"),
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-model").as_deref(), Some("primary"));
    let request_id = header(&response, "request-id").unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        keys(&body),
        ["content", "id", "model", "role", "stop_reason", "stop_sequence", "type", "usage"]
    );
    assert_eq!(body["id"], format!("msg_{request_id}"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "primary");
    assert_eq!(body["content"], json!([{"type": "text", "text": expected("Hi Claude", 8)}]));
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(body["usage"]["output_tokens"], 8);
    assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let sent = app.fake.stats().last_request.unwrap().body;
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["messages"][0], json!({"role": "system", "content": "Be brief."}));
}

#[tokio::test]
async fn anthropic_stream_events_come_in_the_documented_order() {
    let app = spawn_app_with("break_after=3", Scenario { tokens: 8, ..Scenario::default() }, "");
    let mut body = anthropic_body("Stream Claude");
    body["stream"] = json!(true);
    let response = post(&app, "/v1/messages", &body, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type").as_deref(), Some("text/event-stream"));
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names.iter().filter(|n| **n == "content_block_delta").count();
    assert!(deltas >= 4, "{names:?}");
    let mut order = vec!["message_start", "content_block_start", "ping"];
    order.extend(std::iter::repeat_n("content_block_delta", deltas));
    order.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, order, "one clean stream despite the failover");

    let start = &events[0].1["message"];
    assert_eq!(
        keys(start),
        ["content", "id", "model", "role", "stop_reason", "stop_sequence", "type", "usage"]
    );
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(events[1].1["content_block"], json!({"type": "text", "text": ""}));
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    let first_three: String = deterministic_text("Stream Claude", 0, 8)[..3].concat();
    assert!(text.starts_with(&first_three) && text.len() > first_three.len(), "{text:?}");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["delta"]["stop_sequence"], Value::Null);
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(delta["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_named_conversation_is_appended_to() {
    let app = spawn_app();
    let id = app.create_conversation(json!({"system_prompt": "Stored prompt."})).await;
    let conversation = [("x-switchyard-conversation", id.as_str())];

    let response = post(&app, "/v1/chat/completions", &chat("First question"), &conversation).await;
    assert_eq!(response.status(), 200);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["choices"][0]["message"]["content"], expected("First question", 8));

    let mut body = chat("Second question");
    body["stream"] = json!(true);
    let response = post(&app, "/v1/chat/completions", &body, &conversation).await;
    assert_eq!(response.status(), 200);
    let frames = sse_data(&response.text().await.unwrap());
    assert_eq!(frames.last().unwrap(), "[DONE]");
    // The model saw the stored history, not the request's: both earlier turns are there.
    let sent = app.fake.stats().last_request.unwrap().body;
    let contents: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents[0], "Stored prompt.");
    assert!(contents.contains(&"First question") && contents.last() == Some(&"Second question"));

    let (_, stored) = app.get_json(&format!("/api/v1/conversations/{id}")).await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), 4, "two turns stored");

    // What the conversation cannot honour per request is refused by name.
    let mut body = chat("Third");
    body["temperature"] = json!(0.1);
    let response = post(&app, "/v1/chat/completions", &body, &conversation).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["param"], "temperature");
    let mut body = chat("Third");
    body["model"] = json!("fallback");
    let response = post(&app, "/v1/chat/completions", &body, &conversation).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["param"], "model");
    // The message obeys the rules of REST and WebSocket posts, by the same codes.
    for (content, code) in [("a\u{0}b", "invalid_text"), (" \n ", "empty_message")] {
        let response = post(&app, "/v1/chat/completions", &chat(content), &conversation).await;
        assert_eq!(response.status(), 400, "{content:?}");
        let error = response.json::<Value>().await.unwrap()["error"].clone();
        assert_eq!(
            (error["code"].as_str(), error["param"].as_str()),
            (Some(code), Some("messages"))
        );
    }
    let response =
        post(&app, "/v1/chat/completions", &chat("x"), &[("x-switchyard-conversation", "nope")])
            .await;
    assert_eq!(response.status(), 404);

    // Anthropic callers can append too.
    let mut body = anthropic_body("Via Anthropic");
    body.as_object_mut().unwrap().remove("system");
    let response = post(&app, "/v1/messages", &body, &conversation).await;
    assert_eq!(response.status(), 200);
    let (_, stored) = app.get_json(&format!("/api/v1/conversations/{id}")).await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), 6);
}
