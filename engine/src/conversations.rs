//! The edges' view of conversations: who is asking ([`Principal`]), the [`Directory`] they
//! open conversations from, and a [`ConversationLink`] that a WebSocket session or SSE
//! stream holds to one live conversation.
//!
//! A link is either *local* (this node runs the conversation's actor) or *remote* (another
//! node owns it, and the link proxies through Redis — see [`crate::cluster`]); the edges
//! call the same methods either way. A link survives the conversation moving under it (the
//! actor stopping idle, or its owner node dying): a call answered `Stopped` resolves the
//! conversation again — rebuilt from the store, here or on its new owner — and is retried
//! once.

use std::ops::Deref;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actors::conversation::{
    CompletedTurn, ConversationError, ConversationHandle, PostUserMessage, Posted, TurnCollector,
};
use actors::events::ConversationEvent;
use actors::tenant::Conversations;
use actors::turn::CacheMode;
use tokio::sync::mpsc;

use crate::cluster::owner::Owned;
use crate::cluster::remote::{PumpHandle, RemoteConversation};
use crate::cluster::{Cluster, Resolved};
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

/// Refuses a user message that cannot be posted: the same rule for every way in (REST,
/// WebSocket, the compatible APIs' conversation mode). NUL is refused by name because
/// PostgreSQL text cannot hold it: accepted, it would fail the durable write and reach the
/// client as a misleading `unavailable`.
pub fn check_message(content: &str, max_bytes: usize) -> Result<(), ApiError> {
    if content.len() > max_bytes {
        return Err(ApiError::bad_request(
            "message_too_large",
            format!("messages are limited to {max_bytes} bytes"),
        ));
    }
    if content.trim().is_empty() {
        return Err(ApiError::bad_request("empty_message", "content must not be empty"));
    }
    check_no_nul("content", content)
}

/// Refuses stored text (a message, system prompt or title) that holds a NUL character.
pub fn check_no_nul(field: &'static str, text: &str) -> Result<(), ApiError> {
    if text.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_text",
            format!("{field} must not contain NUL (U+0000) characters"),
        ));
    }
    Ok(())
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
        "budget_exceeded" => (StatusCode::PAYMENT_REQUIRED, "budget_exceeded"),
        _ => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
    };
    ApiError::new(status, code, message)
}

/// Where the edges open conversations: this node's actor tree, and — when several nodes
/// share Redis — the [`Cluster`] that says which node owns each one. Derefs to the tree's
/// [`Conversations`] for everything else.
#[derive(Clone)]
pub struct Directory {
    conversations: Conversations,
    cluster: Option<Cluster>,
    /// Bound on a remote subscription's buffer (as `limits.ws_outbox_events` is locally).
    subscriber_buffer: usize,
}

impl Directory {
    pub fn new(
        conversations: Conversations,
        cluster: Option<Cluster>,
        subscriber_buffer: usize,
    ) -> Self {
        Self { conversations, cluster, subscriber_buffer }
    }

    /// The cluster, when this node runs with Redis.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    async fn resolve(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<Target, ConversationError> {
        let Some(cluster) = &self.cluster else {
            let handle = self.conversations.open(tenant_id, conversation_id).await?;
            return Ok(Target::Local { handle, owned: None });
        };
        Ok(match cluster.open(tenant_id, conversation_id).await? {
            Resolved::Local(owned) => {
                owned.link_opened();
                Target::Local { handle: owned.handle.clone(), owned: Some(OwnedLink(owned)) }
            }
            Resolved::Remote(remote) => Target::Remote(remote),
        })
    }
}

impl Deref for Directory {
    type Target = Conversations;

    fn deref(&self) -> &Conversations {
        &self.conversations
    }
}

/// What a link talks to.
enum Target {
    /// This node's actor; `owned` when this node holds the conversation's lease.
    Local { handle: ConversationHandle, owned: Option<OwnedLink> },
    /// Another node's actor, through Redis.
    Remote(RemoteConversation),
}

/// Counts a link on an owned conversation (the publisher stays while links exist).
struct OwnedLink(Arc<Owned>);

impl Drop for OwnedLink {
    fn drop(&mut self) {
        self.0.link_closed();
    }
}

/// A link's current subscription.
enum Subscriber {
    Local(u64),
    /// Dropping the pump ends the remote subscription.
    Remote(#[allow(dead_code)] PumpHandle),
}

/// One edge's connection to one conversation.
pub struct ConversationLink {
    directory: Directory,
    principal: Principal,
    conversation_id: String,
    target: Target,
    subscriber: Option<Subscriber>,
}

impl ConversationLink {
    /// Opens the conversation for `principal`; another tenant's id is `not_found`.
    pub async fn open(
        directory: &Directory,
        principal: Principal,
        conversation_id: &str,
    ) -> Result<ConversationLink, ApiError> {
        let target =
            directory.resolve(&principal.tenant_id, conversation_id).await.map_err(api_error)?;
        Ok(ConversationLink {
            directory: directory.clone(),
            principal,
            conversation_id: conversation_id.to_owned(),
            target,
            subscriber: None,
        })
    }

    pub fn conversation_id(&self) -> &str {
        &self.conversation_id
    }

    /// Whether another node owns the conversation and this link proxies to it.
    pub fn is_remote(&self) -> bool {
        matches!(self.target, Target::Remote(_))
    }

    async fn reopen(&mut self) -> Result<(), ApiError> {
        // A local subscription dies with its actor; a remote one keeps reading the
        // conversation's channel, which whichever node owns it next publishes to.
        if matches!(self.subscriber, Some(Subscriber::Local(_))) {
            self.unsubscribe();
        }
        self.target = self
            .directory
            .resolve(&self.principal.tenant_id, &self.conversation_id)
            .await
            .map_err(api_error)?;
        Ok(())
    }

    /// A local link whose conversation moved to another node (lease lost) must re-resolve.
    fn local_handle(&self) -> Option<&ConversationHandle> {
        match &self.target {
            Target::Local { owned: Some(owned), .. } if !owned.0.usable() => None,
            Target::Local { handle, .. } => Some(handle),
            Target::Remote(_) => None,
        }
    }

    async fn try_subscribe(
        &mut self,
        after_seq: Option<u64>,
    ) -> Result<(mpsc::Receiver<Arc<ConversationEvent>>, u64), ConversationError> {
        if let Target::Remote(remote) = &self.target {
            let buffer = self.directory.subscriber_buffer;
            let (receiver, last_seq, pump) = remote.subscribe(after_seq, buffer).await?;
            self.subscriber = Some(Subscriber::Remote(pump));
            return Ok((receiver, last_seq));
        }
        let handle = self.local_handle().ok_or(ConversationError::Stopped)?;
        let subscription = handle.subscribe(after_seq).await?;
        self.subscriber = Some(Subscriber::Local(subscription.id));
        Ok((subscription.receiver, subscription.last_seq))
    }

    /// Subscribes (replacing any earlier subscription of this link): events after
    /// `after_seq` are replayed first, then live ones follow. Returns the event channel and
    /// the conversation's last seq at the time of subscribing.
    pub async fn subscribe(
        &mut self,
        after_seq: Option<u64>,
    ) -> Result<(mpsc::Receiver<Arc<ConversationEvent>>, u64), ApiError> {
        self.unsubscribe();
        match self.try_subscribe(after_seq).await {
            Err(ConversationError::Stopped) => {
                self.reopen().await?;
                self.try_subscribe(after_seq).await
            }
            other => other,
        }
        .map_err(api_error)
    }

    async fn try_post(&self, message: PostUserMessage) -> Result<Posted, ConversationError> {
        match &self.target {
            Target::Remote(remote) => remote.post(message).await,
            Target::Local { owned, .. } => {
                let handle = self.local_handle().ok_or(ConversationError::Stopped)?;
                if let (Some(owned), Some(cluster)) = (owned, self.directory.cluster()) {
                    // Remote watchers must see this post's events.
                    owned.0.ensure_publishing(cluster).await?;
                }
                handle.post(message).await
            }
        }
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
        self.post_message(message).await.map_err(api_error)
    }

    async fn post_message(
        &mut self,
        message: PostUserMessage,
    ) -> Result<Posted, ConversationError> {
        match self.try_post(message.clone()).await {
            Err(ConversationError::Stopped) => {
                // The subscription (if any) was on the old target: callers resubscribe when
                // their channel closes.
                self.reopen().await.map_err(|_| ConversationError::Stopped)?;
                self.try_post(message).await
            }
            other => other,
        }
    }

    /// Posts a message and waits for its whole reply (non-streaming REST, the
    /// OpenAI-compatible edge). A failed turn is [`ConversationError::Turn`].
    pub async fn complete(
        &mut self,
        message: PostUserMessage,
    ) -> Result<CompletedTurn, ConversationError> {
        if let Some(handle) = self.local_handle() {
            if let (Target::Local { owned: Some(owned), .. }, Some(cluster)) =
                (&self.target, self.directory.cluster())
            {
                owned.0.ensure_publishing(cluster).await?;
            }
            match handle.complete(message.clone()).await {
                Err(ConversationError::Stopped) => {}
                other => return other,
            }
            self.reopen().await.map_err(|_| ConversationError::Stopped)?;
            if let Some(handle) = self.local_handle() {
                return handle.complete(message).await;
            }
        }
        // Remote: listen first so no event of the turn slips by, then post and collect.
        let (mut events, _) = self.try_subscribe(None).await?;
        let posted = self.post_message(message).await?;
        let mut collector = TurnCollector::new(posted);
        loop {
            let Some(event) = events.recv().await else {
                return Err(ConversationError::Unavailable);
            };
            if let Some(result) = collector.feed(&event) {
                self.unsubscribe();
                return result;
            }
        }
    }

    /// Cancels the running turn, if any; fire and forget.
    pub fn cancel(&self) {
        match &self.target {
            Target::Remote(remote) => {
                let remote = remote.clone();
                actix_rt::spawn(async move {
                    let _ = remote.cancel().await;
                });
            }
            Target::Local { handle, .. } => {
                let handle = handle.clone();
                actix_rt::spawn(async move {
                    let _ = handle.cancel().await;
                });
            }
        }
    }

    /// Drops this link's subscription, if any; fire and forget.
    pub fn unsubscribe(&mut self) {
        match self.subscriber.take() {
            Some(Subscriber::Local(id)) => {
                if let Target::Local { handle, .. } = &self.target {
                    let handle = handle.clone();
                    actix_rt::spawn(async move {
                        let _ = handle.unsubscribe(id).await;
                    });
                }
            }
            // Dropping the pump ends it.
            Some(Subscriber::Remote(_)) | None => {}
        }
    }
}

impl Drop for ConversationLink {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}
