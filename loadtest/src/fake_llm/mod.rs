//! `fake-llm`: a wire-exact OpenAI / Anthropic fake upstream with fault injection.
//!
//! Every test, benchmark and demo talks to this instead of the real APIs. One port serves:
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/chat/completions` | OpenAI Chat Completions, streaming or not (`openai.rs`) |
//! | `GET /v1/models` | OpenAI model list (Anthropic's shape when `anthropic-version` is sent) |
//! | `POST /v1/embeddings` | OpenAI embeddings: hashed bag of words, unit length (`embeddings.rs`) |
//! | `POST /v1/messages` | Anthropic Messages, streaming or not (`anthropic.rs`) |
//! | `GET /_fake/stats` | [`Stats`] as JSON, for tests |
//! | `POST`/`GET /_fake/scenario` | change / show the defaults at runtime, for drills (`control.rs`) |
//! | `GET /health` | 200 |
//!
//! Behaviour per request comes from a [`Scenario`]: the server's defaults, overridden by the
//! `x-fake-llm` header (`scenario.rs`); the SSE body is `stream.rs`, the text `text.rs`. The generated text is [`deterministic_text`] of the
//! **last user message's text** and the scenario's `seed`, so tests can assert it exactly. A
//! request that hands back the start of that text to be continued — a trailing assistant
//! message (prefill), or the partial answer followed by a request to continue it — gets the
//! rest of it, as a real model would, so a failover's joined text can be asserted exactly too.
//! Prompt tokens are the whitespace-separated words of every message (and the system prompt),
//! plus 3 per message and 3 for the reply; output tokens are the tokens actually sent. The
//! `realistic` knob (`realistic.rs`) instead sizes each answer like a real model's answer to
//! that prompt and counts prompt tokens like a BPE tokenizer, for cost benchmarks.
//!
//! In-process use: [`FakeLlmServer::start`] runs it on its own thread and actix system, so any
//! test runtime can call it; the `fake-llm` binary uses [`serve`] on a listener it bound.

mod anthropic;
mod control;
mod embeddings;
mod openai;
mod realistic;
mod scenario;
mod stream;
mod text;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::header::HeaderMap;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

pub use embeddings::{DEFAULT_DIMENSIONS, embed};
pub use realistic::{count_tokens, reply_tokens};
pub use scenario::{DEFAULT_TOKENS, Scenario};
pub use text::deterministic_text;

/// The request header carrying per-request [`Scenario`] overrides.
pub const SCENARIO_HEADER: &str = "x-fake-llm";

/// Largest request body accepted; Anthropic documents 32 MB for the Messages API.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Counters as seen by tests, from `GET /_fake/stats` or [`FakeLlmServer::stats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// API requests received (chat, messages, embeddings, models), whatever their outcome.
    pub requests: u64,
    /// Streaming responses currently open.
    pub active_streams: u64,
    /// Streaming responses whose body ended normally (a `break_after` stream ends cleanly too).
    pub completed_streams: u64,
    /// Streams the client dropped before they finished.
    pub client_disconnects: u64,
    /// Faults the fake produced on purpose: injected statuses, `fail_rate` failures, in-stream
    /// errors, drops, malformed frames and prefill rejections.
    pub errors_injected: u64,
    /// The last API request, so tests can assert what an adapter sent.
    pub last_request: Option<LastRequest>,
}

/// What the last API request carried. Credentials are reported as present/absent only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LastRequest {
    pub method: String,
    pub path: String,
    /// The body parsed as JSON; a string if it was not JSON, `null` if empty.
    pub body: serde_json::Value,
    /// Whether an `authorization` header was present (never its value).
    pub authorization: bool,
    /// Whether an `x-api-key` header was present (never its value).
    pub x_api_key: bool,
    pub anthropic_version: Option<String>,
    pub anthropic_beta: Option<String>,
    pub x_fake_llm: Option<String>,
}

/// Lock-free counters shared by all workers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) active_streams: AtomicU64,
    pub(crate) completed_streams: AtomicU64,
    pub(crate) client_disconnects: AtomicU64,
    pub(crate) errors_injected: AtomicU64,
}

/// The last request as captured: the raw body is kept and parsed only when stats are read, so
/// recording costs one refcount bump and a short lock per request.
struct Recorded {
    method: String,
    path: String,
    body: Bytes,
    authorization: bool,
    x_api_key: bool,
    anthropic_version: Option<String>,
    anthropic_beta: Option<String>,
    x_fake_llm: Option<String>,
}

/// State shared by every worker of one server.
pub(crate) struct Shared {
    defaults: control::Defaults,
    pub(crate) counters: Arc<Counters>,
    last: Mutex<Option<Recorded>>,
}

impl Shared {
    fn new(defaults: Scenario) -> Self {
        Shared {
            defaults: control::Defaults::new(defaults),
            counters: Arc::new(Counters::default()),
            last: Mutex::new(None),
        }
    }

    /// Counts and records an API request; returns its sequence number (for `fail_rate`).
    pub(crate) fn begin(&self, req: &HttpRequest, body: &Bytes) -> u64 {
        let seq = self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let headers = req.headers();
        let recorded = Recorded {
            method: req.method().to_string(),
            path: req.path().to_owned(),
            body: body.clone(),
            authorization: headers.contains_key("authorization"),
            x_api_key: headers.contains_key("x-api-key"),
            anthropic_version: header_str(headers, "anthropic-version"),
            anthropic_beta: header_str(headers, "anthropic-beta"),
            x_fake_llm: header_str(headers, SCENARIO_HEADER),
        };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(recorded);
        seq
    }

    /// The scenario for this request: defaults plus the `x-fake-llm` header.
    pub(crate) fn scenario(&self, req: &HttpRequest) -> Result<Scenario, String> {
        match req.headers().get(SCENARIO_HEADER) {
            None => Ok(self.defaults.get()),
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| format!("the {SCENARIO_HEADER} header is not valid ASCII"))?;
                Scenario::parse_header(&self.defaults.get(), v)
            }
        }
    }

    pub(crate) fn injected(&self) {
        self.counters.errors_injected.fetch_add(1, Ordering::Relaxed);
    }

    /// The status to fail this request with, if the scenario says so: `error_status`, or a
    /// `fail_rate` draw (alternating between the API's two usual server-side failures).
    pub(crate) fn injected_status(&self, s: &Scenario, seq: u64, overloaded: u16) -> Option<u16> {
        if let Some(status) = s.error_status {
            self.injected();
            return Some(status);
        }
        if s.draws_failure(seq) {
            self.injected();
            return Some(if text::mix(s.seed ^ seq) & 1 == 0 { 500 } else { overloaded });
        }
        None
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        let last =
            self.last.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|r| LastRequest {
                method: r.method.clone(),
                path: r.path.clone(),
                body: if r.body.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&r.body).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&r.body).into_owned())
                    })
                },
                authorization: r.authorization,
                x_api_key: r.x_api_key,
                anthropic_version: r.anthropic_version.clone(),
                anthropic_beta: r.anthropic_beta.clone(),
                x_fake_llm: r.x_fake_llm.clone(),
            });
        Stats {
            requests: c.requests.load(Ordering::Relaxed),
            active_streams: c.active_streams.load(Ordering::Relaxed),
            completed_streams: c.completed_streams.load(Ordering::Relaxed),
            client_disconnects: c.client_disconnects.load(Ordering::Relaxed),
            errors_injected: c.errors_injected.load(Ordering::Relaxed),
            last_request: last,
        }
    }
}

pub(crate) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A random id tail like the providers' (`chatcmpl-…`, `msg_01…`, `req_…`).
pub(crate) fn random_id(len: usize) -> String {
    rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}

/// Seconds since the Unix epoch, for `created` fields.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Never resolves: `hang` accepts a request and keeps the client waiting until it gives up.
pub(crate) async fn hang_forever() -> HttpResponse {
    futures_util::future::pending::<()>().await;
    HttpResponse::InternalServerError().finish()
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ok"}"#)
}

async fn stats(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(shared.stats())
}

fn build(
    listener: TcpListener,
    shared: web::Data<Shared>,
    workers: usize,
) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(shared.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .route("/v1/chat/completions", web::post().to(openai::chat_completions))
            .route("/v1/models", web::get().to(openai::models))
            .route("/v1/embeddings", web::post().to(embeddings::embeddings))
            .route("/v1/messages", web::post().to(anthropic::messages))
            .route("/_fake/stats", web::get().to(stats))
            .route("/_fake/scenario", web::post().to(control::set_scenario))
            .route("/_fake/scenario", web::get().to(control::get_scenario))
            .route("/health", web::get().to(health))
    })
    // Nagle adds tens of milliseconds to small SSE frames.
    .on_connect(|conn, _| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
    // HTTP clients never half-close; treating EOF as a disconnect is what lets a silent
    // (`hang_after`) stream notice that its client gave up, and frees its connection.
    .h1_allow_half_closed(false)
    .workers(workers.max(1))
    .max_connections(100_000)
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok(server)
}

/// Accept-queue length for [`bind`]: enough for a load test's connection burst.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener for [`serve`] with a deep accept queue. `std::net::TcpListener::bind`
/// uses a backlog of 128; when thousands of streams connect at once the overflow is dropped
/// and those clients wait out a one-second SYN retransmit, which looks like server latency.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // `listen` hands back a tokio listener, which needs a reactor for the moment it exists;
    // `into_std` detaches it again so actix can take it over. The throwaway runtime lives on
    // its own thread so that callers already inside a runtime (async tests) can bind too.
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()?
                    .block_on(async move { socket.listen(LISTEN_BACKLOG)?.into_std() })
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("fake-llm bind thread panicked")))
    })
}

/// Serves fake-llm on `listener` (ideally from [`bind`]) with `workers` worker threads. Call it inside an actix
/// system (`actix_rt::System::new().block_on(...)`) and await the returned server.
pub fn serve(listener: TcpListener, defaults: Scenario, workers: usize) -> std::io::Result<Server> {
    build(listener, web::Data::new(Shared::new(defaults)), workers)
}

/// An in-process fake-llm on `127.0.0.1:0`, stopped when dropped.
pub struct FakeLlmServer {
    addr: SocketAddr,
    shared: web::Data<Shared>,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl FakeLlmServer {
    /// Starts on its own thread with its own actix system, so any test runtime (tokio or
    /// actix) can use it. Binds 127.0.0.1:0 with one worker.
    pub fn start(defaults: Scenario) -> std::io::Result<FakeLlmServer> {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let shared = web::Data::new(Shared::new(defaults));
        let for_thread = shared.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("fake-llm".into()).spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                match build(listener, for_thread, 1) {
                    Ok(server) => {
                        let _ = tx.send(Ok(server.handle()));
                        if let Err(e) = server.await {
                            tracing::warn!(error = %e, "fake-llm server stopped with an error");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
        let handle = rx.recv().map_err(|_| {
            std::io::Error::other("fake-llm server thread exited before starting")
        })??;
        Ok(FakeLlmServer { addr, shared, handle, thread: Some(thread) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same counters as `GET /_fake/stats`, read directly.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }
}

impl Drop for FakeLlmServer {
    fn drop(&mut self) {
        // Not graceful: hung requests (`hang`) must not hold the test up. The stop command is
        // sent eagerly; joining waits for the server thread to wind down.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
