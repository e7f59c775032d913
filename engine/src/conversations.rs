//! The edges' view of conversations: who is asking ([`Principal`]), and a
//! [`ConversationLink`] that a WebSocket session or SSE stream holds to one live
//! conversation actor.
//!
//! A link survives the actor stopping under it (idle shutdown racing a request): a call
//! answered `Stopped` reopens the conversation — rebuilt from the store — and is retried once.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actors::conversation::{ConversationError, ConversationHandle, PostUserMessage, Posted};
use actors::events::ConversationEvent;
use actors::tenant::Conversations;
use actors::turn::CacheMode;
use tokio::sync::mpsc;

use crate::error::ApiError;

/// Who is making a request: the tenant wall every read and write is scoped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: String,
    pub user_id: String,
}

impl Principal {
    /// The single tenant of the embedded default, until authentication is configured.
    pub fn embedded() -> Self {
        Principal { tenant_id: "default".into(), user_id: "anonymous".into() }
    }
}

/// The wire's `"cache": true|false` as the turn's cache mode.
pub fn cache_mode(use_cache: bool) -> CacheMode {
    if use_cache { CacheMode::Use } else { CacheMode::Bypass }
}

/// Maps a conversation failure to what the client sees.
pub fn api_error(error: ConversationError) -> ApiError {
    let message = error.to_string();
    match error {
        ConversationError::NotFound => ApiError::not_found("conversation not found"),
        ConversationError::Unavailable | ConversationError::Stopped => {
            ApiError::unavailable(message)
        }
        ConversationError::Overloaded => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
        ConversationError::TenantConcurrency { .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "tenant_concurrency", message)
        }
        ConversationError::Refused { code, .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
        ConversationError::ResyncRequired { .. } => {
            ApiError::new(StatusCode::CONFLICT, "resync_required", message)
        }
        ConversationError::Turn { code, message } => turn_error(&code, message),
    }
}

/// A failed turn, by its event code.
fn turn_error(code: &str, message: String) -> ApiError {
    // Codes come from `TurnError::code()` / `ProviderError::code()`: a closed set, so they
    // can be matched to 'static strings without echoing anything unexpected.
    let (status, code) = match code {
        "unknown_model" => (StatusCode::BAD_REQUEST, "unknown_model"),
        "timeout" => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        "overloaded" => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        "cancelled" => (StatusCode::CONFLICT, "cancelled"),
        "interrupted" => (StatusCode::BAD_GATEWAY, "interrupted"),
        "context_length_exceeded" => (StatusCode::BAD_REQUEST, "context_length_exceeded"),
        "bad_request" => (StatusCode::BAD_REQUEST, "bad_request"),
        "provider_auth" => (StatusCode::BAD_GATEWAY, "provider_auth"),
        _ => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
    };
    ApiError::new(status, code, message)
}

/// One edge's connection to one conversation.
pub struct ConversationLink {
    conversations: Conversations,
    principal: Principal,
    handle: ConversationHandle,
    subscriber: Option<u64>,
}

impl ConversationLink {
    /// Opens the conversation for `principal`; another tenant's id is `not_found`.
    pub async fn open(
        conversations: &Conversations,
        principal: Principal,
        conversation_id: &str,
    ) -> Result<ConversationLink, ApiError> {
        let handle =
            conversations.open(&principal.tenant_id, conversation_id).await.map_err(api_error)?;
        Ok(ConversationLink {
            conversations: conversations.clone(),
            principal,
            handle,
            subscriber: None,
        })
    }

    pub fn conversation_id(&self) -> &str {
        self.handle.conversation_id()
    }

    pub fn handle(&self) -> &ConversationHandle {
        &self.handle
    }

    async fn reopen(&mut self) -> Result<(), ApiError> {
        let id = self.handle.conversation_id().to_owned();
        self.handle =
            self.conversations.open(&self.principal.tenant_id, &id).await.map_err(api_error)?;
        self.subscriber = None;
        Ok(())
    }

    /// Subscribes (replacing any earlier subscription of this link): events after
    /// `after_seq` are replayed first, then live ones follow. Returns the event channel and
    /// the conversation's last seq at the time of subscribing.
    pub async fn subscribe(
        &mut self,
        after_seq: Option<u64>,
    ) -> Result<(mpsc::Receiver<Arc<ConversationEvent>>, u64), ApiError> {
        self.unsubscribe();
        let subscription = match self.handle.subscribe(after_seq).await {
            Err(ConversationError::Stopped) => {
                self.reopen().await?;
                self.handle.subscribe(after_seq).await
            }
            other => other,
        }
        .map_err(api_error)?;
        self.subscriber = Some(subscription.id);
        Ok((subscription.receiver, subscription.last_seq))
    }

    /// Posts a user message; returns once it is durable (the `ack` also reaches subscribers).
    pub async fn post(
        &mut self,
        client_id: Option<String>,
        content: String,
    ) -> Result<Posted, ApiError> {
        self.post_with(client_id, content, CacheMode::Use).await
    }

    /// [`Self::post`] with the client's cache choice (`"cache": false` → bypass).
    pub async fn post_with(
        &mut self,
        client_id: Option<String>,
        content: String,
        cache: CacheMode,
    ) -> Result<Posted, ApiError> {
        let user_id = self.principal.user_id.clone();
        let message = PostUserMessage { user_id, client_id, content, cache };
        match self.handle.post(message.clone()).await {
            Err(ConversationError::Stopped) => {
                self.reopen().await?;
                self.handle.post(message).await.map_err(api_error)
            }
            other => other.map_err(api_error),
        }
    }

    /// Cancels the running turn, if any; fire and forget.
    pub fn cancel(&self) {
        let handle = self.handle.clone();
        actix_rt::spawn(async move {
            let _ = handle.cancel().await;
        });
    }

    /// Drops this link's subscription, if any; fire and forget.
    pub fn unsubscribe(&mut self) {
        if let Some(id) = self.subscriber.take() {
            let handle = self.handle.clone();
            actix_rt::spawn(async move {
                let _ = handle.unsubscribe(id).await;
            });
        }
    }
}

impl Drop for ConversationLink {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}
