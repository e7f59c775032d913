//! OpenAI Chat Completions (`POST /v1/chat/completions`) and the model list, in OpenAI's wire
//! format: request validation with OpenAI's error shape, the non-streaming `chat.completion`
//! object, and the `chat.completion.chunk` SSE stream (pre-serialised per request so each
//! token frame is two memcpys).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::Value;

use super::stream::{BodyFault, Faults, TokenStream, Wire, generation_time, truncated_body};
use super::text::{Finish, Generation, prompt_and_partial};
use super::{Scenario, Shared, hang_forever, random_id, unix_now};

/// Stable per backend configuration, as the real field is.
const SYSTEM_FINGERPRINT: &str = "fp_f4ke11m0a1";
/// The context window quoted by `error_code=context_length_exceeded`.
const CONTEXT_WINDOW: u64 = 128_000;
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

/// An OpenAI-shaped error, before it becomes a response.
struct ApiError {
    status: u16,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<String>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&str>, code: Option<&str>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: code.map(str::to_owned),
        }
    }

    fn into_response(self, retry_after: Option<u64>) -> HttpResponse {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = respond(status);
        if let Some(secs) = retry_after {
            resp.insert_header(("retry-after", secs.to_string()));
        }
        resp.json(Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        })
    }
}

/// A response builder with OpenAI's request-id header.
fn respond(status: StatusCode) -> HttpResponseBuilder {
    let mut b = HttpResponseBuilder::new(status);
    b.insert_header(("x-request-id", format!("req_{}", random_id(32))));
    b
}

/// The error OpenAI sends for `status`, for `error_status` and `fail_rate`.
fn injected_error(status: u16, s: &Scenario, model: &str, prompt_tokens: u64) -> HttpResponse {
    let code = s.error_code.as_deref();
    let (kind, default_code, message) = match status {
        400 if code == Some("context_length_exceeded") => (
            "invalid_request_error",
            None,
            format!(
                "This model's maximum context length is {CONTEXT_WINDOW} tokens. However, your messages resulted in {} tokens. Please reduce the length of the messages.",
                CONTEXT_WINDOW + prompt_tokens
            ),
        ),
        400 => (
            "invalid_request_error",
            None,
            "fake-llm injected a 400 Bad Request.".to_owned(),
        ),
        401 => (
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.".to_owned(),
        ),
        403 => (
            "invalid_request_error",
            None,
            format!("You are not allowed to sample from this model: {model}"),
        ),
        404 => (
            "invalid_request_error",
            Some("model_not_found"),
            format!("The model `{model}` does not exist or you do not have access to it."),
        ),
        413 => (
            "invalid_request_error",
            None,
            "Request too large.".to_owned(),
        ),
        429 => (
            "requests",
            Some("rate_limit_exceeded"),
            format!(
                "Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in {}s.",
                s.retry_after_for(429).unwrap_or(1)
            ),
        ),
        503 => (
            "server_error",
            None,
            "The server is overloaded or not ready yet.".to_owned(),
        ),
        500..=599 => (
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!".to_owned(),
        ),
        _ => (
            "invalid_request_error",
            None,
            format!("fake-llm injected a {status} error."),
        ),
    };
    ApiError { status, message, kind, param: None, code: code.or(default_code).map(str::to_owned) }
        .into_response(s.retry_after_for(status))
}

/// The text of a message's `content`: a string, or the `text` of its content parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Prompt tokens: words of every message, 3 per message, 3 to prime the reply. Lenient, so an
/// injected error can quote it even for a request that would not validate.
fn prompt_tokens(body: &Value, scenario: &Scenario) -> u64 {
    let messages = body.get("messages").and_then(Value::as_array);
    messages.map_or(0, |ms| {
        ms.iter()
            .map(|m| {
                scenario.text_tokens(&content_text(m.get("content").unwrap_or(&Value::Null))) + 3
            })
            .sum::<u64>()
            + 3
    })
}

/// What the fake needs from a validated request.
struct ChatRequest {
    model: String,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<u64>,
    stop: Vec<String>,
    prompt: String,
    /// A cut-off answer to continue (prefill, or a request to continue it).
    partial: Option<String>,
    ends_with_assistant: bool,
}

fn parse_chat(body: &Value) -> Result<ChatRequest, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("The request body must be a JSON object.", None, None))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(ApiError::invalid("you must provide a model parameter", None, None)),
    };
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                Some("missing_required_parameter"),
            ));
        }
        Some(Value::Array(ms)) if ms.is_empty() => {
            return Err(ApiError::invalid(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                Some("messages"),
                Some("empty_array"),
            ));
        }
        Some(Value::Array(ms)) => ms,
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid type for 'messages': expected an array of objects.",
                Some("messages"),
                Some("invalid_type"),
            ));
        }
    };
    let mut turns: Vec<(&str, String)> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}].role");
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(
                    format!("Missing required parameter: '{param}'."),
                    Some(&param),
                    Some("missing_required_parameter"),
                ));
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("Invalid type for '{param}': expected a string."),
                    Some(&param),
                    Some("invalid_type"),
                ));
            }
        };
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid(
                format!(
                    "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
                ),
                Some(&param),
                Some("invalid_value"),
            ));
        }
        if role == "user" || role == "assistant" {
            turns.push((role, content_text(m.get("content").unwrap_or(&Value::Null))));
        }
    }
    let (prompt, partial) = prompt_and_partial(&turns);
    let ends_with_assistant =
        messages.last().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("assistant");

    if let Some(n) = obj.get("n").filter(|n| !n.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(ApiError::invalid(
            "fake-llm supports only n=1.",
            Some("n"),
            Some("invalid_value"),
        ));
    }
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let stream_options = obj.get("stream_options").filter(|v| !v.is_null());
    if stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
            None,
        ));
    }
    let include_usage = stream_options
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let mut max_tokens = None;
    for key in ["max_tokens", "max_completion_tokens"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => {
                    max_tokens = Some(max_tokens.map_or(n, |m: u64| m.min(n)));
                }
                _ => {
                    return Err(ApiError::invalid(
                        format!(
                            "Invalid '{key}': integer below minimum value. Expected a value >= 1, but got {v} instead."
                        ),
                        Some(key),
                        Some("integer_below_min_value"),
                    ));
                }
            },
        }
    }
    let stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => {
            a.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "Invalid 'stop': expected a string or an array of at most 4 strings.",
                Some("stop"),
                Some("invalid_type"),
            ));
        }
    };
    Ok(ChatRequest {
        model,
        stream,
        include_usage,
        max_tokens,
        stop,
        prompt,
        partial,
        ends_with_assistant,
    })
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    let seq = shared.begin(&req, &body);
    let scenario = match shared.scenario(&req) {
        Ok(s) => s,
        Err(message) => {
            return ApiError::invalid(message, Some("x-fake-llm"), None).into_response(None);
        }
    };
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let model = parsed
        .as_ref()
        .ok()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str)
        .unwrap_or("gpt-4o");
    let input_tokens = parsed.as_ref().map_or(0, |b| prompt_tokens(b, &scenario));
    if let Some(status) = shared.injected_status(&scenario, seq, 503) {
        return injected_error(status, &scenario, model, input_tokens);
    }
    if scenario.hang {
        return hang_forever().await;
    }
    let Ok(json) = parsed else {
        return ApiError::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)",
            None,
            None,
        )
        .into_response(None);
    };
    let chat = match parse_chat(&json) {
        Ok(c) => c,
        Err(e) => return e.into_response(None),
    };
    if scenario.reject_prefill && chat.ends_with_assistant {
        shared.injected();
        return ApiError::invalid(
            "This model does not support assistant message prefill. The conversation must end with a user message.",
            Some("messages"),
            None,
        )
        .into_response(None);
    }
    let mut generation = Generation::new(
        &chat.prompt,
        scenario.seed,
        scenario.reply_budget(&chat.prompt),
        chat.max_tokens,
        chat.stop.clone(),
    );
    if let Some(partial) = &chat.partial {
        generation = generation.continue_after(partial);
    }
    let id = format!("chatcmpl-{}", random_id(29));
    let created = unix_now();
    if chat.stream {
        let wire = OpenAiWire::new(&id, created, &chat, input_tokens);
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
        return injected_error(500, &scenario, &chat.model, input_tokens);
    }
    let completion = Completion {
        id: &id,
        object: "chat.completion",
        created,
        model: &chat.model,
        choices: [Choice {
            index: 0,
            message: Message { role: "assistant", content: &text, refusal: None, annotations: [] },
            logprobs: None,
            finish_reason: finish_reason(&finish),
        }],
        usage: Usage::new(input_tokens, u64::from(output_tokens)),
        service_tier: "default",
        system_fingerprint: SYSTEM_FINGERPRINT,
    };
    let json = serde_json::to_vec(&completion).unwrap_or_default();
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

fn finish_reason(finish: &Finish) -> &'static str {
    match finish {
        Finish::Length => "length",
        Finish::Complete | Finish::StopSequence(_) => "stop",
    }
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<&'a str>,
    annotations: [(); 0],
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

impl Usage {
    fn new(prompt: u64, completion: u64) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptDetails { cached_tokens: 0, audio_tokens: 0 },
            completion_tokens_details: CompletionDetails {
                reasoning_tokens: 0,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

/// Chunk frames for one streamed completion. `head` is everything up to the `choices` array
/// (`data: {"id":…,"choices":[`), serialised once per request.
struct OpenAiWire {
    head: Bytes,
    /// Closes a chunk: `"usage":null` on every chunk when the client asked for a usage chunk.
    tail: &'static [u8],
    include_usage: bool,
    prompt_tokens: u64,
}

impl OpenAiWire {
    fn new(id: &str, created: u64, chat: &ChatRequest, prompt_tokens: u64) -> Self {
        let model = serde_json::to_string(&chat.model).unwrap_or_else(|_| "\"\"".to_owned());
        let head = format!(
            "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":{model},\"service_tier\":\"default\",\"system_fingerprint\":\"{SYSTEM_FINGERPRINT}\",\"choices\":["
        );
        OpenAiWire {
            head: Bytes::from(head),
            tail: if chat.include_usage { b"],\"usage\":null}\n\n" } else { b"]}\n\n" },
            include_usage: chat.include_usage,
            prompt_tokens,
        }
    }

    fn choice(&self, out: &mut BytesMut, delta: &[&[u8]], finish_reason: &[u8]) {
        out.put_slice(&self.head);
        out.put_slice(b"{\"index\":0,\"delta\":");
        for part in delta {
            out.put_slice(part);
        }
        out.put_slice(b",\"logprobs\":null,\"finish_reason\":");
        out.put_slice(finish_reason);
        out.put_slice(b"}");
        out.put_slice(self.tail);
    }
}

impl Wire for OpenAiWire {
    fn preamble(&self, out: &mut BytesMut) {
        self.choice(out, &[b"{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}"], b"null");
    }

    fn token(&self, out: &mut BytesMut, token: &str) {
        // Vocabulary words are JSON-safe as written (checked by a unit test in `text.rs`).
        self.choice(out, &[b"{\"content\":\"", token.as_bytes(), b"\"}"], b"null");
    }

    fn finish(&self, out: &mut BytesMut, finish: &Finish, output_tokens: u32) {
        let reason: &[u8] = match finish_reason(finish) {
            "length" => b"\"length\"",
            _ => b"\"stop\"",
        };
        self.choice(out, &[b"{}"], reason);
        if self.include_usage {
            out.put_slice(&self.head);
            out.put_slice(b"],\"usage\":");
            let usage = Usage::new(self.prompt_tokens, u64::from(output_tokens));
            out.put_slice(&serde_json::to_vec(&usage).unwrap_or_default());
            out.put_slice(b"}\n\n");
        }
        out.put_slice(b"data: [DONE]\n\n");
    }

    fn in_band_error(&self, out: &mut BytesMut) {
        out.put_slice(
            b"data: {\"error\":{\"message\":\"The server had an error while processing your request. Sorry about that!\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
        );
    }

    fn malformed(&self, out: &mut BytesMut) {
        out.put_slice(&self.head);
        out.put_slice(b"{\"index\":0,\"delta\":{\"content\":\"malformed\n\n");
    }
}

/// Models the fake claims to serve, with their owners.
const MODELS: &[(&str, &str)] = &[
    ("gpt-4o", "system"),
    ("gpt-4o-mini", "system"),
    ("gpt-4.1", "system"),
    ("gpt-4.1-mini", "system"),
    ("o4-mini", "system"),
    ("text-embedding-3-small", "system"),
    ("text-embedding-3-large", "system"),
    ("claude-sonnet-4-20250514", "anthropic"),
    ("claude-3-5-haiku-20241022", "anthropic"),
    ("claude-opus-4-20250514", "anthropic"),
];

/// `GET /v1/models`: OpenAI's list, or Anthropic's when the request carries
/// `anthropic-version` (both APIs share the path).
pub(crate) async fn models(shared: web::Data<Shared>, req: HttpRequest) -> HttpResponse {
    shared.begin(&req, &Bytes::new());
    const CREATED: u64 = 1_715_367_049;
    if req.headers().contains_key("anthropic-version") {
        let data: Vec<Value> = MODELS
            .iter()
            .filter(|(_, owner)| *owner == "anthropic")
            .map(|(id, _)| {
                serde_json::json!({
                    "type": "model",
                    "id": id,
                    "display_name": id,
                    "created_at": "2025-05-14T00:00:00Z",
                })
            })
            .collect();
        let first = data.first().and_then(|m| m.get("id")).cloned();
        let last = data.last().and_then(|m| m.get("id")).cloned();
        return HttpResponseBuilder::new(StatusCode::OK)
            .insert_header(("request-id", format!("req_{}", random_id(24))))
            .json(serde_json::json!({
                "data": data, "has_more": false, "first_id": first, "last_id": last,
            }));
    }
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, owner)| {
            serde_json::json!({"id": id, "object": "model", "created": CREATED, "owned_by": owner})
        })
        .collect();
    respond(StatusCode::OK).json(serde_json::json!({"object": "list", "data": data}))
}
