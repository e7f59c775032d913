//! `POST /v1/chat/completions` in OpenAI's Chat Completions shapes: the request as the API
//! reference describes it (what the gateway cannot honour is refused with a 400 naming the
//! parameter, never ignored), the `chat.completion` answer, the `chat.completion.chunk`
//! stream ending in `data: [DONE]` (with a usage chunk under
//! `stream_options.include_usage`), and errors as `{"error": {message, type, param, code}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::ports::llm::{ChatMessage, FinishReason, GenerationRequest, Role};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};

use super::turn::{self, Finish, Piece, Pieces};
use super::{
    CompatError, Flavor, MAX_MESSAGES, MAX_STOP_SEQUENCES, MAX_USER_BYTES, Recorder, authenticate,
    conversation_id, model_known, openai_usage, outcome_headers, parse_object, read_body,
    stream_headers, unix_now,
};
use crate::server::AppState;

/// Parameters of the API reference the gateway does not implement. Sent with a value other
/// than `null` (or the neutral value in [`neutral`]) they are refused by name.
const UNSUPPORTED: &[&str] = &[
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "metadata",
    "modalities",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "safety_identifier",
    "seed",
    "service_tier",
    "store",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "verbosity",
    "web_search_options",
];

/// Values of unsupported parameters that ask for exactly the default behaviour, so SDKs and
/// frameworks that always send them still work.
fn neutral(key: &str, value: &Value) -> bool {
    match key {
        "frequency_penalty" | "presence_penalty" => value.as_f64() == Some(0.0),
        "top_p" => value.as_f64() == Some(1.0),
        "logprobs" | "store" => value == &Value::Bool(false),
        _ => false,
    }
}

/// A validated chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub generation: GenerationRequest,
    pub stream: bool,
    pub include_usage: bool,
    /// The end-user id the caller passed (`user`), recorded with the turn.
    pub user: Option<String>,
    /// Per-request generation settings that were sent; a stored conversation's own
    /// settings apply instead, so they are refused in conversation mode.
    pub per_request: Vec<&'static str>,
}

/// Validates a request body. `max_message_bytes` bounds each message's text.
pub fn parse_request(body: &[u8], max_message_bytes: usize) -> Result<ChatRequest, CompatError> {
    let map = parse_object(body)?;
    let mut request = ChatRequest {
        model: String::new(),
        generation: GenerationRequest::default(),
        stream: false,
        include_usage: false,
        user: None,
        per_request: Vec::new(),
    };
    let mut messages = None;
    let mut stream_options = None;
    let mut max_tokens = None;
    for (key, value) in &map {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => match value.as_str() {
                Some(model) if !model.trim().is_empty() => request.model = model.to_owned(),
                _ => return Err(CompatError::invalid("model", "model must be a model name")),
            },
            "messages" => messages = Some(value),
            "stream" => {
                request.stream = value
                    .as_bool()
                    .ok_or_else(|| CompatError::invalid("stream", "stream must be a boolean"))?;
            }
            "stream_options" => stream_options = Some(value),
            "temperature" => {
                let t = value.as_f64().filter(|t| (0.0..=2.0).contains(t)).ok_or_else(|| {
                    CompatError::invalid("temperature", "temperature must be between 0 and 2")
                })?;
                request.generation.temperature = Some(t as f32);
                request.per_request.push("temperature");
            }
            "max_tokens" | "max_completion_tokens" => {
                let n = value.as_u64().filter(|n| *n >= 1 && *n <= u64::from(u32::MAX)).ok_or_else(
                    || {
                        CompatError::invalid(
                            key.clone(),
                            format!("{key} must be a positive integer"),
                        )
                    },
                )? as u32;
                if max_tokens.is_some_and(|m| m != n) {
                    return Err(CompatError::invalid(
                        key.clone(),
                        "max_tokens and max_completion_tokens disagree; send one",
                    ));
                }
                max_tokens = Some(n);
                request.per_request.push("max_tokens");
            }
            "stop" => {
                request.generation.stop = parse_stop(value)?;
                request.per_request.push("stop");
            }
            "n" => {
                if value.as_u64() != Some(1) {
                    return Err(CompatError::unsupported("n")
                        .with_message("only n=1 is supported: one choice per request"));
                }
            }
            "user" => match value.as_str() {
                Some(user) if user.len() <= MAX_USER_BYTES => request.user = Some(user.to_owned()),
                _ => {
                    return Err(CompatError::invalid(
                        "user",
                        format!("user must be a string of at most {MAX_USER_BYTES} bytes"),
                    ));
                }
            },
            "response_format" => {
                if value.get("type").and_then(Value::as_str) != Some("text")
                    || value.as_object().is_some_and(|o| o.len() != 1)
                {
                    return Err(CompatError::unsupported("response_format")
                        .with_message("only response_format {\"type\": \"text\"} is supported"));
                }
            }
            known if UNSUPPORTED.contains(&known) => {
                if !neutral(known, value) {
                    return Err(CompatError::unsupported(known));
                }
            }
            other => return Err(CompatError::unrecognized(other)),
        }
    }
    if request.model.is_empty() {
        return Err(CompatError::invalid("model", "you must provide a model parameter"));
    }
    request.generation.max_tokens = max_tokens;
    if let Some(options) = stream_options {
        if !request.stream {
            return Err(CompatError::invalid(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ));
        }
        let options = options.as_object().ok_or_else(|| {
            CompatError::invalid("stream_options", "stream_options must be an object")
        })?;
        for (key, value) in options {
            match key.as_str() {
                "include_usage" => {
                    request.include_usage = value.as_bool().ok_or_else(|| {
                        CompatError::invalid(
                            "stream_options.include_usage",
                            "include_usage must be a boolean",
                        )
                    })?;
                }
                other => return Err(CompatError::unsupported(format!("stream_options.{other}"))),
            }
        }
    }
    let messages = messages
        .ok_or_else(|| CompatError::invalid("messages", "you must provide a messages parameter"))?;
    parse_messages(messages, max_message_bytes, &mut request.generation)?;
    Ok(request)
}

fn parse_stop(value: &Value) -> Result<Vec<String>, CompatError> {
    let stops: Vec<String> = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| CompatError::invalid("stop", "stop must be a string or strings"))?,
        _ => return Err(CompatError::invalid("stop", "stop must be a string or an array")),
    };
    if stops.len() > MAX_STOP_SEQUENCES || stops.iter().any(String::is_empty) {
        return Err(CompatError::invalid(
            "stop",
            format!("stop takes up to {MAX_STOP_SEQUENCES} non-empty strings"),
        ));
    }
    Ok(stops)
}

/// `messages` → system prompt + alternating user/assistant turns.
fn parse_messages(
    value: &Value,
    max_message_bytes: usize,
    generation: &mut GenerationRequest,
) -> Result<(), CompatError> {
    let items = value
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| CompatError::invalid("messages", "messages must be a non-empty array"))?;
    if items.len() > MAX_MESSAGES {
        return Err(CompatError::invalid(
            "messages",
            format!("at most {MAX_MESSAGES} messages per request"),
        ));
    }
    let mut system: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("messages[{i}]");
        let message = item
            .as_object()
            .ok_or_else(|| CompatError::invalid(at.clone(), "each message must be an object"))?;
        let mut role = None;
        let mut content = None;
        for (key, value) in message {
            match key.as_str() {
                "role" => role = value.as_str(),
                "content" => content = Some(value),
                _ if value.is_null() => {}
                "name" | "tool_calls" | "function_call" | "audio" | "tool_call_id" => {
                    return Err(CompatError::unsupported(format!("{at}.{key}")));
                }
                // An assistant message's `refusal` echoed back by a client is just text.
                "refusal" => {}
                other => return Err(CompatError::unrecognized(format!("{at}.{other}"))),
            }
        }
        let text = text_of(content, &at, max_message_bytes)?;
        match role {
            Some("system" | "developer") => system.push(text),
            Some("user") => push_merged(&mut generation.messages, Role::User, text),
            Some("assistant") => push_merged(&mut generation.messages, Role::Assistant, text),
            Some("tool" | "function") => {
                return Err(CompatError::unsupported(format!("{at}.role")).with_message(format!(
                    "{at}.role: tool and function messages are not supported"
                )));
            }
            _ => {
                return Err(CompatError::invalid(
                    format!("{at}.role"),
                    "role must be one of system, developer, user, assistant",
                ));
            }
        }
    }
    if generation.messages.last().map(|m| m.role) != Some(Role::User) {
        return Err(CompatError::invalid("messages", "the last message must have role `user`"));
    }
    if !system.is_empty() {
        generation.system = Some(system.join("\n\n"));
    }
    Ok(())
}

/// Consecutive messages of one role are joined, as the providers themselves do.
pub fn push_merged(messages: &mut Vec<ChatMessage>, role: Role, text: String) {
    match messages.last_mut() {
        Some(last) if last.role == role => {
            last.content.push_str("\n\n");
            last.content.push_str(&text);
        }
        _ => messages.push(ChatMessage { role, content: text }),
    }
}

/// A message's `content`: a string, or an array of `{"type": "text", "text": …}` parts.
fn text_of(content: Option<&Value>, at: &str, max_bytes: usize) -> Result<String, CompatError> {
    let text = match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let here = format!("{at}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {}
                    Some(_) => return Err(CompatError::unsupported(format!("{here}.type"))),
                    None => return Err(CompatError::invalid(here, "each part needs a type")),
                }
                let piece = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                    CompatError::invalid(format!("{here}.text"), "a text part needs text")
                })?;
                if let Some(extra) =
                    part.as_object().and_then(|o| o.keys().find(|k| *k != "type" && *k != "text"))
                {
                    return Err(CompatError::unsupported(format!("{here}.{extra}")));
                }
                text.push_str(piece);
            }
            text
        }
        _ => {
            return Err(CompatError::invalid(
                format!("{at}.content"),
                "content must be a string or an array of text parts",
            ));
        }
    };
    if text.len() > max_bytes {
        return Err(CompatError::invalid(
            format!("{at}.content"),
            format!("a message is limited to {max_bytes} bytes"),
        )
        .with_code("string_above_max_length"));
    }
    Ok(text)
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::StopSequence | FinishReason::Other => "stop",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let request_id = super::request_id(&req);
    match handle(&req, &state, payload, &request_id).await {
        Ok(response) => response,
        Err(error) => error.response(Flavor::OpenAi, &request_id),
    }
}

async fn handle(
    req: &HttpRequest,
    state: &AppState,
    payload: web::Payload,
    request_id: &str,
) -> Result<HttpResponse, CompatError> {
    let principal = authenticate(req, state).await?;
    let body = read_body(payload, state.config.limits.max_body_bytes).await?;
    let request = parse_request(&body, state.config.limits.max_message_bytes)?;
    if !model_known(state, &request.model) {
        return Err(CompatError::model_not_found(&request.model));
    }
    let conversation = conversation_id(req)?;
    let pieces = turn::start(
        state,
        &principal,
        request_id,
        conversation.as_deref(),
        &request.model,
        &request.generation,
        &request.per_request,
    )
    .await?;
    let record = Recorder {
        flavor: Flavor::OpenAi,
        principal,
        request_id: request_id.to_owned(),
        model: request.model.clone(),
        conversation,
    };
    if !request.stream {
        let answer = turn::collect(pieces).await;
        record.record(answer.as_ref().map(|a| &a.finish));
        let answer = answer?;
        let mut response = HttpResponse::Ok();
        outcome_headers(&mut response, request_id, &answer.finish);
        return Ok(response.json(completion_body(request_id, &answer.text, &answer.finish)));
    }
    let (first, rest) = match turn::first_piece(pieces).await {
        Ok(started) => started,
        Err(e) => {
            record.record(Err(&e));
            return Err(e);
        }
    };
    let writer = ChunkWriter::new(request_id, &request.model, request.include_usage);
    let mut response = HttpResponse::Ok();
    stream_headers(&mut response, request_id);
    Ok(response.streaming(chunk_stream(writer, first, rest, record)))
}

/// The `chat.completion` object.
pub fn completion_body(request_id: &str, text: &str, finish: &Finish) -> Value {
    json!({
        "id": format!("chatcmpl-{request_id}"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": finish.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": finish_reason(finish.finish_reason),
        }],
        "usage": openai_usage(&finish.usage),
        "system_fingerprint": null,
    })
}

/// Renders `chat.completion.chunk` SSE frames. Chunks carry the requested model name (the
/// model that answers is not known until the end); the closing chunks carry the model that
/// finished.
struct ChunkWriter {
    id: String,
    created: u64,
    model_json: String,
    include_usage: bool,
}

impl ChunkWriter {
    fn new(request_id: &str, model: &str, include_usage: bool) -> Self {
        Self {
            id: format!("chatcmpl-{request_id}"),
            created: unix_now(),
            model_json: json_string(model),
            include_usage,
        }
    }

    /// `data: {chunk}\n\n` with `delta` (raw JSON) and `finish_reason` (raw JSON).
    fn chunk(&self, out: &mut String, model_json: &str, delta: &str, finish: &str) {
        out.push_str("data: {\"id\":\"");
        out.push_str(&self.id);
        out.push_str("\",\"object\":\"chat.completion.chunk\",\"created\":");
        out.push_str(&self.created.to_string());
        out.push_str(",\"model\":");
        out.push_str(model_json);
        out.push_str(",\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"delta\":");
        out.push_str(delta);
        out.push_str(",\"logprobs\":null,\"finish_reason\":");
        out.push_str(finish);
        out.push_str("}]");
        if self.include_usage {
            out.push_str(",\"usage\":null");
        }
        out.push_str("}\n\n");
    }

    fn role(&self, out: &mut String) {
        self.chunk(out, &self.model_json, "{\"role\":\"assistant\",\"content\":\"\"}", "null");
    }

    fn delta(&self, out: &mut String, text: &str) {
        let delta = format!("{{\"content\":{}}}", json_string(text));
        self.chunk(out, &self.model_json, &delta, "null");
    }

    fn finish(&self, out: &mut String, finish: &Finish) {
        let model = json_string(&finish.model);
        let reason = json_string(finish_reason(finish.finish_reason));
        self.chunk(out, &model, "{}", &reason);
        if self.include_usage {
            let usage = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": finish.model,
                "system_fingerprint": null,
                "choices": [],
                "usage": openai_usage(&finish.usage),
            });
            out.push_str("data: ");
            out.push_str(&usage.to_string());
            out.push_str("\n\n");
        }
        out.push_str("data: [DONE]\n\n");
    }

    /// A mid-stream failure: OpenAI's SDKs raise `APIError` on a chunk with an `error` key.
    fn error(&self, out: &mut String, error: &CompatError) {
        out.push_str("data: ");
        out.push_str(&error.openai_body().to_string());
        out.push_str("\n\n");
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

struct StreamState {
    writer: ChunkWriter,
    first: Option<Piece>,
    pieces: Pieces,
    record: Recorder,
    started: bool,
}

/// The SSE body: the role chunk with the first piece, then a chunk per delta; failovers are
/// invisible; the finish chunk, the usage chunk if asked for, and `[DONE]` close it.
fn chunk_stream(
    writer: ChunkWriter,
    first: Piece,
    pieces: Pieces,
    record: Recorder,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    let state = StreamState { writer, first: Some(first), pieces, record, started: false };
    stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        let mut out = String::new();
        if !state.started {
            state.started = true;
            state.writer.role(&mut out);
        }
        loop {
            let piece = match state.first.take() {
                Some(piece) => Some(Ok(piece)),
                None => state.pieces.next().await,
            };
            match piece {
                Some(Ok(Piece::Delta(text))) => {
                    state.writer.delta(&mut out, &text);
                    return Some((Ok(Bytes::from(out)), Some(state)));
                }
                Some(Ok(Piece::Failover { .. })) => continue,
                Some(Ok(Piece::Done(finish))) => {
                    state.writer.finish(&mut out, &finish);
                    state.record.record(Ok(&finish));
                    return Some((Ok(Bytes::from(out)), None));
                }
                Some(Ok(Piece::Retract)) => {
                    let error = CompatError::new(
                        StatusCode::BAD_GATEWAY,
                        "retract_unsupported",
                        "the reply restarted on another model; restart mode cannot be streamed here",
                    );
                    state.writer.error(&mut out, &error);
                    state.record.record(Err(&error));
                    return Some((Ok(Bytes::from(out)), None));
                }
                Some(Err(error)) => {
                    state.writer.error(&mut out, &error);
                    state.record.record(Err(&error));
                    return Some((Ok(Bytes::from(out)), None));
                }
                None => {
                    let error = CompatError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_unavailable",
                        "the turn ended without an answer",
                    );
                    state.writer.error(&mut out, &error);
                    state.record.record(Err(&error));
                    return Some((Ok(Bytes::from(out)), None));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<ChatRequest, CompatError> {
        parse_request(body.to_string().as_bytes(), 1024)
    }

    #[test]
    fn accepts_the_documented_subset() {
        let request = parse(json!({
            "model": "auto",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No jokes."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": [{"type": "text", "text": "Tell "}, {"type": "text", "text": "me"}]},
            ],
            "temperature": 0.5,
            "max_completion_tokens": 20,
            "stop": "END",
            "n": 1,
            "user": "u-1",
            "stream": true,
            "stream_options": {"include_usage": true},
            "top_p": 1,
            "tools": null,
        }))
        .unwrap();
        assert_eq!(request.generation.system.as_deref(), Some("Be brief.\n\nNo jokes."));
        assert_eq!(request.generation.messages.len(), 3);
        assert_eq!(request.generation.messages[2].content, "Tell me");
        assert_eq!(request.generation.max_tokens, Some(20));
        assert_eq!(request.generation.stop, vec!["END".to_owned()]);
        assert!(request.stream && request.include_usage);
        assert_eq!(request.user.as_deref(), Some("u-1"));
    }

    #[test]
    fn refuses_what_it_cannot_honour_by_name() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let cases = [
            ("tools", json!([{"type": "function"}]), "tools"),
            ("n", json!(2), "n"),
            ("logprobs", json!(true), "logprobs"),
            ("response_format", json!({"type": "json_object"}), "response_format"),
            ("frobnicate", json!(1), "frobnicate"),
            ("seed", json!(7), "seed"),
        ];
        for (key, value, param) in cases {
            let mut body = base();
            body[key] = value;
            let e = parse(body).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{key}");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        let image = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x"}}]}]});
        assert_eq!(parse(image).unwrap_err().param.as_deref(), Some("messages[0].content[0].type"));
        let tool = json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]});
        assert_eq!(parse(tool).unwrap_err().param.as_deref(), Some("messages[0].role"));
        let big =
            json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(2000)}]});
        assert_eq!(parse(big).unwrap_err().code, "string_above_max_length");
        let options = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "stream_options": {"include_usage": true}});
        assert_eq!(parse(options).unwrap_err().param.as_deref(), Some("stream_options"));
    }
}
