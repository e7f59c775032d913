//! The `ConversationStore` port: where conversations and their messages are persisted.
//!
//! The conversation actor writes through it (user messages before they are acknowledged,
//! assistant replies in batched checkpoints while they stream, the final record when a turn
//! ends); the engine's REST edge reads and lists through it; the tenant actor loads a
//! conversation through it to rebuild its actor. Every call is scoped by `tenant_id`: an
//! implementation must never return (or touch) another tenant's rows, and answers
//! [`StoreError::NotFound`] for a conversation that exists under another tenant.
//!
//! ## Replaying events from stored data
//!
//! The store keeps enough to regenerate, byte for byte and seq for seq, every
//! [`ConversationEvent`] the conversation ever emitted, without storing one row per token:
//!
//! * a user message stores the `seq` of its `ack` (`first_seq == last_seq`);
//! * an assistant message stores everything it streamed as one `text` (retracted text
//!   included), the end offset of every delta in it (`delta_ends`, a compact `Vec<u32>`), the
//!   failovers/retractions between deltas (`switches`), its `first_seq`, the seqs inside its
//!   range that belong to other messages (`foreign_seqs`: acks of user messages posted while
//!   it streamed), and its terminal record (status, model, usage, error) whose event has
//!   `last_seq`.
//!
//! [`StoredMessage::events`] and [`page_of_events`] do the regeneration, so every
//! implementation (the in-memory one here, PostgreSQL in the engine) replays identically.
//! Replays are read a page at a time ([`EventsPage`]): a client resuming from the start of a
//! long conversation is fed page by page as it reads, so one that stops reading holds a page,
//! not the history.
//! The shapes are SQL-friendly: scalar columns, an `int4[]`, and a small JSON column for the
//! switches; writes are appends (`text = text || $1`, `delta_ends = delta_ends || $2`).
//!
//! ## Seq reservation
//!
//! A streaming reply's events are broadcast before they are persisted (checkpoints are
//! batched), so a crash loses the events after the last checkpoint. Their seqs must never be
//! handed out again: a client that saw them would resume after a seq the conversation later
//! reuses and silently miss the new events. So the actor reserves seqs durably in blocks
//! ([`ConversationStore::reserve_seqs`], kept as [`Conversation::seq_reserved`]) and never
//! emits a reply event past its reservation. Recovery closes a reply left `streaming` with
//! its `interrupted` event *after* the reservation: the jump before it is the honest trace
//! of the lost events, and a resume from any seq up to the reservation is served.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::events::{CacheStatus, ConversationEvent};
use crate::ports::llm::{FinishReason, Role, Usage};

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such conversation or message for this tenant.
    #[error("not found")]
    NotFound,
    /// The store could not be reached or refused the write; nothing was written.
    #[error("the conversation store is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Stable snake_case code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound => "not_found",
            StoreError::Unavailable(_) => "unavailable",
        }
    }
}

/// Every store call returns one of these: `'static`, so the actor can spawn it.
pub type StoreFuture<T> = BoxFuture<'static, Result<T, StoreError>>;

/// How a conversation talks to its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSettings {
    /// A configured model name or a route alias such as `auto`.
    pub model: String,
    pub temperature: Option<f32>,
    pub system_prompt: Option<String>,
    pub title: Option<String>,
}

/// A conversation's record (not its messages).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conversation {
    pub id: String,
    pub tenant_id: String,
    /// The user who created it.
    pub owner_id: String,
    pub settings: ConversationSettings,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The highest `seq` persisted for this conversation (0: no event yet).
    pub last_seq: u64,
    /// The highest seq an actor may have emitted without persisting it yet (see the module
    /// docs); `>= last_seq` once a reply has started.
    pub seq_reserved: u64,
}

/// A page request for [`ConversationStore::list_conversations`]: newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only conversations this user owns.
    pub owner_id: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size; implementations clamp it to `1..=100`.
    pub limit: usize,
}

/// One page of conversations, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationPage {
    pub items: Vec<Conversation>,
    /// Pass back as [`ListQuery::cursor`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// A user message, or an assistant reply that finished.
    Complete,
    /// An assistant reply still being generated (only checkpointed text is stored).
    Streaming,
    /// An assistant reply cut by a crash, found on recovery.
    Interrupted,
    /// An assistant reply cancelled by the user; its partial text is kept.
    Cancelled,
    /// An assistant reply whose turn failed.
    Failed,
}

/// A failover or retraction between two deltas of an assistant reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSwitch {
    /// How many deltas of the message came before it.
    pub before_delta: u32,
    pub kind: SwitchKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SwitchKind {
    Failover { from: String, to: String, reason: String },
    Retract { from: String },
}

/// A slice of an assistant reply's stream, appended by a checkpoint. Offsets and indexes are
/// absolute within the message (not relative to the chunk), so chunks concatenate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamChunk {
    pub text: String,
    /// End byte offset (in the message's whole streamed text) of each delta in this chunk.
    pub delta_ends: Vec<u32>,
    pub switches: Vec<StreamSwitch>,
    /// Seqs taken by other messages' events (acks) while this reply streamed, ascending.
    pub foreign_seqs: Vec<u64>,
}

impl StreamChunk {
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
            && self.delta_ends.is_empty()
            && self.switches.is_empty()
            && self.foreign_seqs.is_empty()
    }

    /// Appends a later chunk of the same message.
    pub fn append(&mut self, later: StreamChunk) {
        self.text.push_str(&later.text);
        self.delta_ends.extend(later.delta_ends);
        self.switches.extend(later.switches);
        self.foreign_seqs.extend(later.foreign_seqs);
    }
}

/// An error recorded on a failed or cancelled reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredError {
    pub code: String,
    pub message: String,
}

/// One message as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMessage {
    pub id: String,
    pub role: Role,
    pub status: MessageStatus,
    /// User messages: the client's id for it and the author.
    pub client_id: Option<String>,
    pub user_id: Option<String>,
    /// Assistant messages: the user message answered.
    pub reply_to: Option<String>,
    /// User messages: the content. Assistant messages: everything streamed, retracted text
    /// included; [`StoredMessage::content`] is the visible reply.
    pub text: String,
    pub delta_ends: Vec<u32>,
    pub switches: Vec<StreamSwitch>,
    pub foreign_seqs: Vec<u64>,
    /// The model that answered (the requested one until the turn finishes).
    pub model: Option<String>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<StoredError>,
    pub cost_micros: Option<u64>,
    pub cache: CacheStatus,
    /// Seq of the message's first event (a user message: its ack).
    pub first_seq: u64,
    /// Seq of its last persisted event (finished replies: the terminal event).
    pub last_seq: u64,
    pub created_at_ms: u64,
}

impl StoredMessage {
    /// The text the user ends up seeing: for a reply, what follows its last retraction.
    pub fn content(&self) -> &str {
        let from = self
            .switches
            .iter()
            .filter(|s| matches!(s.kind, SwitchKind::Retract { .. }))
            .map(|s| self.delta_offset(s.before_delta))
            .next_back()
            .unwrap_or(0);
        self.text.get(from..).unwrap_or("")
    }

    /// Byte offset where delta number `index` starts.
    fn delta_offset(&self, index: u32) -> usize {
        match index.checked_sub(1) {
            Some(previous) => self.delta_ends.get(previous as usize).copied().unwrap_or(0) as usize,
            None => 0,
        }
    }

    /// Regenerates every event this message emitted, in seq order.
    pub fn events(&self) -> Vec<ConversationEvent> {
        self.events_after(0, usize::MAX)
    }

    /// The first `limit` events this message emitted with `seq > after_seq`, in seq order.
    /// Only those are built: paging through a long reply costs a page per page, not the
    /// whole reply each time.
    pub fn events_after(&self, after_seq: u64, limit: usize) -> Vec<ConversationEvent> {
        if self.role == Role::User {
            if self.first_seq <= after_seq || limit == 0 {
                return Vec::new();
            }
            return vec![ConversationEvent::Ack {
                client_id: self.client_id.clone(),
                message_id: self.id.clone(),
                seq: self.first_seq,
            }];
        }
        let all = self.delta_ends.len() + self.switches.len() + 1;
        let mut out = Vec::with_capacity(all.min(limit));
        let mut seqs = SeqCursor { next: self.first_seq, foreign: &self.foreign_seqs };
        let mut switches = self.switches.iter().peekable();
        let mut start = 0usize;
        for (index, end) in self.delta_ends.iter().enumerate() {
            while let Some(switch) = switches.next_if(|s| s.before_delta as usize <= index) {
                let seq = seqs.take();
                if seq > after_seq {
                    out.push(switch_event(seq, &switch.kind));
                }
            }
            let end = *end as usize;
            let seq = seqs.take();
            if seq > after_seq {
                let text = self.text.get(start..end).unwrap_or("").to_owned();
                out.push(ConversationEvent::Delta { seq, text });
            }
            start = end;
            if out.len() >= limit {
                out.truncate(limit);
                return out;
            }
        }
        for switch in switches {
            let seq = seqs.take();
            if seq > after_seq {
                out.push(switch_event(seq, &switch.kind));
            }
        }
        if let Some(terminal) = self.terminal_event().filter(|_| self.last_seq > after_seq) {
            out.push(terminal);
        }
        out.truncate(limit);
        out
    }

    /// The seq of the last event stored before the terminal one (`first_seq - 1` if none).
    fn last_stored_seq(&self) -> u64 {
        let mut seqs = SeqCursor { next: self.first_seq, foreign: &self.foreign_seqs };
        let stored = self.delta_ends.len() + self.switches.len();
        (0..stored).map(|_| seqs.take()).last().unwrap_or(self.first_seq.saturating_sub(1))
    }

    /// The event that closed this reply, if it is closed.
    fn terminal_event(&self) -> Option<ConversationEvent> {
        let reply_to = self.reply_to.clone().unwrap_or_default();
        let seq = self.last_seq;
        let message_id = self.id.clone();
        match self.status {
            MessageStatus::Streaming => None,
            MessageStatus::Complete => Some(ConversationEvent::Done {
                seq,
                message_id,
                reply_to,
                model: self.model.clone().unwrap_or_default(),
                usage: self.usage.unwrap_or_default(),
                finish_reason: self.finish_reason.unwrap_or(FinishReason::Stop),
                cost_micros: self.cost_micros,
                cache: self.cache,
                // The routing decision lives in the cost ledger, not the message.
                route: None,
            }),
            MessageStatus::Interrupted => Some(ConversationEvent::Interrupted {
                seq,
                message_id,
                reply_to,
                lost_after: self.last_stored_seq(),
            }),
            MessageStatus::Cancelled | MessageStatus::Failed => {
                let error = self.error.clone().unwrap_or_else(|| StoredError {
                    code: "internal".into(),
                    message: "the turn failed".into(),
                });
                Some(ConversationEvent::Error {
                    seq: Some(seq),
                    message_id: Some(message_id),
                    reply_to: Some(reply_to),
                    code: error.code,
                    message: error.message,
                })
            }
        }
    }
}

fn switch_event(seq: u64, kind: &SwitchKind) -> ConversationEvent {
    match kind {
        SwitchKind::Failover { from, to, reason } => ConversationEvent::Failover {
            seq,
            from: from.clone(),
            to: to.clone(),
            reason: reason.clone(),
        },
        SwitchKind::Retract { from } => ConversationEvent::Retract { seq, from: from.clone() },
    }
}

/// Hands out a reply's seqs in order, skipping those other messages took.
struct SeqCursor<'a> {
    next: u64,
    foreign: &'a [u64],
}

impl SeqCursor<'_> {
    fn take(&mut self) -> u64 {
        while let Some((first, rest)) = self.foreign.split_first() {
            if *first < self.next {
                self.foreign = rest;
            } else if *first == self.next {
                self.foreign = rest;
                self.next += 1;
            } else {
                break;
            }
        }
        let seq = self.next;
        self.next += 1;
        seq
    }
}

/// The first `limit` events with `seq > after_seq` that `messages` emitted, in seq order.
/// `messages` must include every message whose `last_seq > after_seq` (any order); others
/// are skipped.
fn replay_messages<'a>(
    messages: impl IntoIterator<Item = &'a StoredMessage>,
    after_seq: u64,
    limit: usize,
) -> Vec<ConversationEvent> {
    let mut out: Vec<ConversationEvent> = messages
        .into_iter()
        .filter(|m| m.last_seq > after_seq)
        .flat_map(|m| m.events_after(after_seq, limit))
        .collect();
    out.sort_by_key(|e| e.seq().unwrap_or(0));
    out.truncate(limit);
    out
}

/// How many messages a store reads for one [`EventsPage`] (plus one, to bound the page).
pub const MESSAGES_PER_PAGE: usize = 64;

/// One page of a conversation's persisted events (see [`ConversationStore::events_after`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventsPage {
    /// Events with `seq > after_seq`, in seq order.
    pub events: Vec<ConversationEvent>,
    /// False when the store holds later events: the next page starts after the last one here.
    pub complete: bool,
}

/// The page of events after `after_seq`, at most `max_events` long. `messages` must include
/// every message with `last_seq > after_seq`, in any order, or the first
/// [`MESSAGES_PER_PAGE`] + 1 of them by `first_seq` (what a store reads with
/// `ORDER BY first_seq LIMIT`); others are skipped.
///
/// The extra message bounds the page: every seq from its `first_seq` on may belong to
/// messages not read yet (an ack inside a reply's range sorts after the reply), so the page
/// stops before it and the next page reads the reply again from there. Turns run one at a
/// time, so at most the first message starts at or before `after_seq`, and a page of two or
/// more messages always moves forward.
pub fn page_of_events(
    mut messages: Vec<&StoredMessage>,
    after_seq: u64,
    max_events: usize,
) -> EventsPage {
    messages.retain(|m| m.last_seq > after_seq);
    messages.sort_by_key(|m| m.first_seq);
    messages.truncate(MESSAGES_PER_PAGE + 1);
    let (read, boundary) = match messages.get(MESSAGES_PER_PAGE) {
        Some(next) => (&messages[..MESSAGES_PER_PAGE], Some(next.first_seq)),
        None => (&messages[..], None),
    };
    let max_events = max_events.max(1);
    // One more than a page tells a full last page from a cut one.
    let mut events = replay_messages(read.iter().copied(), after_seq, max_events.saturating_add(1));
    if let Some(boundary) = boundary {
        events.retain(|e| e.seq().is_some_and(|s| s < boundary));
    }
    let complete = boundary.is_none() && events.len() <= max_events;
    events.truncate(max_events);
    // What a page holds is what stays allocated while its subscriber is slow to read it.
    events.shrink_to_fit();
    EventsPage { events, complete }
}

/// A conversation and its most recent messages, in the order they were stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedConversation {
    pub conversation: Conversation,
    pub messages: Vec<StoredMessage>,
}

/// A user message to store; acknowledged once [`ConversationStore::append_user_message`]
/// returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUserMessage {
    pub id: String,
    pub client_id: Option<String>,
    pub user_id: String,
    pub content: String,
    /// The seq of its `ack`.
    pub seq: u64,
}

/// The part of an assistant reply not yet persisted. The first write for a message creates
/// it (upsert); later ones append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssistantProgress {
    pub message_id: String,
    pub reply_to: String,
    /// The model (or alias) the turn was asked of.
    pub requested_model: String,
    pub first_seq: u64,
    /// Seq of the last event in `chunk` (for a finish: of the terminal event).
    pub last_seq: u64,
    pub chunk: StreamChunk,
}

/// How an assistant reply ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AssistantOutcome {
    /// `Complete`, `Cancelled` or `Failed`.
    pub status: MessageStatus,
    /// The model that finished the turn.
    pub model: Option<String>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<StoredError>,
    pub cost_micros: Option<u64>,
    pub cache: CacheStatus,
}

/// Persistence for conversations; see the module docs. Object safe: used as
/// `Arc<dyn ConversationStore>`.
///
/// Implementations must bound every call with a timeout and answer
/// [`StoreError::Unavailable`] when it runs out: the conversation actor holds its mailbox
/// while a user message is being written, so a call that never returns stalls the
/// conversation.
pub trait ConversationStore: Send + Sync + 'static {
    fn create_conversation(
        &self,
        tenant_id: &str,
        owner_id: &str,
        settings: ConversationSettings,
    ) -> StoreFuture<Conversation>;

    fn get_conversation(&self, tenant_id: &str, conversation_id: &str)
    -> StoreFuture<Conversation>;

    fn list_conversations(
        &self,
        tenant_id: &str,
        query: ListQuery,
    ) -> StoreFuture<ConversationPage>;

    /// Deletes the conversation and its messages.
    fn delete_conversation(&self, tenant_id: &str, conversation_id: &str) -> StoreFuture<()>;

    /// The conversation and its most recent `max_messages` messages, ordered by
    /// `first_seq` (a reply sorts before user messages posted while it streamed).
    fn load(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        max_messages: usize,
    ) -> StoreFuture<LoadedConversation>;

    /// Stores a user message; returns only once it is durable (the `ack` follows).
    fn append_user_message(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        message: NewUserMessage,
    ) -> StoreFuture<()>;

    /// Creates or extends a streaming assistant reply (status `streaming`).
    fn checkpoint_assistant(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        progress: AssistantProgress,
    ) -> StoreFuture<()>;

    /// Creates a reply's empty `streaming` record before its first event and, with
    /// `reserve_to`, raises the seq reservation to it (as [`Self::reserve_seqs`]); answers
    /// the reservation now stored when one was asked for. The turn's first event waits for
    /// this, so a store that can do both in one write should: the default makes the two
    /// calls in turn.
    fn open_reply(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        progress: AssistantProgress,
        reserve_to: Option<u64>,
    ) -> StoreFuture<Option<u64>> {
        let record = self.checkpoint_assistant(tenant_id, conversation_id, progress);
        let reserve = reserve_to.map(|up_to| self.reserve_seqs(tenant_id, conversation_id, up_to));
        Box::pin(async move {
            record.await?;
            match reserve {
                Some(reserve) => reserve.await.map(Some),
                None => Ok(None),
            }
        })
    }

    /// A user message that starts a turn at once (its conversation idle) with its reply's
    /// empty record and reservation: [`Self::append_user_message`] then [`Self::open_reply`],
    /// returning once both are durable. The turn's first event waits for this, so a store
    /// that can make it one write should: the default makes the two calls in turn.
    fn append_user_message_opening_reply(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        message: NewUserMessage,
        reply: AssistantProgress,
        reserve_to: Option<u64>,
    ) -> StoreFuture<Option<u64>> {
        let append = self.append_user_message(tenant_id, conversation_id, message);
        let open = self.open_reply(tenant_id, conversation_id, reply, reserve_to);
        Box::pin(async move {
            append.await?;
            open.await
        })
    }

    /// Appends the last part of a reply and records how it ended.
    fn finish_assistant(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        progress: AssistantProgress,
        outcome: AssistantOutcome,
    ) -> StoreFuture<()>;

    /// Recovery: closes a reply left `streaming` by a crash; its `interrupted` event gets
    /// `seq`.
    fn mark_interrupted(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        message_id: &str,
        seq: u64,
    ) -> StoreFuture<()>;

    /// Raises the conversation's seq reservation to at least `up_to` (never lowers it) and
    /// returns the reservation now stored. The actor emits reply events only up to a
    /// reservation this call has made durable.
    fn reserve_seqs(&self, tenant_id: &str, conversation_id: &str, up_to: u64) -> StoreFuture<u64>;

    /// The first page (at most `max_events`) of the persisted events with `seq > after_seq`,
    /// in order (see [`page_of_events`]).
    fn events_after(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        after_seq: u64,
        max_events: usize,
    ) -> StoreFuture<EventsPage>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> StoredMessage {
        StoredMessage {
            id: "a1".into(),
            role: Role::Assistant,
            status: MessageStatus::Complete,
            client_id: None,
            user_id: None,
            reply_to: Some("u1".into()),
            text: "Hi therehello".into(),
            delta_ends: vec![2, 8, 13],
            switches: vec![
                StreamSwitch {
                    before_delta: 1,
                    kind: SwitchKind::Failover {
                        from: "a".into(),
                        to: "b".into(),
                        reason: "stream_broken".into(),
                    },
                },
                StreamSwitch { before_delta: 2, kind: SwitchKind::Retract { from: "b".into() } },
            ],
            foreign_seqs: vec![12],
            model: Some("b".into()),
            usage: Some(Usage { input_tokens: 1, output_tokens: 2 }),
            finish_reason: Some(FinishReason::Stop),
            error: None,
            cost_micros: None,
            cache: CacheStatus::Miss,
            first_seq: 10,
            last_seq: 16,
            created_at_ms: 0,
        }
    }

    #[test]
    fn a_reply_regenerates_its_events_around_foreign_seqs() {
        let message = reply();
        let events = message.events();
        let seqs: Vec<u64> = events.iter().filter_map(ConversationEvent::seq).collect();
        assert_eq!(seqs, vec![10, 11, 13, 14, 15, 16]);
        assert_eq!(events[0], ConversationEvent::Delta { seq: 10, text: "Hi".into() });
        assert!(matches!(events[1], ConversationEvent::Failover { seq: 11, .. }));
        assert_eq!(events[2], ConversationEvent::Delta { seq: 13, text: " there".into() });
        assert!(matches!(events[3], ConversationEvent::Retract { seq: 14, .. }));
        assert_eq!(events[4], ConversationEvent::Delta { seq: 15, text: "hello".into() });
        assert!(matches!(events[5], ConversationEvent::Done { seq: 16, .. }));
        assert_eq!(message.content(), "hello");
    }

    #[test]
    fn replay_merges_messages_by_seq_and_skips_older_events() {
        let mut ack = reply();
        ack.role = Role::User;
        ack.id = "u2".into();
        ack.first_seq = 12;
        ack.last_seq = 12;
        let reply = reply();
        let events = replay_messages([&ack, &reply], 11, usize::MAX);
        let seqs: Vec<u64> = events.iter().filter_map(ConversationEvent::seq).collect();
        assert_eq!(seqs, vec![12, 13, 14, 15, 16]);
        assert!(matches!(events[0], ConversationEvent::Ack { seq: 12, .. }));
    }

    #[test]
    fn a_window_of_a_messages_events_is_the_same_slice_of_all_of_them() {
        let mut ack = reply();
        ack.role = Role::User;
        ack.first_seq = 12;
        ack.last_seq = 12;
        for message in [reply(), ack] {
            let all = message.events();
            for after_seq in 0..=message.last_seq + 1 {
                for limit in 0..=all.len() + 1 {
                    let want: Vec<_> = all
                        .iter()
                        .filter(|e| e.seq().is_some_and(|s| s > after_seq))
                        .take(limit)
                        .cloned()
                        .collect();
                    assert_eq!(message.events_after(after_seq, limit), want, "{after_seq} {limit}");
                }
            }
        }
    }

    /// Every page from `after_seq` on, as a client resuming there is fed them.
    fn all_pages(messages: &[StoredMessage], mut after_seq: u64, max_events: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        loop {
            let page = page_of_events(messages.iter().collect(), after_seq, max_events);
            assert!(page.events.len() <= max_events.max(1));
            seqs.extend(page.events.iter().filter_map(ConversationEvent::seq));
            if page.complete {
                return seqs;
            }
            after_seq = *seqs.last().expect("an incomplete page is never empty");
        }
    }

    #[test]
    fn pages_add_up_to_the_whole_replay_whatever_their_size() {
        // 80 acked user messages (more than a page of messages), then a reply with an ack
        // inside its range.
        let mut messages: Vec<StoredMessage> = (1..=80)
            .map(|seq| {
                let mut ack = reply();
                ack.role = Role::User;
                ack.id = format!("u{seq}");
                ack.first_seq = seq;
                ack.last_seq = seq;
                ack
            })
            .collect();
        let mut ack = messages[0].clone();
        ack.id = "u-inside".into();
        ack.first_seq = 92;
        ack.last_seq = 92;
        let mut long = reply();
        long.first_seq = 81;
        long.last_seq = 96;
        long.foreign_seqs = vec![92];
        long.text = "abcdefghijklmn".into();
        long.delta_ends = (1..=14).collect();
        long.switches = Vec::new();
        messages.push(ack);
        messages.push(long);
        let whole: Vec<u64> =
            replay_messages(&messages, 0, usize::MAX).iter().filter_map(|e| e.seq()).collect();
        assert_eq!(whole, (1..=96).collect::<Vec<u64>>());
        for max_events in [1, 3, 64, 512] {
            assert_eq!(all_pages(&messages, 0, max_events), whole, "pages of {max_events}");
            assert_eq!(all_pages(&messages, 85, max_events), whole[85..], "from 85, {max_events}");
        }
    }
}
