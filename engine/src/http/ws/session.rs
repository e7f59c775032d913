//! One WebSocket connection: a future that owns the socket and is subscribed to one
//! `ConversationActor`.
//!
//! Not an actor with a mailbox of outgoing frames: measured on this machine,
//! actix-web-actors' `WebsocketContext` queues writes without bound, so one client that
//! stopped reading grew the server by 100+ MB in 20 s and could not even be evicted (its
//! heartbeat and `stop()` never ran while output was blocked). Here a write to a client that
//! does not read waits ([`Socket`]), every write has a deadline, and a session that misses it
//! is dropped.
//!
//! The session never buffers without bound: conversation events reach it through the bounded
//! subscription channel the conversation actor feeds with `try_send` — a session that falls
//! behind is unsubscribed by the actor (it can `resume` later) and never slows the other
//! subscribers. Client frames are size-checked, parsed strictly and rate-limited; a violation
//! gets an `error` frame, and only abuse (far past the limits) closes the socket.
//!
//! The session also holds its credential ([`SessionAccess`]): it closes with 4401 when the
//! token expires or its login session is revoked (it watches the revocation signal, so
//! that is immediate), refuses `user_message`/`cancel` from read-only credentials with a
//! `forbidden` error frame, counts messages against the request limits (`rate_limited`),
//! and accepts a later `auth` frame with a fresh token for the same user to extend itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws::{CloseCode, CloseReason};
use actors::events::ConversationEvent;
use rand::Rng;
use tokio::sync::{mpsc, watch};

use super::protocol::{ClientFrame, SessionFrame, parse_client_frame};
use super::rate::TokenBucket;
use super::socket::{Incoming, ReadError, Socket, WriteFailed};
use crate::auth::{AuthService, Authenticated, Credential};
use crate::config::LimitsConfig;
use crate::conversations::ConversationLink;
use crate::error::ApiError;
use crate::http::connections::Held;
use crate::server::{AppState, SessionGuard};

/// Consecutive rate-limit violations before the socket is closed as abusive.
const MAX_RATE_VIOLATIONS: u32 = 50;

/// Queued events are gathered into one write up to about this many bytes.
const MAX_BATCH_BYTES: usize = 16 * 1024;

/// Why a session ended, for the close frame.
enum End {
    ClientClosed,
    Close(CloseCode, &'static str),
    /// The socket is unusable (write deadline missed, transport error): just drop it.
    Drop,
}

/// What the route hands a new session: the socket may still have to authenticate with its
/// first frame (`authorized` is `None`).
pub struct SessionStart {
    pub state: Arc<AppState>,
    pub conversation_id: String,
    pub limits: LimitsConfig,
    /// The caller, whether it may write, and its link, when the handshake carried a token.
    pub authorized: Option<(Authenticated, bool, ConversationLink)>,
    /// Counts the socket as open until the session ends.
    pub counted: SessionGuard,
    /// Keeps the connection counted against its client's address
    /// (`limits.max_connections_per_ip`) until the session ends.
    pub connection: Option<Arc<Held>>,
}

/// The socket's credential and what it allows.
pub struct SessionAccess {
    pub auth: Arc<AuthService>,
    pub who: Authenticated,
    /// False for viewers and read-only (attenuated) tokens: they may watch, not post.
    pub can_write: bool,
    /// Ticks on every revocation; the session re-checks its own.
    pub revocations: watch::Receiver<u64>,
}

impl SessionAccess {
    /// When the credential expires, as a timer deadline (far away for API keys).
    fn deadline(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        match AuthService::expires_at(&self.who) {
            Some(at) => {
                let left =
                    at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO);
                now + left
            }
            None => now + Duration::from_secs(86_400 * 365),
        }
    }
}

/// The close code for expired or revoked credentials.
const CLOSE_UNAUTHORIZED: CloseCode = CloseCode::Other(super::CLOSE_UNAUTHORIZED);

/// Runs the session until the client leaves, misbehaves, or the engine shuts down.
///
/// Every open socket keeps this future for as long as it is open, so its size is memory per
/// connection (docs/benchmarks.md, issue 10) and it is built to stay small:
/// - a plain `async move` block rather than an `async fn`, whose arguments rustc stores twice
///   (as arguments and as the locals they are moved into); `start` arrives boxed so that its
///   fields, moved out, are held once;
/// - the awaits behind client frames (first-frame auth, token checks, subscribing, posting)
///   are boxed: inline, the largest of them would size every session, idle or not.
#[allow(clippy::manual_async_fn, reason = "an async fn would store its arguments twice")]
pub fn run(mut socket: Socket, start: Box<SessionStart>) -> impl Future<Output = ()> {
    async move {
        // In a block of its own so that what only the start needs is not kept beside `serve`.
        let (mut link, mut access, mut shutdown, limits, counted) = {
            let SessionStart { state, conversation_id, limits, authorized, counted, connection } =
                *start;
            let (who, can_write, link) = match authorized {
                Some(ready) => ready,
                None => {
                    let timeout = Duration::from_secs(limits.ws_auth_timeout_secs.max(1));
                    let first = super::first_frame_auth(
                        &state,
                        &mut socket,
                        &conversation_id,
                        timeout,
                        limits.ws_max_frame_bytes,
                    );
                    match Box::pin(first).await {
                        Some(ready) => ready,
                        None => return,
                    }
                }
            };
            let access = SessionAccess {
                revocations: state.auth.revocations(),
                auth: state.auth.clone(),
                who,
                can_write,
            };
            (link, access, state.session_shutdown(), limits, (counted, connection))
        };
        serve(&mut socket, &mut link, &limits, &mut shutdown, &mut access).await;
        // Closes the connection (after a close frame, if `serve` sent one).
        drop((socket, counted));
    }
}

/// The session proper, on an authenticated socket. Borrows what `run` owns: an `async fn`
/// stores owned arguments twice.
async fn serve(
    socket: &mut Socket,
    link: &mut ConversationLink,
    limits: &LimitsConfig,
    shutdown: &mut watch::Receiver<bool>,
    access: &mut SessionAccess,
) {
    let expiry = tokio::time::sleep_until(access.deadline());
    tokio::pin!(expiry);
    let mut bucket = TokenBucket::new(limits.ws_frames_per_second, limits.ws_frame_burst);
    let mut violations = 0u32;
    let mut events: Option<mpsc::Receiver<Arc<ConversationEvent>>> = None;
    let mut last_seen = Instant::now();
    // Spread heartbeats so 10,000 sockets opened together don't ping in lockstep.
    let period = Duration::from_secs(limits.ws_heartbeat_secs.max(1));
    let jitter = rand::rng().random_range(0..period.as_millis().max(1) as u64);
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(jitter),
        period,
    );
    let client_timeout = Duration::from_secs(limits.ws_client_timeout_secs);

    let end = loop {
        tokio::select! {
            frame = socket.next() => {
                let Some(frame) = frame else { break End::ClientClosed };
                last_seen = Instant::now();
                let text = match frame {
                    Ok(Incoming::Text(text)) => text,
                    Ok(Incoming::Ping(bytes)) => {
                        if socket.pong(&bytes).await.is_err() { break End::Drop }
                        continue;
                    }
                    Ok(Incoming::Pong) => continue,
                    Ok(Incoming::Close) => break End::ClientClosed,
                    Ok(Incoming::Binary) => {
                        if send_error(socket, "invalid_frame", "binary frames are not supported; send JSON text").await.is_err() { break End::Drop }
                        continue;
                    }
                    Err(ReadError::Overflow) => break End::Close(CloseCode::Size, "frame too large"),
                    Err(ReadError::InvalidUtf8) => break End::Close(CloseCode::Invalid, "text frames must be UTF-8"),
                    Err(ReadError::Protocol) => break End::Close(CloseCode::Protocol, "protocol error"),
                    Err(ReadError::Io) => break End::Drop,
                };
                if let Err(wait) = bucket.try_take(Instant::now()) {
                    violations += 1;
                    if violations > MAX_RATE_VIOLATIONS { break End::Close(CloseCode::Policy, "too many frames") }
                    let message = format!("too many frames; retry in {} ms", wait.as_millis().max(1));
                    if send_error(socket, "rate_limited", &message).await.is_err() { break End::Drop }
                    continue;
                }
                violations = 0;
                let frame = match parse_client_frame(&text, limits.ws_max_frame_bytes) {
                    Ok(frame) => {
                        let kind = client_frame_type(&frame);
                        metrics::counter!("switchyard_websocket_frames_total", "direction" => "in", "type" => kind)
                            .increment(1);
                        frame
                    }
                    Err(e) => {
                        if send_error(socket, e.code(), &e.message()).await.is_err() { break End::Drop }
                        continue;
                    }
                };
                let outcome = match frame {
                    ClientFrame::Ping(_) => send_frame(socket, &SessionFrame::Pong).await,
                    // A fresh token for the same user and tenant extends the session.
                    ClientFrame::Auth { token } => {
                        let conversation = link.conversation_id().to_owned();
                        match Box::pin(access.auth.websocket(&Credential::parse(&token), &conversation)).await {
                            Ok((who, can_write)) if who.user_id == access.who.user_id && who.tenant_id == access.who.tenant_id => {
                                access.who = who;
                                access.can_write = can_write;
                                expiry.as_mut().reset(access.deadline());
                                Ok(())
                            }
                            Ok(_) => send_error(socket, "forbidden", "a session cannot change user").await,
                            Err(e) => send_api_error(socket, &e).await,
                        }
                    }
                    ClientFrame::UserMessage { .. } | ClientFrame::Cancel(_) if !access.can_write => {
                        send_error(socket, "forbidden", "your credentials do not allow writing to this conversation").await
                    }
                    ClientFrame::Resume { after_seq } => match Box::pin(link.subscribe(Some(after_seq))).await {
                        Ok((receiver, _)) => { events = Some(receiver); Ok(()) }
                        Err(e) => send_api_error(socket, &e).await,
                    },
                    ClientFrame::UserMessage { client_id, content, cache } => {
                        if let Err(e) = crate::conversations::check_message(&content, limits.max_message_bytes) {
                            send_api_error(socket, &e).await
                        } else if let Err(e) = Box::pin(access.auth.count_request(&access.who)).await {
                            send_api_error(socket, &e).await
                        } else {
                            if events.is_none() {
                                // Watch the conversation from now on so the reply reaches us.
                                match Box::pin(link.subscribe(None)).await {
                                    Ok((receiver, _)) => events = Some(receiver),
                                    Err(e) => { if send_api_error(socket, &e).await.is_err() { break End::Drop } continue; }
                                }
                            }
                            // The ack arrives through the subscription, after the durable write.
                            match Box::pin(link.post_with(client_id, content, crate::conversations::cache_mode(cache))).await {
                                Ok(_) => Ok(()),
                                Err(e) => send_api_error(socket, &e).await,
                            }
                        }
                    }
                    ClientFrame::Cancel(_) => { link.cancel(); Ok(()) }
                };
                if outcome.is_err() { break End::Drop }
            }
            event = next_event(&mut events) => {
                match event {
                    Some(event) => {
                        // Events already waiting behind this one go out in the same write: a
                        // loaded node owes a socket several deltas at once, and a write each
                        // is a syscall and a wake-up each.
                        let mut next = Some(event);
                        while let Some(event) = next.take() {
                            if let Ok(json) = serde_json::to_string(&*event) {
                                let kind = event_type(&json);
                                metrics::counter!("switchyard_websocket_frames_total", "direction" => "out", "type" => kind)
                                    .increment(1);
                                socket.queue_text(&json);
                            }
                            if socket.queued_len() < MAX_BATCH_BYTES {
                                next = events.as_mut().and_then(|receiver| receiver.try_recv().ok());
                            }
                        }
                        if socket.flush().await.is_err() { break End::Drop }
                    }
                    // The actor dropped us for falling behind (or stopped): tell the client to
                    // reconnect and resume from its last seq.
                    None => break End::Close(CloseCode::Again, "fell behind; reconnect and resume"),
                }
            }
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > client_timeout { break End::Close(CloseCode::Away, "heartbeat timeout") }
                if socket.ping().await.is_err() { break End::Drop }
            }
            _ = &mut expiry => break End::Close(CLOSE_UNAUTHORIZED, "token expired"),
            changed = access.revocations.changed() => {
                if changed.is_err() || !access.auth.session_active(&access.who) {
                    break End::Close(CLOSE_UNAUTHORIZED, "session revoked");
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break End::Close(CloseCode::Restart, "server restarting; reconnect and resume");
                }
            }
        }
    };
    link.unsubscribe();
    match end {
        End::ClientClosed => {
            let _ = socket.close(None).await;
        }
        End::Close(code, description) => {
            let reason = CloseReason { code, description: Some(description.to_owned()) };
            let _ = socket.close(Some(reason)).await;
        }
        // `run` drops the socket.
        End::Drop => {}
    }
}

/// The `type` of a client frame, as the frames metric labels it.
fn client_frame_type(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::UserMessage { .. } => "user_message",
        ClientFrame::Cancel(_) => "cancel",
        ClientFrame::Resume { .. } => "resume",
        ClientFrame::Ping(_) => "ping",
    }
}

/// The `type` of a serialized conversation event (serde writes the tag first), from a fixed
/// set so the label stays bounded whatever new events appear.
fn event_type(json: &str) -> &'static str {
    let tag = json.strip_prefix("{\"type\":\"").and_then(|rest| rest.split('"').next());
    match tag {
        Some("ack") => "ack",
        Some("delta") => "delta",
        Some("failover") => "failover",
        Some("retract") => "retract",
        Some("done") => "done",
        Some("error") => "error",
        Some("interrupted") => "interrupted",
        _ => "other",
    }
}

/// The next conversation event, or never while not subscribed.
async fn next_event(
    events: &mut Option<mpsc::Receiver<Arc<ConversationEvent>>>,
) -> Option<Arc<ConversationEvent>> {
    match events {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

// The session's own frames are serialized before the write is awaited, so each is awaited
// as the write alone and no larger future sizes the session.

fn send_frame<'s>(
    socket: &'s mut Socket,
    frame: &SessionFrame<'_>,
) -> impl Future<Output = Result<(), WriteFailed>> + use<'s> {
    let kind = match frame {
        SessionFrame::Pong => "pong",
        SessionFrame::Error { .. } => "error",
    };
    metrics::counter!("switchyard_websocket_frames_total", "direction" => "out", "type" => kind)
        .increment(1);
    socket.text(frame.to_json())
}

fn send_error<'s>(
    socket: &'s mut Socket,
    code: &str,
    message: &str,
) -> impl Future<Output = Result<(), WriteFailed>> + use<'s> {
    send_frame(socket, &SessionFrame::Error { code, message })
}

fn send_api_error<'s>(
    socket: &'s mut Socket,
    error: &ApiError,
) -> impl Future<Output = Result<(), WriteFailed>> + use<'s> {
    send_error(socket, error.code(), error.message())
}
