//! REST for conversations: create, list, read (with history), delete, and post a message —
//! answered whole, or streamed as Server-Sent Events carrying the same events as the
//! WebSocket (`event: <type>` + `data: <json>`).

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, post, web};
use actors::events::ConversationEvent;
use actors::ports::llm::{FinishReason, Role, Usage};
use actors::ports::store::{
    Conversation, ConversationSettings, ListQuery, MessageStatus, StoredMessage,
};
use bytes::Bytes;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Authorized, perm};
use crate::conversations::{ConversationLink, api_error};
use crate::error::ApiError;
use crate::http::openapi::ErrorSchema;
use crate::server::AppState;

/// Longest conversation title.
const MAX_TITLE_BYTES: usize = 200;
/// Messages returned with a conversation.
const HISTORY_LIMIT: usize = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create).service(list).service(read).service(remove).service(post_message);
}

/// `POST /api/v1/conversations` body. Every field is optional.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    model: Option<String>,
    temperature: Option<f32>,
    system_prompt: Option<String>,
    title: Option<String>,
}

/// Creates a conversation.
#[utoipa::path(
    tag = "conversations",
    request_body = CreateConversation,
    responses(
        (status = 201, description = "created", body = ConversationView),
        (status = 400, description = "unknown model or invalid settings", body = ErrorSchema),
    )
)]
#[post("/api/v1/conversations")]
async fn create(
    state: web::Data<AppState>,
    who: Authorized<perm::ConversationsWrite>,
    body: web::Json<CreateConversation>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let config = &state.config;
    let model = body.model.unwrap_or_else(|| config.default_model().to_owned());
    if !config.routes_to(&model) {
        return Err(ApiError::bad_request(
            "unknown_model",
            format!("unknown model `{model}`; GET /v1/models lists them"),
        ));
    }
    if let Some(t) = body.temperature
        && (!(0.0..=2.0).contains(&t) || t.is_nan())
    {
        return Err(ApiError::bad_request(
            "invalid_temperature",
            "temperature must be between 0 and 2",
        ));
    }
    if body.system_prompt.as_ref().is_some_and(|p| p.len() > config.limits.max_message_bytes) {
        let message =
            format!("system_prompt is limited to {} bytes", config.limits.max_message_bytes);
        return Err(ApiError::bad_request("system_prompt_too_large", message));
    }
    if body.title.as_ref().is_some_and(|t| t.len() > MAX_TITLE_BYTES) {
        return Err(ApiError::bad_request(
            "title_too_large",
            format!("title is limited to {MAX_TITLE_BYTES} bytes"),
        ));
    }
    for (field, text) in [("system_prompt", &body.system_prompt), ("title", &body.title)] {
        if let Some(text) = text {
            crate::conversations::check_no_nul(field, text)?;
        }
    }
    let who = who.principal;
    let settings = ConversationSettings {
        model,
        temperature: body.temperature,
        system_prompt: body.system_prompt,
        title: body.title,
    };
    let conversation = state
        .tree
        .store
        .create_conversation(&who.tenant_id, &who.user_id, settings)
        .await
        .map_err(|e| api_error(e.into()))?;
    Ok(HttpResponse::Created().json(ConversationView::from(conversation)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1–100 (default 20).
    limit: Option<usize>,
}

/// Lists the caller's conversations, newest first.
#[utoipa::path(tag = "conversations", params(ListParams), responses((status = 200, body = ConversationPageView)))]
#[get("/api/v1/conversations")]
async fn list(
    state: web::Data<AppState>,
    who: Authorized<perm::ConversationsRead>,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let who = who.principal;
    let params = params.into_inner();
    let query = ListQuery {
        owner_id: Some(who.user_id.clone()),
        cursor: params.cursor,
        limit: params.limit.unwrap_or(20).clamp(1, 100),
    };
    let page = state
        .tree
        .store
        .list_conversations(&who.tenant_id, query)
        .await
        .map_err(|e| api_error(e.into()))?;
    Ok(HttpResponse::Ok().json(ConversationPageView {
        items: page.items.into_iter().map(ConversationView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// A conversation's record as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationView {
    id: String,
    owner_id: String,
    #[schema(value_type = Object)]
    settings: ConversationSettings,
    created_at_ms: u64,
    updated_at_ms: u64,
    /// The highest event seq persisted; `resume` after it to watch live.
    last_seq: u64,
}

impl From<Conversation> for ConversationView {
    fn from(c: Conversation) -> Self {
        ConversationView {
            id: c.id,
            owner_id: c.owner_id,
            settings: c.settings,
            created_at_ms: c.created_at_ms,
            updated_at_ms: c.updated_at_ms,
            last_seq: c.last_seq,
        }
    }
}

/// One page of conversations.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationPageView {
    items: Vec<ConversationView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// A conversation with its history.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationWithMessages<'a> {
    conversation: ConversationView,
    messages: Vec<MessageView<'a>>,
}

/// A message as a client reads it in history.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView<'a> {
    id: &'a str,
    #[schema(value_type = String, example = "assistant")]
    role: Role,
    #[schema(value_type = String, example = "complete")]
    status: MessageStatus,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    finish_reason: Option<FinishReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_micros: Option<u64>,
    first_seq: u64,
    last_seq: u64,
    created_at_ms: u64,
}

impl<'a> From<&'a StoredMessage> for MessageView<'a> {
    fn from(m: &'a StoredMessage) -> Self {
        MessageView {
            id: &m.id,
            role: m.role,
            status: m.status,
            content: m.content(),
            client_id: m.client_id.as_deref(),
            reply_to: m.reply_to.as_deref(),
            model: m.model.as_deref(),
            usage: m.usage,
            finish_reason: m.finish_reason,
            cost_micros: m.cost_micros,
            first_seq: m.first_seq,
            last_seq: m.last_seq,
            created_at_ms: m.created_at_ms,
        }
    }
}

/// Reads a conversation and its history.
#[utoipa::path(
    tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    responses((status = 200, body = ConversationWithMessages), (status = 404, body = ErrorSchema))
)]
#[get("/api/v1/conversations/{id}")]
async fn read(
    state: web::Data<AppState>,
    who: Authorized<perm::ConversationsRead>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let who = who.principal;
    let loaded = state
        .tree
        .store
        .load(&who.tenant_id, &id, HISTORY_LIMIT)
        .await
        .map_err(|e| api_error(e.into()))?;
    let messages: Vec<MessageView<'_>> = loaded.messages.iter().map(MessageView::from).collect();
    let conversation = ConversationView::from(loaded.conversation.clone());
    Ok(HttpResponse::Ok().json(ConversationWithMessages { conversation, messages }))
}

/// Deletes a conversation and its messages.
#[utoipa::path(
    tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorSchema))
)]
#[delete("/api/v1/conversations/{id}")]
async fn remove(
    state: web::Data<AppState>,
    who: Authorized<perm::ConversationsWrite>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let who = who.principal;
    state
        .tree
        .store
        .delete_conversation(&who.tenant_id, &id)
        .await
        .map_err(|e| api_error(e.into()))?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /api/v1/conversations/{id}/messages` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    content: String,
    client_id: Option<String>,
    #[serde(default)]
    stream: bool,
    /// `false` opts this message out of the response cache (neither read nor stored).
    #[serde(default)]
    cache: Option<bool>,
}

/// A whole reply, for `"stream": false`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplyView {
    message_id: String,
    reply_to: String,
    content: String,
    model: String,
    #[schema(value_type = Object)]
    usage: Usage,
    #[schema(value_type = String)]
    finish_reason: FinishReason,
    cost_micros: Option<u64>,
    /// Whether the response cache answered (`miss`, `exact`, `semantic`), as in the `done`
    /// event.
    #[schema(value_type = String, example = "miss")]
    cache: actors::events::CacheStatus,
    seq: u64,
}

/// Posts a user message. With `"stream": true` the answer is `text/event-stream` carrying
/// the same events as the WebSocket (`event: <type>`, `data: <json>`), ending with the
/// turn's `done` or `error`; otherwise the whole reply.
#[utoipa::path(
    tag = "conversations",
    params(("id" = String, Path, description = "conversation id")),
    request_body = PostMessage,
    responses(
        (status = 200, description = "the reply (JSON), or its events (text/event-stream)", body = ReplyView),
        (status = 400, body = ErrorSchema),
        (status = 404, body = ErrorSchema),
        (status = 502, description = "no model could answer", body = ErrorSchema),
    )
)]
#[post("/api/v1/conversations/{id}/messages")]
async fn post_message(
    state: web::Data<AppState>,
    who: Authorized<perm::ConversationsWrite>,
    id: web::Path<String>,
    body: web::Json<PostMessage>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    crate::conversations::check_message(&body.content, state.config.limits.max_message_bytes)?;
    if body
        .client_id
        .as_ref()
        .is_some_and(|c| c.len() > crate::http::ws::protocol::MAX_CLIENT_ID_BYTES)
    {
        return Err(ApiError::bad_request("invalid_client_id", "client_id is too long"));
    }
    let mut link =
        ConversationLink::open(&state.tree.conversations, who.principal.clone(), &id).await?;
    if !body.stream {
        let message = actors::conversation::PostUserMessage {
            user_id: who.principal.user_id.clone(),
            client_id: body.client_id,
            content: body.content,
            cache: crate::conversations::cache_mode(body.cache.unwrap_or(true)),
        };
        let turn = link.complete(message).await.map_err(api_error)?;
        return Ok(HttpResponse::Ok().json(ReplyView {
            message_id: turn.message_id,
            reply_to: turn.user_message_id,
            content: turn.text,
            model: turn.model,
            usage: turn.usage,
            finish_reason: turn.finish_reason,
            cost_micros: turn.cost_micros,
            cache: turn.cache,
            seq: turn.seq,
        }));
    }
    // Listen before posting so the ack and every delta of this turn are seen.
    let (events, _) = link.subscribe(None).await?;
    let cache = crate::conversations::cache_mode(body.cache.unwrap_or(true));
    let posted = link.post_with(body.client_id, body.content, cache).await?;
    Ok(HttpResponse::build(StatusCode::OK)
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(sse_stream(link, events, posted.message_id)))
}

/// SSE frames for one turn: every event of the conversation from the subscription on, until
/// the terminal event answering `message_id`. The link lives inside the stream, so a client
/// that disconnects drops it and with it the subscription.
fn sse_stream(
    link: ConversationLink,
    events: mpsc::Receiver<Arc<ConversationEvent>>,
    message_id: String,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    stream::unfold(Some((link, events)), move |state| {
        let message_id = message_id.clone();
        async move {
            let (link, mut events) = state?;
            let event = events.recv().await?;
            let frame = sse_frame(&event);
            let finished = event.is_terminal() && event.reply_to() == Some(message_id.as_str());
            let next = if finished { None } else { Some((link, events)) };
            Some((Ok(frame), next))
        }
    })
}

/// `event: <type>\ndata: <json>\n\n`
pub fn sse_frame(event: &ConversationEvent) -> Bytes {
    let json = serde_json::to_string(event).unwrap_or_else(|_| String::from("{}"));
    Bytes::from(format!("event: {}\ndata: {json}\n\n", event_type(event)))
}

/// The event's `type` tag, as its JSON carries it.
fn event_type(event: &ConversationEvent) -> &'static str {
    match event {
        ConversationEvent::Ack { .. } => "ack",
        ConversationEvent::Delta { .. } => "delta",
        ConversationEvent::Failover { .. } => "failover",
        ConversationEvent::Retract { .. } => "retract",
        ConversationEvent::Done { .. } => "done",
        ConversationEvent::Error { .. } => "error",
        ConversationEvent::Interrupted { .. } => "interrupted",
    }
}
