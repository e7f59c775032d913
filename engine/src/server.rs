//! Building and running the engine: the actor tree first, then actix-web on top of it.
//!
//! Shutdown (SIGTERM or Ctrl-C), in phases:
//! 1. stop accepting connections and report not-ready, so the load balancer moves new
//!    clients to other nodes;
//! 2. let turns in flight finish, up to `server.shutdown_grace_secs`;
//! 3. close every WebSocket with code 1012 (service restart), which tells clients to
//!    reconnect — to another node — and resume; release this node's conversation leases
//!    (with `[redis]`) so that node takes them over at once;
//! 4. stop the HTTP server and the actor system, flushing logs on the way out.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_http::HttpService;
use actix_service::{IntoServiceFactory, map_config};
use actix_web::dev::{AppConfig, ServerHandle};
use actix_web::web;
use actors::registry::Registry;
use anyhow::Context;
use tokio::sync::watch;

use crate::auth::AuthService;
use crate::config::Config;
use crate::tree::Tree;

/// The steps of [`Engine::shutdown`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum ShutdownPhase {
    Serving,
    PausingListener,
    DrainingTurns,
    ClosingSessions,
    ReleasingLeases,
    StoppingServer,
    Stopped,
}

impl ShutdownPhase {
    const ALL: [ShutdownPhase; 7] = [
        ShutdownPhase::Serving,
        ShutdownPhase::PausingListener,
        ShutdownPhase::DrainingTurns,
        ShutdownPhase::ClosingSessions,
        ShutdownPhase::ReleasingLeases,
        ShutdownPhase::StoppingServer,
        ShutdownPhase::Stopped,
    ];

    fn name(self) -> &'static str {
        match self {
            ShutdownPhase::Serving => "serving",
            ShutdownPhase::PausingListener => "pausing the listener",
            ShutdownPhase::DrainingTurns => "draining turns",
            ShutdownPhase::ClosingSessions => "closing WebSocket sessions",
            ShutdownPhase::ReleasingLeases => "releasing conversation leases",
            ShutdownPhase::StoppingServer => "stopping the HTTP server",
            ShutdownPhase::Stopped => "stopped",
        }
    }
}

/// How far a shutdown has got: a shutdown that never ends names the step it is stuck in.
#[derive(Clone, Default)]
pub struct ShutdownProgress(Arc<AtomicU8>);

impl ShutdownProgress {
    fn get(&self) -> ShutdownPhase {
        let index = usize::from(self.0.load(Ordering::Acquire));
        ShutdownPhase::ALL.get(index).copied().unwrap_or(ShutdownPhase::Serving)
    }

    fn enter(&self, phase: ShutdownPhase) {
        self.0.store(phase as u8, Ordering::Release);
        tracing::info!(phase = phase.name(), "shutting down");
    }

    pub fn phase(&self) -> &'static str {
        self.get().name()
    }
}

/// Everything a handler may reach, shared by all workers.
pub struct AppState {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub tree: Tree,
    /// Authentication, authorization, accounts and limits.
    pub auth: Arc<AuthService>,
    shutdown: ShutdownProgress,
    websocket_sessions: AtomicUsize,
    /// Flipped once when WebSocket sessions must close with 1012.
    close_sessions: watch::Sender<bool>,
}

impl AppState {
    pub fn shutting_down(&self) -> bool {
        self.shutdown.get() != ShutdownPhase::Serving
    }

    /// Where [`Engine::shutdown`] is; outlives the engine.
    pub fn shutdown_progress(&self) -> ShutdownProgress {
        self.shutdown.clone()
    }

    /// Open WebSocket sessions on this node.
    pub fn websocket_sessions(&self) -> usize {
        self.websocket_sessions.load(Ordering::Relaxed)
    }

    /// Counts a session for as long as the returned guard lives.
    pub fn track_websocket_session(self: &Arc<Self>) -> SessionGuard {
        self.websocket_sessions.fetch_add(1, Ordering::Relaxed);
        SessionGuard { state: self.clone() }
    }

    /// A receiver each WebSocket session watches for the shutdown signal.
    pub fn session_shutdown(&self) -> watch::Receiver<bool> {
        self.close_sessions.subscribe()
    }
}

/// Keeps a WebSocket session counted in [`AppState::websocket_sessions`].
pub struct SessionGuard {
    state: Arc<AppState>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.state.websocket_sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running engine.
pub struct Engine {
    addr: SocketAddr,
    state: web::Data<AppState>,
    handle: ServerHandle,
    server: actix_server::Server,
}

impl Engine {
    /// Builds the tree and binds the listener. Must run inside an actix `System`.
    pub async fn start(config: Config) -> anyhow::Result<Engine> {
        let config = Arc::new(config);
        crate::telemetry::metrics::install(&config.telemetry);
        let registry = Registry::new();
        let auth =
            crate::auth::setup::start(&config).await.context("failed to start authentication")?;
        let tree = Tree::start(&config, registry.clone(), auth.quota.clone())
            .await
            .context("failed to start the actor tree")?;
        let (close_sessions, _) = watch::channel(false);
        let state = web::Data::new(AppState {
            config: config.clone(),
            registry,
            tree,
            auth,
            shutdown: ShutdownProgress::default(),
            websocket_sessions: AtomicUsize::new(0),
            close_sessions,
        });

        let listener = listen(config.server.listen)
            .with_context(|| format!("failed to listen on {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        let limits = config.limits.clone();
        let socket_tuning = SocketTuning::from_limits(&limits);
        let connections = crate::http::connections::ConnectionLimiter::new(&limits);
        let app_state = state.clone();
        let mut builder = actix_server::Server::build()
            .disable_signals()
            // Turns were drained before `stop`; what is still open now is idle keep-alive.
            .shutdown_timeout(1)
            .max_concurrent_connections(25_000);
        if config.server.workers > 0 {
            builder = builder.workers(config.server.workers);
        }
        // actix-web's `HttpServer` spelled out, for the one thing it cannot do: hand upgraded
        // connections to a service of our own (`http::ws::upgrade`).
        let builder = builder.listen("switchyard", listener, move || {
            let state = app_state.clone();
            let (connections, socket_tuning) = (connections.clone(), socket_tuning);
            let max_body_bytes = limits.max_body_bytes;
            let app = move || crate::http::app(state.clone(), max_body_bytes).into_factory();
            HttpService::build()
                .client_request_timeout(Duration::from_millis(limits.client_request_timeout_ms))
                .client_disconnect_timeout(Duration::from_millis(
                    limits.client_disconnect_timeout_ms,
                ))
                .local_addr(addr)
                .on_connect_ext(move |tcp: &actix_rt::net::TcpStream, data| {
                    tune_socket(tcp, &socket_tuning);
                    connections.on_connect(tcp, data);
                })
                .upgrade(crate::http::ws::upgrade::service(
                    app(),
                    Duration::from_millis(limits.ws_write_timeout_ms),
                ))
                .finish(map_config(app(), |_| AppConfig::default()))
                .tcp()
        })?;
        let server = builder.run();
        Ok(Engine { addr, state, handle: server.handle(), server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serves until the server stops (after [`Engine::shutdown`] or a fatal error).
    pub async fn run(self) -> anyhow::Result<()> {
        self.server.await.context("the HTTP server failed")
    }

    /// The phased shutdown described at the top of this module.
    pub async fn shutdown(state: web::Data<AppState>, handle: ServerHandle) {
        state.shutdown.enter(ShutdownPhase::PausingListener);
        handle.pause().await;
        state.shutdown.enter(ShutdownPhase::DrainingTurns);
        let grace = Duration::from_secs(state.config.server.shutdown_grace_secs);
        let deadline = Instant::now() + grace;
        while state.tree.turns_in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        state.shutdown.enter(ShutdownPhase::ClosingSessions);
        let _ = state.close_sessions.send(true);
        // Give sessions a moment to send their close frames.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Hand this node's conversations back, so other nodes take them over at once
        // instead of after their leases expire.
        if let Some(cluster) = state.tree.conversations.cluster() {
            state.shutdown.enter(ShutdownPhase::ReleasingLeases);
            cluster.release_all().await;
        }
        state.shutdown.enter(ShutdownPhase::StoppingServer);
        handle.stop(true).await;
        state.shutdown.enter(ShutdownPhase::Stopped);
    }
}

/// Connections the kernel queues for `accept`. actix-server's `backlog` only applies to
/// addresses it binds itself; std's `TcpListener::bind` uses 128, which a ramp of thousands
/// of clients overflows (a dropped SYN is retried a second later).
const LISTEN_BACKLOG: i32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // As std does: a restarted node can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Per-connection socket options, applied as each connection is accepted.
#[derive(Debug, Clone, Copy)]
struct SocketTuning {
    send_buffer: usize,
    user_timeout: Duration,
}

impl SocketTuning {
    fn from_limits(limits: &crate::config::LimitsConfig) -> Self {
        Self {
            send_buffer: limits.socket_send_buffer_bytes,
            // Unacknowledged data (or a zero window) for this long means the peer is gone or
            // has stopped reading: let the kernel reset the connection so its buffers are
            // released even while actix-http still holds the socket.
            user_timeout: Duration::from_millis(limits.ws_write_timeout_ms.saturating_mul(3)),
        }
    }
}

fn tune_socket(tcp: &actix_rt::net::TcpStream, tuning: &SocketTuning) {
    // Nagle's algorithm holds small frames (one token each) back for up to 40 ms.
    let _ = tcp.set_nodelay(true);
    let socket = socket2::SockRef::from(tcp);
    if tuning.send_buffer > 0 {
        let _ = socket.set_send_buffer_size(tuning.send_buffer);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket.set_tcp_user_timeout(Some(tuning.user_timeout));
}

/// `switchyard serve`: runs until SIGTERM or Ctrl-C, then shuts down in phases.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let engine = Engine::start(config).await?;
    let url = format!("http://{}", engine.addr());
    tracing::info!(%url, "Switchyard is listening");
    println!("Switchyard is listening on {url}");
    let (state, handle) = (engine.state(), engine.handle());
    actix_rt::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: draining turns");
        Engine::shutdown(state, handle).await;
    });
    engine.run().await?;
    actix_rt::System::current().stop();
    tracing::info!("Switchyard stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A human summary of the configuration, for `switchyard check-config`. Never prints secrets.
pub fn describe(config: &Config) -> String {
    let mut out = format!("configuration OK\nlisten: {}\n", config.server.listen);
    out.push_str(&format!("default model: {}\nmodels:\n", config.default_model()));
    for model in &config.models {
        let fallbacks = if model.fallbacks.is_empty() {
            String::from("none")
        } else {
            model.fallbacks.join(" → ")
        };
        out.push_str(&format!(
            "  {} ({:?} {}), fallbacks: {}\n",
            model.name, model.endpoint.provider, model.endpoint.upstream_model, fallbacks
        ));
    }
    for (alias, chain) in &config.routing.aliases {
        out.push_str(&format!("alias {alias}: {}\n", chain.join(" → ")));
    }
    out.push_str(&format!(
        "state: {}\n",
        if config.database.is_some() { "PostgreSQL" } else { "in memory (nothing persists)" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing accepts here, so every connection waits in the listen queue: past 128 of them
    /// (std's backlog) the kernel drops the handshake and the client's connect waits a
    /// second for its SYN to be retried.
    #[tokio::test]
    async fn the_listen_queue_holds_a_burst_of_connections() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..600).map(|_| async move {
            tokio::time::timeout(Duration::from_millis(900), tokio::net::TcpStream::connect(addr))
                .await
        });
        let results = futures_util::future::join_all(connects).await;
        let queued = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(queued, 600, "connections queued without a retried handshake");
        drop(listener);
    }
}
