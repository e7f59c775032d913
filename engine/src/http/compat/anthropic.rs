//! `POST /v1/messages` in Anthropic's Messages shapes, for callers of the Anthropic SDK: the
//! request (what the gateway cannot honour is refused by name), the `message` answer, the
//! event stream (`message_start`, `content_block_start`, `ping`, `content_block_delta`,
//! `content_block_stop`, `message_delta`, `message_stop`; an `error` event on a failure
//! mid-stream), and errors as `{"type": "error", "error": {type, message}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::ports::llm::{FinishReason, GenerationRequest, Role, Usage};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};

use super::openai::push_merged;
use super::turn::{self, Finish, Piece, Pieces};
use super::{
    CompatError, Flavor, MAX_MESSAGES, MAX_STOP_SEQUENCES, MAX_USER_BYTES, Recorder, authenticate,
    conversation_id, model_known, outcome_headers, parse_object, read_body, stream_headers,
};
use crate::server::AppState;

/// Parameters of the API reference the gateway does not implement; refused by name.
const UNSUPPORTED: &[&str] = &[
    "container",
    "context_management",
    "mcp_servers",
    "service_tier",
    "thinking",
    "tool_choice",
    "tools",
    "top_k",
    "top_p",
];

/// A validated Messages request.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesRequest {
    pub model: String,
    pub generation: GenerationRequest,
    pub stream: bool,
    pub per_request: Vec<&'static str>,
}

/// Validates a request body. `max_message_bytes` bounds each message's (and the system
/// prompt's) text.
pub fn parse_request(
    body: &[u8],
    max_message_bytes: usize,
) -> Result<MessagesRequest, CompatError> {
    let map = parse_object(body)?;
    let mut request = MessagesRequest {
        model: String::new(),
        generation: GenerationRequest::default(),
        stream: false,
        per_request: Vec::new(),
    };
    let mut messages = None;
    let mut max_tokens = None;
    for (key, value) in &map {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => match value.as_str() {
                Some(model) if !model.trim().is_empty() => request.model = model.to_owned(),
                _ => return Err(CompatError::invalid("model", "must be a model name")),
            },
            "messages" => messages = Some(value),
            "max_tokens" => {
                max_tokens = Some(
                    value.as_u64().filter(|n| *n >= 1 && *n <= u64::from(u32::MAX)).ok_or_else(
                        || CompatError::invalid("max_tokens", "must be a positive integer"),
                    )? as u32,
                );
            }
            "system" => {
                let system = text_of(value, "system", max_message_bytes)?;
                if !system.is_empty() {
                    request.generation.system = Some(system);
                }
                request.per_request.push("system");
            }
            "stop_sequences" => {
                let stops: Vec<String> = value
                    .as_array()
                    .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
                    .filter(|s: &Vec<String>| {
                        s.len() <= MAX_STOP_SEQUENCES && s.iter().all(|s| !s.is_empty())
                    })
                    .ok_or_else(|| {
                        CompatError::invalid(
                            "stop_sequences",
                            format!("up to {MAX_STOP_SEQUENCES} non-empty strings"),
                        )
                    })?;
                request.generation.stop = stops;
                request.per_request.push("stop_sequences");
            }
            "stream" => {
                request.stream = value
                    .as_bool()
                    .ok_or_else(|| CompatError::invalid("stream", "must be a boolean"))?;
            }
            "temperature" => {
                let t = value.as_f64().filter(|t| (0.0..=1.0).contains(t)).ok_or_else(|| {
                    CompatError::invalid("temperature", "must be between 0 and 1")
                })?;
                request.generation.temperature = Some(t as f32);
                request.per_request.push("temperature");
            }
            "metadata" => {
                let ok = value.as_object().is_some_and(|m| {
                    m.iter().all(|(k, v)| {
                        k == "user_id"
                            && (v.is_null()
                                || v.as_str().is_some_and(|s| s.len() <= MAX_USER_BYTES))
                    })
                });
                if !ok {
                    return Err(CompatError::unsupported("metadata")
                        .with_message("only metadata.user_id (a short string) is supported"));
                }
            }
            known if UNSUPPORTED.contains(&known) => return Err(CompatError::unsupported(known)),
            other => {
                return Err(CompatError::unrecognized(other)
                    .with_message(format!("{other}: Extra inputs are not permitted")));
            }
        }
    }
    if request.model.is_empty() {
        return Err(CompatError::invalid("model", "Field required"));
    }
    request.generation.max_tokens =
        Some(max_tokens.ok_or_else(|| CompatError::invalid("max_tokens", "Field required"))?);
    let messages = messages.ok_or_else(|| CompatError::invalid("messages", "Field required"))?;
    let items = messages
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| CompatError::invalid("messages", "must be a non-empty array"))?;
    if items.len() > MAX_MESSAGES {
        return Err(CompatError::invalid("messages", format!("at most {MAX_MESSAGES} messages")));
    }
    for (i, item) in items.iter().enumerate() {
        let at = format!("messages.{i}");
        let message = item
            .as_object()
            .ok_or_else(|| CompatError::invalid(at.clone(), "each message must be an object"))?;
        if let Some(extra) = message.keys().find(|k| *k != "role" && *k != "content") {
            return Err(CompatError::unrecognized(format!("{at}.{extra}"))
                .with_message(format!("{at}.{extra}: Extra inputs are not permitted")));
        }
        let role = match message.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            _ => {
                return Err(CompatError::invalid(
                    format!("{at}.role"),
                    "Input should be 'user' or 'assistant'",
                ));
            }
        };
        let content = message.get("content").unwrap_or(&Value::Null);
        let text = text_of(content, &format!("{at}.content"), max_message_bytes)?;
        push_merged(&mut request.generation.messages, role, text);
    }
    if request.generation.messages.first().map(|m| m.role) != Some(Role::User) {
        return Err(CompatError::invalid(
            "messages.0.role",
            "the first message must use the user role",
        ));
    }
    Ok(request)
}

/// Content: a string, or an array of `{"type": "text", "text": …}` blocks.
fn text_of(value: &Value, at: &str, max_bytes: usize) -> Result<String, CompatError> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (j, block) in blocks.iter().enumerate() {
                let here = format!("{at}.{j}");
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {}
                    Some(_) => return Err(CompatError::unsupported(format!("{here}.type"))),
                    None => return Err(CompatError::invalid(here, "each block needs a type")),
                }
                if let Some(extra) = block.as_object().and_then(|o| {
                    o.iter().find(|(k, v)| *k != "type" && *k != "text" && !v.is_null())
                }) {
                    return Err(CompatError::unsupported(format!("{here}.{}", extra.0)));
                }
                let piece = block.get("text").and_then(Value::as_str).ok_or_else(|| {
                    CompatError::invalid(format!("{here}.text"), "a text block needs text")
                })?;
                text.push_str(piece);
            }
            text
        }
        _ => return Err(CompatError::invalid(at, "must be a string or an array of text blocks")),
    };
    if text.len() > max_bytes {
        return Err(CompatError::invalid(at, format!("a message is limited to {max_bytes} bytes"))
            .with_code("request_too_large"));
    }
    Ok(text)
}

/// Anthropic's `stop_reason`.
pub fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Other => "end_turn",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::Length => "max_tokens",
        FinishReason::ContentFilter => "refusal",
    }
}

/// The matched stop sequence, when it can be told: providers report *that* a stop sequence
/// matched, not which, so it is known only when one was given.
fn stop_sequence(finish: &Finish, stops: &[String]) -> Value {
    match (finish.finish_reason, stops) {
        (FinishReason::StopSequence, [only]) => Value::String(only.clone()),
        _ => Value::Null,
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

/// `POST /v1/messages`.
pub async fn messages(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let request_id = super::request_id(&req);
    match handle(&req, &state, payload, &request_id).await {
        Ok(response) => response,
        Err(error) => error.response(Flavor::Anthropic, &request_id),
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
        flavor: Flavor::Anthropic,
        principal,
        request_id: request_id.to_owned(),
        model: request.model.clone(),
        conversation,
    };
    let id = format!("msg_{request_id}");
    if !request.stream {
        let answer = turn::collect(pieces).await;
        record.record(answer.as_ref().map(|a| &a.finish));
        let answer = answer?;
        let content = if answer.text.is_empty() {
            json!([])
        } else {
            json!([{"type": "text", "text": answer.text}])
        };
        let body = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": answer.finish.model,
            "content": content,
            "stop_reason": stop_reason(answer.finish.finish_reason),
            "stop_sequence": stop_sequence(&answer.finish, &request.generation.stop),
            "usage": usage_json(&answer.finish.usage),
        });
        let mut response = HttpResponse::Ok();
        outcome_headers(&mut response, request_id, &answer.finish);
        response.insert_header(("request-id", request_id.to_owned()));
        return Ok(response.json(body));
    }
    let (first, rest) = match turn::first_piece(pieces).await {
        Ok(started) => started,
        Err(e) => {
            record.record(Err(&e));
            return Err(e);
        }
    };
    let mut response = HttpResponse::Ok();
    stream_headers(&mut response, request_id);
    response.insert_header(("request-id", request_id.to_owned()));
    let events = EventWriter { id, model: request.model, stops: request.generation.stop };
    Ok(response.streaming(event_stream(events, first, rest, record)))
}

/// Renders the Messages event stream.
struct EventWriter {
    id: String,
    /// The requested name: the model that answers is known only at the end.
    model: String,
    stops: Vec<String>,
}

impl EventWriter {
    fn event(out: &mut String, name: &str, data: &Value) {
        out.push_str("event: ");
        out.push_str(name);
        out.push_str("\ndata: ");
        out.push_str(&data.to_string());
        out.push_str("\n\n");
    }

    fn start(&self, out: &mut String) {
        // Input tokens are known only when the turn ends; `message_delta` carries them.
        let message = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage_json(&Usage::default()),
        });
        Self::event(out, "message_start", &json!({"type": "message_start", "message": message}));
        Self::event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        );
        Self::event(out, "ping", &json!({"type": "ping"}));
    }

    fn delta(out: &mut String, text: &str) {
        Self::event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}}),
        );
    }

    fn finish(&self, out: &mut String, finish: &Finish) {
        Self::event(out, "content_block_stop", &json!({"type": "content_block_stop", "index": 0}));
        Self::event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason(finish.finish_reason),
                    "stop_sequence": stop_sequence(finish, &self.stops),
                },
                "usage": usage_json(&finish.usage),
            }),
        );
        Self::event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    fn error(out: &mut String, error: &CompatError) {
        let body = json!({"type": "error",
                          "error": {"type": error.anthropic_type(), "message": error.message}});
        Self::event(out, "error", &body);
    }
}

struct StreamState {
    writer: EventWriter,
    first: Option<Piece>,
    pieces: Pieces,
    record: Recorder,
    started: bool,
}

fn event_stream(
    writer: EventWriter,
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
            state.writer.start(&mut out);
        }
        loop {
            let piece = match state.first.take() {
                Some(piece) => Some(Ok(piece)),
                None => state.pieces.next().await,
            };
            let error = match piece {
                Some(Ok(Piece::Delta(text))) => {
                    EventWriter::delta(&mut out, &text);
                    return Some((Ok(Bytes::from(out)), Some(state)));
                }
                Some(Ok(Piece::Failover { .. })) => continue,
                Some(Ok(Piece::Done(finish))) => {
                    state.writer.finish(&mut out, &finish);
                    state.record.record(Ok(&finish));
                    return Some((Ok(Bytes::from(out)), None));
                }
                Some(Ok(Piece::Retract)) => CompatError::new(
                    StatusCode::BAD_GATEWAY,
                    "retract_unsupported",
                    "the reply restarted on another model; restart mode cannot be streamed here",
                ),
                Some(Err(error)) => error,
                None => CompatError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "the turn ended without an answer",
                ),
            };
            EventWriter::error(&mut out, &error);
            state.record.record(Err(&error));
            return Some((Ok(Bytes::from(out)), None));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<MessagesRequest, CompatError> {
        parse_request(body.to_string().as_bytes(), 1024)
    }

    #[test]
    fn accepts_the_documented_subset() {
        let request = parse(json!({
            "model": "auto",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [{"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Well,"},
            ],
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "metadata": {"user_id": "u1"},
            "stream": true,
        }))
        .unwrap();
        assert_eq!(request.generation.system.as_deref(), Some("Be brief."));
        assert_eq!(request.generation.messages.len(), 2, "consecutive user turns merge");
        assert_eq!(request.generation.messages[0].content, "Hi\n\nthere");
        assert_eq!(request.generation.messages[1].role, Role::Assistant, "prefill kept");
        assert_eq!(request.generation.max_tokens, Some(64));
        assert!(request.stream);
    }

    #[test]
    fn refuses_what_it_cannot_honour_by_name() {
        let base = || {
            json!({"model": "m", "max_tokens": 5,
                             "messages": [{"role": "user", "content": "x"}]})
        };
        for key in ["tools", "thinking", "top_k"] {
            let mut body = base();
            body[key] = json!({"x": 1});
            assert_eq!(parse(body).unwrap_err().param.as_deref(), Some(key));
        }
        let mut body = base();
        body.as_object_mut().unwrap().remove("max_tokens");
        assert_eq!(parse(body).unwrap_err().param.as_deref(), Some("max_tokens"));
        let image = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user",
            "content": [{"type": "image", "source": {}}]}]});
        assert_eq!(parse(image).unwrap_err().param.as_deref(), Some("messages.0.content.0.type"));
        let cached = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user",
            "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]});
        assert_eq!(
            parse(cached).unwrap_err().param.as_deref(),
            Some("messages.0.content.0.cache_control")
        );
    }
}
