//! The `LlmProvider` port: one configured model endpoint that streams a generation.
//!
//! Every adapter (OpenAI, Anthropic, OpenAI-compatible, the built-in mock) produces the same
//! output: zero or more [`StreamEvent::Delta`]s, then exactly one [`StreamEvent::Finished`]
//! carrying usage, finish reason, the model actually used and the provider's request id; or,
//! at any point, one `Err(ProviderError)` after which the stream ends. The error taxonomy is
//! what failover decisions are made on, so adapters map every upstream failure into it and
//! never pass an upstream body (or a secret) through.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};

/// Who said a message in the conversation sent to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

/// One turn of the conversation as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: Role::Assistant, content: content.into() }
    }
}

/// A generation request for one endpoint. The endpoint (adapter instance) knows its own
/// upstream model name, base URL and credentials; the request carries only the turn.
///
/// A trailing [`Role::Assistant`] message is a *prefill*: the model continues that text.
/// Not every model accepts one; those answer [`BadRequestKind::PrefillUnsupported`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    /// System prompt (OpenAI: a leading `system` message; Anthropic: top-level `system`).
    pub system: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
}

/// Token counts as reported by the provider (exact, never estimated, when it reports them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens + other.input_tokens,
            output_tokens: self.output_tokens + other.output_tokens,
        }
    }
}

/// Why the model stopped, in one vocabulary for every provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end of the answer (OpenAI `stop`, Anthropic `end_turn`).
    Stop,
    /// A configured stop sequence matched (Anthropic `stop_sequence`; OpenAI reports `stop`).
    StopSequence,
    /// The output limit was reached (OpenAI `length`, Anthropic `max_tokens`).
    Length,
    /// The provider filtered the content (OpenAI `content_filter`, Anthropic `refusal`).
    ContentFilter,
    /// Anything else the provider reported.
    Other,
}

/// The closing record of a successful generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub usage: Usage,
    pub finish_reason: FinishReason,
    /// The model the provider says answered (may differ from the alias that was requested).
    pub model: String,
    /// The provider's request id (`x-request-id` / `request-id` / message id), for support.
    pub provider_request_id: Option<String>,
}

/// One item of a generation stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A piece of answer text, in order.
    Delta(String),
    /// The generation ended normally; always the last item.
    Finished(Completion),
}

/// A whole, non-streamed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionResponse {
    pub text: String,
    pub completion: Completion,
}

/// A generation in progress. Dropping it cancels the upstream request (the adapter closes
/// the connection), which is how a cancelled turn stops costing tokens.
pub type ProviderStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;

/// One model endpoint: a (provider, model) pair with its credentials and timeouts.
pub trait LlmProvider: Send + Sync + 'static {
    /// Starts a streamed generation. Connection, status and timeout failures arrive as the
    /// stream's first (and only) item, so callers handle every failure in one place.
    fn stream(&self, request: GenerationRequest) -> ProviderStream;

    /// A whole reply at once. Adapters whose wire has a cheaper non-streaming call override
    /// this; the default collects [`LlmProvider::stream`].
    fn complete(
        &self,
        request: GenerationRequest,
    ) -> BoxFuture<'static, Result<CompletionResponse, ProviderError>> {
        collect_stream(self.stream(request)).boxed()
    }
}

/// Drains a generation stream into one reply.
pub async fn collect_stream(
    mut stream: ProviderStream,
) -> Result<CompletionResponse, ProviderError> {
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Delta(piece) => text.push_str(&piece),
            StreamEvent::Finished(completion) => {
                return Ok(CompletionResponse { text, completion });
            }
        }
    }
    Err(ProviderError::Malformed("stream ended without a final record".into()))
}

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutPhase {
    /// TCP/TLS connection to the provider.
    Connect,
    /// From sending the request to the first token (includes response headers).
    FirstToken,
    /// Between two tokens of a stream that had started.
    Idle,
    /// The whole request (non-streaming calls).
    Total,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstToken => "first token",
            TimeoutPhase::Idle => "next token",
            TimeoutPhase::Total => "the whole response",
        })
    }
}

/// The flavours of a 400 that matter for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRequestKind {
    /// The request itself is wrong; no other model will do better.
    Invalid,
    /// The prompt is too long for this model; a larger-context model may take it.
    ContextLength,
    /// The model rejects a trailing assistant message (prefill); continue another way.
    PrefillUnsupported,
}

/// Every way a provider call can fail, as failover sees it.
///
/// Messages are written by us, never copied from an upstream body verbatim beyond the
/// provider's own short error `message` field, and never contain credentials.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// HTTP 429.
    #[error("the provider is rate limiting requests")]
    RateLimited { retry_after: Option<Duration> },
    /// Anthropic 529 `overloaded_error`, OpenAI 503.
    #[error("the provider is overloaded")]
    Overloaded { retry_after: Option<Duration> },
    /// Any other 5xx.
    #[error("the provider failed with HTTP {status}")]
    Server { status: u16 },
    /// A configured wait ran out.
    #[error("timed out waiting for the provider ({0})")]
    Timeout(TimeoutPhase),
    /// The connection could not be made (refused, DNS, TLS).
    #[error("could not connect to the provider")]
    Connect,
    /// The stream stopped (dropped connection, mid-stream `error` event, missing final
    /// record) after `tokens` deltas had been delivered.
    #[error("the provider's stream broke after {tokens} tokens: {reason}")]
    StreamBroken { tokens: u32, reason: String },
    /// HTTP 401/403: not retryable; an operator must fix the credentials.
    #[error("the provider rejected our credentials (HTTP {status})")]
    Auth { status: u16 },
    /// HTTP 400/404/413/422.
    #[error("the provider rejected the request: {message}")]
    BadRequest { kind: BadRequestKind, message: String },
    /// The provider sent something that does not parse as its documented wire format.
    #[error("the provider sent malformed data: {0}")]
    Malformed(String),
    /// Not the provider's fault: the endpoint is unavailable on our side (circuit open,
    /// actor restarting, mailbox full).
    #[error("the model endpoint is unavailable: {0}")]
    Unavailable(String),
}

impl ProviderError {
    /// Whether another attempt (on this or, usually, the next model) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Auth { .. } => false,
            ProviderError::BadRequest { kind, .. } => *kind != BadRequestKind::Invalid,
            _ => true,
        }
    }

    /// How long the provider asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after }
            | ProviderError::Overloaded { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// Whether this failure says the endpoint is unhealthy (counts towards its circuit
    /// breaker). A bad request is the caller's fault, not the endpoint's.
    pub fn counts_against_health(&self) -> bool {
        !matches!(self, ProviderError::BadRequest { .. } | ProviderError::Unavailable(_))
    }

    /// Stable snake_case code for the wire, logs and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::RateLimited { .. } => "provider_rate_limited",
            ProviderError::Overloaded { .. } => "provider_overloaded",
            ProviderError::Server { .. } => "provider_error",
            ProviderError::Timeout(_) => "provider_timeout",
            ProviderError::Connect => "provider_unreachable",
            ProviderError::StreamBroken { .. } => "stream_broken",
            ProviderError::Auth { .. } => "provider_auth",
            ProviderError::BadRequest { kind: BadRequestKind::ContextLength, .. } => {
                "context_length_exceeded"
            }
            ProviderError::BadRequest { kind: BadRequestKind::PrefillUnsupported, .. } => {
                "prefill_unsupported"
            }
            ProviderError::BadRequest { .. } => "bad_request",
            ProviderError::Malformed(_) => "provider_malformed",
            ProviderError::Unavailable(_) => "model_unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    #[test]
    fn auth_and_plain_bad_requests_do_not_fail_over() {
        assert!(!ProviderError::Auth { status: 401 }.is_retryable());
        let invalid =
            ProviderError::BadRequest { kind: BadRequestKind::Invalid, message: "x".into() };
        assert!(!invalid.is_retryable());
        let context =
            ProviderError::BadRequest { kind: BadRequestKind::ContextLength, message: "x".into() };
        assert!(context.is_retryable(), "a larger-context model may take it");
        assert!(ProviderError::Overloaded { retry_after: None }.is_retryable());
        assert!(ProviderError::StreamBroken { tokens: 3, reason: "eof".into() }.is_retryable());
    }

    #[test]
    fn retry_after_is_carried_for_rate_limits() {
        let e = ProviderError::RateLimited { retry_after: Some(Duration::from_secs(2)) };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(ProviderError::Server { status: 500 }.retry_after(), None);
    }

    #[tokio::test]
    async fn collect_stream_joins_deltas_and_requires_a_final_record() {
        let completion = Completion {
            usage: Usage { input_tokens: 3, output_tokens: 2 },
            finish_reason: FinishReason::Stop,
            model: "m".into(),
            provider_request_id: None,
        };
        let ok: ProviderStream = Box::pin(stream::iter(vec![
            Ok(StreamEvent::Delta("Hel".into())),
            Ok(StreamEvent::Delta("lo".into())),
            Ok(StreamEvent::Finished(completion.clone())),
        ]));
        let reply = collect_stream(ok).await.unwrap();
        assert_eq!(reply.text, "Hello");
        assert_eq!(reply.completion, completion);

        let truncated: ProviderStream =
            Box::pin(stream::iter(vec![Ok(StreamEvent::Delta("Hel".into()))]));
        assert!(matches!(collect_stream(truncated).await, Err(ProviderError::Malformed(_))));
    }
}
