//! The streaming driver shared by the HTTP adapters.
//!
//! An adapter supplies a [`Decode`] (what one SSE event of its protocol means); this module
//! does the rest the same way for every provider:
//!
//! - sends the request and maps non-2xx responses through `http_errors`;
//! - enforces the first-token deadline (request sent → first delta, response headers
//!   included) and the idle deadline (delta → next delta; keep-alive pings do not reset it);
//! - counts the deltas delivered, so a stream that breaks reports `StreamBroken { tokens }`;
//! - ends after the first error or the final record, and drops the response body then, so a
//!   consumer that drops the stream early closes the upstream connection (no token billed
//!   for an answer nobody reads).
//!
//! It is an `unfold` over plain state rather than a spawned task: nothing runs unless the
//! consumer polls, and dropping the stream cancels everything at once.

use std::sync::Arc;

use actors::ports::llm::{
    Completion, CompletionResponse, ProviderError, ProviderStream, StreamEvent, TimeoutPhase,
};
use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt, stream};
use reqwest::header::HeaderMap;
use tokio::time::{Instant, timeout_at};

use super::http_errors::{self, UpstreamError};
use super::sse::{SseEvent, SseParser};
use super::{HttpEndpoint, ProviderKind};

/// Largest error body we read before mapping it (error bodies are small JSON).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What one SSE event of a provider's protocol amounts to.
pub(crate) enum Step {
    /// Nothing to deliver (role chunk, ping, block start/stop, …).
    Skip,
    Delta(String),
    /// The protocol's terminator arrived; the stream ends with this record.
    Done(Completion),
    /// An in-band error object.
    Error(UpstreamError),
}

/// A provider's stream protocol.
pub(crate) trait Decode: Send + 'static {
    /// Sees the response headers once (for the provider request id).
    fn on_headers(&mut self, headers: &HeaderMap);
    /// Interprets one event; `Err` is a malformed frame.
    fn on_event(&mut self, event: SseEvent<'_>) -> Result<Step, ProviderError>;
    /// Interprets a whole JSON body received where a stream was asked for: a compatible
    /// server that ignored `stream: true`, or a gateway's error object sent with a 200.
    fn whole_response(&mut self, body: &[u8]) -> Result<CompletionResponse, ProviderError>;
}

/// Parser + protocol decoder + delivered-token count: the synchronous heart of a stream, fed
/// by the network in [`stream_sse`] and by recorded transcripts in tests and [`replay_sse`].
pub(crate) struct EventDecoder<D> {
    parser: SseParser,
    decoder: D,
    tokens: u32,
}

impl<D: Decode> EventDecoder<D> {
    pub(crate) fn new(decoder: D) -> Self {
        Self { parser: SseParser::new(), decoder, tokens: 0 }
    }

    pub(crate) fn on_headers(&mut self, headers: &HeaderMap) {
        self.decoder.on_headers(headers);
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.parser.feed(bytes);
    }

    /// The next item from the bytes fed so far, `None` when more bytes are needed.
    pub(crate) fn next_item(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        loop {
            let event = match self.parser.next_event() {
                Ok(Some(event)) => event,
                Ok(None) => return None,
                Err(e) => return Some(Err(ProviderError::Malformed(e.to_string()))),
            };
            return Some(match self.decoder.on_event(event) {
                Ok(Step::Skip) => continue,
                Ok(Step::Delta(text)) => {
                    self.tokens += 1;
                    Ok(StreamEvent::Delta(without_nul(text)))
                }
                Ok(Step::Done(completion)) => Ok(StreamEvent::Finished(completion)),
                Ok(Step::Error(upstream)) => Err(http_errors::from_in_band(&upstream, self.tokens)),
                Err(e) => Err(e),
            });
        }
    }

    pub(crate) fn tokens(&self) -> u32 {
        self.tokens
    }

    /// The error for a body that ended (cleanly or not) before the protocol's terminator.
    pub(crate) fn broken(&self, reason: &str) -> ProviderError {
        ProviderError::StreamBroken { tokens: self.tokens, reason: reason.to_owned() }
    }
}

/// Decodes a recorded SSE transcript of `kind`'s streaming protocol, delivered in `chunks`,
/// exactly as a live stream would be (minus timeouts): for replaying captured streams when
/// debugging an adapter, and for the parsing benchmark. `upstream_model` stands in for the
/// model when the transcript does not name one. `Mock` has no wire format of its own; its
/// transcripts are read as OpenAI's (what the engine's own OpenAI-compatible edge emits).
pub fn replay_sse<'a>(
    kind: ProviderKind,
    upstream_model: &str,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Result<StreamEvent, ProviderError>> {
    match kind {
        ProviderKind::Anthropic => {
            replay(EventDecoder::new(super::anthropic::StreamDecoder::new(upstream_model)), chunks)
        }
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Mock => {
            replay(EventDecoder::new(super::openai::StreamDecoder::new(upstream_model)), chunks)
        }
    }
}

fn replay<'a, D: Decode>(
    mut decoder: EventDecoder<D>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Result<StreamEvent, ProviderError>> {
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        while let Some(item) = decoder.next_item() {
            let last = !matches!(item, Ok(StreamEvent::Delta(_)));
            out.push(item);
            if last {
                return out;
            }
        }
    }
    out.push(Err(decoder.broken("the stream ended before its final event")));
    out
}

type Body = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

enum Phase {
    /// The request body, not sent yet (sending starts on the first poll).
    Start(Vec<u8>),
    Streaming(Body),
    /// A whole JSON reply was delivered as one delta; its final record comes next.
    Replied(Option<Completion>),
    Ended,
}

struct Run<D> {
    endpoint: Arc<HttpEndpoint>,
    phase: Phase,
    events: EventDecoder<D>,
    deadline: Instant,
}

/// Streams `body` (an encoded streaming request) to `endpoint`, decoding with `decoder`.
pub(crate) fn stream_sse<D: Decode>(
    endpoint: Arc<HttpEndpoint>,
    body: Vec<u8>,
    decoder: D,
) -> ProviderStream {
    let run = Run {
        deadline: Instant::now(), // set when the request is sent, on the first poll
        endpoint,
        phase: Phase::Start(body),
        events: EventDecoder::new(decoder),
    };
    Box::pin(stream::unfold(run, |mut run| async move {
        if matches!(run.phase, Phase::Ended) {
            return None;
        }
        let item = run.next().await;
        match &item {
            Ok(StreamEvent::Delta(_)) => {}
            Ok(StreamEvent::Finished(_)) => {
                run.drain_terminated_body();
                run.phase = Phase::Ended;
            }
            Err(_) => run.phase = Phase::Ended,
        }
        Some((item, run))
    }))
}

impl<D: Decode> Run<D> {
    async fn next(&mut self) -> Result<StreamEvent, ProviderError> {
        if let Phase::Start(body) = &mut self.phase {
            let body = std::mem::take(body);
            self.deadline = Instant::now() + self.endpoint.timeouts.first_token;
            let response =
                send(&self.endpoint, body, self.deadline, TimeoutPhase::FirstToken).await?;
            self.events.on_headers(response.headers());
            if is_json(response.headers()) {
                return self.whole_reply(response).await;
            }
            self.phase = Phase::Streaming(Box::pin(response.bytes_stream()));
        }
        if let Phase::Replied(completion) = &mut self.phase {
            return match completion.take() {
                Some(completion) => Ok(StreamEvent::Finished(completion)),
                None => Err(self.events.broken("the stream was already closed")),
            };
        }
        loop {
            if let Some(item) = self.events.next_item() {
                if matches!(item, Ok(StreamEvent::Delta(_))) {
                    self.deadline = Instant::now() + self.endpoint.timeouts.idle;
                }
                return item;
            }
            let Phase::Streaming(body) = &mut self.phase else {
                return Err(self.events.broken("the stream was already closed"));
            };
            match timeout_at(self.deadline, body.next()).await {
                Ok(Some(Ok(bytes))) => self.events.feed(&bytes),
                Ok(None) => {
                    return Err(self.events.broken("the stream ended before its final event"));
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(
                        provider = self.endpoint.kind.as_str(),
                        model = %self.endpoint.model,
                        error = %e.without_url(),
                        "provider stream body failed"
                    );
                    return Err(self.events.broken("the connection dropped mid-stream"));
                }
                Err(_) => {
                    return Err(ProviderError::Timeout(if self.events.tokens() == 0 {
                        TimeoutPhase::FirstToken
                    } else {
                        TimeoutPhase::Idle
                    }));
                }
            }
        }
    }

    /// Delivers a JSON body that came instead of an event stream as one delta and a final
    /// record (or its error).
    async fn whole_reply(
        &mut self,
        response: reqwest::Response,
    ) -> Result<StreamEvent, ProviderError> {
        let bytes = match timeout_at(self.deadline, response.bytes()).await {
            Err(_) => return Err(ProviderError::Timeout(TimeoutPhase::FirstToken)),
            Ok(Err(_)) => return Err(self.events.broken("the connection dropped mid-response")),
            Ok(Ok(bytes)) => bytes,
        };
        let reply = self.events.decoder.whole_response(&bytes)?;
        tracing::debug!(
            provider = self.endpoint.kind.as_str(),
            model = %self.endpoint.model,
            "a streaming request got a whole JSON reply; delivering it as one delta"
        );
        if reply.text.is_empty() {
            return Ok(StreamEvent::Finished(reply.completion));
        }
        self.events.tokens += 1;
        self.phase = Phase::Replied(Some(reply.completion));
        Ok(StreamEvent::Delta(without_nul(reply.text)))
    }

    /// After the terminator the server ends the body right away; reading that end (if it is
    /// already here) lets the connection go back to the pool instead of being closed.
    fn drain_terminated_body(&mut self) {
        if let Phase::Streaming(body) = &mut self.phase {
            for _ in 0..4 {
                match body.next().now_or_never() {
                    Some(Some(Ok(_))) => continue,
                    _ => break,
                }
            }
        }
    }
}

/// Sends one request and returns the successful response, mapping transport failures and
/// error statuses. `phase` is what a deadline expiry means for the caller.
///
/// A connection that closes after taking the request and before any byte of an answer is
/// sent the request once more, on another connection. That is how a pooled keep-alive
/// connection ends when the provider closes it for idleness just as our request goes out:
/// the provider never saw a request to answer. The official OpenAI and Anthropic SDKs retry
/// connection errors the same way; without it such a turn failed (or failed over) for no
/// fault of the provider's. Once only: a provider that keeps doing it is broken, and the
/// router's failover takes over.
pub(crate) async fn send(
    endpoint: &HttpEndpoint,
    body: Vec<u8>,
    deadline: Instant,
    phase: TimeoutPhase,
) -> Result<reqwest::Response, ProviderError> {
    let body = bytes::Bytes::from(body);
    let post = || {
        let request = endpoint
            .client
            .post(endpoint.url.clone())
            .headers(endpoint.headers.clone())
            .body(body.clone())
            .send();
        timeout_at(deadline, request)
    };
    let sent = match post().await {
        Ok(Err(e)) if closed_without_answer(&e) => {
            tracing::debug!(
                provider = endpoint.kind.as_str(),
                model = %endpoint.model,
                error = %e.without_url(),
                "the connection closed before an answer; sending the request again"
            );
            post().await
        }
        sent => sent,
    };
    let response = match sent {
        Err(_) => return Err(ProviderError::Timeout(phase)),
        Ok(Err(e)) => return Err(transport_error(endpoint, e, phase)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = read_error_body(response, deadline).await;
    Err(http_errors::from_status(
        endpoint.kind.as_str(),
        &endpoint.model,
        status.as_u16(),
        &headers,
        &body,
    ))
}

/// Whether a request failed because its connection closed (or was reset) with no answer
/// started: not a connect failure, not a timeout, not a request that could not be built.
fn closed_without_answer(e: &reqwest::Error) -> bool {
    e.is_request() && !e.is_connect() && !e.is_timeout() && !e.is_builder()
}

fn transport_error(
    endpoint: &HttpEndpoint,
    e: reqwest::Error,
    phase: TimeoutPhase,
) -> ProviderError {
    let error = if e.is_connect() {
        if e.is_timeout() {
            ProviderError::Timeout(TimeoutPhase::Connect)
        } else {
            ProviderError::Connect
        }
    } else if e.is_timeout() {
        ProviderError::Timeout(phase)
    } else {
        ProviderError::StreamBroken {
            tokens: 0,
            reason: "the connection closed before the response".to_owned(),
        }
    };
    // Without the URL: its query may carry deployment details.
    tracing::warn!(
        provider = endpoint.kind.as_str(),
        model = %endpoint.model,
        error = %e.without_url(),
        code = error.code(),
        "provider request failed"
    );
    error
}

/// Reads at most [`MAX_ERROR_BODY`] bytes of an error response, giving up at `deadline`.
async fn read_error_body(mut response: reqwest::Response, deadline: Instant) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body
}

/// Sends a non-streaming request and parses the whole JSON reply with `parse`, all within
/// the endpoint's total request timeout.
pub(crate) async fn complete_json<F>(
    endpoint: Arc<HttpEndpoint>,
    body: Vec<u8>,
    parse: F,
) -> Result<CompletionResponse, ProviderError>
where
    F: FnOnce(&[u8], Option<String>) -> Result<CompletionResponse, ProviderError>,
{
    let deadline = Instant::now() + endpoint.timeouts.total;
    let response = send(&endpoint, body, deadline, TimeoutPhase::Total).await?;
    let request_id = header_str(response.headers(), request_id_header(endpoint.kind));
    let bytes = match timeout_at(deadline, response.bytes()).await {
        Err(_) => return Err(ProviderError::Timeout(TimeoutPhase::Total)),
        Ok(Err(_)) => {
            return Err(ProviderError::StreamBroken {
                tokens: 0,
                reason: "the connection dropped while reading the response".to_owned(),
            });
        }
        Ok(Ok(bytes)) => bytes,
    };
    parse(&bytes, request_id).map(|mut reply| {
        reply.text = without_nul(reply.text);
        reply
    })
}

/// Model text with each NUL replaced by U+FFFD. PostgreSQL text cannot hold NUL, so a reply
/// carrying one could never be stored; replacing it here, before anyone sees the text, keeps
/// what is streamed, stored and replayed identical.
pub(crate) fn without_nul(text: String) -> String {
    if text.contains('\0') { text.replace('\0', "\u{FFFD}") } else { text }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// The response header carrying the provider's request id.
pub(crate) fn request_id_header(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Anthropic => "request-id",
        _ => "x-request-id",
    }
}

pub(crate) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{EndpointSpec, build_provider, http_client};
    use actors::ports::llm::{ChatMessage, FinishReason, GenerationRequest, Usage};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-request HTTP server answering `response` verbatim: for wire shapes fake-llm
    /// does not produce (a whole JSON body where a stream was asked for).
    async fn answer_once(response: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut socket).await);
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
        });
        format!("http://{addr}/v1")
    }

    /// Reads one request (head and `content-length` body) from `socket`; false at EOF.
    async fn read_request(socket: &mut tokio::net::TcpStream) -> bool {
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                return false;
            }
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    return true;
                }
            }
        }
    }

    fn json_response(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn compatible(base_url: String) -> std::sync::Arc<dyn actors::ports::llm::LlmProvider> {
        let spec =
            EndpointSpec::new(ProviderKind::OpenaiCompatible, "llama").with_base_url(base_url);
        build_provider(&spec, &http_client().unwrap()).unwrap()
    }

    fn request() -> GenerationRequest {
        GenerationRequest { messages: vec![ChatMessage::user("hi")], ..Default::default() }
    }

    #[tokio::test]
    async fn a_whole_json_reply_to_a_stream_request_is_delivered_as_one_delta() {
        let body = r#"{"id":"c-1","model":"llama","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#;
        let provider = compatible(answer_once(json_response(body)).await);
        let items: Vec<_> = provider.stream(request()).collect().await;
        let [Ok(StreamEvent::Delta(text)), Ok(StreamEvent::Finished(done))] = items.as_slice()
        else {
            panic!("{items:?}")
        };
        assert_eq!(text, "Hi there");
        assert_eq!(done.usage, Usage { input_tokens: 4, output_tokens: 2 });
        assert_eq!(done.finish_reason, FinishReason::Stop);
        assert_eq!(done.provider_request_id.as_deref(), Some("c-1"));
    }

    /// The race of a pooled connection against the provider's idle timeout: the first
    /// connection answers one request and keeps alive, then takes the next request and
    /// closes without a word. A second connection answers.
    #[tokio::test]
    async fn a_request_whose_connection_closes_unanswered_is_sent_again() {
        let body = r#"{"id":"c-1","model":"llama","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":1}}"#;
        let keep_alive = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut first).await);
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            first.write_all(keep_alive.as_bytes()).await.unwrap();
            assert!(read_request(&mut first).await, "the second request reuses the connection");
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            assert!(read_request(&mut second).await);
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            second.write_all(json_response(body).as_bytes()).await.unwrap();
        });
        let provider = compatible(format!("http://{addr}/v1"));
        for turn in ["first", "second"] {
            let items: Vec<_> = provider.stream(request()).collect().await;
            assert!(
                matches!(
                    items.as_slice(),
                    [Ok(StreamEvent::Delta(_)), Ok(StreamEvent::Finished(_))]
                ),
                "{turn} turn: {items:?}"
            );
        }
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_request_refused_twice_fails_after_one_retry() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                if read_request(&mut socket).await {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        let provider = compatible(format!("http://{addr}/v1"));
        let items: Vec<_> = provider.stream(request()).collect().await;
        assert!(
            matches!(items.as_slice(), [Err(ProviderError::StreamBroken { tokens: 0, .. })]),
            "{items:?}"
        );
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2, "one retry, no more");
    }

    #[tokio::test]
    async fn an_error_object_sent_with_200_is_mapped() {
        let body = r#"{"error":{"message":"upstream is overloaded","type":"server_error","code":"server_overloaded"}}"#;
        let provider = compatible(answer_once(json_response(body)).await);
        let items: Vec<_> = provider.stream(request()).collect().await;
        assert_eq!(items, vec![Err(ProviderError::Overloaded { retry_after: None })]);
    }
}
