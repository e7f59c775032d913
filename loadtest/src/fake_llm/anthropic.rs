//! Anthropic Messages (`POST /v1/messages`) in Anthropic's wire format: header checks
//! (`x-api-key` or `Authorization`, `anthropic-version`), request validation with Anthropic's error shape, the
//! non-streaming `message` object, and the named-event SSE stream (`message_start` …
//! `message_stop`), whose per-token frame is fully static around the token.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::{BufMut, BytesMut};
use serde::Serialize;
use serde_json::Value;

use super::stream::{BodyFault, Faults, TokenStream, Wire, generation_time, truncated_body};
use super::text::{Finish, Generation, prompt_and_partial};
use super::{Scenario, Shared, hang_forever, random_id};

/// The context window quoted by `error_code=context_length_exceeded`.
const CONTEXT_WINDOW: u64 = 200_000;

/// Anthropic's error type for an HTTP status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// A response builder with Anthropic's request-id header.
fn respond(status: StatusCode) -> HttpResponseBuilder {
    let mut b = HttpResponseBuilder::new(status);
    b.insert_header(("request-id", format!("req_{}", random_id(24))));
    b
}

/// `{"type":"error","error":{"type":…,"message":…},"request_id":…}` with `status`.
fn error(status: u16, message: &str, retry_after: Option<u64>) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let request_id = format!("req_{}", random_id(24));
    let mut resp = HttpResponseBuilder::new(code);
    resp.insert_header(("request-id", request_id.clone()));
    if let Some(secs) = retry_after {
        resp.insert_header(("retry-after", secs.to_string()));
    }
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        error: Inner<'a>,
        request_id: &'a str,
    }
    #[derive(Serialize)]
    struct Inner<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        message: &'a str,
    }
    resp.json(Body {
        kind: "error",
        error: Inner { kind: error_type(status), message },
        request_id: &request_id,
    })
}

fn invalid(message: &str) -> HttpResponse {
    error(400, message, None)
}

/// The error Anthropic sends for `status`, for `error_status` and `fail_rate`.
fn injected_error(status: u16, s: &Scenario, model: &str, prompt_tokens: u64) -> HttpResponse {
    let message = match status {
        400 if s.error_code.as_deref() == Some("context_length_exceeded") => format!(
            "prompt is too long: {} tokens > {CONTEXT_WINDOW} maximum",
            CONTEXT_WINDOW + prompt_tokens
        ),
        400 => "fake-llm injected a 400 Bad Request".to_owned(),
        401 => "invalid x-api-key".to_owned(),
        403 => "Your API key does not have permission to use the specified resource.".to_owned(),
        404 => format!("model: {model}"),
        413 => "Request exceeds the maximum allowed number of bytes.".to_owned(),
        429 => "Number of request tokens has exceeded your per-minute rate limit".to_owned(),
        503 | 529 => "Overloaded".to_owned(),
        500..=599 => "Internal server error".to_owned(),
        _ => format!("fake-llm injected a {status} error"),
    };
    error(status, &message, s.retry_after_for(status))
}

/// The text of `content` or `system`: a string, or the `text` of its text blocks.
fn blocks_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Input tokens: words of the system prompt and every message, 3 per message, 3 for the reply.
fn input_tokens(body: &Value, scenario: &Scenario) -> u64 {
    let system = body.get("system").map_or(0, |s| scenario.text_tokens(&blocks_text(s)));
    let messages = body.get("messages").and_then(Value::as_array);
    system
        + messages.map_or(0, |ms| {
            ms.iter()
                .map(|m| {
                    scenario.text_tokens(&blocks_text(m.get("content").unwrap_or(&Value::Null))) + 3
                })
                .sum::<u64>()
        })
        + 3
}

struct MessagesRequest {
    model: String,
    max_tokens: u64,
    stream: bool,
    stop_sequences: Vec<String>,
    prompt: String,
    /// A cut-off answer to continue (prefill, or a request to continue it).
    partial: Option<String>,
    ends_with_assistant: bool,
}

fn parse_messages(body: &Value) -> Result<MessagesRequest, String> {
    let obj = body.as_object().ok_or("Input should be a valid dictionary")?;
    let model = match obj.get("model") {
        Some(Value::String(m)) => m.clone(),
        None => return Err("model: Field required".into()),
        Some(_) => return Err("model: Input should be a valid string".into()),
    };
    let max_tokens = match obj.get("max_tokens") {
        None => return Err("max_tokens: Field required".into()),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => n,
            Some(_) => return Err("max_tokens: Input should be greater than or equal to 1".into()),
            None => return Err("max_tokens: Input should be a valid integer".into()),
        },
    };
    let messages = match obj.get("messages") {
        None => return Err("messages: Field required".into()),
        Some(Value::Array(ms)) => ms,
        Some(_) => return Err("messages: Input should be a valid list".into()),
    };
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    let mut turns: Vec<(&str, String)> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => {
                turns.push((role, blocks_text(m.get("content").unwrap_or(&Value::Null))));
            }
            Some("system") => {
                return Err(
                    "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role."
                        .into(),
                );
            }
            Some(_) => {
                return Err(format!("messages.{i}.role: Input should be 'user' or 'assistant'"));
            }
            None => return Err(format!("messages.{i}.role: Field required")),
        }
        match m.get("content") {
            Some(Value::String(_) | Value::Array(_)) => {}
            None => return Err(format!("messages.{i}.content: Field required")),
            Some(_) => {
                return Err(format!(
                    "messages.{i}.content: Input should be a valid string or list"
                ));
            }
        }
    }
    match obj.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks))
            if blocks.iter().all(|b| b.get("type").and_then(Value::as_str) == Some("text")) => {}
        Some(_) => {
            return Err("system: Input should be a valid string or a list of text blocks".into());
        }
    }
    if let Some(t) = obj.get("temperature").filter(|t| !t.is_null()) {
        match t.as_f64() {
            Some(t) if (0.0..=1.0).contains(&t) => {}
            Some(t) if t > 1.0 => {
                return Err("temperature: Input should be less than or equal to 1".into());
            }
            _ => return Err("temperature: Input should be greater than or equal to 0".into()),
        }
    }
    let stop_sequences = match obj.get("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(_) => return Err("stop_sequences: Input should be a valid list of strings".into()),
    };
    let ends_with_assistant =
        messages.last().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("assistant");
    let (prompt, partial) = prompt_and_partial(&turns);
    Ok(MessagesRequest {
        model,
        max_tokens,
        stream: obj.get("stream").and_then(Value::as_bool).unwrap_or(false),
        stop_sequences,
        prompt,
        partial,
        ends_with_assistant,
    })
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: bytes::Bytes,
) -> HttpResponse {
    let seq = shared.begin(&req, &body);
    // Anthropic checks credentials before anything else. Current SDKs (anthropic-python 2.x)
    // send the key as `Authorization: Bearer`, which the real API accepts too.
    let headers = req.headers();
    if !headers.contains_key("x-api-key") && !headers.contains_key("authorization") {
        return error(401, "x-api-key header is required", None);
    }
    let scenario = match shared.scenario(&req) {
        Ok(s) => s,
        Err(message) => return invalid(&message),
    };
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let model = parsed
        .as_ref()
        .ok()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str)
        .unwrap_or("claude-sonnet-4-20250514");
    let input_tokens = parsed.as_ref().map_or(0, |b| input_tokens(b, &scenario));
    if let Some(status) = shared.injected_status(&scenario, seq, 529) {
        return injected_error(status, &scenario, model, input_tokens);
    }
    if scenario.hang {
        return hang_forever().await;
    }
    if !req.headers().contains_key("anthropic-version") {
        return invalid("anthropic-version: header is required");
    }
    let Ok(json) = parsed else {
        return invalid("There was an issue with your request body: invalid JSON");
    };
    let msg = match parse_messages(&json) {
        Ok(m) => m,
        Err(e) => return invalid(&e),
    };
    if scenario.reject_prefill && msg.ends_with_assistant {
        shared.injected();
        return invalid(
            "This model does not support assistant message prefill. The conversation must end with a user message.",
        );
    }
    let mut generation = Generation::new(
        &msg.prompt,
        scenario.seed,
        scenario.reply_budget(&msg.prompt),
        Some(msg.max_tokens),
        msg.stop_sequences.clone(),
    );
    if let Some(partial) = &msg.partial {
        generation = generation.continue_after(partial);
    }
    let id = format!("msg_01{}", random_id(22));
    if msg.stream {
        let wire = AnthropicWire { message_start: message_start(&id, &msg.model, input_tokens) };
        return respond(StatusCode::OK)
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .streaming(TokenStream::new(wire, generation, &scenario, shared.counters.clone()));
    }
    let (text, output_tokens, finish) = generation.collect();
    let fault = Faults::from_scenario(&scenario).for_whole_body(output_tokens);
    tokio::time::sleep(generation_time(&scenario, output_tokens)).await;
    if fault == Some(BodyFault::Hang) {
        return hang_forever().await;
    }
    if fault == Some(BodyFault::Break) {
        shared.injected();
        return error(529, "Overloaded", None);
    }
    let (stop_reason, stop_sequence) = stop_reason(&finish);
    let message = MessageBody {
        id: &id,
        kind: "message",
        role: "assistant",
        model: &msg.model,
        content: [TextBlock { kind: "text", text: &text }],
        stop_reason,
        stop_sequence,
        usage: Usage {
            input_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            output_tokens: u64::from(output_tokens),
        },
    };
    let json = serde_json::to_vec(&message).unwrap_or_default();
    match fault {
        Some(BodyFault::Drop) => {
            shared.injected();
            respond(StatusCode::OK).content_type("application/json").streaming(truncated_body(json))
        }
        Some(BodyFault::Malformed) => {
            shared.injected();
            let cut = json.len() / 2;
            respond(StatusCode::OK).content_type("application/json").body(json[..cut].to_vec())
        }
        _ => respond(StatusCode::OK).content_type("application/json").body(json),
    }
}

fn stop_reason(finish: &Finish) -> (&'static str, Option<&str>) {
    match finish {
        Finish::Complete => ("end_turn", None),
        Finish::Length => ("max_tokens", None),
        Finish::StopSequence(s) => ("stop_sequence", Some(s.as_str())),
    }
}

#[derive(Serialize)]
struct MessageBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [TextBlock<'a>; 1],
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
    usage: Usage,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct Usage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

/// The opening events, serialised once per request: `message_start` (empty content,
/// `output_tokens: 1` as Anthropic reports it), `content_block_start` and a `ping`.
fn message_start(id: &str, model: &str, input_tokens: u64) -> Vec<u8> {
    // Hand-written rather than `json!` so the keys keep Anthropic's order on the wire.
    let model = serde_json::to_string(model).unwrap_or_else(|_| "\"\"".to_owned());
    let start = format!(
        "{{\"type\":\"message_start\",\"message\":{{\"id\":\"{id}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{model},\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":{input_tokens},\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}}}}"
    );
    let mut out = b"event: message_start\ndata: ".to_vec();
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(
        b"\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
          event: ping\ndata: {\"type\": \"ping\"}\n\n",
    );
    out
}

struct AnthropicWire {
    message_start: Vec<u8>,
}

impl Wire for AnthropicWire {
    fn preamble(&self, out: &mut BytesMut) {
        out.put_slice(&self.message_start);
    }

    fn token(&self, out: &mut BytesMut, token: &str) {
        // Vocabulary words are JSON-safe as written (checked by a unit test in `text.rs`).
        out.put_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"",
        );
        out.put_slice(token.as_bytes());
        out.put_slice(b"\"}}\n\n");
    }

    fn finish(&self, out: &mut BytesMut, finish: &Finish, output_tokens: u32) {
        let (reason, sequence) = stop_reason(finish);
        let sequence = serde_json::to_string(&sequence).unwrap_or_else(|_| "null".to_owned());
        let delta = format!(
            "{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{reason}\",\"stop_sequence\":{sequence}}},\"usage\":{{\"output_tokens\":{output_tokens}}}}}"
        );
        out.put_slice(
            b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: ",
        );
        out.put_slice(delta.as_bytes());
        out.put_slice(b"\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    }

    fn in_band_error(&self, out: &mut BytesMut) {
        out.put_slice(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
    }

    fn malformed(&self, out: &mut BytesMut) {
        out.put_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"malformed\n\n",
        );
    }
}
