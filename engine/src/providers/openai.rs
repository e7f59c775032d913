//! OpenAI Chat Completions adapter, also used for OpenAI-compatible servers (Ollama, vLLM,
//! llama.cpp, Azure-style deployments).
//!
//! Request: the system prompt becomes a leading `system` message; `temperature` and `stop`
//! pass through; the output limit is sent as `max_completion_tokens` to OpenAI (which
//! deprecated `max_tokens` for it) and as `max_tokens` to compatible servers (which is what
//! they understand). Streaming asks for `stream_options.include_usage`, so the last chunk
//! carries exact usage.
//!
//! Stream: `chat.completion.chunk` objects, then `data: [DONE]`. An in-band
//! `data: {"error": {…}}` is mapped like an error response. If a compatible server ignores
//! `include_usage` and `[DONE]` arrives without usage, the output token count is the number
//! of content deltas received and the input count is 0 (logged at debug): an approximation
//! the cost ledger can recognise, rather than a guess at the prompt's tokenisation.
//!
//! Provider request id: the `x-request-id` response header, else the chunk/response `id`.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use actors::ports::llm::{
    Completion, CompletionResponse, FinishReason, GenerationRequest, LlmProvider, ProviderError,
    ProviderStream, Role, Usage,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::header::HeaderMap;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::http_errors::{self, WireError};
use super::sse::SseEvent;
use super::streaming::{self, Decode, Step};
use super::{HttpEndpoint, ProviderKind};

/// The OpenAI (or compatible) endpoint adapter.
pub struct OpenAiProvider {
    endpoint: Arc<HttpEndpoint>,
}

impl OpenAiProvider {
    pub(crate) fn new(endpoint: HttpEndpoint) -> Self {
        Self { endpoint: Arc::new(endpoint) }
    }

    fn encode(&self, request: &GenerationRequest, stream: bool) -> Result<Vec<u8>, ProviderError> {
        encode_request(self.endpoint.kind, &self.endpoint.model, request, stream)
    }
}

impl LlmProvider for OpenAiProvider {
    fn stream(&self, request: GenerationRequest) -> ProviderStream {
        match self.encode(&request, true) {
            Ok(body) => streaming::stream_sse(
                self.endpoint.clone(),
                body,
                StreamDecoder::new(&self.endpoint.model),
            ),
            Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
        }
    }

    fn complete(
        &self,
        request: GenerationRequest,
    ) -> BoxFuture<'static, Result<CompletionResponse, ProviderError>> {
        let endpoint = self.endpoint.clone();
        let body = self.encode(&request, false);
        async move {
            let model = endpoint.model.clone();
            streaming::complete_json(endpoint, body?, |bytes, request_id| {
                parse_response(bytes, request_id, &model)
            })
            .await
        }
        .boxed()
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

pub(crate) fn encode_request(
    kind: ProviderKind,
    model: &str,
    request: &GenerationRequest,
    stream: bool,
) -> Result<Vec<u8>, ProviderError> {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = request.system.as_deref() {
        messages.push(WireMessage { role: "system", content: system });
    }
    messages.extend(request.messages.iter().map(|m| WireMessage {
        role: match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        },
        content: &m.content,
    }));
    let (max_completion_tokens, max_tokens) = match kind {
        ProviderKind::Openai => (request.max_tokens, None),
        _ => (None, request.max_tokens),
    };
    let body = ChatRequest {
        model,
        messages,
        stream,
        stream_options: stream.then_some(StreamOptions { include_usage: true }),
        temperature: request.temperature,
        max_completion_tokens,
        max_tokens,
        stop: &request.stop,
    };
    serde_json::to_vec(&body).map_err(|_| ProviderError::BadRequest {
        kind: actors::ports::llm::BadRequestKind::Invalid,
        message: "the request could not be encoded as JSON".to_owned(),
    })
}

fn finish_reason(raw: &str) -> FinishReason {
    match raw {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage { input_tokens: u.prompt_tokens, output_tokens: u.completion_tokens }
    }
}

/// One `chat.completion.chunk` (or an in-band error). Borrowed from the event's data, so
/// only the delta text itself is copied.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<FirstChoice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default, borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<ChunkDelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChunkDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

/// The first element of `choices` (we never ask for `n > 1`); deserialised without
/// allocating a `Vec` per chunk.
struct FirstChoice<'a>(Option<ChunkChoice<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FirstVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FirstVisitor<'a> {
            type Value = FirstChoice<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<ChunkChoice<'a>>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstChoice(first))
            }
        }
        deserializer.deserialize_seq(FirstVisitor(PhantomData))
    }
}

/// Decodes the Chat Completions stream protocol.
pub(crate) struct StreamDecoder {
    upstream_model: String,
    model: Option<String>,
    header_request_id: Option<String>,
    chunk_id: Option<String>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    deltas: u64,
}

impl StreamDecoder {
    pub(crate) fn new(upstream_model: &str) -> Self {
        Self {
            upstream_model: upstream_model.to_owned(),
            model: None,
            header_request_id: None,
            chunk_id: None,
            finish: None,
            usage: None,
            deltas: 0,
        }
    }

    fn completion(&mut self) -> Completion {
        let usage = self.usage.unwrap_or_else(|| {
            tracing::debug!(
                model = %self.upstream_model,
                deltas = self.deltas,
                "stream ended without a usage chunk (server ignored include_usage); \
                 counting output tokens as deltas and input tokens as 0"
            );
            Usage { input_tokens: 0, output_tokens: self.deltas }
        });
        Completion {
            usage,
            finish_reason: self.finish.unwrap_or(FinishReason::Other),
            model: self.model.take().unwrap_or_else(|| self.upstream_model.clone()),
            provider_request_id: self.header_request_id.take().or_else(|| self.chunk_id.take()),
        }
    }
}

impl Decode for StreamDecoder {
    fn on_headers(&mut self, headers: &HeaderMap) {
        self.header_request_id = streaming::header_str(headers, "x-request-id");
    }

    fn whole_response(&mut self, body: &[u8]) -> Result<CompletionResponse, ProviderError> {
        parse_response(body, self.header_request_id.take(), &self.upstream_model)
    }

    fn on_event(&mut self, event: SseEvent<'_>) -> Result<Step, ProviderError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(Step::Done(self.completion()));
        }
        let chunk: Chunk<'_> = serde_json::from_str(data).map_err(|e| {
            ProviderError::Malformed(format!("unparseable chat.completion.chunk: {e}"))
        })?;
        if let Some(error) = chunk.error {
            return Ok(Step::Error(error.to_upstream()));
        }
        if event.event == "error" {
            // A server that flags the event as an error without an error object.
            return Ok(Step::Error(http_errors::UpstreamError::default()));
        }
        if self.chunk_id.is_none() {
            self.chunk_id = chunk.id.filter(|id| !id.is_empty()).map(Cow::into_owned);
        }
        if self.model.is_none() {
            self.model = chunk.model.filter(|m| !m.is_empty()).map(Cow::into_owned);
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        let Some(choice) = chunk.choices.and_then(|c| c.0) else {
            return Ok(Step::Skip);
        };
        if let Some(reason) = choice.finish_reason {
            self.finish = Some(finish_reason(&reason));
        }
        match choice.delta.and_then(|d| d.content) {
            Some(text) if !text.is_empty() => {
                self.deltas += 1;
                Ok(Step::Delta(text.into_owned()))
            }
            _ => Ok(Step::Skip),
        }
    }
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ResponseChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ResponseChoice {
    #[serde(default)]
    message: Option<ResponseMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ResponseMessage {
    #[serde(default)]
    content: Option<String>,
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
    let response: ChatResponse = serde_json::from_slice(bytes)
        .map_err(|e| ProviderError::Malformed(format!("unparseable chat.completion: {e}")))?;
    let choice = response.choices.into_iter().next();
    let finish = choice.as_ref().and_then(|c| c.finish_reason.as_deref()).map(finish_reason);
    let text = choice.and_then(|c| c.message).and_then(|m| m.content).unwrap_or_default();
    Ok(CompletionResponse {
        text,
        completion: Completion {
            usage: response.usage.map(Usage::from).unwrap_or_default(),
            finish_reason: finish.unwrap_or(FinishReason::Other),
            model: response.model.unwrap_or_else(|| upstream_model.to_owned()),
            provider_request_id: request_id.or(response.id),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::replay_sse;
    use crate::providers::test_support::{assert_every_split, assert_random_chunks};
    use actors::ports::llm::{BadRequestKind, ChatMessage, StreamEvent};

    const STREAM: &str = include_str!("../../tests/fixtures/sse/openai_stream.txt");
    const IN_BAND_ERROR: &str = include_str!("../../tests/fixtures/sse/openai_in_band_error.txt");

    #[test]
    fn encodes_system_stop_and_the_right_max_tokens_field() {
        let request = GenerationRequest {
            system: Some("Be brief.".into()),
            messages: vec![ChatMessage::user("Hi"), ChatMessage::assistant("Hello")],
            temperature: Some(0.5),
            max_tokens: Some(64),
            stop: vec!["\n\n".into()],
        };
        let body = encode_request(ProviderKind::Openai, "gpt-4o", &request, true).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["model"], "gpt-4o");
        assert_eq!(
            json["messages"][0],
            serde_json::json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(json["messages"][2]["role"], "assistant");
        assert_eq!(json["stream"], true);
        assert_eq!(json["stream_options"]["include_usage"], true);
        assert_eq!(json["max_completion_tokens"], 64);
        assert!(json.get("max_tokens").is_none());
        assert_eq!(json["stop"][0], "\n\n");
        assert_eq!(json["temperature"], 0.5);

        let body =
            encode_request(ProviderKind::OpenaiCompatible, "llama", &request, false).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["max_tokens"], 64);
        assert!(json.get("max_completion_tokens").is_none());
        assert!(json.get("stream_options").is_none());

        let bare =
            GenerationRequest { messages: vec![ChatMessage::user("x")], ..Default::default() };
        let json: serde_json::Value = serde_json::from_slice(
            &encode_request(ProviderKind::Openai, "m", &bare, true).unwrap(),
        )
        .unwrap();
        assert_eq!(json["messages"].as_array().unwrap().len(), 1);
        assert!(json.get("stop").is_none() && json.get("temperature").is_none());
    }

    fn expected_stream() -> Vec<Result<StreamEvent, ProviderError>> {
        let mut out: Vec<_> = ["Hello", "! Ça", " va", " — très", " bien 🦀", "."]
            .into_iter()
            .map(|t| Ok(StreamEvent::Delta(t.to_owned())))
            .collect();
        out.push(Ok(StreamEvent::Finished(Completion {
            usage: Usage { input_tokens: 19, output_tokens: 10 },
            finish_reason: FinishReason::Stop,
            model: "gpt-4o-mini-2024-07-18".into(),
            provider_request_id: Some("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG".into()),
        })));
        out
    }

    #[test]
    fn fixture_stream_with_usage_chunk_at_every_split() {
        assert_every_split(ProviderKind::Openai, STREAM, &expected_stream());
        assert_random_chunks(ProviderKind::Openai, STREAM, &expected_stream());
    }

    #[test]
    fn fixture_in_band_error_after_tokens_breaks_the_stream() {
        let expected = vec![
            Ok(StreamEvent::Delta("The".to_owned())),
            Ok(StreamEvent::Delta(" answer".to_owned())),
            Err(ProviderError::StreamBroken {
                tokens: 2,
                reason: "server_error: The server had an error while processing your request. \
                         Sorry about that!"
                    .into(),
            }),
        ];
        assert_every_split(ProviderKind::Openai, IN_BAND_ERROR, &expected);
        assert_random_chunks(ProviderKind::Openai, IN_BAND_ERROR, &expected);
    }

    #[test]
    fn in_band_error_before_any_token_maps_by_type() {
        let transcript = "data: {\"error\":{\"message\":\"This model's maximum context length is 8192 tokens\",\"type\":\"invalid_request_error\",\"code\":\"context_length_exceeded\"}}\n\n";
        let out = replay_sse(ProviderKind::Openai, "m", [transcript.as_bytes()]);
        assert!(matches!(
            out.as_slice(),
            [Err(ProviderError::BadRequest { kind: BadRequestKind::ContextLength, .. })]
        ));
    }

    #[test]
    fn a_nul_in_model_text_is_replaced_before_anyone_sees_it() {
        let transcript = "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\\u0000b\"}}]}\n\n";
        let out = replay_sse(ProviderKind::Openai, "m", [transcript.as_bytes()]);
        assert_eq!(out.first(), Some(&Ok(StreamEvent::Delta("a\u{FFFD}b".to_owned()))));
    }

    #[test]
    fn done_without_usage_counts_deltas() {
        let transcript = "data: {\"id\":\"c1\",\"model\":\"llama3\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n\
                          data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"},\"finish_reason\":\"length\"}]}\n\n\
                          data: [DONE]\n\n";
        let out = replay_sse(ProviderKind::OpenaiCompatible, "m", [transcript.as_bytes()]);
        let Some(Ok(StreamEvent::Finished(done))) = out.last() else { panic!("{out:?}") };
        assert_eq!(done.usage, Usage { input_tokens: 0, output_tokens: 2 });
        assert_eq!(done.finish_reason, FinishReason::Length);
        assert_eq!(done.model, "llama3");
        assert_eq!(done.provider_request_id.as_deref(), Some("c1"));
    }

    #[test]
    fn malformed_and_truncated_streams() {
        let out = replay_sse(ProviderKind::Openai, "m", [&b"data: {\"choices\": [\n\n"[..]]);
        assert!(matches!(out.as_slice(), [Err(ProviderError::Malformed(_))]), "{out:?}");

        let cut = &STREAM[..STREAM.find("data: [DONE]").unwrap()];
        let out = replay_sse(ProviderKind::Openai, "m", [cut.as_bytes()]);
        assert!(matches!(out.last(), Some(Err(ProviderError::StreamBroken { tokens: 6, .. }))));
    }

    #[test]
    fn non_streaming_response_parses() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hi there","refusal":null},"logprobs":null,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;
        let reply = parse_response(body, Some("req_abc".into()), "gpt-4o").unwrap();
        assert_eq!(reply.text, "Hi there");
        assert_eq!(reply.completion.usage, Usage { input_tokens: 9, output_tokens: 3 });
        assert_eq!(reply.completion.finish_reason, FinishReason::Stop);
        assert_eq!(reply.completion.model, "gpt-4o-2024-08-06");
        assert_eq!(reply.completion.provider_request_id.as_deref(), Some("req_abc"));
        let reply = parse_response(body, None, "gpt-4o").unwrap();
        assert_eq!(reply.completion.provider_request_id.as_deref(), Some("chatcmpl-1"));
        assert!(matches!(parse_response(b"nope", None, "m"), Err(ProviderError::Malformed(_))));
    }
}
