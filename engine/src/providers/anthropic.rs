//! Anthropic Messages adapter.
//!
//! Request: `x-api-key` (or the configured header) and `anthropic-version: 2023-06-01` are set
//! by the endpoint; the system prompt goes in the top-level `system` field; `max_tokens` is
//! required by the API, so a request without one gets [`DEFAULT_MAX_TOKENS`]; `stop` becomes
//! `stop_sequences`. A trailing assistant message is sent as-is: Anthropic continues it
//! (prefill); models that refuse answer a 400 that maps to `PrefillUnsupported`.
//!
//! Stream: `message_start` (id, model, input usage), `content_block_start`,
//! `content_block_delta` (only `text_delta` produces text; `thinking_delta`,
//! `input_json_delta`, `signature_delta` and unknown kinds are skipped), `content_block_stop`,
//! `message_delta` (stop reason, cumulative output usage), `message_stop` (the terminator),
//! `ping` keep-alives, and `error` events mid-stream. Unknown event types are skipped, as
//! Anthropic's versioning policy asks.
//!
//! Input usage is `input_tokens` plus cache creation and cache read tokens: every token of
//! the prompt the model processed (Anthropic reports the three separately).
//!
//! Provider request id: the `request-id` response header, else the message id.

use std::borrow::Cow;
use std::sync::Arc;

use actors::ports::llm::{
    BadRequestKind, Completion, CompletionResponse, FinishReason, GenerationRequest, LlmProvider,
    ProviderError, ProviderStream, Role, Usage,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use super::HttpEndpoint;
use super::http_errors::{self, WireError};
use super::sse::SseEvent;
use super::streaming::{self, Decode, Step};

/// `max_tokens` sent when the request sets none (the API requires the field).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The Anthropic endpoint adapter.
pub struct AnthropicProvider {
    endpoint: Arc<HttpEndpoint>,
}

impl AnthropicProvider {
    pub(crate) fn new(endpoint: HttpEndpoint) -> Self {
        Self { endpoint: Arc::new(endpoint) }
    }
}

impl LlmProvider for AnthropicProvider {
    fn stream(&self, request: GenerationRequest) -> ProviderStream {
        match encode_request(&self.endpoint.model, &request, true) {
            Ok(encoded) => {
                let mut decoder = StreamDecoder::new(&self.endpoint.model);
                decoder.strip_leading_whitespace = encoded.trimmed_prefill;
                streaming::stream_sse(self.endpoint.clone(), encoded.body, decoder)
            }
            Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
        }
    }

    fn complete(
        &self,
        request: GenerationRequest,
    ) -> BoxFuture<'static, Result<CompletionResponse, ProviderError>> {
        let endpoint = self.endpoint.clone();
        let encoded = encode_request(&endpoint.model, &request, false);
        async move {
            let encoded = encoded?;
            let model = endpoint.model.clone();
            let mut reply =
                streaming::complete_json(endpoint, encoded.body, |bytes, request_id| {
                    parse_response(bytes, request_id, &model)
                })
                .await?;
            if encoded.trimmed_prefill {
                reply.text = reply.text.trim_start().to_owned();
            }
            Ok(reply)
        }
        .boxed()
    }
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

/// An encoded request, and whether a trailing prefill had whitespace trimmed.
pub(crate) struct Encoded {
    pub body: Vec<u8>,
    pub trimmed_prefill: bool,
}

/// Encodes `request`, adapting the three things Anthropic validates more strictly than
/// OpenAI, so a request written for either (a failover from one to the other) is accepted:
///
/// - a final assistant message (prefill) may not end with whitespace, yet a partial answer
///   cut mid-stream usually does: it is sent trimmed, and the reply's leading whitespace is
///   dropped so that `partial + reply` reads as one text (`trimmed_prefill`);
/// - whitespace-only stop sequences (OpenAI clients send `"\n\n"`) are rejected: they are
///   left out;
/// - `temperature` ranges over 0–1 (OpenAI's over 0–2): it is clamped.
pub(crate) fn encode_request(
    model: &str,
    request: &GenerationRequest,
    stream: bool,
) -> Result<Encoded, ProviderError> {
    let last = request.messages.len().saturating_sub(1);
    let mut trimmed_prefill = false;
    let messages = request
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| WireMessage {
            role: match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            },
            content: if i == last && m.role == Role::Assistant {
                let trimmed = m.content.trim_end();
                trimmed_prefill = trimmed.len() != m.content.len();
                trimmed
            } else {
                &m.content
            },
        })
        .collect();
    let stop_sequences: Vec<&str> =
        request.stop.iter().map(String::as_str).filter(|s| !s.trim().is_empty()).collect();
    if stop_sequences.len() != request.stop.len() {
        tracing::debug!(model, "whitespace-only stop sequences left out (Anthropic rejects them)");
    }
    let body = MessagesRequest {
        model,
        max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system: request.system.as_deref(),
        messages,
        stop_sequences,
        temperature: request.temperature.map(|t| t.clamp(0.0, 1.0)),
        stream,
    };
    let body = serde_json::to_vec(&body).map_err(|_| ProviderError::BadRequest {
        kind: BadRequestKind::Invalid,
        message: "the request could not be encoded as JSON".to_owned(),
    })?;
    Ok(Encoded { body, trimmed_prefill })
}

fn finish_reason(raw: &str) -> FinishReason {
    match raw {
        "end_turn" => FinishReason::Stop,
        "stop_sequence" => FinishReason::StopSequence,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Every prompt token processed, when the record carries input figures at all.
    fn input(&self) -> Option<u64> {
        let parts =
            [self.input_tokens, self.cache_creation_input_tokens, self.cache_read_input_tokens];
        parts.iter().any(Option::is_some).then(|| parts.iter().flatten().sum())
    }
}

/// One stream event's data, borrowed; only delta text is copied out.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    message: Option<StartMessage<'a>>,
    #[serde(default, borrow)]
    content_block: Option<Block<'a>>,
    #[serde(default, borrow)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default, borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

/// Decodes the Messages stream protocol.
pub(crate) struct StreamDecoder {
    upstream_model: String,
    model: Option<String>,
    header_request_id: Option<String>,
    message_id: Option<String>,
    usage: Usage,
    finish: Option<FinishReason>,
    /// Drop the reply's leading whitespace (the prefill was sent with its trailing
    /// whitespace trimmed; the client already has it).
    strip_leading_whitespace: bool,
}

impl StreamDecoder {
    pub(crate) fn new(upstream_model: &str) -> Self {
        Self {
            upstream_model: upstream_model.to_owned(),
            model: None,
            header_request_id: None,
            message_id: None,
            usage: Usage::default(),
            finish: None,
            strip_leading_whitespace: false,
        }
    }

    fn text_delta(&mut self, text: Option<Cow<'_, str>>) -> Step {
        let Some(text) = text else { return Step::Skip };
        if self.strip_leading_whitespace {
            let rest = text.trim_start();
            if rest.is_empty() {
                return Step::Skip;
            }
            self.strip_leading_whitespace = false;
            return Step::Delta(rest.to_owned());
        }
        if text.is_empty() { Step::Skip } else { Step::Delta(text.into_owned()) }
    }

    fn completion(&mut self) -> Completion {
        Completion {
            usage: self.usage,
            finish_reason: self.finish.unwrap_or(FinishReason::Other),
            model: self.model.take().unwrap_or_else(|| self.upstream_model.clone()),
            provider_request_id: self.header_request_id.take().or_else(|| self.message_id.take()),
        }
    }

    fn apply_usage(&mut self, usage: WireUsage) {
        if let Some(input) = usage.input() {
            self.usage.input_tokens = input;
        }
        if let Some(output) = usage.output_tokens {
            self.usage.output_tokens = output; // cumulative, per the API reference
        }
    }
}

impl Decode for StreamDecoder {
    fn on_headers(&mut self, headers: &HeaderMap) {
        self.header_request_id = streaming::header_str(headers, "request-id");
    }

    fn whole_response(&mut self, body: &[u8]) -> Result<CompletionResponse, ProviderError> {
        parse_response(body, self.header_request_id.take(), &self.upstream_model)
    }

    fn on_event(&mut self, event: SseEvent<'_>) -> Result<Step, ProviderError> {
        let parsed: Event<'_> = serde_json::from_str(event.data).map_err(|e| {
            ProviderError::Malformed(format!("unparseable Messages stream event: {e}"))
        })?;
        Ok(match parsed.kind.as_ref() {
            "content_block_delta" => match parsed.delta {
                Some(delta) if delta.kind.as_deref() == Some("text_delta") => {
                    self.text_delta(delta.text)
                }
                _ => Step::Skip,
            },
            "message_start" => {
                if let Some(message) = parsed.message {
                    self.message_id = message.id.map(Cow::into_owned);
                    self.model = message.model.filter(|m| !m.is_empty()).map(Cow::into_owned);
                    if let Some(usage) = message.usage {
                        self.apply_usage(usage);
                    }
                }
                Step::Skip
            }
            "content_block_start" => match parsed.content_block {
                Some(block) if block.kind.as_deref() == Some("text") => self.text_delta(block.text),
                _ => Step::Skip,
            },
            "message_delta" => {
                if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                    self.finish = Some(finish_reason(&reason));
                }
                if let Some(usage) = parsed.usage {
                    self.apply_usage(usage);
                }
                Step::Skip
            }
            "message_stop" => Step::Done(self.completion()),
            "error" => Step::Error(parsed.error.map(|e| e.to_upstream()).unwrap_or_default()),
            // ping, content_block_stop, and event types added after this was written.
            _ => Step::Skip,
        })
    }
}

#[derive(Deserialize)]
struct MessageResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: Vec<ContentBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ErrorOnly<'a> {
    #[serde(borrow)]
    error: WireError<'a>,
}

fn parse_response(
    bytes: &[u8],
    request_id: Option<String>,
    upstream_model: &str,
) -> Result<CompletionResponse, ProviderError> {
    if let Ok(ErrorOnly { error }) = serde_json::from_slice::<ErrorOnly<'_>>(bytes) {
        return Err(http_errors::from_in_band(&error.to_upstream(), 0));
    }
    let response: MessageResponse = serde_json::from_slice(bytes)
        .map_err(|e| ProviderError::Malformed(format!("unparseable Messages response: {e}")))?;
    let text: String = response
        .content
        .iter()
        .filter(|block| block.kind == "text")
        .filter_map(|block| block.text.as_deref())
        .collect();
    let usage = response.usage.unwrap_or_default();
    Ok(CompletionResponse {
        text,
        completion: Completion {
            usage: Usage {
                input_tokens: usage.input().unwrap_or(0),
                output_tokens: usage.output_tokens.unwrap_or(0),
            },
            finish_reason: response
                .stop_reason
                .as_deref()
                .map(finish_reason)
                .unwrap_or(FinishReason::Other),
            model: response.model.unwrap_or_else(|| upstream_model.to_owned()),
            provider_request_id: request_id.or(response.id),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderKind;
    use crate::providers::replay_sse;
    use crate::providers::streaming::EventDecoder;
    use crate::providers::test_support::{assert_every_split, assert_random_chunks};
    use actors::ports::llm::{ChatMessage, StreamEvent};

    const STREAM: &str = include_str!("../../tests/fixtures/sse/anthropic_stream.txt");
    const MID_STREAM_ERROR: &str =
        include_str!("../../tests/fixtures/sse/anthropic_mid_stream_error.txt");

    #[test]
    fn encodes_system_stop_sequences_max_tokens_and_prefill() {
        let request = GenerationRequest {
            system: Some("Be brief.".into()),
            messages: vec![ChatMessage::user("Hi"), ChatMessage::assistant("Sure: ")],
            temperature: None,
            max_tokens: None,
            stop: vec!["END".into()],
        };
        let json: serde_json::Value =
            serde_json::from_slice(&encode_request("claude", &request, true).unwrap().body)
                .unwrap();
        assert_eq!(json["system"], "Be brief.");
        assert_eq!(json["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(json["stop_sequences"][0], "END");
        assert_eq!(json["stream"], true);
        assert_eq!(json["messages"].as_array().unwrap().len(), 2);
        assert_eq!(
            json["messages"][1],
            serde_json::json!({"role": "assistant", "content": "Sure:"}),
            "Anthropic rejects a prefill ending in whitespace"
        );
        assert!(json.get("temperature").is_none() && json.get("stop").is_none());

        let limited = GenerationRequest { max_tokens: Some(10), ..request };
        let json: serde_json::Value =
            serde_json::from_slice(&encode_request("claude", &limited, false).unwrap().body)
                .unwrap();
        assert_eq!(json["max_tokens"], 10);
        assert_eq!(json["stream"], false);
    }

    #[test]
    fn adapts_openai_style_parameters_anthropic_would_reject() {
        let request = GenerationRequest {
            messages: vec![ChatMessage::user("Hi"), ChatMessage::assistant("Once upon \n")],
            temperature: Some(1.7),
            stop: vec!["\n\n".into(), "END".into(), " ".into()],
            ..Default::default()
        };
        let encoded = encode_request("claude", &request, true).unwrap();
        assert!(encoded.trimmed_prefill);
        let json: serde_json::Value = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(json["messages"][1]["content"], "Once upon");
        assert_eq!(json["temperature"], 1.0);
        assert_eq!(json["stop_sequences"], serde_json::json!(["END"]));

        let untouched = GenerationRequest {
            messages: vec![ChatMessage::assistant("  earlier "), ChatMessage::user("Hi ")],
            ..Default::default()
        };
        let encoded = encode_request("claude", &untouched, true).unwrap();
        assert!(!encoded.trimmed_prefill, "only a trailing assistant message is a prefill");
        let json: serde_json::Value = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(json["messages"][0]["content"], "  earlier ");
        assert_eq!(json["messages"][1]["content"], "Hi ");
        assert!(json.get("stop_sequences").is_none());
    }

    #[test]
    fn continuation_after_a_trimmed_prefill_drops_its_leading_whitespace() {
        let event = |text: &str| {
            format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n"
            )
        };
        let transcript = [event(" "), event(" a"), event(" time")].concat();
        let mut events = EventDecoder::new(StreamDecoder {
            strip_leading_whitespace: true,
            ..StreamDecoder::new("claude")
        });
        events.feed(transcript.as_bytes());
        let mut deltas = Vec::new();
        while let Some(item) = events.next_item() {
            deltas.push(item.unwrap());
        }
        assert_eq!(
            deltas,
            vec![StreamEvent::Delta("a".into()), StreamEvent::Delta(" time".into())]
        );
    }

    #[test]
    fn fixture_full_event_sequence_at_every_split() {
        let mut expected: Vec<_> = ["Hello", "! Ça", " va", " — très", " bien 🦀", "."]
            .into_iter()
            .map(|t| Ok(StreamEvent::Delta(t.to_owned())))
            .collect();
        expected.push(Ok(StreamEvent::Finished(Completion {
            usage: Usage { input_tokens: 25 + 3 + 2, output_tokens: 15 },
            finish_reason: FinishReason::Stop,
            model: "claude-sonnet-4-20250514".into(),
            provider_request_id: Some("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY".into()),
        })));
        assert_every_split(ProviderKind::Anthropic, STREAM, &expected);
        assert_random_chunks(ProviderKind::Anthropic, STREAM, &expected);
    }

    #[test]
    fn fixture_mid_stream_error_event_breaks_the_stream() {
        let expected = vec![
            Ok(StreamEvent::Delta("Once".to_owned())),
            Ok(StreamEvent::Delta(" upon".to_owned())),
            Ok(StreamEvent::Delta(" a time".to_owned())),
            Err(ProviderError::StreamBroken {
                tokens: 3,
                reason: "overloaded_error: Overloaded".into(),
            }),
        ];
        assert_every_split(ProviderKind::Anthropic, MID_STREAM_ERROR, &expected);
        assert_random_chunks(ProviderKind::Anthropic, MID_STREAM_ERROR, &expected);
    }

    #[test]
    fn error_event_before_any_text_keeps_its_class() {
        let transcript = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
                          event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
        let out = replay_sse(ProviderKind::Anthropic, "claude", [transcript.as_bytes()]);
        assert_eq!(out, vec![Err(ProviderError::Overloaded { retry_after: None })]);
    }

    #[test]
    fn missing_message_stop_is_a_broken_stream() {
        let cut = &STREAM[..STREAM.find("event: message_stop").unwrap()];
        let out = replay_sse(ProviderKind::Anthropic, "claude", [cut.as_bytes()]);
        assert!(matches!(out.last(), Some(Err(ProviderError::StreamBroken { tokens: 6, .. }))));
        let out = replay_sse(ProviderKind::Anthropic, "claude", [&b"event: x\ndata: {}\n\n"[..]]);
        assert!(matches!(out.as_slice(), [Err(ProviderError::Malformed(_))]), "{out:?}");
    }

    #[test]
    fn non_streaming_response_parses() {
        let body = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-20250514",
            "content":[{"type":"thinking","thinking":"hmm","signature":"x"},{"type":"text","text":"Hi "},{"type":"text","text":"there"}],
            "stop_reason":"max_tokens","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":4}}"#;
        let reply = parse_response(body, None, "claude").unwrap();
        assert_eq!(reply.text, "Hi there");
        assert_eq!(reply.completion.usage, Usage { input_tokens: 12, output_tokens: 4 });
        assert_eq!(reply.completion.finish_reason, FinishReason::Length);
        assert_eq!(reply.completion.provider_request_id.as_deref(), Some("msg_01"));
        let reply = parse_response(body, Some("req_9".into()), "claude").unwrap();
        assert_eq!(reply.completion.provider_request_id.as_deref(), Some("req_9"));
    }
}
