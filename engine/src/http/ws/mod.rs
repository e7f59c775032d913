//! `WS /ws/{conversation_id}`: real-time chat over WebSocket.
//!
//! The route checks the conversation exists for the caller (404 before upgrading, so a bad
//! id never costs a socket), upgrades with actix-ws, and hands the socket to a
//! [`session`] task. [`protocol`] holds the frame types, [`rate`] the per-connection limiter.

pub mod protocol;
pub mod rate;
pub mod session;

use actix_web::{HttpRequest, HttpResponse, get, web};

use crate::conversations::{ConversationLink, Principal};
use crate::error::ApiError;
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(connect);
}

/// Frames above this many times the soft limit are abuse: the socket is closed (1009)
/// instead of answered, and actix-ws stops reading them early.
const HARD_FRAME_FACTOR: usize = 4;

#[get("/ws/{conversation_id}")]
async fn connect(
    req: HttpRequest,
    body: web::Payload,
    conversation_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.shutting_down() {
        return Err(ApiError::unavailable("the server is restarting; connect to another node"));
    }
    let link =
        ConversationLink::open(&state.tree.conversations, Principal::embedded(), &conversation_id)
            .await?;
    let (response, session, stream) = actix_ws::handle(&req, body).map_err(|_| {
        ApiError::bad_request("not_websocket", "this endpoint expects a WebSocket upgrade")
    })?;
    let limits = state.config.limits.clone();
    let hard_cap = limits.ws_max_frame_bytes.saturating_mul(HARD_FRAME_FACTOR);
    let frames =
        stream.max_frame_size(hard_cap).aggregate_continuations().max_continuation_size(hard_cap);
    let params = session::SessionParams { link, limits, shutdown: state.session_shutdown() };
    let counted = state.clone().into_inner().track_websocket_session();
    metrics::counter!("switchyard_websocket_connections_total").increment(1);
    actix_rt::spawn(async move {
        session::run(session, frames, params).await;
        drop(counted);
    });
    Ok(response)
}
