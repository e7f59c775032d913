//! Provider adapters against `fake-llm`: the exact text and usage of successful streams and
//! calls, what was sent upstream, and every failure class of the `ProviderError` taxonomy.
//!
//! Each scenario runs for both wire protocols (`openai` and `anthropic` submodules).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::ports::llm::{
    BadRequestKind, ChatMessage, FinishReason, GenerationRequest, LlmProvider, ProviderError,
    StreamEvent, TimeoutPhase, Usage,
};
use engine::providers::{EndpointSpec, ProviderKind, build_provider, http_client};
use futures_util::StreamExt;
use loadtest::fake_llm::{FakeLlmServer, Scenario, deterministic_text};

const KEY: &str = "sk-it-NEVER-SHOWN-424242";
const PROMPT: &str = "Tell me a story";

#[derive(Clone, Copy, Debug)]
enum Wire {
    Openai,
    Anthropic,
}

/// Runs `$name(Wire)` once per wire protocol.
macro_rules! both_wires {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn openai() {
                super::$name(super::Wire::Openai).await
            }
            #[tokio::test]
            async fn anthropic() {
                super::$name(super::Wire::Anthropic).await
            }
        }
    )*};
}

both_wires!(
    streams_exact_text_usage_and_request,
    completes_without_streaming,
    rate_limited_with_retry_after,
    overloaded,
    server_error,
    auth_rejected,
    invalid_request,
    context_length,
    prefill_rejected,
    connect_refused,
    first_token_timeout,
    idle_timeout,
    whole_request_timeout,
    in_band_break_after_tokens,
    dropped_connection_after_tokens,
    malformed_frame,
    dropping_the_stream_closes_the_upstream_connection,
);

fn fake() -> FakeLlmServer {
    FakeLlmServer::start(Scenario::default()).expect("fake-llm starts")
}

fn spec(wire: Wire, base_url: &str, script: &str) -> EndpointSpec {
    let spec = match wire {
        Wire::Openai => EndpointSpec::new(ProviderKind::Openai, "gpt-4o-mini")
            .with_base_url(format!("{base_url}/v1")),
        Wire::Anthropic => {
            EndpointSpec::new(ProviderKind::Anthropic, "claude-sonnet-4").with_base_url(base_url)
        }
    };
    let mut spec = spec.with_api_key(KEY).with_header("x-fake-llm", script);
    // Short waits so the timeout tests are quick; the happy paths are far below them.
    spec.first_token_timeout_ms = 400;
    spec.idle_timeout_ms = 400;
    spec.request_timeout_ms = 2_000;
    spec
}

fn provider(spec: &EndpointSpec) -> Arc<dyn LlmProvider> {
    build_provider(spec, &http_client().unwrap()).unwrap()
}

fn request() -> GenerationRequest {
    GenerationRequest {
        system: Some("Be brief.".into()),
        messages: vec![ChatMessage::user(PROMPT)],
        temperature: Some(0.2),
        max_tokens: Some(100),
        stop: vec!["zzz-never".into()],
    }
}

/// The fake's input token count: words of the system prompt and of each message, 3 per
/// message (the system prompt is a message on the OpenAI wire), 3 for the reply.
fn expected_input(wire: Wire) -> u64 {
    match wire {
        Wire::Openai => (2 + 3) + (4 + 3) + 3,
        Wire::Anthropic => 2 + (4 + 3) + 3,
    }
}

/// Collects a stream: the deltas, then the final item (`Ok(None)` if it finished normally).
async fn run_stream(
    provider: &dyn LlmProvider,
    request: GenerationRequest,
) -> (Vec<String>, Result<actors::ports::llm::Completion, ProviderError>) {
    let mut stream = provider.stream(request);
    let mut deltas = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(StreamEvent::Delta(text)) => deltas.push(text),
            Ok(StreamEvent::Finished(done)) => {
                assert!(stream.next().await.is_none(), "nothing after Finished");
                return (deltas, Ok(done));
            }
            Err(e) => {
                assert!(stream.next().await.is_none(), "nothing after an error");
                assert!(!format!("{e:?} {e}").contains("NEVER-SHOWN"), "key leaked: {e:?}");
                return (deltas, Err(e));
            }
        }
    }
    panic!("stream ended without Finished or an error");
}

/// The error a scripted request fails with, streaming and not, which must agree.
async fn failure(wire: Wire, script: &str, request: GenerationRequest) -> ProviderError {
    let fake = fake();
    let provider = provider(&spec(wire, &fake.base_url(), script));
    let (deltas, streamed) = run_stream(&*provider, request.clone()).await;
    assert!(deltas.is_empty(), "{deltas:?}");
    let streamed = streamed.expect_err("the stream fails");
    let whole = provider.complete(request).await.expect_err("the call fails");
    assert_eq!(streamed, whole, "streaming and non-streaming map the same failure");
    streamed
}

async fn streams_exact_text_usage_and_request(wire: Wire) {
    let fake = fake();
    let spec = spec(wire, &fake.base_url(), "tokens=12; seed=7");
    let (deltas, done) = run_stream(&*provider(&spec), request()).await;
    let done = done.unwrap();

    assert_eq!(deltas, deterministic_text(PROMPT, 7, 12), "token by token, in order");
    assert_eq!(done.usage, Usage { input_tokens: expected_input(wire), output_tokens: 12 });
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert_eq!(done.model, spec.upstream_model);
    let request_id = done.provider_request_id.unwrap();
    assert!(request_id.starts_with("req_"), "from the response header: {request_id}");

    let sent = fake.stats().last_request.unwrap();
    let body = &sent.body;
    assert_eq!(body["model"], spec.upstream_model.as_str());
    assert_eq!(body["stream"], true);
    assert!((body["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    match wire {
        Wire::Openai => {
            assert_eq!(sent.path, "/v1/chat/completions");
            assert!(sent.authorization && !sent.x_api_key);
            assert_eq!(body["messages"][0]["role"], "system");
            assert_eq!(body["messages"][0]["content"], "Be brief.");
            assert_eq!(body["messages"][1]["content"], PROMPT);
            assert_eq!(body["stream_options"]["include_usage"], true);
            assert_eq!(body["max_completion_tokens"], 100);
            assert!(body.get("max_tokens").is_none());
            assert_eq!(body["stop"], serde_json::json!(["zzz-never"]));
        }
        Wire::Anthropic => {
            assert_eq!(sent.path, "/v1/messages");
            assert!(sent.x_api_key && !sent.authorization);
            assert_eq!(sent.anthropic_version.as_deref(), Some("2023-06-01"));
            assert_eq!(body["system"], "Be brief.");
            assert_eq!(body["messages"].as_array().unwrap().len(), 1);
            assert_eq!(body["max_tokens"], 100);
            assert_eq!(body["stop_sequences"], serde_json::json!(["zzz-never"]));
            assert!(body.get("stream_options").is_none());
        }
    }
}

async fn completes_without_streaming(wire: Wire) {
    let fake = fake();
    let spec = spec(wire, &fake.base_url(), "tokens=9; seed=3");
    let reply = provider(&spec).complete(request()).await.unwrap();
    assert_eq!(reply.text, deterministic_text(PROMPT, 3, 9).concat());
    assert_eq!(
        reply.completion.usage,
        Usage { input_tokens: expected_input(wire), output_tokens: 9 }
    );
    assert_eq!(reply.completion.finish_reason, FinishReason::Stop);
    assert!(reply.completion.provider_request_id.unwrap().starts_with("req_"));
    let body = fake.stats().last_request.unwrap().body;
    assert_eq!(body["stream"], false);
    assert!(body.get("stream_options").is_none());
}

async fn rate_limited_with_retry_after(wire: Wire) {
    let error = failure(wire, "error_status=429; retry_after=7", request()).await;
    assert_eq!(error, ProviderError::RateLimited { retry_after: Some(Duration::from_secs(7)) });
    assert!(error.is_retryable());
}

async fn overloaded(wire: Wire) {
    let status = match wire {
        Wire::Openai => 503,
        Wire::Anthropic => 529,
    };
    let error = failure(wire, &format!("error_status={status}"), request()).await;
    assert_eq!(error, ProviderError::Overloaded { retry_after: Some(Duration::from_secs(1)) });
}

async fn server_error(wire: Wire) {
    assert_eq!(
        failure(wire, "error_status=500", request()).await,
        ProviderError::Server { status: 500 }
    );
}

async fn auth_rejected(wire: Wire) {
    let error = failure(wire, "error_status=401", request()).await;
    assert_eq!(error, ProviderError::Auth { status: 401 });
    assert!(!error.is_retryable());
}

async fn invalid_request(wire: Wire) {
    let error = failure(wire, "error_status=400", request()).await;
    let ProviderError::BadRequest { kind: BadRequestKind::Invalid, message } = &error else {
        panic!("{error:?}");
    };
    assert!(message.contains("400"), "the provider's short message is kept: {message}");
}

async fn context_length(wire: Wire) {
    let error =
        failure(wire, "error_status=400; error_code=context_length_exceeded", request()).await;
    assert!(
        matches!(error, ProviderError::BadRequest { kind: BadRequestKind::ContextLength, .. }),
        "{error:?}"
    );
    assert!(error.is_retryable(), "a larger-context model may take it");
}

async fn prefill_rejected(wire: Wire) {
    let mut request = request();
    request.messages.push(ChatMessage::assistant("Once upon "));
    let error = failure(wire, "reject_prefill", request.clone()).await;
    assert!(
        matches!(error, ProviderError::BadRequest { kind: BadRequestKind::PrefillUnsupported, .. }),
        "{error:?}"
    );
    // Without the knob the trailing assistant message is sent as the prefill; Anthropic
    // rejects trailing whitespace there, so that adapter trims it.
    let fake = fake();
    let provider = provider(&spec(wire, &fake.base_url(), "tokens=2"));
    provider.complete(request).await.unwrap();
    let body = fake.stats().last_request.unwrap().body;
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.last().unwrap()["role"], "assistant");
    let sent = match wire {
        Wire::Openai => "Once upon ",
        Wire::Anthropic => "Once upon",
    };
    assert_eq!(messages.last().unwrap()["content"], sent);
}

async fn connect_refused(wire: Wire) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let provider = provider(&spec(wire, &base_url, ""));
    let (deltas, streamed) = run_stream(&*provider, request()).await;
    assert!(deltas.is_empty());
    assert_eq!(streamed.unwrap_err(), ProviderError::Connect);
    assert_eq!(provider.complete(request()).await.unwrap_err(), ProviderError::Connect);
}

async fn first_token_timeout(wire: Wire) {
    let fake = fake();
    let provider = provider(&spec(wire, &fake.base_url(), "hang"));
    let started = Instant::now();
    let (deltas, result) = run_stream(&*provider, request()).await;
    assert!(deltas.is_empty());
    assert_eq!(result.unwrap_err(), ProviderError::Timeout(TimeoutPhase::FirstToken));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(2), "{waited:?}");
}

async fn idle_timeout(wire: Wire) {
    let fake = fake();
    let provider = provider(&spec(wire, &fake.base_url(), "hang_after=3; seed=5"));
    let (deltas, result) = run_stream(&*provider, request()).await;
    assert_eq!(deltas, deterministic_text(PROMPT, 5, 3));
    assert_eq!(result.unwrap_err(), ProviderError::Timeout(TimeoutPhase::Idle));
}

async fn whole_request_timeout(wire: Wire) {
    let fake = fake();
    let mut spec = spec(wire, &fake.base_url(), "hang");
    spec.request_timeout_ms = 300;
    let started = Instant::now();
    let error = provider(&spec).complete(request()).await.unwrap_err();
    assert_eq!(error, ProviderError::Timeout(TimeoutPhase::Total));
    assert!(started.elapsed() < Duration::from_secs(2));
}

async fn in_band_break_after_tokens(wire: Wire) {
    let fake = fake();
    let provider = provider(&spec(wire, &fake.base_url(), "break_after=5; seed=11"));
    let (deltas, result) = run_stream(&*provider, request()).await;
    assert_eq!(deltas, deterministic_text(PROMPT, 11, 5));
    let error = result.unwrap_err();
    assert!(matches!(error, ProviderError::StreamBroken { tokens: 5, .. }), "{error:?}");

    // The same in-band error before any token keeps its own class.
    let fake = self::fake();
    let provider = self::provider(&spec(wire, &fake.base_url(), "break_after=0"));
    let (deltas, result) = run_stream(&*provider, request()).await;
    assert!(deltas.is_empty());
    let expected = match wire {
        Wire::Openai => ProviderError::Server { status: 500 }, // `server_error`
        Wire::Anthropic => ProviderError::Overloaded { retry_after: None }, // `overloaded_error`
    };
    assert_eq!(result.unwrap_err(), expected);
}

async fn dropped_connection_after_tokens(wire: Wire) {
    let fake = fake();
    let provider = provider(&spec(wire, &fake.base_url(), "drop_after=5; seed=13"));
    let (deltas, result) = run_stream(&*provider, request()).await;
    assert_eq!(deltas, deterministic_text(PROMPT, 13, 5));
    let error = result.unwrap_err();
    assert!(matches!(error, ProviderError::StreamBroken { tokens: 5, .. }), "{error:?}");
}

async fn malformed_frame(wire: Wire) {
    let fake = fake();
    let provider = provider(&spec(wire, &fake.base_url(), "malformed_after=3; seed=2"));
    let (deltas, result) = run_stream(&*provider, request()).await;
    assert_eq!(deltas, deterministic_text(PROMPT, 2, 3));
    assert!(matches!(result, Err(ProviderError::Malformed(_))), "{result:?}");
}

async fn dropping_the_stream_closes_the_upstream_connection(wire: Wire) {
    let fake = fake();
    let provider = provider(&spec(wire, &fake.base_url(), "tokens=200; token_delay_ms=20"));
    let mut stream = provider.stream(request());
    for _ in 0..2 {
        assert!(matches!(stream.next().await, Some(Ok(StreamEvent::Delta(_)))));
    }
    assert_eq!(fake.stats().active_streams, 1);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(3);
    while fake.stats().client_disconnects == 0 {
        assert!(Instant::now() < deadline, "fake-llm never saw the disconnect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.stats().active_streams, 0);
    assert_eq!(fake.stats().completed_streams, 0);
}

/// OpenAI-compatible servers: no key, `max_tokens` (not `max_completion_tokens`).
#[tokio::test]
async fn openai_compatible_without_key_sends_max_tokens() {
    let fake = fake();
    let mut spec = EndpointSpec::new(ProviderKind::OpenaiCompatible, "llama3.1")
        .with_base_url(format!("{}/v1", fake.base_url()))
        .with_header("x-fake-llm", "tokens=4; seed=1");
    spec.first_token_timeout_ms = 2_000;
    let (deltas, done) = run_stream(&*provider(&spec), request()).await;
    assert_eq!(deltas, deterministic_text(PROMPT, 1, 4));
    assert_eq!(done.unwrap().usage.output_tokens, 4);
    let sent = fake.stats().last_request.unwrap();
    assert!(!sent.authorization);
    assert_eq!(sent.body["max_tokens"], 100);
    assert!(sent.body.get("max_completion_tokens").is_none());
}

/// Connections are reused across requests: the pool is not defeated by how streams end.
#[tokio::test]
async fn sequential_streams_complete_and_leave_nothing_open() {
    let fake = fake();
    let provider = provider(&spec(Wire::Openai, &fake.base_url(), "tokens=3"));
    for _ in 0..5 {
        let (_, done) = run_stream(&*provider, request()).await;
        done.unwrap();
    }
    let stats = fake.stats();
    assert_eq!(stats.completed_streams, 5);
    assert_eq!(stats.client_disconnects, 0);
    assert_eq!(stats.active_streams, 0);
}

/// A peer that never completes the TCP handshake: a listener whose accept queue is full
/// drops further SYNs on Linux, so the connect attempt hangs until our connect timeout.
#[tokio::test]
async fn connect_timeout_is_its_own_phase() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue until a plain connect stalls (kept open for the whole test).
    let mut held = Vec::new();
    let mut stalled = false;
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(150)) {
            Ok(stream) => held.push(stream),
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    if !stalled {
        eprintln!("skipped: this kernel accepts connections beyond the listen backlog");
        return;
    }
    let mut spec = spec(Wire::Openai, &format!("http://{addr}"), "");
    spec.connect_timeout_ms = 200;
    spec.first_token_timeout_ms = 3_000;
    let started = Instant::now();
    let (deltas, result) = run_stream(&*provider(&spec), request()).await;
    assert!(deltas.is_empty());
    assert_eq!(result.unwrap_err(), ProviderError::Timeout(TimeoutPhase::Connect));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    drop((held, listener));
}

/// Captured log output, for asserting what operators see.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An auth failure is logged at error level for the operator, and no log line (at any level)
/// carries the key, whatever failed.
#[tokio::test]
async fn logs_name_auth_failures_and_never_the_key() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Current-thread test runtime: the thread-local default sees every adapter log line.
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = fake();
    for script in ["error_status=401", "error_status=429", "drop_after=1", "malformed_after=0"] {
        let provider = provider(&spec(Wire::Anthropic, &fake.base_url(), script));
        let _ = run_stream(&*provider, request()).await;
        let provider = provider_for_openai(&fake, script);
        let _ = provider.complete(request()).await;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let _ = run_stream(&*provider(&spec(Wire::Openai, &refused, "")), request()).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.lines().any(|l| l.contains("ERROR") && l.contains("rejected our credentials")),
        "{text}"
    );
    assert!(!text.contains("NEVER-SHOWN"), "a log line leaked the key:\n{text}");
}

fn provider_for_openai(fake: &FakeLlmServer, script: &str) -> Arc<dyn LlmProvider> {
    provider(&spec(Wire::Openai, &fake.base_url(), script))
}
