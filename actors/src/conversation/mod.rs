//! The conversation side of the tree: one [`ConversationActor`] per live conversation.
//!
//! ## How the pieces connect
//!
//! ```text
//! Conversations (directory, tenant/) ─ get-or-start ─▶ TenantActor ─ open ─▶ ConversationActor
//!        ▲                                             (turn gate)            │  ▲
//!   engine edges ◀── ConversationHandle ──────────────────────────────────────┘  │
//!                    subscribe / post / cancel / complete           TurnRunner ──┘ (router)
//!                                                                   ConversationStore (port)
//! ```
//!
//! * [`actor`]: the actor and its messages ([`Subscribe`], [`Unsubscribe`],
//!   [`PostUserMessage`], [`Cancel`]); ordered turns, seq numbering, subscribers, batched
//!   persistence, idle shutdown.
//! * [`history`]: the bounded window of messages sent to the model.
//! * [`replay`]: recent events kept for resumes.
//! * [`ConversationHandle`] (here): what the engine holds: admission control in front of the
//!   actor's bounded mailbox plus typed calls, including [`ConversationHandle::complete`]
//!   for non-streaming REST.
//!
//! ## Public API for the engine's edges
//!
//! 1. `Conversations::open(tenant_id, conversation_id).await -> Result<ConversationHandle,
//!    ConversationError>` (in [`crate::tenant`]) — `NotFound` for another tenant's id.
//! 2. `handle.subscribe(after_seq).await -> Result<Subscription, _>`: `None` = live only;
//!    `Some(n)` = every event with `seq > n` (from memory or the store) then live, no gap, no
//!    duplicate. Read `subscription.receiver`; when it closes (the subscriber fell too far
//!    behind, or the actor stopped) resubscribe with the last seq seen.
//! 3. `handle.post(PostUserMessage { user_id, client_id, content, cache }).await -> Result<Posted
//!    { message_id, seq }, _>`: returns once the message is durable; the `ack` event is
//!    broadcast to subscribers too.
//! 4. `handle.cancel().await`: cancels the running turn. A cancelled turn ends with an
//!    `error` event, `code: "cancelled"` (and its partial text is stored with status
//!    `cancelled`), so every turn ends with exactly one `done` or `error`.
//! 5. `handle.complete(PostUserMessage).await -> Result<CompletedTurn, _>`: posts and waits
//!    for the whole reply.
//!
//! Errors map to wire codes with [`ConversationError::code`] and to a seq-less `error` event
//! with [`ConversationError::to_event`].

pub mod actor;
pub mod history;
pub mod replay;

use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, MailboxError};
use tokio::sync::mpsc;

use crate::events::ConversationEvent;
use crate::ports::llm::{FinishReason, Usage};
use crate::ports::store::{ConversationStore, StoreError};
use crate::registry::{ActorEntry, Registry};
use crate::turn::{ContinuationMode, TurnRunner};

pub use actor::{
    Cancel, ConversationActor, PAGED_CHANNEL, PostUserMessage, Posted, REPLAY_PAGE, Subscribe,
    Subscribed, Subscription, Unsubscribe,
};

/// The `id` of a subscription fed through pages (see [`ConversationHandle::subscribe`]).
pub const PAGED_SUBSCRIPTION: u64 = u64::MAX;

/// Tuning for conversation actors. Defaults suit production; tests shrink the timers.
#[derive(Debug, Clone)]
pub struct ConversationConfig {
    /// History window sent to the model: at most this many messages…
    pub history_max_messages: usize,
    /// …and about this many characters (the newest message always goes).
    pub history_max_chars: usize,
    /// How many recent messages a rebuilt actor loads to fill its window.
    pub load_messages: usize,
    /// Events kept in memory for resumes (more while some are not yet persisted).
    pub replay_buffer: usize,
    /// Per-subscriber channel capacity; a subscriber this far behind is dropped.
    pub subscriber_buffer: usize,
    /// Acknowledged user messages waiting for their turn; beyond it posts are refused
    /// (`overloaded`).
    pub max_pending_messages: usize,
    /// Actor mailbox capacity; a handle refuses calls at once (`overloaded`) beyond it.
    pub mailbox_capacity: usize,
    /// Stop after this long with no subscriber, no turn and nothing queued.
    pub idle_timeout: Duration,
    pub idle_check_interval: Duration,
    /// Persist a streaming reply at least this often…
    pub checkpoint_interval: Duration,
    /// …or once this many bytes are unsaved.
    pub checkpoint_bytes: usize,
    /// Deadline handed to the runner; the actor itself gives up a little later.
    pub turn_timeout: Duration,
    pub max_tokens: Option<u32>,
    pub continuation: ContinuationMode,
    /// Attempts for an assistant write before it is logged and dropped.
    pub write_attempts: u32,
    pub write_retry_backoff: Duration,
    /// Seqs reserved durably per store write (see `ports::store`, "Seq reservation"); a new
    /// block is requested when half of the current one is used.
    pub seq_reserve_block: u64,
    /// A reply that streams nothing for this long is still checkpointed (empty), so the
    /// store's crash sweep can tell a slow live turn from a dead one.
    pub checkpoint_heartbeat: Duration,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        Self {
            history_max_messages: 40,
            history_max_chars: 48_000,
            load_messages: 100,
            replay_buffer: 512,
            subscriber_buffer: 256,
            max_pending_messages: 16,
            mailbox_capacity: 64,
            idle_timeout: Duration::from_secs(300),
            idle_check_interval: Duration::from_secs(10),
            checkpoint_interval: Duration::from_millis(250),
            checkpoint_bytes: 2048,
            turn_timeout: Duration::from_secs(300),
            max_tokens: None,
            continuation: ContinuationMode::Continue,
            write_attempts: 5,
            write_retry_backoff: Duration::from_millis(200),
            seq_reserve_block: 256,
            checkpoint_heartbeat: Duration::from_secs(10),
        }
    }
}

/// A refusal from a [`TurnPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRefusal {
    /// Stable snake_case wire code (`rate_limited`, `budget_exceeded`, …).
    pub code: &'static str,
    pub message: String,
}

/// Where tenant rate limits and budgets plug in: asked before a user message is accepted,
/// told when a turn finished with its usage. The default admits everything.
pub trait TurnPolicy: Send + Sync + 'static {
    fn admit(&self, tenant_id: &str, conversation_id: &str) -> Result<(), PolicyRefusal>;

    fn turn_finished(&self, _tenant_id: &str, _conversation_id: &str, _usage: &Usage) {}
}

/// Admits every turn.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl TurnPolicy for AllowAll {
    fn admit(&self, _tenant_id: &str, _conversation_id: &str) -> Result<(), PolicyRefusal> {
        Ok(())
    }
}

/// What every conversation and tenant actor shares.
#[derive(Clone)]
pub struct ConversationDeps {
    pub store: Arc<dyn ConversationStore>,
    pub runner: Arc<dyn TurnRunner>,
    pub registry: Registry,
    pub policy: Arc<dyn TurnPolicy>,
    pub config: ConversationConfig,
}

impl ConversationDeps {
    pub fn new(
        store: Arc<dyn ConversationStore>,
        runner: Arc<dyn TurnRunner>,
        registry: Registry,
        config: ConversationConfig,
    ) -> Self {
        Self { store, runner, registry, policy: Arc::new(AllowAll), config }
    }
}

/// Why a conversation call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversationError {
    #[error("conversation not found")]
    NotFound,
    /// The store is down; nothing was acknowledged.
    #[error("the conversation store is unavailable; try again shortly")]
    Unavailable,
    /// Bounded queues are full: the mailbox, or the conversation's pending messages.
    #[error("the conversation is overloaded; try again shortly")]
    Overloaded,
    #[error("the tenant already has {limit} turns in flight; try again shortly")]
    TenantConcurrency { limit: usize },
    /// A [`TurnPolicy`] refused the message.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// The actor stopped (idle shutdown raced the call); open the conversation again.
    #[error("the conversation was stopped; open it again")]
    Stopped,
    /// A resume cannot be served without a gap (`after_seq` is ahead of the conversation,
    /// e.g. after a crash lost unsaved events); reload the conversation and subscribe live.
    #[error("cannot resume after seq {after_seq}; the conversation is at seq {last_seq}")]
    ResyncRequired { after_seq: u64, last_seq: u64 },
    /// The turn itself failed (the `error` event's code and message).
    #[error("{message}")]
    Turn { code: String, message: String },
}

impl ConversationError {
    /// Stable snake_case code for the wire.
    pub fn code(&self) -> &str {
        match self {
            ConversationError::NotFound => "not_found",
            ConversationError::Unavailable | ConversationError::Stopped => "unavailable",
            ConversationError::Overloaded => "overloaded",
            ConversationError::TenantConcurrency { .. } => "tenant_concurrency",
            ConversationError::Refused { code, .. } => code,
            ConversationError::ResyncRequired { .. } => "resync_required",
            ConversationError::Turn { code, .. } => code,
        }
    }

    /// Whether trying again shortly may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConversationError::Unavailable
                | ConversationError::Overloaded
                | ConversationError::TenantConcurrency { .. }
                | ConversationError::Stopped
        )
    }

    /// A seq-less `error` event for the one caller whose request was refused.
    pub fn to_event(&self) -> ConversationEvent {
        ConversationEvent::refused(self.code(), self.to_string())
    }
}

impl From<StoreError> for ConversationError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ConversationError::NotFound,
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "conversation store unavailable");
                ConversationError::Unavailable
            }
        }
    }
}

impl From<MailboxError> for ConversationError {
    fn from(_: MailboxError) -> Self {
        ConversationError::Stopped
    }
}

/// A whole reply, for non-streaming callers.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedTurn {
    /// The user message posted.
    pub user_message_id: String,
    /// The assistant reply.
    pub message_id: String,
    pub text: String,
    pub model: String,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    pub cost_micros: Option<u64>,
    /// Whether the response cache answered.
    pub cache: crate::events::CacheStatus,
    /// Why this model, when the engine chose it.
    pub route: Option<crate::turn::RouteNote>,
    /// Seq of the `done` event.
    pub seq: u64,
}

/// Folds a conversation's events into the reply to one posted message: the shared core of
/// every non-streaming caller (a local [`ConversationHandle::complete`], or the engine's
/// remote one on a proxy node). Turns run one at a time, so the deltas after the previous
/// turn's terminal event are ours; earlier turns' text is dropped when their terminal event
/// passes.
#[derive(Debug)]
pub struct TurnCollector {
    posted: Posted,
    text: String,
}

impl TurnCollector {
    pub fn new(posted: Posted) -> Self {
        Self { posted, text: String::new() }
    }

    /// Feeds the next event; `Some` once the posted message's turn has ended.
    pub fn feed(
        &mut self,
        event: &ConversationEvent,
    ) -> Option<Result<CompletedTurn, ConversationError>> {
        match event {
            ConversationEvent::Delta { text, .. } => self.text.push_str(text),
            ConversationEvent::Retract { .. } => self.text.clear(),
            terminal if terminal.is_terminal() => {
                if terminal.reply_to() != Some(self.posted.message_id.as_str()) {
                    self.text.clear();
                    return None;
                }
                return Some(self.finish(terminal));
            }
            _ => {}
        }
        None
    }

    fn finish(&mut self, terminal: &ConversationEvent) -> Result<CompletedTurn, ConversationError> {
        match terminal {
            ConversationEvent::Done {
                seq,
                message_id,
                model,
                usage,
                finish_reason,
                cost_micros,
                cache,
                route,
                ..
            } => Ok(CompletedTurn {
                user_message_id: self.posted.message_id.clone(),
                message_id: message_id.clone(),
                text: std::mem::take(&mut self.text),
                model: model.clone(),
                usage: *usage,
                finish_reason: *finish_reason,
                cost_micros: *cost_micros,
                cache: *cache,
                route: route.clone(),
                seq: *seq,
            }),
            ConversationEvent::Error { code, message, .. } => {
                Err(ConversationError::Turn { code: code.clone(), message: message.clone() })
            }
            _ => Err(ConversationError::Turn {
                code: "interrupted".into(),
                message: "the turn was interrupted".into(),
            }),
        }
    }
}

/// What the engine holds to talk to one live conversation. Cheap to clone.
///
/// Every call is refused at once with [`ConversationError::Overloaded`] when the actor's
/// mailbox is full, instead of waiting; [`ConversationError::Stopped`] means the actor
/// stopped meanwhile and the conversation should be opened again.
#[derive(Clone)]
pub struct ConversationHandle {
    addr: Addr<ConversationActor>,
    entry: Arc<ActorEntry>,
    mailbox_capacity: usize,
    conversation_id: Arc<str>,
    owner_id: Arc<str>,
}

impl std::fmt::Debug for ConversationHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationHandle")
            .field("conversation_id", &self.conversation_id)
            .finish_non_exhaustive()
    }
}

impl ConversationHandle {
    pub(crate) fn new(
        addr: Addr<ConversationActor>,
        entry: Arc<ActorEntry>,
        mailbox_capacity: usize,
        conversation_id: &str,
        owner_id: &str,
    ) -> Self {
        Self {
            addr,
            entry,
            mailbox_capacity,
            conversation_id: conversation_id.into(),
            owner_id: owner_id.into(),
        }
    }

    pub fn conversation_id(&self) -> &str {
        &self.conversation_id
    }

    /// The user who created the conversation (for the edge's authorization).
    pub fn owner_id(&self) -> &str {
        &self.owner_id
    }

    /// The actor, for callers that want raw messages (no admission control).
    pub fn addr(&self) -> &Addr<ConversationActor> {
        &self.addr
    }

    /// Whether the actor is still running.
    pub fn is_live(&self) -> bool {
        self.addr.connected()
    }

    async fn call<M>(&self, message: M) -> Result<M::Result, ConversationError>
    where
        M: actix::Message + Send + 'static,
        M::Result: Send,
        ConversationActor: actix::Handler<M>,
    {
        if self.entry.mailbox_depth() >= self.mailbox_capacity as u64 {
            return Err(ConversationError::Overloaded);
        }
        // The actor takes this back off when it handles the message (`dequeued`).
        self.entry.add_mailbox_depth(1);
        self.addr.send(message).await.map_err(ConversationError::from)
    }

    /// Events after `after_seq` (`None`: live only), then live ones. A resume from further
    /// back than the actor's buffer is fed a store page at a time as the receiver drains it
    /// (the pages travel through a task of their own; the returned `id` then names no actor
    /// subscriber, and the task unsubscribes when the receiver is dropped).
    pub async fn subscribe(
        &self,
        after_seq: Option<u64>,
    ) -> Result<Subscription, ConversationError> {
        match self.call(Subscribe { after_seq }).await?? {
            Subscribed::Live(live) => Ok(live),
            Subscribed::Page(page) => {
                let (tx, receiver) = mpsc::channel(actor::PAGED_CHANNEL);
                tokio::spawn(self.clone().page_then_follow(page, tx));
                let last_seq = after_seq.unwrap_or_default();
                Ok(Subscription { id: PAGED_SUBSCRIPTION, receiver, last_seq })
            }
        }
    }

    /// Sends `page` and the pages after it, each once the receiver has room for it, then
    /// forwards live events. Ends, closing the channel, when the receiver is dropped or a
    /// resubscribe fails: the subscriber resumes from its last seq and sees the error then.
    async fn page_then_follow(
        self,
        mut page: Vec<Arc<ConversationEvent>>,
        tx: mpsc::Sender<Arc<ConversationEvent>>,
    ) {
        let mut live = loop {
            let mut last_sent = None;
            for event in page {
                last_sent = event.seq();
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            match self.call(Subscribe { after_seq: last_sent }).await {
                Ok(Ok(Subscribed::Page(next))) => page = next,
                Ok(Ok(Subscribed::Live(live))) => break live,
                Ok(Err(_)) | Err(_) => return,
            }
        };
        loop {
            tokio::select! {
                event = live.receiver.recv() => match event {
                    Some(event) => {
                        if tx.send(event).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                () = tx.closed() => break,
            }
        }
        let _ = self.unsubscribe(live.id).await;
    }

    pub async fn unsubscribe(&self, subscriber_id: u64) -> Result<(), ConversationError> {
        self.call(Unsubscribe { subscriber_id }).await
    }

    /// Stores the message and queues its turn; returns after the durable write.
    pub async fn post(&self, message: PostUserMessage) -> Result<Posted, ConversationError> {
        self.call(message).await?
    }

    /// Cancels the running turn; `false` if none was running.
    pub async fn cancel(&self) -> Result<bool, ConversationError> {
        self.call(Cancel).await
    }

    /// Posts a message and waits for its whole reply (non-streaming REST and the
    /// OpenAI-compatible edge). A failed turn is [`ConversationError::Turn`].
    pub async fn complete(
        &self,
        message: PostUserMessage,
    ) -> Result<CompletedTurn, ConversationError> {
        // Subscribe first so no event of our turn can slip by before we listen.
        let mut subscription = self.subscribe(None).await?;
        let posted = match self.post(message).await {
            Ok(posted) => posted,
            Err(e) => {
                let _ = self.unsubscribe(subscription.id).await;
                return Err(e);
            }
        };
        let mut last_seq = subscription.last_seq;
        let mut collector = TurnCollector::new(posted);
        loop {
            let Some(event) = subscription.receiver.recv().await else {
                // Dropped for falling behind (or the actor restarted): resume where we were.
                subscription = self.subscribe(Some(last_seq)).await?;
                continue;
            };
            last_seq = event.seq().unwrap_or(last_seq);
            if let Some(result) = collector.feed(&event) {
                let _ = self.unsubscribe(subscription.id).await;
                return result;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::CacheStatus;

    fn done(seq: u64, reply_to: &str) -> ConversationEvent {
        ConversationEvent::Done {
            seq,
            message_id: format!("a{seq}"),
            reply_to: reply_to.into(),
            model: "m".into(),
            usage: Usage { input_tokens: 1, output_tokens: 2 },
            finish_reason: FinishReason::Stop,
            cost_micros: Some(7),
            cache: CacheStatus::Miss,
            route: None,
        }
    }

    fn delta(seq: u64, text: &str) -> ConversationEvent {
        ConversationEvent::Delta { seq, text: text.into() }
    }

    #[test]
    fn collects_only_the_posted_messages_reply() {
        let mut c = TurnCollector::new(Posted { message_id: "u2".into(), seq: 3 });
        // The previous turn's tail, then its end: dropped.
        assert!(c.feed(&delta(4, "old ")).is_none());
        assert!(c.feed(&done(5, "u1")).is_none());
        // Ours, with a restart in the middle.
        assert!(c.feed(&delta(6, "partial")).is_none());
        assert!(c.feed(&ConversationEvent::Retract { seq: 7, from: "m".into() }).is_none());
        assert!(c.feed(&delta(8, "Hello ")).is_none());
        assert!(c.feed(&delta(9, "there")).is_none());
        let turn = c.feed(&done(10, "u2")).unwrap().unwrap();
        assert_eq!(turn.text, "Hello there");
        assert_eq!((turn.user_message_id.as_str(), turn.message_id.as_str()), ("u2", "a10"));
        assert_eq!((turn.seq, turn.cost_micros), (10, Some(7)));
    }

    #[test]
    fn a_failed_or_interrupted_turn_is_an_error() {
        let mut c = TurnCollector::new(Posted { message_id: "u1".into(), seq: 1 });
        let failed = ConversationEvent::Error {
            seq: Some(2),
            message_id: Some("a2".into()),
            reply_to: Some("u1".into()),
            code: "timeout".into(),
            message: "too slow".into(),
        };
        assert_eq!(
            c.feed(&failed),
            Some(Err(ConversationError::Turn {
                code: "timeout".into(),
                message: "too slow".into()
            }))
        );
        let mut c = TurnCollector::new(Posted { message_id: "u1".into(), seq: 1 });
        let cut = ConversationEvent::Interrupted {
            seq: 2,
            message_id: "a2".into(),
            reply_to: "u1".into(),
            lost_after: 1,
        };
        assert!(
            matches!(c.feed(&cut), Some(Err(ConversationError::Turn { code, .. })) if code == "interrupted")
        );
    }
}
