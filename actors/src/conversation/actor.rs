//! `ConversationActor`: one live conversation, and the messages it handles.
//!
//! * **Ordered turns.** One generation at a time. A user message is written to the store
//!   *before* it is acknowledged (the write runs under `ctx.wait`, so nothing else — no
//!   delta, no other post — can take a seq meanwhile and a failed write leaves no gap), then
//!   queued; the queue feeds turns in order.
//! * **Seq.** Every broadcast event takes the next seq; the store persists enough to replay
//!   them exactly (see [`crate::ports::store`]), so a rebuilt actor continues from the
//!   stored last seq. Reply events (broadcast before they are checkpointed) only use seqs
//!   reserved durably beforehand, in blocks of `seq_reserve_block`: a reply's record and a
//!   first reservation are written before the turn's first event (under `ctx.wait`), the
//!   next block is requested when half is used, and an exhausted reservation holds the
//!   actor until more is durable. After a crash the reply is closed as `interrupted` *after*
//!   the reservation, so the seqs of events lost with the crash are never reused.
//! * **Subscribers** get a bounded channel of `Arc<ConversationEvent>` fed with `try_send`;
//!   a full one is dropped so a slow client never slows the others (it resumes later).
//! * **Resume.** `Subscribe { after_seq }` replays from the [`ReplayBuffer`] when it still
//!   covers `after_seq`, otherwise from the store plus the buffer, then goes live. The actor
//!   is single-threaded, so "replay then live" is atomic: no event is emitted between the
//!   replay being assembled and the subscriber joining. The store is read a page
//!   ([`REPLAY_PAGE`] events) at a time: when its page does not reach the buffer, the answer is
//!   [`Subscribed::Page`] and the caller asks again after the page's last seq once it has
//!   delivered it ([`ConversationHandle::subscribe`] does), so a far-behind subscriber is fed
//!   as it reads instead of holding the whole history.
//! * **Persistence** of replies is batched: a checkpoint every `checkpoint_interval` or
//!   `checkpoint_bytes`, never per token, written one at a time in order by a small queue
//!   that retries with backoff.
//! * **Cancel** drops the turn stream (which cancels upstream) and ends the turn with an
//!   `error` event, code `cancelled`.
//! * **Idle shutdown**: with no subscriber, no turn, nothing queued or unsaved, for
//!   `idle_timeout`, the actor stops and tells its tenant; the next open rebuilds it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix::prelude::*;
use futures_util::{StreamExt, stream};
use tokio::sync::{mpsc, oneshot};

use super::history::HistoryWindow;
use super::replay::ReplayBuffer;
use super::{ConversationDeps, ConversationError, ConversationHandle};
use crate::events::{CacheStatus, ConversationEvent};
use crate::ports::llm::{ChatMessage, GenerationRequest, Role};
use crate::ports::store::{
    AssistantOutcome, AssistantProgress, Conversation, MessageStatus, NewUserMessage, StoreError,
    StoredError, StoredMessage, StreamChunk, StreamSwitch, SwitchKind,
};
use crate::registry::{ActorKind, ActorState, Registration};
use crate::tenant::gate::{TenantGate, TurnPermit};
use crate::turn::{CacheMode, TurnError, TurnEvent, TurnOrigin, TurnRequest, TurnSummary};

/// Tells the tenant that a conversation actor stopped, so it forgets that instance.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConversationStopped {
    pub conversation_id: String,
    pub instance: u64,
}

/// Subscribe to the conversation's events: `after_seq: None` for live events only,
/// `Some(n)` for every event with `seq > n`, then live.
#[derive(Message)]
#[rtype(result = "Result<Subscribed, ConversationError>")]
pub struct Subscribe {
    pub after_seq: Option<u64>,
}

/// Events a resume reads from the store at a time. A subscriber fed through pages holds at
/// most one page plus [`PAGED_CHANNEL`] events while it does not read (~0.1 MiB).
pub const REPLAY_PAGE: usize = 128;

/// The channel between a paged replay's task and its subscriber: the next store page is read
/// only once the subscriber took most of the last.
pub const PAGED_CHANNEL: usize = 32;

/// The answer to [`Subscribe`].
#[derive(Debug)]
pub enum Subscribed {
    /// Subscribed: the replay (if any) is queued in the channel, live events follow.
    Live(Subscription),
    /// Not subscribed yet: the stored events after `after_seq`, one page, in seq order and
    /// never empty. Subscribe again after the last one to go on.
    Page(Vec<Arc<ConversationEvent>>),
}

/// A subscriber's end. The channel closes when the subscriber fell `subscriber_buffer`
/// events behind or the actor stopped: resubscribe with the last seq received.
#[derive(Debug)]
pub struct Subscription {
    pub id: u64,
    pub receiver: mpsc::Receiver<Arc<ConversationEvent>>,
    /// The subscription delivers every event with a greater seq.
    pub last_seq: u64,
}

/// Stop delivering to a subscriber (dropping the receiver does the same, lazily).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub subscriber_id: u64,
}

/// A user message for the conversation.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Posted, ConversationError>")]
pub struct PostUserMessage {
    pub user_id: String,
    /// The client's own id for the message, echoed in the `ack`.
    pub client_id: Option<String>,
    pub content: String,
    /// The client's cache opt-out for this message's turn.
    pub cache: CacheMode,
}

/// A user message durably stored and acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub message_id: String,
    /// Seq of its `ack`.
    pub seq: u64,
}

/// Cancel the running turn; answers whether one was running.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Cancel;

/// A distinct id per actor instance, so a tenant ignores a stale instance's stop notice.
static INSTANCES: AtomicU64 = AtomicU64::new(1);

/// The state the tenant hands a new actor, loaded (and recovered) from the store.
pub(crate) struct Recovered {
    pub conversation: Conversation,
    pub messages: Vec<StoredMessage>,
    /// Acknowledged user messages whose turn never ran (queued when the actor died).
    pending: Vec<QueuedTurn>,
}

/// Loads a conversation for its actor. A reply left `streaming` (its actor died mid-turn) is
/// closed as interrupted with the next seq, so its `interrupted` event is in the store before
/// the actor starts. User messages acknowledged after the last reply started, with no reply
/// of their own, were queued when the actor died: their turns run again, in order, so every
/// acknowledged message still ends with exactly one `done` or `error`.
pub(crate) async fn recover(
    deps: &ConversationDeps,
    tenant_id: &str,
    conversation_id: &str,
) -> Result<Recovered, ConversationError> {
    let store = &deps.store;
    let loaded = store.load(tenant_id, conversation_id, deps.config.load_messages).await?;
    let mut conversation = loaded.conversation;
    let mut messages = loaded.messages;
    // A reply still `streaming` means the actor died mid-turn and may have emitted events up
    // to its reservation that never reached the store: continue after the reservation so
    // none of their seqs is reused. With no such reply every emitted event was persisted.
    if messages.iter().any(|m| m.status == MessageStatus::Streaming) {
        conversation.last_seq = conversation.last_seq.max(conversation.seq_reserved);
    }
    for message in messages.iter_mut().filter(|m| m.status == MessageStatus::Streaming) {
        let seq = conversation.last_seq + 1;
        store.mark_interrupted(tenant_id, conversation_id, &message.id, seq).await?;
        tracing::info!(conversation_id, message_id = %message.id, seq, "closed an interrupted reply");
        message.status = MessageStatus::Interrupted;
        message.last_seq = seq;
        conversation.last_seq = seq;
    }
    let replies: Vec<&StoredMessage> =
        messages.iter().filter(|m| m.role == Role::Assistant).collect();
    let last_reply_start = replies.iter().map(|m| m.first_seq).max().unwrap_or(0);
    let pending: Vec<QueuedTurn> = messages
        .iter()
        // `>=`: a reply's record takes the seq after the last one at its start, so a user
        // message acked before the reply's first event can share its `first_seq`.
        .filter(|m| m.role == Role::User && m.first_seq >= last_reply_start)
        .filter(|m| !replies.iter().any(|r| r.reply_to.as_deref() == Some(m.id.as_str())))
        .map(|m| QueuedTurn {
            message_id: m.id.clone(),
            user_id: None,
            content: m.text.clone(),
            cache: CacheMode::Use,
            span: tracing::Span::none(),
            opened_reply: None,
        })
        .collect();
    if !pending.is_empty() {
        tracing::info!(conversation_id, queued = pending.len(), "re-running unanswered messages");
        // They join the history when their turn starts.
        messages.retain(|m| !pending.iter().any(|p| p.message_id == m.id));
    }
    Ok(Recovered { conversation, messages, pending })
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<ConversationEvent>>,
}

/// An acknowledged user message waiting for its turn.
struct QueuedTurn {
    message_id: String,
    /// Who posted it (`None` for a message recovered after a restart).
    user_id: Option<String>,
    content: String,
    cache: CacheMode,
    /// The turn's trace, opened when the message was posted; `none` for recovered messages.
    span: tracing::Span,
    /// The id of the reply whose record was written with the message (posted to an idle
    /// conversation, so its turn starts at once): the turn does not write it again.
    opened_reply: Option<String>,
}

/// One item of the running turn's stream, tagged so a late item of an ended turn is ignored.
/// `None` marks the end of the stream.
struct TurnItem {
    turn: u64,
    item: Option<Result<TurnEvent, TurnError>>,
}

/// The turn being generated.
struct RunningTurn {
    turn: u64,
    stream: SpawnHandle,
    /// The deadline timer, cancelled when the turn ends so timers never pile up.
    backstop: SpawnHandle,
    message_id: String,
    reply_to: String,
    /// Seq of the reply's first event, once it has one.
    first_seq: Option<u64>,
    /// Seq of its latest event.
    last_seq: u64,
    /// Bytes streamed so far (retracted text included): the offset base of `delta_ends`.
    streamed: u32,
    deltas: u32,
    /// What the user currently sees of the reply (reset by a retraction), for the history.
    visible: String,
    /// Not yet handed to the writer; `unsaved_from` is the seq of its first event.
    unsaved: StreamChunk,
    unsaved_from: Option<u64>,
    last_checkpoint: Instant,
    /// The `turn` span: one trace per turn.
    span: tracing::Span,
}

/// How a turn ended.
enum Ending {
    Completed(TurnSummary),
    Failed { code: String, message: String },
    Cancelled,
}

/// A reply write, in order. `from_seq` is the seq of its first event not yet persisted.
struct PendingWrite {
    from_seq: u64,
    progress: AssistantProgress,
    outcome: Option<AssistantOutcome>,
}

/// Reply writes, one in flight at a time so they land in order.
#[derive(Default)]
struct WriteQueue {
    queue: VecDeque<PendingWrite>,
    in_flight: bool,
    failures: u32,
}

impl WriteQueue {
    /// Queues a write, merging it into a queued (not in-flight) write of the same message.
    fn push(&mut self, write: PendingWrite) {
        let mergeable = self.queue.len() > usize::from(self.in_flight);
        if let Some(back) = self.queue.back_mut().filter(|b| {
            mergeable && b.outcome.is_none() && b.progress.message_id == write.progress.message_id
        }) {
            back.progress.last_seq = write.progress.last_seq;
            back.progress.chunk.append(write.progress.chunk);
            back.outcome = write.outcome;
        } else {
            self.queue.push_back(write);
        }
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.in_flight
    }

    /// The lowest seq not yet persisted among queued writes.
    fn floor(&self) -> Option<u64> {
        self.queue.iter().map(|w| w.from_seq).min()
    }
}

pub struct ConversationActor {
    deps: Arc<ConversationDeps>,
    tenant_id: String,
    conversation: Conversation,
    instance: u64,
    gate: Arc<TenantGate>,
    tenant: Option<Recipient<ConversationStopped>>,
    registration: Option<Registration>,
    last_seq: u64,
    history: HistoryWindow,
    replay: ReplayBuffer,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
    /// Store-backed resumes in progress: (id, after_seq); the buffer keeps what they need.
    replay_pins: Vec<(u64, u64)>,
    pending: VecDeque<QueuedTurn>,
    current: Option<RunningTurn>,
    next_turn: u64,
    /// Held from the first queued message until the conversation is idle again.
    permit: Option<TurnPermit>,
    writes: WriteQueue,
    last_active: Instant,
    /// The durable seq reservation: reply events never take a seq above it.
    reserved: u64,
    /// A background extension of the reservation is in flight.
    reserving: bool,
    /// The ended turn's terminal event (`done` or `error`), held until its reply's final
    /// write is durable: a terminal event a client saw must survive a crash, or recovery
    /// would end the same reply again with `interrupted` (two terminals for one turn).
    held_terminal: Option<ConversationEvent>,
    /// Events with seqs after the held terminal (acks of messages posted meanwhile), kept
    /// back so subscribers still get every event in seq order.
    deferred: Vec<ConversationEvent>,
}

impl ConversationActor {
    /// Starts the actor for a recovered conversation and returns its handle. It registers
    /// as `conversation:<id>` (parent `tenant:<tenant_id>`) before starting, so the handle
    /// can do admission control on its registry entry from the first call.
    pub(crate) fn launch(
        deps: Arc<ConversationDeps>,
        tenant_id: &str,
        recovered: Recovered,
        gate: Arc<TenantGate>,
        tenant: Option<Recipient<ConversationStopped>>,
        home: Option<&ArbiterHandle>,
    ) -> (ConversationHandle, u64) {
        let Recovered { conversation, messages, pending } = recovered;
        let config = &deps.config;
        let registration = deps.registry.register(
            ActorKind::Conversation,
            format!("conversation:{}", conversation.id),
            Some(&format!("tenant:{tenant_id}")),
        );
        registration.set_state(ActorState::Idle);
        let entry = registration.entry().clone();
        let history = HistoryWindow::from_stored(
            &messages,
            config.history_max_messages,
            config.history_max_chars,
        );
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let mailbox_capacity = config.mailbox_capacity;
        let conversation_id = conversation.id.clone();
        let owner_id = conversation.owner_id.clone();
        let reserved = conversation.seq_reserved;
        let mut actor = ConversationActor {
            replay: ReplayBuffer::new(config.replay_buffer),
            last_seq: conversation.last_seq,
            deps: deps.clone(),
            tenant_id: tenant_id.to_owned(),
            conversation,
            instance,
            gate,
            tenant,
            registration: Some(registration),
            history,
            subscribers: Vec::new(),
            next_subscriber: 1,
            replay_pins: Vec::new(),
            pending: pending.into(),
            current: None,
            next_turn: 1,
            permit: None,
            writes: WriteQueue::default(),
            last_active: Instant::now(),
            reserved: 0,
            reserving: false,
            held_terminal: None,
            deferred: Vec::new(),
        };
        actor.reserved = reserved;
        let addr = match home {
            Some(arbiter) => Self::start_in_arbiter(arbiter, |_| actor),
            None => actor.start(),
        };
        let handle =
            ConversationHandle::new(addr, entry, mailbox_capacity, &conversation_id, &owner_id);
        (handle, instance)
    }

    /// A message sent through a [`ConversationHandle`] left the mailbox.
    fn dequeued(&mut self) {
        if let Some(r) = &self.registration {
            r.add_mailbox_depth(-1);
        }
        self.last_active = Instant::now();
    }

    /// Sends an event to every subscriber and keeps it for resumes — or, while a terminal
    /// event is held, queues it behind that one.
    fn broadcast(&mut self, event: ConversationEvent) {
        if self.held_terminal.is_some() {
            self.deferred.push(event);
            return;
        }
        let event = Arc::new(event);
        self.replay.push(event.clone());
        self.subscribers.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(subscriber = s.id, "dropping a subscriber that fell behind");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.evict();
    }

    /// The highest seq subscribers have been sent: everything before a held terminal.
    fn published_seq(&self) -> u64 {
        self.held_terminal
            .as_ref()
            .and_then(ConversationEvent::seq)
            .map_or(self.last_seq, |s| s - 1)
    }

    /// The ended reply's final write is durable (or was given up on): publishes its terminal
    /// event and what waited behind it, then starts the next turn.
    fn release_terminal(&mut self, ctx: &mut Context<Self>) {
        let Some(terminal) = self.held_terminal.take() else { return };
        self.broadcast(terminal);
        for event in std::mem::take(&mut self.deferred) {
            self.broadcast(event);
        }
        self.maybe_start_turn(ctx);
    }

    /// Trims the replay buffer, keeping unsaved events and those a pending resume needs.
    fn evict(&mut self) {
        let unsaved = self.current.as_ref().and_then(|t| t.unsaved_from);
        let pinned = self.replay_pins.iter().map(|(_, after)| after + 1).min();
        let floor =
            [unsaved, self.writes.floor(), pinned].into_iter().flatten().min().unwrap_or(u64::MAX);
        self.replay.evict(floor);
    }

    /// Registers a subscriber that first receives `replay`.
    fn attach(&mut self, replay: Vec<Arc<ConversationEvent>>, after_seq: u64) -> Subscription {
        let (tx, receiver) =
            mpsc::channel(self.deps.config.subscriber_buffer.max(1) + replay.len());
        for event in replay {
            // Cannot fail: the channel was sized for the replay.
            let _ = tx.try_send(event);
        }
        let id = self.next_subscriber;
        self.next_subscriber += 1;
        self.subscribers.push(Subscriber { id, tx });
        Subscription { id, receiver, last_seq: after_seq }
    }

    /// The seq of a reply's next event.
    fn turn_seq(&mut self) -> Option<u64> {
        let seq = self.last_seq + 1;
        let turn = self.current.as_mut()?;
        self.last_seq = seq;
        turn.first_seq.get_or_insert(seq);
        turn.unsaved_from.get_or_insert(seq);
        turn.last_seq = seq;
        Some(seq)
    }

    fn set_busy(&self, busy: bool) {
        if let Some(r) = &self.registration {
            r.set_state(if busy { ActorState::Running } else { ActorState::Idle });
            r.set_in_flight(u64::from(busy));
        }
    }

    /// Starts the next queued turn if none is running; releases the tenant slot when idle.
    fn maybe_start_turn(&mut self, ctx: &mut Context<Self>) {
        if !self.ready_for_a_turn() {
            return;
        }
        let Some(next) = self.pending.pop_front() else {
            self.permit = None;
            self.set_busy(false);
            return;
        };
        let span = if next.span.is_none() {
            turn_span(&self.tenant_id, &self.conversation.id, &next.message_id)
        } else {
            next.span.clone()
        };
        span.record("model", self.conversation.settings.model.as_str());
        let config = &self.deps.config;
        self.history.push(ChatMessage::user(next.content));
        let settings = &self.conversation.settings;
        let opened = next.opened_reply.is_some();
        let reply_id = next.opened_reply.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let request = TurnRequest {
            tenant_id: self.tenant_id.clone(),
            conversation_id: self.conversation.id.clone(),
            model: settings.model.clone(),
            request: GenerationRequest {
                system: settings.system_prompt.clone(),
                messages: self.history.to_vec(),
                temperature: settings.temperature,
                max_tokens: config.max_tokens,
                stop: Vec::new(),
            },
            deadline: tokio::time::Instant::now() + config.turn_timeout,
            continuation: config.continuation,
            cache: next.cache,
            origin: TurnOrigin {
                user_id: next.user_id,
                api_key_id: None,
                message_id: Some(reply_id.clone()),
            },
        };
        let turn = self.next_turn;
        self.next_turn += 1;
        // Inside the turn span, so the router's spans become its children.
        let items = span
            .in_scope(|| self.deps.runner.run_turn(request))
            .map(move |item| TurnItem { turn, item: Some(item) })
            .chain(stream::once(async move { TurnItem { turn, item: None } }));
        let stream = ctx.add_stream(items);
        // The runner owns the deadline; this is the backstop if it never ends the stream.
        let backstop =
            ctx.run_later(config.turn_timeout + config.turn_timeout / 10, move |act, ctx| {
                if act.current.as_ref().is_some_and(|t| t.turn == turn) {
                    let e = TurnError::DeadlineExceeded;
                    act.end_turn(
                        ctx,
                        Ending::Failed { code: e.code().into(), message: e.to_string() },
                    );
                }
            });
        self.current = Some(RunningTurn {
            turn,
            stream,
            backstop,
            message_id: reply_id,
            reply_to: next.message_id,
            // Provisional: the record is created before any event, and acks that come first
            // become foreign seqs inside the reply's range (replay skips them).
            first_seq: Some(self.last_seq + 1),
            last_seq: self.last_seq,
            streamed: 0,
            deltas: 0,
            visible: String::new(),
            unsaved: StreamChunk::default(),
            unsaved_from: None,
            last_checkpoint: Instant::now(),
            span,
        });
        self.set_busy(true);
        if !opened {
            self.begin_reply(ctx);
        }
    }

    /// Whether the next queued message may start its turn now: none is running, and the last
    /// one's held terminal (which the next reply's events may not overtake) has gone out.
    fn ready_for_a_turn(&self) -> bool {
        self.current.is_none() && self.held_terminal.is_none()
    }

    /// A reply's empty `streaming` record, its events to start after `last_seq`.
    fn empty_reply(
        &self,
        message_id: String,
        reply_to: String,
        last_seq: u64,
    ) -> AssistantProgress {
        AssistantProgress {
            message_id,
            reply_to,
            requested_model: self.conversation.settings.model.clone(),
            first_seq: last_seq + 1,
            last_seq,
            chunk: StreamChunk::default(),
        }
    }

    /// The reservation to request now, if the current one is half used (or less is left).
    fn reservation_target(&self) -> Option<u64> {
        self.reservation_target_after(self.last_seq)
    }

    /// [`Self::reservation_target`] once the seqs up to `last_seq` are taken.
    fn reservation_target_after(&self, last_seq: u64) -> Option<u64> {
        let block = self.deps.config.seq_reserve_block.max(2);
        (self.reserved <= last_seq + block / 2).then_some(last_seq + block)
    }

    /// Persists the reply's (empty, `streaming`) record and, if needed, a seq reservation
    /// before the turn's first event. The actor waits for it, so recovery always finds a
    /// reply cut by a crash — even one that had not checkpointed yet — and its reservation.
    fn begin_reply(&mut self, ctx: &mut Context<Self>) {
        let Some(turn) = self.current.as_ref() else { return };
        let progress =
            self.empty_reply(turn.message_id.clone(), turn.reply_to.clone(), self.last_seq);
        let reserve_to = self.reservation_target();
        let turn_id = turn.turn;
        let write = self.deps.store.open_reply(
            &self.tenant_id,
            &self.conversation.id,
            progress,
            reserve_to,
        );
        ctx.wait(write.into_actor(self).map(move |result, act, ctx| match result {
            Ok(reserved) => act.reserved = act.reserved.max(reserved.unwrap_or(0)),
            Err(error) => act.reservation_failed(ctx, turn_id, error),
        }));
    }

    /// Keeps the reservation ahead of the running reply: a background extension when half
    /// of the block is used; when it is used up, the actor waits for the extension before
    /// anything else can take a seq.
    fn reserve_ahead(&mut self, ctx: &mut Context<Self>) {
        let Some(up_to) = self.reservation_target() else { return };
        let Some(turn_id) = self.current.as_ref().map(|t| t.turn) else { return };
        let write = self.deps.store.reserve_seqs(&self.tenant_id, &self.conversation.id, up_to);
        if self.last_seq >= self.reserved {
            ctx.wait(write.into_actor(self).map(move |result, act, ctx| match result {
                Ok(reserved) => act.reserved = act.reserved.max(reserved),
                Err(error) => act.reservation_failed(ctx, turn_id, error),
            }));
        } else if !self.reserving {
            self.reserving = true;
            ctx.spawn(write.into_actor(self).map(|result, act, _ctx| {
                act.reserving = false;
                match result {
                    Ok(reserved) => act.reserved = act.reserved.max(reserved),
                    Err(error) => tracing::warn!(
                        conversation_id = %act.conversation.id, %error,
                        "could not extend the seq reservation yet"
                    ),
                }
            }));
        }
    }

    /// Without a durable record and reservation a reply may not stream: fail the turn
    /// (its terminal event is the one event that goes out unreserved; it is logged).
    fn reservation_failed(&mut self, ctx: &mut Context<Self>, turn_id: u64, error: StoreError) {
        metrics::counter!("switchyard_store_errors_total", "operation" => "reserve_reply")
            .increment(1);
        tracing::error!(
            conversation_id = %self.conversation.id, %error,
            "the store refused a reply's record or seq reservation; failing the turn"
        );
        if self.current.as_ref().is_some_and(|t| t.turn == turn_id) {
            let e = super::ConversationError::Unavailable;
            self.end_turn(ctx, Ending::Failed { code: e.code().into(), message: e.to_string() });
        }
    }

    /// A delta, failover or retraction of the running turn.
    fn on_stream_event(&mut self, ctx: &mut Context<Self>, event: TurnEvent) {
        // Checked before taking a seq: a seq taken and not broadcast would be a gap.
        match &event {
            TurnEvent::Finished(_) => return,
            TurnEvent::Delta(text) if text.is_empty() => return,
            _ => {}
        }
        let Some(seq) = self.turn_seq() else { return };
        let Some(turn) = self.current.as_mut() else { return };
        let event = match event {
            TurnEvent::Delta(text) => {
                turn.streamed = turn.streamed.saturating_add(text.len() as u32);
                turn.deltas += 1;
                turn.unsaved.text.push_str(&text);
                turn.unsaved.delta_ends.push(turn.streamed);
                turn.visible.push_str(&text);
                ConversationEvent::Delta { seq, text }
            }
            TurnEvent::Failover { from, to, reason } => {
                let kind = SwitchKind::Failover {
                    from: from.clone(),
                    to: to.clone(),
                    reason: reason.to_owned(),
                };
                turn.unsaved.switches.push(StreamSwitch { before_delta: turn.deltas, kind });
                ConversationEvent::Failover { seq, from, to, reason: reason.to_owned() }
            }
            TurnEvent::Retract { from } => {
                let kind = SwitchKind::Retract { from: from.clone() };
                turn.unsaved.switches.push(StreamSwitch { before_delta: turn.deltas, kind });
                turn.visible.clear();
                ConversationEvent::Retract { seq, from }
            }
            TurnEvent::Finished(_) => return,
        };
        let config = &self.deps.config;
        let due = turn.unsaved.text.len() >= config.checkpoint_bytes
            || turn.last_checkpoint.elapsed() >= config.checkpoint_interval;
        if due {
            self.checkpoint(ctx);
        }
        self.broadcast(event);
        self.reserve_ahead(ctx);
    }

    /// Hands the running reply's unsaved part to the writer.
    fn checkpoint(&mut self, ctx: &mut Context<Self>) {
        let Some(turn) = self.current.as_mut() else { return };
        let (Some(from_seq), Some(first_seq)) = (turn.unsaved_from.take(), turn.first_seq) else {
            return;
        };
        turn.last_checkpoint = Instant::now();
        let progress = AssistantProgress {
            message_id: turn.message_id.clone(),
            reply_to: turn.reply_to.clone(),
            requested_model: self.conversation.settings.model.clone(),
            first_seq,
            last_seq: turn.last_seq,
            chunk: std::mem::take(&mut turn.unsaved),
        };
        self.writes.push(PendingWrite { from_seq, progress, outcome: None });
        let span = self.current.as_ref().map_or_else(tracing::Span::none, |t| t.span.clone());
        let _in_turn = span.enter();
        self.pump_writes(ctx);
    }

    /// Ends the running turn with exactly one terminal event, then starts the next.
    fn end_turn(&mut self, ctx: &mut Context<Self>, ending: Ending) {
        let Some(seq) = self.turn_seq() else { return };
        let Some(mut turn) = self.current.take() else { return };
        // Dropping the stream is what cancels the upstream request.
        ctx.cancel_future(turn.stream);
        ctx.cancel_future(turn.backstop);
        let outcome = match &ending {
            Ending::Completed(summary) => {
                for leg in &summary.legs {
                    for (direction, tokens) in
                        [("input", leg.usage.input_tokens), ("output", leg.usage.output_tokens)]
                    {
                        metrics::counter!(
                            "switchyard_tokens_total",
                            "tenant" => self.tenant_id.clone(),
                            "model" => leg.model.clone(),
                            "direction" => direction,
                        )
                        .increment(tokens);
                    }
                }
                "completed"
            }
            Ending::Failed { code, .. } => {
                metrics::counter!("switchyard_turn_errors_total", "code" => code.clone())
                    .increment(1);
                crate::turn::slo_outcome(code)
            }
            Ending::Cancelled => "cancelled",
        };
        metrics::counter!("switchyard_turns_total", "outcome" => outcome).increment(1);
        turn.span.record("outcome", outcome);
        let message_id = turn.message_id.clone();
        let reply_to = turn.reply_to.clone();
        let (event, outcome) = match ending {
            Ending::Completed(summary) => {
                self.deps.policy.turn_finished(
                    &self.tenant_id,
                    &self.conversation.id,
                    &summary.usage,
                );
                let outcome = AssistantOutcome {
                    status: MessageStatus::Complete,
                    model: Some(summary.model.clone()),
                    usage: Some(summary.usage),
                    finish_reason: Some(summary.finish_reason),
                    error: None,
                    cost_micros: summary.cost_micros,
                    cache: summary.cache,
                };
                let event = ConversationEvent::Done {
                    seq,
                    message_id,
                    reply_to,
                    model: summary.model,
                    usage: summary.usage,
                    finish_reason: summary.finish_reason,
                    cost_micros: summary.cost_micros,
                    cache: summary.cache,
                    route: summary.route,
                };
                (event, outcome)
            }
            Ending::Failed { code, message } => failure(
                seq,
                message_id,
                reply_to,
                MessageStatus::Failed,
                StoredError { code, message },
            ),
            Ending::Cancelled => {
                let e = TurnError::Cancelled;
                let error = StoredError { code: e.code().into(), message: e.to_string() };
                failure(seq, message_id, reply_to, MessageStatus::Cancelled, error)
            }
        };
        let progress = AssistantProgress {
            message_id: turn.message_id,
            reply_to: turn.reply_to,
            requested_model: self.conversation.settings.model.clone(),
            first_seq: turn.first_seq.unwrap_or(seq),
            last_seq: seq,
            chunk: std::mem::take(&mut turn.unsaved),
        };
        let from_seq = turn.unsaved_from.unwrap_or(seq);
        if !turn.visible.is_empty() {
            self.history.push(ChatMessage::assistant(turn.visible));
        }
        self.last_active = Instant::now();
        // Published (and the next turn started) once the final write lands: `pump_writes`.
        self.held_terminal = Some(event);
        self.writes.push(PendingWrite { from_seq, progress, outcome: Some(outcome) });
        let _in_turn = turn.span.enter();
        self.pump_writes(ctx);
    }

    /// Sends the oldest queued reply write if none is in flight; retries with backoff.
    fn pump_writes(&mut self, ctx: &mut Context<Self>) {
        if self.writes.in_flight {
            return;
        }
        let Some(write) = self.writes.queue.front() else { return };
        self.writes.in_flight = true;
        let store = &self.deps.store;
        let (tenant, id) = (&self.tenant_id, &self.conversation.id);
        let future = match &write.outcome {
            None => store.checkpoint_assistant(tenant, id, write.progress.clone()),
            Some(outcome) => {
                store.finish_assistant(tenant, id, write.progress.clone(), outcome.clone())
            }
        };
        // A child of the turn when called inside its span (checkpoints, the final write).
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!("persist.reply", finished = write.outcome.is_some())
        };
        let future = tracing::Instrument::instrument(future, span);
        ctx.spawn(future.into_actor(self).map(|result, act, ctx| {
            act.writes.in_flight = false;
            match result {
                Ok(()) => {
                    act.writes.failures = 0;
                    act.write_done(ctx);
                }
                Err(e) => act.write_failed(ctx, e),
            }
        }));
    }

    /// The front write is settled: stored, or dropped after repeated failures. Live
    /// subscribers get the reply's end either way (a dropped write is logged loudly).
    fn write_done(&mut self, ctx: &mut Context<Self>) {
        let finished = self.writes.queue.pop_front().is_some_and(|w| w.outcome.is_some());
        self.evict();
        if finished {
            self.release_terminal(ctx);
        }
        self.pump_writes(ctx);
    }

    fn write_failed(&mut self, ctx: &mut Context<Self>, error: StoreError) {
        metrics::counter!("switchyard_store_errors_total", "operation" => "write_reply")
            .increment(1);
        self.writes.failures += 1;
        let config = &self.deps.config;
        if self.writes.failures >= config.write_attempts {
            // Giving up loses this part of the reply from the store (live subscribers had
            // it); keeping it forever would pin memory and the actor. Loudly logged.
            tracing::error!(
                conversation_id = %self.conversation.id, %error,
                "dropping a reply write after repeated store failures"
            );
            self.writes.failures = 0;
            self.write_done(ctx);
            return;
        }
        tracing::warn!(conversation_id = %self.conversation.id, %error, "reply write failed; retrying");
        let backoff = config.write_retry_backoff * 2u32.pow(self.writes.failures - 1);
        ctx.run_later(backoff, |act, ctx| act.pump_writes(ctx));
    }

    /// A running reply that has written nothing for `checkpoint_heartbeat` gets an empty
    /// checkpoint: it refreshes the record's write time, which the store's crash sweep uses
    /// to tell a slow live turn (waiting on a first token) from one whose node died.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let heartbeat = self.deps.config.checkpoint_heartbeat;
        let Some(turn) = self.current.as_mut() else { return };
        if turn.unsaved_from.is_some() || turn.last_checkpoint.elapsed() < heartbeat {
            return;
        }
        let Some(first_seq) = turn.first_seq else { return };
        turn.last_checkpoint = Instant::now();
        let progress = AssistantProgress {
            message_id: turn.message_id.clone(),
            reply_to: turn.reply_to.clone(),
            requested_model: self.conversation.settings.model.clone(),
            first_seq,
            last_seq: turn.last_seq,
            chunk: StreamChunk::default(),
        };
        self.writes.push(PendingWrite { from_seq: turn.last_seq + 1, progress, outcome: None });
        self.pump_writes(ctx);
    }

    fn check_idle(&mut self, ctx: &mut Context<Self>) {
        // A reply that stalled mid-stream still gets its unsaved text checkpointed.
        let stale = self.current.as_ref().is_some_and(|t| {
            t.unsaved_from.is_some()
                && t.last_checkpoint.elapsed() >= self.deps.config.checkpoint_interval
        });
        if stale {
            self.checkpoint(ctx);
        }
        self.heartbeat(ctx);
        self.subscribers.retain(|s| !s.tx.is_closed());
        if !self.subscribers.is_empty() {
            self.last_active = Instant::now();
            return;
        }
        let quiet = self.current.is_none()
            && self.pending.is_empty()
            && self.writes.is_idle()
            && self.replay_pins.is_empty();
        if quiet && self.last_active.elapsed() >= self.deps.config.idle_timeout {
            tracing::debug!(conversation_id = %self.conversation.id, "stopping idle conversation");
            ctx.stop();
        }
    }
}

/// Whether `events` are exactly the conversation's events after `after_seq` up to
/// `last_seq`: consecutive seqs, except where a crash lost events — their seqs (reserved,
/// never reused) are missing from inside the cut reply's range, which its `interrupted`
/// event closes. So a jump is accepted only when an `interrupted` event follows it.
/// The root span of a turn's trace. Ids here are span attributes, never metric labels.
fn turn_span(tenant_id: &str, conversation_id: &str, message_id: &str) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "turn",
        tenant = %tenant_id,
        conversation_id = %conversation_id,
        message_id = %message_id,
        model = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

fn is_gap_free(events: &[Arc<ConversationEvent>], after_seq: u64, last_seq: u64) -> bool {
    let last_interrupted = events
        .iter()
        .filter(|e| matches!(***e, ConversationEvent::Interrupted { .. }))
        .filter_map(|e| e.seq())
        .max();
    let mut want = after_seq + 1;
    for event in events {
        let Some(seq) = event.seq() else { return false };
        let jump_ok = last_interrupted.is_some_and(|i| seq <= i);
        if seq != want && !(seq > want && jump_ok) {
            return false;
        }
        want = seq + 1;
    }
    want == last_seq + 1
}

fn failure(
    seq: u64,
    message_id: String,
    reply_to: String,
    status: MessageStatus,
    error: StoredError,
) -> (ConversationEvent, AssistantOutcome) {
    let event = ConversationEvent::Error {
        seq: Some(seq),
        message_id: Some(message_id),
        reply_to: Some(reply_to),
        code: error.code.clone(),
        message: error.message.clone(),
    };
    let outcome = AssistantOutcome {
        status,
        model: None,
        usage: None,
        finish_reason: None,
        error: Some(error),
        cost_micros: None,
        cache: CacheStatus::Miss,
    };
    (event, outcome)
}

impl Actor for ConversationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.deps.config.mailbox_capacity);
        ctx.run_interval(self.deps.config.idle_check_interval, |act, ctx| act.check_idle(ctx));
        if !self.pending.is_empty() {
            // Recovered turns were accepted before the crash: run them even if the tenant is
            // at its limit right now (they take a slot when one is free).
            self.permit = self.gate.try_acquire().ok();
            self.maybe_start_turn(ctx);
        }
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        // Deregister now rather than when the actor is dropped.
        self.registration = None;
        if let Some(tenant) = &self.tenant {
            tenant.do_send(ConversationStopped {
                conversation_id: self.conversation.id.clone(),
                instance: self.instance,
            });
        }
        Running::Stop
    }
}

impl StreamHandler<TurnItem> for ConversationActor {
    fn handle(&mut self, item: TurnItem, ctx: &mut Self::Context) {
        if self.current.as_ref().is_none_or(|t| t.turn != item.turn) {
            return; // a late item of a turn that already ended
        }
        match item.item {
            Some(Ok(TurnEvent::Finished(summary))) => {
                self.end_turn(ctx, Ending::Completed(summary))
            }
            Some(Ok(event)) => self.on_stream_event(ctx, event),
            Some(Err(e)) => {
                self.end_turn(ctx, Ending::Failed { code: e.code().into(), message: e.to_string() })
            }
            None => self.end_turn(
                ctx,
                Ending::Failed {
                    code: "stream_broken".into(),
                    message: "the turn ended without a final record".into(),
                },
            ),
        }
    }

    /// The default would stop the actor; a turn's stream ending is not the actor's end.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<Subscribe> for ConversationActor {
    type Result = ResponseActFuture<Self, Result<Subscribed, ConversationError>>;

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) -> Self::Result {
        self.dequeued();
        let published = self.published_seq();
        let Some(after_seq) = msg.after_seq else {
            let live = self.attach(Vec::new(), published);
            return Box::pin(actix::fut::ready(Ok(Subscribed::Live(live))));
        };
        if after_seq > self.last_seq {
            let e = ConversationError::ResyncRequired { after_seq, last_seq: self.last_seq };
            return Box::pin(actix::fut::ready(Err(e)));
        }
        if self.replay.covers(after_seq, published) {
            let replay = self.replay.after(after_seq).cloned().collect();
            let live = self.attach(replay, after_seq);
            return Box::pin(actix::fut::ready(Ok(Subscribed::Live(live))));
        }
        // Older than the buffer: read the store, and pin the buffer meanwhile so that
        // whatever the store read cannot see (not yet persisted) is still here after it.
        let pin = self.next_subscriber;
        self.next_subscriber += 1;
        self.replay_pins.push((pin, after_seq));
        let read = self.deps.store.events_after(
            &self.tenant_id,
            &self.conversation.id,
            after_seq,
            REPLAY_PAGE,
        );
        Box::pin(read.into_actor(self).map(move |page, act, _ctx| {
            act.replay_pins.retain(|(id, _)| *id != pin);
            let page = page?;
            // Held events are not published yet: they come live, after the replay.
            let published = act.published_seq();
            let front = act.replay.front_seq(published);
            let page_end = page.events.last().and_then(ConversationEvent::seq);
            if !page.complete && page_end.is_some_and(|end| end + 1 < front) {
                // Everything below the buffer's front is persisted, so this page is whole
                // and the next one will be there: no gap to check until the last page.
                act.evict();
                return Ok(Subscribed::Page(page.events.into_iter().map(Arc::new).collect()));
            }
            let mut replay: Vec<Arc<ConversationEvent>> = page
                .events
                .into_iter()
                .filter(|e| e.seq().is_some_and(|s| s < front))
                .map(Arc::new)
                .collect();
            replay.extend(act.replay.after(after_seq).cloned());
            let gap_free = is_gap_free(&replay, after_seq, published);
            act.evict();
            if !gap_free {
                tracing::warn!(conversation_id = %act.conversation.id, after_seq, "resume would have a gap");
                return Err(ConversationError::ResyncRequired { after_seq, last_seq: act.last_seq });
            }
            Ok(Subscribed::Live(act.attach(replay, after_seq)))
        }))
    }
}

impl Handler<Unsubscribe> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        self.dequeued();
        self.subscribers.retain(|s| s.id != msg.subscriber_id);
    }
}

impl Handler<PostUserMessage> for ConversationActor {
    type Result = ResponseFuture<Result<Posted, ConversationError>>;

    fn handle(&mut self, msg: PostUserMessage, ctx: &mut Self::Context) -> Self::Result {
        self.dequeued();
        let admitted = self.admit();
        let new_permit = match admitted {
            Ok(permit) => permit,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let message_id = uuid::Uuid::now_v7().to_string();
        let seq = self.last_seq + 1;
        let message = NewUserMessage {
            id: message_id.clone(),
            client_id: msg.client_id.clone(),
            user_id: msg.user_id.clone(),
            content: msg.content.clone(),
            seq,
        };
        // A message to an idle conversation starts its turn as soon as it is stored, and the
        // turn's first event waits for the reply's record: one write for both, so that wait is
        // one commit, not two. (Nothing can start a turn meanwhile: the write runs under
        // `ctx.wait`.)
        let starts_at_once = self.ready_for_a_turn() && self.pending.is_empty();
        let opened_reply = starts_at_once.then(|| uuid::Uuid::now_v7().to_string());
        let write: crate::ports::store::StoreFuture<Option<u64>> = match &opened_reply {
            Some(reply_id) => self.deps.store.append_user_message_opening_reply(
                &self.tenant_id,
                &self.conversation.id,
                message,
                self.empty_reply(reply_id.clone(), message_id.clone(), seq),
                self.reservation_target_after(seq),
            ),
            None => {
                let append = self.deps.store.append_user_message(
                    &self.tenant_id,
                    &self.conversation.id,
                    message,
                );
                Box::pin(async move { append.await.map(|()| None) })
            }
        };
        // One trace per turn, opened here so the user message's write is part of it.
        let span = turn_span(&self.tenant_id, &self.conversation.id, &message_id);
        let write = tracing::Instrument::instrument(
            write,
            tracing::info_span!(parent: &span, "persist.user_message", seq),
        );
        let (tx, rx) = oneshot::channel();
        // `wait`, not `spawn`: until the write is durable nothing else may take a seq, so a
        // failed write leaves no gap and acks keep the order messages were posted in.
        ctx.wait(write.into_actor(self).map(move |written, act, ctx| {
            if written.is_err() {
                metrics::counter!("switchyard_store_errors_total", "operation" => "append_user_message")
                    .increment(1);
            }
            let result = written.map_err(ConversationError::from).map(|reserved| {
                act.last_seq = seq;
                act.reserved = act.reserved.max(reserved.unwrap_or(0));
                if let Some(permit) = new_permit {
                    act.permit = Some(permit);
                }
                // An ack inside a streaming reply's seq range: the reply's replay skips it.
                if let Some(turn) = act.current.as_mut().filter(|t| t.first_seq.is_some()) {
                    turn.unsaved.foreign_seqs.push(seq);
                }
                act.pending.push_back(QueuedTurn {
                    message_id: message_id.clone(),
                    user_id: Some(msg.user_id),
                    content: msg.content,
                    cache: msg.cache,
                    span,
                    opened_reply,
                });
                act.broadcast(ConversationEvent::Ack {
                    client_id: msg.client_id,
                    message_id: message_id.clone(),
                    seq,
                });
                act.maybe_start_turn(ctx);
                Posted { message_id, seq }
            });
            let _ = tx.send(result);
        }));
        Box::pin(async move { rx.await.unwrap_or(Err(ConversationError::Stopped)) })
    }
}

impl ConversationActor {
    /// Whether another user message may be accepted; takes a tenant slot if the
    /// conversation is idle (a busy one already holds one for its whole queue).
    fn admit(&mut self) -> Result<Option<TurnPermit>, ConversationError> {
        if self.pending.len() >= self.deps.config.max_pending_messages {
            return Err(ConversationError::Overloaded);
        }
        let policy = &self.deps.policy;
        policy
            .admit(&self.tenant_id, &self.conversation.id)
            .map_err(|r| ConversationError::Refused { code: r.code, message: r.message })?;
        if self.permit.is_some() {
            return Ok(None);
        }
        self.gate.try_acquire().map(Some)
    }
}

impl Handler<Cancel> for ConversationActor {
    type Result = bool;

    fn handle(&mut self, _msg: Cancel, ctx: &mut Self::Context) -> bool {
        self.dequeued();
        if self.current.is_none() {
            return false;
        }
        self.end_turn(ctx, Ending::Cancelled);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(message_id: &str, from_seq: u64, text: &str, finish: bool) -> PendingWrite {
        let outcome = finish.then_some(AssistantOutcome {
            status: MessageStatus::Complete,
            model: None,
            usage: None,
            finish_reason: None,
            error: None,
            cost_micros: None,
            cache: CacheStatus::Miss,
        });
        PendingWrite {
            from_seq,
            progress: AssistantProgress {
                message_id: message_id.into(),
                reply_to: "u".into(),
                requested_model: "m".into(),
                first_seq: 1,
                last_seq: from_seq,
                chunk: StreamChunk { text: text.into(), ..Default::default() },
            },
            outcome,
        }
    }

    #[test]
    fn queued_writes_merge_but_never_into_the_one_in_flight() {
        let mut q = WriteQueue::default();
        q.push(write("a", 1, "x", false));
        q.in_flight = true;
        q.push(write("a", 2, "y", false));
        q.push(write("a", 3, "z", true));
        assert_eq!(q.queue.len(), 2, "the in-flight write is left alone");
        let merged = &q.queue[1];
        assert_eq!(merged.progress.chunk.text, "yz");
        assert_eq!(merged.progress.last_seq, 3);
        assert_eq!(merged.from_seq, 2);
        assert!(merged.outcome.is_some());
        // Nothing merges into a finished write, nor across messages.
        q.push(write("a", 4, "late", false));
        q.push(write("b", 5, "other", false));
        assert_eq!(q.queue.len(), 4);
        assert_eq!(q.floor(), Some(1));
        assert!(!q.is_idle());
    }
}
