//! `WS /ws/{conversation_id}`: real-time chat over WebSocket.
//!
//! Authentication, two ways (never in the URL, which ends up in logs):
//!
//! * `Sec-WebSocket-Protocol: switchyard.v1, bearer.<token>` — checked before upgrading, so
//!   a bad token is a 401 and another tenant's (or an unknown) conversation a 404 without
//!   costing a socket. The response selects `switchyard.v1` (browsers require the server to
//!   echo one offered protocol; the token is never echoed when `switchyard.v1` is offered);
//! * `{"type":"auth","token":…}` as the first frame, within `limits.ws_auth_timeout_secs`;
//!   failures get an `error` frame and a close with code 4401 (4404 for a conversation the
//!   caller cannot see).
//!
//! Then the connection is taken over from actix-http ([`upgrade`]) and a [`session`] runs
//! on its own [`socket`]. [`protocol`] holds the frame types, [`rate`] the per-connection
//! limiter.

pub mod protocol;
pub mod rate;
pub mod session;
pub mod socket;
pub mod upgrade;

use std::time::Duration;

use actix_http::body::BoxBody;
use actix_http::ws::{CloseCode, CloseReason};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, get, web};

use crate::auth::Credential;
use crate::conversations::ConversationLink;
use crate::error::ApiError;
use crate::server::AppState;
use socket::{Incoming, Socket};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(connect);
}

/// Frames above this many times the soft limit are abuse: the socket is closed (1009)
/// instead of answered, and the socket stops reading them early.
const HARD_FRAME_FACTOR: usize = 4;

/// The subprotocol the server selects.
pub const PROTOCOL: &str = "switchyard.v1";
/// Prefix of the subprotocol entry that carries a token.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

/// Close code for a socket whose credentials failed, expired or were revoked.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
const CLOSE_NOT_FOUND: u16 = 4404;

/// Checks the handshake and answers 101 with the session to start; [`upgrade`] writes the
/// 101 and runs the session on the socket.
#[get("/ws/{conversation_id}")]
async fn connect(
    req: HttpRequest,
    conversation_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.shutting_down() {
        return Err(ApiError::unavailable("the server is restarting; connect to another node"));
    }
    let conversation_id = conversation_id.into_inner();
    let (token, echo) = protocol_token(&req);
    // With the token in the handshake, everything is checked before the upgrade.
    let authorized = match &token {
        Some(token) => {
            let (who, can_write) =
                state.auth.websocket(&Credential::parse(token), &conversation_id).await?;
            let link = ConversationLink::open(
                &state.tree.conversations,
                who.principal(),
                &conversation_id,
            )
            .await?;
            Some((who, can_write, link))
        }
        None => None,
    };
    let not_websocket =
        || ApiError::bad_request("not_websocket", "this endpoint expects a WebSocket upgrade");
    if req.extensions().get::<upgrade::TakeOver>().is_none() {
        return Err(not_websocket());
    }
    let mut response: HttpResponse = actix_http::ws::handshake(req.head())
        .map_err(|_| not_websocket())?
        .message_body(BoxBody::new(()))
        .map_err(|_| not_websocket())?
        .into();
    if let Some(echo) = echo.and_then(|e| HeaderValue::from_str(&e).ok()) {
        response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, echo);
    }
    let limits = state.config.limits.clone();
    let counted = state.clone().into_inner().track_websocket_session();
    metrics::counter!("switchyard_websocket_connections_total").increment(1);
    // The session's future is the one every open socket keeps, so it is built flat:
    // `session::run` owns everything from here (see its docs).
    let start = session::SessionStart {
        state: state.into_inner(),
        conversation_id,
        limits,
        authorized,
        counted,
        connection: crate::http::connections::connection_hold(&req),
    };
    response.extensions_mut().insert(upgrade::PendingSession(Box::new(start)));
    Ok(response)
}

/// The token in `Sec-WebSocket-Protocol`, and the protocol to select in the response.
fn protocol_token(req: &HttpRequest) -> (Option<String>, Option<String>) {
    let offered: Vec<String> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let token =
        offered.iter().find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX)).map(str::to_owned);
    let echo = if offered.iter().any(|p| p == PROTOCOL) {
        Some(PROTOCOL.to_owned())
    } else {
        offered.into_iter().find(|p| p.starts_with(BEARER_PROTOCOL_PREFIX))
    };
    (token, echo)
}

/// Waits for `{"type":"auth"}`; on anything else, a timeout or a refusal, sends an `error`
/// frame, closes the socket and answers `None`.
pub(super) async fn first_frame_auth(
    state: &AppState,
    socket: &mut Socket,
    conversation_id: &str,
    timeout: Duration,
    max_frame_bytes: usize,
) -> Option<(crate::auth::Authenticated, bool, ConversationLink)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let text = loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Incoming::Text(text)))) => break text,
            Ok(Some(Ok(Incoming::Ping(bytes)))) => {
                let _ = socket.pong(&bytes).await;
            }
            Ok(Some(Ok(Incoming::Pong))) => {}
            Ok(Some(Ok(_)) | Some(Err(_)) | None) => {
                let _ = socket.close(None).await;
                return None;
            }
            Err(_) => {
                refuse(socket, "unauthorized", "no auth frame in time", CLOSE_UNAUTHORIZED).await;
                return None;
            }
        }
    };
    let token = match protocol::parse_client_frame(&text, max_frame_bytes) {
        Ok(protocol::ClientFrame::Auth { token }) => token,
        _ => {
            refuse(
                socket,
                "unauthorized",
                "the first frame must be {\"type\":\"auth\",\"token\":…}",
                CLOSE_UNAUTHORIZED,
            )
            .await;
            return None;
        }
    };
    let result = async {
        let (who, can_write) =
            state.auth.websocket(&Credential::parse(&token), conversation_id).await?;
        let link =
            ConversationLink::open(&state.tree.conversations, who.principal(), conversation_id)
                .await?;
        Ok::<_, ApiError>((who, can_write, link))
    }
    .await;
    match result {
        Ok(ready) => Some(ready),
        Err(e) => {
            let code = if e.status() == StatusCode::NOT_FOUND {
                CLOSE_NOT_FOUND
            } else {
                CLOSE_UNAUTHORIZED
            };
            refuse(socket, e.code(), e.message(), code).await;
            None
        }
    }
}

async fn refuse(socket: &mut Socket, code: &str, message: &str, close: u16) {
    let frame = protocol::SessionFrame::Error { code, message };
    let _ = socket.text(frame.to_json()).await;
    let reason = CloseReason { code: CloseCode::Other(close), description: Some(code.to_owned()) };
    let _ = socket.close(Some(reason)).await;
}
