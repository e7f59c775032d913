//! The conversation side of the tree, end to end: `Conversations` → `TenantActor` →
//! `ConversationActor`, with the `InMemoryConversationStore` and a scripted fake
//! `TurnRunner` standing in for the router.

// Helpers outside `#[test]` functions fail loudly too; clippy.toml only exempts test bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::conversation::{
    ConversationConfig, ConversationDeps, ConversationError, ConversationHandle, PAGED_CHANNEL,
    PAGED_SUBSCRIPTION, PostUserMessage, REPLAY_PAGE, Subscription,
};
use actors::events::ConversationEvent;
use actors::ports::llm::{ChatMessage, FinishReason, ProviderError, Role, Usage};
use actors::ports::store::{
    AssistantProgress, ConversationSettings, ConversationStore, MessageStatus, NewUserMessage,
    StreamChunk,
};
use actors::registry::Registry;
use actors::store_memory::InMemoryConversationStore;
use actors::tenant::{Conversations, TenantConfig};
use actors::turn::{TurnError, TurnEvent, TurnRequest, TurnRunner, TurnStream, TurnSummary};
use futures_util::stream;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------
// A scripted fake runner
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Delta(String),
    Failover,
    Retract,
    Fail(TurnError),
    Finish,
    /// Never yields again (until dropped).
    Hang,
}

/// How a turn plays out, chosen from the last user message.
type Plan = Arc<dyn Fn(&str) -> (Vec<Step>, Duration) + Send + Sync>;

struct FakeRunner {
    plan: Plan,
    requests: Mutex<Vec<TurnRequest>>,
    /// The thread each turn was started on (its conversation actor's).
    threads: Mutex<Vec<std::thread::ThreadId>>,
    /// Streams dropped before they reached their end (cancelled upstream).
    dropped_early: Arc<AtomicUsize>,
}

/// Counts a stream dropped before its last step.
struct DropProbe {
    finished: bool,
    dropped_early: Arc<AtomicUsize>,
}

impl DropProbe {
    fn mark_finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        if !self.finished {
            self.dropped_early.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl FakeRunner {
    fn new(plan: Plan) -> Arc<Self> {
        Arc::new(Self {
            plan,
            requests: Mutex::default(),
            threads: Mutex::default(),
            dropped_early: Arc::default(),
        })
    }

    fn requests(&self) -> Vec<TurnRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn summary() -> TurnSummary {
    TurnSummary {
        model: "fake-1".into(),
        provider: "mock".into(),
        finish_reason: FinishReason::Stop,
        usage: Usage { input_tokens: 7, output_tokens: 3 },
        legs: Vec::new(),
        cache: actors::events::CacheStatus::Miss,
        saved_usage: Usage::default(),
        cost_micros: None,
        route: None,
    }
}

impl TurnRunner for FakeRunner {
    fn run_turn(&self, request: TurnRequest) -> TurnStream {
        let last = request.request.messages.last().map(|m| m.content.clone()).unwrap_or_default();
        self.requests.lock().unwrap().push(request);
        self.threads.lock().unwrap().push(std::thread::current().id());
        let (steps, gap) = (self.plan)(&last);
        let probe = DropProbe { finished: false, dropped_early: self.dropped_early.clone() };
        let state = (VecDeque::from(steps), probe, true);
        Box::pin(stream::unfold(state, move |(mut steps, mut probe, first)| async move {
            if !first && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            let item = match steps.pop_front() {
                None => {
                    probe.mark_finished();
                    return None;
                }
                Some(Step::Delta(text)) => Ok(TurnEvent::Delta(text)),
                Some(Step::Failover) => Ok(TurnEvent::Failover {
                    from: "fake-1".into(),
                    to: "fake-2".into(),
                    reason: "stream_broken",
                }),
                Some(Step::Retract) => Ok(TurnEvent::Retract { from: "fake-1".into() }),
                Some(Step::Finish) => Ok(TurnEvent::Finished(summary())),
                Some(Step::Fail(e)) => Err(e),
                Some(Step::Hang) => {
                    futures_util::future::pending::<()>().await;
                    return None;
                }
            };
            if steps.is_empty() {
                probe.mark_finished();
            }
            Some((item, (steps, probe, false)))
        }))
    }
}

/// Replies "re: <words of the message>" one word per delta.
fn echo_plan(gap: Duration) -> Plan {
    Arc::new(move |content: &str| {
        let mut steps = vec![Step::Delta("re:".into())];
        if content == "hang" {
            steps.push(Step::Hang);
            return (steps, gap);
        }
        if let Some(n) = content.strip_prefix("long ") {
            let n: usize = n.parse().unwrap();
            steps.extend((0..n).map(|i| Step::Delta(format!(" w{i}"))));
        } else {
            steps.extend(content.split(' ').map(|w| Step::Delta(format!(" {w}"))));
        }
        if content.contains("failover") {
            steps.insert(1, Step::Failover);
        }
        steps.push(Step::Finish);
        (steps, gap)
    })
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

struct Harness {
    conversations: Conversations,
    store: InMemoryConversationStore,
    runner: Arc<FakeRunner>,
    registry: Registry,
}

fn fast_config() -> ConversationConfig {
    ConversationConfig {
        idle_timeout: Duration::from_secs(3600),
        idle_check_interval: Duration::from_millis(20),
        turn_timeout: Duration::from_secs(20),
        ..ConversationConfig::default()
    }
}

fn harness(plan: Plan, config: ConversationConfig, tenant: TenantConfig) -> Harness {
    let store = InMemoryConversationStore::new();
    let runner = FakeRunner::new(plan);
    let registry = Registry::new();
    let deps =
        ConversationDeps::new(Arc::new(store.clone()), runner.clone(), registry.clone(), config);
    Harness { conversations: Conversations::new(deps, tenant), store, runner, registry }
}

fn settings() -> ConversationSettings {
    ConversationSettings {
        model: "auto".into(),
        temperature: Some(0.2),
        system_prompt: Some("be brief".into()),
        title: None,
    }
}

impl Harness {
    async fn new_conversation(&self, tenant: &str) -> (String, ConversationHandle) {
        let c = self.conversations.create(tenant, "alice", settings()).await.unwrap();
        let handle = self.conversations.open(tenant, &c.id).await.unwrap();
        (c.id, handle)
    }
}

fn post(content: &str) -> PostUserMessage {
    PostUserMessage {
        user_id: "alice".into(),
        client_id: Some(format!("c-{content}")),
        content: content.into(),
        cache: actors::turn::CacheMode::Use,
    }
}

/// Reads until `n` terminal events arrived (or fails after 10 s).
async fn read_turns(sub: &mut Subscription, n: usize) -> Vec<Arc<ConversationEvent>> {
    let mut out = Vec::new();
    let mut terminals = 0;
    while terminals < n {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.receiver.recv())
            .await
            .expect("timed out waiting for events")
            .expect("subscription closed");
        terminals += usize::from(event.is_terminal());
        out.push(event);
    }
    out
}

async fn read_n(sub: &mut Subscription, n: usize) -> Vec<Arc<ConversationEvent>> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.receiver.recv())
            .await
            .expect("timed out waiting for events")
            .expect("subscription closed");
        out.push(event);
    }
    out
}

fn seqs(events: &[Arc<ConversationEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.seq().expect("every broadcast event has a seq")).collect()
}

fn assert_contiguous(events: &[Arc<ConversationEvent>], from: u64) {
    let got = seqs(events);
    let want: Vec<u64> = (from..from + got.len() as u64).collect();
    assert_eq!(got, want, "seqs must be gap-free and in order");
}

fn text_of(events: &[Arc<ConversationEvent>]) -> String {
    events
        .iter()
        .filter_map(|e| match &**e {
            ConversationEvent::Delta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[actix_rt::test]
async fn a_streamed_turn_reaches_two_subscribers_and_later_messages_queue_in_order() {
    let h = harness(echo_plan(Duration::from_millis(3)), fast_config(), TenantConfig::default());
    let (_, conv) = h.new_conversation("t1").await;
    let mut a = conv.subscribe(None).await.unwrap();
    let mut b = conv.subscribe(None).await.unwrap();

    let first = conv.post(post("hello there")).await.unwrap();
    assert_eq!(first.seq, 1);
    // Posted while the first turn streams: acked at once, answered in order.
    let second = conv.post(post("second question")).await.unwrap();
    let third = conv.post(post("third")).await.unwrap();

    let events_a = read_turns(&mut a, 3).await;
    let events_b = read_turns(&mut b, 3).await;
    assert_eq!(events_a, events_b, "every subscriber sees the same events");
    assert_contiguous(&events_a, 1);

    let acks: Vec<&str> = events_a
        .iter()
        .filter_map(|e| match &**e {
            ConversationEvent::Ack { message_id, client_id, .. } => {
                assert!(client_id.is_some());
                Some(message_id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![&first.message_id, &second.message_id, &third.message_id]);
    let answered: Vec<&str> = events_a.iter().filter_map(|e| e.reply_to()).collect();
    assert_eq!(answered, vec![&first.message_id, &second.message_id, &third.message_id]);

    // The first reply is exactly its deltas, and done carries model and usage.
    let first_done =
        events_a.iter().position(|e| matches!(**e, ConversationEvent::Done { .. })).unwrap();
    let first_text: String = events_a[..first_done]
        .iter()
        .filter_map(|e| match &**e {
            ConversationEvent::Delta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(first_text, "re: hello there");
    match &*events_a[first_done] {
        ConversationEvent::Done { model, usage, finish_reason, cost_micros, .. } => {
            assert_eq!(model, "fake-1");
            assert_eq!(usage.output_tokens, 3);
            assert_eq!(*finish_reason, FinishReason::Stop);
            assert_eq!(*cost_micros, None);
        }
        other => panic!("expected done, got {other:?}"),
    }

    // The model saw settings and an ordered history: each question followed by its answer,
    // even though the third question was acknowledged before the second was answered.
    let requests = h.runner.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].request.system.as_deref(), Some("be brief"));
    assert_eq!(requests[0].model, "auto");
    assert_eq!(requests[0].request.temperature, Some(0.2));
    assert_eq!(
        requests[1].request.messages,
        vec![
            ChatMessage::user("hello there"),
            ChatMessage::assistant("re: hello there"),
            ChatMessage::user("second question"),
        ]
    );
    assert_eq!(requests[2].request.messages.len(), 5);
}

#[actix_rt::test]
async fn a_conversation_runs_on_the_thread_of_the_caller_that_opened_it() {
    let h = Arc::new(harness(echo_plan(Duration::ZERO), fast_config(), TenantConfig::default()));
    // The tenant actor starts here; the second conversation is opened from another arbiter,
    // as an HTTP worker thread holding a socket would.
    let (_, here) = h.new_conversation("t1").await;
    let worker = actix_rt::Arbiter::new();
    let (opened, answer) = tokio::sync::oneshot::channel();
    let remote = h.clone();
    worker.spawn(async move {
        let (_, there) = remote.new_conversation("t1").await;
        let _ = opened.send((there, std::thread::current().id()));
    });
    let (there, worker_thread) = answer.await.unwrap();
    assert_ne!(worker_thread, std::thread::current().id());

    for conversation in [&here, &there] {
        let mut events = conversation.subscribe(None).await.unwrap();
        conversation.post(post("which thread")).await.unwrap();
        read_turns(&mut events, 1).await;
    }
    let threads = h.runner.threads.lock().unwrap().clone();
    assert_eq!(threads, [std::thread::current().id(), worker_thread]);
    worker.stop();
}

#[actix_rt::test]
async fn resume_mid_stream_replays_exactly_the_missing_events_from_the_live_buffer() {
    let h = harness(echo_plan(Duration::from_millis(5)), fast_config(), TenantConfig::default());
    let (_, conv) = h.new_conversation("t1").await;
    let mut full = conv.subscribe(None).await.unwrap();
    conv.post(post("long 20")).await.unwrap();

    // A client saw up to seq 4 and reconnects while the reply is still streaming.
    let seen = read_n(&mut full, 4).await;
    let mut resumed = conv.subscribe(Some(4)).await.unwrap();
    assert_eq!(resumed.last_seq, 4);
    let rest = read_turns(&mut full, 1).await;
    let replayed = read_turns(&mut resumed, 1).await;
    assert_eq!(replayed, rest, "no gap, no duplicate, then live");
    assert_contiguous(&[seen, rest].concat(), 1);

    // Resuming at the very end gets nothing old and then live events.
    let mut at_end = conv.subscribe(Some(replayed.last().unwrap().seq().unwrap())).await.unwrap();
    conv.post(post("again")).await.unwrap();
    let live = read_turns(&mut at_end, 1).await;
    assert_eq!(seqs(&live)[0], replayed.last().unwrap().seq().unwrap() + 1);

    // A client ahead of the conversation must resync.
    let err = conv.subscribe(Some(10_000)).await.unwrap_err();
    assert_eq!(err.code(), "resync_required");
}

#[actix_rt::test]
async fn resume_older_than_the_buffer_mixes_store_and_buffer_while_streaming() {
    let config = ConversationConfig {
        replay_buffer: 4,
        checkpoint_bytes: 12,
        checkpoint_interval: Duration::from_millis(15),
        ..fast_config()
    };
    let h = harness(echo_plan(Duration::from_millis(2)), config, TenantConfig::default());
    let (_, conv) = h.new_conversation("t1").await;
    let mut full = conv.subscribe(None).await.unwrap();
    conv.post(post("long 60")).await.unwrap();
    let seen = read_n(&mut full, 30).await;
    // seq 2 left the 4-event buffer long ago: this resume needs the store (proof: it fails
    // while the store is down).
    h.store.set_available(false);
    assert_eq!(conv.subscribe(Some(1)).await.unwrap_err(), ConversationError::Unavailable);
    h.store.set_available(true);
    let mut resumed = conv.subscribe(Some(1)).await.unwrap();
    let rest = read_turns(&mut full, 1).await;
    let replayed = read_turns(&mut resumed, 1).await;
    let expected: Vec<_> = seen[1..].iter().chain(rest.iter()).cloned().collect();
    assert_eq!(replayed, expected);
}

#[actix_rt::test]
async fn a_resume_from_far_back_is_fed_a_page_at_a_time_then_goes_live() {
    // The live watcher may lag the whole history; the resume below may not.
    let config = ConversationConfig { replay_buffer: 8, subscriber_buffer: 4096, ..fast_config() };
    let h = harness(echo_plan(Duration::ZERO), config, TenantConfig::default());
    let (_, conv) = h.new_conversation("t1").await;
    let mut live = conv.subscribe(None).await.unwrap();
    for _ in 0..3 {
        conv.post(post("long 1000")).await.unwrap();
    }
    let history = read_turns(&mut live, 3).await;
    assert!(history.len() > 5 * REPLAY_PAGE, "several pages: {} events", history.len());

    let mut resumed = conv.subscribe(Some(0)).await.unwrap();
    assert_eq!(resumed.id, PAGED_SUBSCRIPTION, "more than a page behind: fed through pages");
    // Until it reads, the subscriber holds a page, not the history.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(resumed.receiver.len() <= PAGED_CHANNEL, "{} events queued", resumed.receiver.len());
    let replayed = read_n(&mut resumed, history.len()).await;
    assert_eq!(replayed, history, "every event once, in order");

    // Caught up, it goes live like any subscriber.
    conv.post(post("after")).await.unwrap();
    let next = read_turns(&mut live, 1).await;
    assert_eq!(read_turns(&mut resumed, 1).await, next);
}

#[actix_rt::test]
async fn after_idle_shutdown_the_rebuilt_actor_replays_from_the_store_and_continues_seq() {
    let config = ConversationConfig { idle_timeout: Duration::from_millis(100), ..fast_config() };
    let h = harness(echo_plan(Duration::from_millis(1)), config, TenantConfig::default());
    let (id, conv) = h.new_conversation("t1").await;
    let key = format!("conversation:{id}");
    let mut full = conv.subscribe(None).await.unwrap();
    conv.post(post("one two three failover")).await.unwrap();
    let events = read_turns(&mut full, 1).await;
    assert!(events.iter().any(|e| matches!(**e, ConversationEvent::Failover { .. })));
    assert_eq!(h.registry.get(&key).unwrap().snapshot().parent.as_deref(), Some("tenant:t1"));
    drop(full);

    // No subscriber, no turn: the actor stops and deregisters.
    wait_until(|| h.registry.get(&key).is_none()).await;
    assert!(!conv.is_live());
    assert_eq!(conv.post(post("late")).await.unwrap_err(), ConversationError::Stopped);

    // Rebuilt on demand; a client that saw only the ack resumes from the store.
    let conv = h.conversations.open("t1", &id).await.unwrap();
    let mut resumed = conv.subscribe(Some(1)).await.unwrap();
    let replayed = read_turns(&mut resumed, 1).await;
    assert_eq!(replayed, events[1..].to_vec());
    assert_eq!(text_of(&replayed), "re: one two three failover");

    // Seq continues from the stored last seq.
    let posted = conv.post(post("four")).await.unwrap();
    assert_eq!(posted.seq, events.last().unwrap().seq().unwrap() + 1);
    let next = read_turns(&mut resumed, 1).await;
    assert_contiguous(&[replayed, next].concat(), 2);
    // The rebuilt history carries the earlier exchange to the model.
    let last = h.runner.requests().pop().unwrap();
    assert_eq!(last.request.messages[1], ChatMessage::assistant("re: one two three failover"));
}

#[actix_rt::test]
async fn a_reply_left_streaming_by_a_crash_is_marked_interrupted_on_rebuild() {
    let h = harness(echo_plan(Duration::ZERO), fast_config(), TenantConfig::default());
    let store = &h.store;
    let c = store.create_conversation("t1", "alice", settings()).await.unwrap();
    let user = NewUserMessage {
        id: "u1".into(),
        client_id: Some("c1".into()),
        user_id: "alice".into(),
        content: "hi".into(),
        seq: 1,
    };
    store.append_user_message("t1", &c.id, user).await.unwrap();
    let chunk = StreamChunk { text: "Hello".into(), delta_ends: vec![3, 5], ..Default::default() };
    let progress = AssistantProgress {
        message_id: "a1".into(),
        reply_to: "u1".into(),
        requested_model: "auto".into(),
        first_seq: 2,
        last_seq: 3,
        chunk,
    };
    store.checkpoint_assistant("t1", &c.id, progress).await.unwrap();

    let conv = h.conversations.open("t1", &c.id).await.unwrap();
    let mut sub = conv.subscribe(Some(0)).await.unwrap();
    let events = read_turns(&mut sub, 1).await;
    assert_contiguous(&events, 1);
    assert_eq!(
        *events[3],
        ConversationEvent::Interrupted {
            seq: 4,
            message_id: "a1".into(),
            reply_to: "u1".into(),
            lost_after: 3,
        }
    );
    assert_eq!(text_of(&events), "Hello");
    let loaded = store.load("t1", &c.id, 10).await.unwrap();
    assert_eq!(loaded.messages[1].status, MessageStatus::Interrupted);
    assert_eq!(loaded.conversation.last_seq, 4);

    // The conversation goes on after it.
    assert_eq!(conv.post(post("still there?")).await.unwrap().seq, 5);
    let next = read_turns(&mut sub, 1).await;
    assert!(matches!(*next[next.len() - 1], ConversationEvent::Done { .. }));
}

#[actix_rt::test]
async fn messages_queued_behind_a_crashed_turn_are_answered_after_rebuild() {
    let h = harness(echo_plan(Duration::ZERO), fast_config(), TenantConfig::default());
    let store = &h.store;
    let c = store.create_conversation("t1", "alice", settings()).await.unwrap();
    let user = |id: &str, content: &str, seq| NewUserMessage {
        id: id.into(),
        client_id: None,
        user_id: "alice".into(),
        content: content.into(),
        seq,
    };
    store.append_user_message("t1", &c.id, user("u1", "hi", 1)).await.unwrap();
    let chunk = StreamChunk { text: "Hel".into(), delta_ends: vec![3], ..Default::default() };
    let progress = AssistantProgress {
        message_id: "a1".into(),
        reply_to: "u1".into(),
        requested_model: "auto".into(),
        first_seq: 2,
        last_seq: 2,
        chunk,
    };
    store.checkpoint_assistant("t1", &c.id, progress).await.unwrap();
    // Acknowledged while a1 streamed; its turn never ran.
    store.append_user_message("t1", &c.id, user("u2", "and then", 3)).await.unwrap();

    let conv = h.conversations.open("t1", &c.id).await.unwrap();
    let mut sub = conv.subscribe(Some(0)).await.unwrap();
    let events = read_turns(&mut sub, 2).await;
    assert_contiguous(&events, 1);
    assert!(matches!(*events[3], ConversationEvent::Interrupted { seq: 4, .. }));
    let last = events.last().unwrap();
    assert!(matches!(**last, ConversationEvent::Done { .. }));
    assert_eq!(last.reply_to(), Some("u2"));
    let request = h.runner.requests().pop().unwrap();
    assert_eq!(
        request.request.messages,
        vec![ChatMessage::user("hi"), ChatMessage::assistant("Hel"), ChatMessage::user("and then")]
    );
}

#[actix_rt::test]
async fn a_subscriber_that_never_reads_is_dropped_without_slowing_the_other() {
    let config = ConversationConfig { subscriber_buffer: 8, ..fast_config() };
    let h = harness(echo_plan(Duration::from_millis(1)), config, TenantConfig::default());
    let (_, conv) = h.new_conversation("t1").await;
    let mut stalled = conv.subscribe(None).await.unwrap();
    let mut reader = conv.subscribe(None).await.unwrap();
    conv.post(post("long 100")).await.unwrap();
    let started = std::time::Instant::now();
    let events = read_turns(&mut reader, 1).await;
    assert_eq!(events.len(), 1 + 101 + 1, "ack, every delta, done");
    assert_contiguous(&events, 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The stalled one got what fit in its buffer, then a closed channel.
    let mut got = 0;
    while stalled.receiver.recv().await.is_some() {
        got += 1;
    }
    assert_eq!(got, 8);
}

#[actix_rt::test]
async fn cancel_drops_the_turn_stream_and_the_next_message_is_answered() {
    let h = harness(echo_plan(Duration::from_millis(1)), fast_config(), TenantConfig::default());
    let (id, conv) = h.new_conversation("t1").await;
    let mut sub = conv.subscribe(None).await.unwrap();
    let hung = conv.post(post("hang")).await.unwrap();
    let queued = conv.post(post("next one")).await.unwrap();
    let _ = read_n(&mut sub, 3).await; // two acks and the first delta
    assert_eq!(h.runner.dropped_early.load(Ordering::SeqCst), 0);

    assert!(conv.cancel().await.unwrap());
    let cancelled = read_turns(&mut sub, 1).await;
    match &**cancelled.last().unwrap() {
        ConversationEvent::Error { code, reply_to, seq, .. } => {
            assert_eq!(code, "cancelled");
            assert_eq!(reply_to.as_deref(), Some(hung.message_id.as_str()));
            assert!(seq.is_some());
        }
        other => panic!("expected a cancelled error, got {other:?}"),
    }
    wait_until(|| h.runner.dropped_early.load(Ordering::SeqCst) == 1).await;

    let answered = read_turns(&mut sub, 1).await;
    assert_eq!(answered.last().unwrap().reply_to(), Some(queued.message_id.as_str()));
    assert!(matches!(**answered.last().unwrap(), ConversationEvent::Done { .. }));
    assert!(!conv.cancel().await.unwrap(), "nothing left to cancel");

    let loaded = h.store.load("t1", &id, 10).await.unwrap();
    let reply = loaded.messages.iter().find(|m| m.reply_to.as_deref() == Some(&hung.message_id));
    let reply = reply.unwrap();
    assert_eq!(reply.status, MessageStatus::Cancelled);
    assert_eq!(reply.content(), "re:");
}

#[actix_rt::test]
async fn a_store_failure_on_append_refuses_the_message_without_an_ack() {
    let h = harness(echo_plan(Duration::ZERO), fast_config(), TenantConfig::default());
    let (_, conv) = h.new_conversation("t1").await;
    let mut sub = conv.subscribe(None).await.unwrap();
    h.store.set_available(false);
    let err = conv.post(post("lost?")).await.unwrap_err();
    assert_eq!(err, ConversationError::Unavailable);
    assert_eq!(err.code(), "unavailable");
    assert_eq!(
        serde_json::to_value(err.to_event()).unwrap()["code"],
        serde_json::json!("unavailable")
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(sub.receiver.try_recv().is_err(), "nothing acknowledged");
    assert!(h.runner.requests().is_empty(), "no turn ran");

    h.store.set_available(true);
    let posted = conv.post(post("now")).await.unwrap();
    assert_eq!(posted.seq, 1, "the refused message took no seq");
    let events = read_turns(&mut sub, 1).await;
    assert_contiguous(&events, 1);
}

#[actix_rt::test]
async fn the_tenant_limit_refuses_new_turns_beyond_it() {
    let tenant = TenantConfig { max_in_flight_turns: 2, ..TenantConfig::default() };
    let h = harness(echo_plan(Duration::from_millis(1)), fast_config(), tenant);
    let (_, c1) = h.new_conversation("t1").await;
    let (_, c2) = h.new_conversation("t1").await;
    let (_, c3) = h.new_conversation("t1").await;
    let (_, other_tenant) = h.new_conversation("t2").await;
    c1.post(post("hang")).await.unwrap();
    c2.post(post("hang")).await.unwrap();

    let err = c3.post(post("hello")).await.unwrap_err();
    assert_eq!(err, ConversationError::TenantConcurrency { limit: 2 });
    assert_eq!(err.code(), "tenant_concurrency");
    // A busy conversation already holds its slot: its next message queues.
    c1.post(post("queued behind the hang")).await.unwrap();
    // Other tenants are not affected.
    other_tenant.post(post("hello")).await.unwrap();
    assert_eq!(h.registry.get("tenant:t1").unwrap().in_flight(), 2);

    // c2 goes idle once its turn is cancelled, which frees a slot.
    assert!(c2.cancel().await.unwrap());
    let mut sub = c3.subscribe(None).await.unwrap();
    c3.post(post("hello")).await.unwrap();
    read_turns(&mut sub, 1).await;
}

#[actix_rt::test]
async fn a_full_conversation_queue_refuses_at_once_with_overloaded() {
    let config = ConversationConfig { max_pending_messages: 2, ..fast_config() };
    let h = harness(echo_plan(Duration::ZERO), config, TenantConfig::default());
    let (_, conv) = h.new_conversation("t1").await;
    conv.post(post("hang")).await.unwrap();
    conv.post(post("q1")).await.unwrap();
    conv.post(post("q2")).await.unwrap();
    let err = conv.post(post("q3")).await.unwrap_err();
    assert_eq!(err, ConversationError::Overloaded);
    assert_eq!(err.code(), "overloaded");
    assert!(err.is_retryable());
    // Cancelling the hung turn drains the queue; then there is room again.
    let mut sub = conv.subscribe(None).await.unwrap();
    conv.cancel().await.unwrap();
    read_turns(&mut sub, 3).await;
    conv.post(post("q3")).await.unwrap();
}

#[actix_rt::test]
async fn a_tenant_cannot_open_another_tenants_conversation() {
    let h = harness(echo_plan(Duration::ZERO), fast_config(), TenantConfig::default());
    let (id, _) = h.new_conversation("t1").await;
    let err = h.conversations.open("t2", &id).await.unwrap_err();
    assert_eq!(err, ConversationError::NotFound);
    assert!(h.registry.get(&format!("conversation:{id}")).is_some());
    let missing = h.conversations.open("t1", "no-such-conversation").await.unwrap_err();
    assert_eq!(missing, ConversationError::NotFound);
    assert!(h.store.events_after("t2", &id, 0, REPLAY_PAGE).await.is_err());
}

#[actix_rt::test]
async fn complete_collects_a_whole_reply_and_reports_failed_turns() {
    let plan: Plan = Arc::new(|content: &str| {
        if content == "fail" {
            let e = TurnError::Exhausted { last: ProviderError::Server { status: 500 } };
            (vec![Step::Delta("partial".into()), Step::Fail(e)], Duration::ZERO)
        } else {
            echo_plan(Duration::ZERO)(content)
        }
    });
    let h = harness(plan, fast_config(), TenantConfig::default());
    let (_, conv) = h.new_conversation("t1").await;
    let reply = conv.complete(post("what is up")).await.unwrap();
    assert_eq!(reply.text, "re: what is up");
    assert_eq!(reply.model, "fake-1");
    let err = conv.complete(post("fail")).await.unwrap_err();
    assert_eq!(err.code(), "upstream_unavailable");
    let again = conv.complete(post("fine")).await.unwrap();
    assert_eq!(again.text, "re: fine");
}

#[actix_rt::test]
async fn ten_thousand_turns_across_a_thousand_conversations_each_end_exactly_once() {
    const TENANTS: usize = 10;
    const CONVERSATIONS: usize = 1_000;
    const TURNS: usize = 10;
    let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(0x5eed)));
    let plan: Plan = Arc::new(move |content: &str| {
        let mut rng = rng.lock().unwrap();
        let fail = rng.random_bool(0.2);
        let mut steps: Vec<Step> =
            (0..rng.random_range(0..4)).map(|i| Step::Delta(format!("{content}/{i} "))).collect();
        // Some turns fail over mid-stream, some restart their answer: the store must replay
        // those too.
        match rng.random_range(0..10) {
            0 => steps.insert(steps.len() / 2, Step::Failover),
            1 => steps.extend([Step::Retract, Step::Delta("again".into())]),
            _ => {}
        }
        if fail {
            steps.push(Step::Fail(TurnError::Exhausted {
                last: ProviderError::Overloaded { retry_after: None },
            }));
        } else {
            steps.push(Step::Finish);
        }
        (steps, Duration::ZERO)
    });
    let config = ConversationConfig { subscriber_buffer: 4096, ..fast_config() };
    let tenant = TenantConfig { max_in_flight_turns: CONVERSATIONS, ..TenantConfig::default() };
    let h = harness(plan, config, tenant);

    let mut conversations = Vec::new();
    for i in 0..CONVERSATIONS {
        let tenant = format!("tenant-{}", i % TENANTS);
        let (id, handle) = h.new_conversation(&tenant).await;
        let sub = handle.subscribe(None).await.unwrap();
        conversations.push((tenant, id, handle, sub));
    }

    let posts = conversations.iter().flat_map(|(_, _, handle, _)| {
        (0..TURNS).map(move |t| async move { handle.post(post(&format!("m{t}"))).await })
    });
    let posted: Vec<_> = futures_util::future::join_all(posts).await;
    let posted: Vec<_> = posted.into_iter().map(|p| p.expect("every post is accepted")).collect();
    assert_eq!(posted.len(), CONVERSATIONS * TURNS);

    let (mut done, mut failed) = (0, 0);
    for (i, (tenant, id, _, sub)) in conversations.iter_mut().enumerate() {
        let events = read_turns(sub, TURNS).await;
        assert_contiguous(&events, 1);
        let mine = &posted[i * TURNS..(i + 1) * TURNS];
        let mut endings: HashMap<&str, usize> = HashMap::new();
        for event in &events {
            if let Some(reply_to) = event.reply_to() {
                *endings.entry(reply_to).or_default() += 1;
            }
            match **event {
                ConversationEvent::Done { .. } => done += 1,
                ConversationEvent::Error { .. } => failed += 1,
                _ => {}
            }
        }
        for p in mine {
            assert_eq!(endings.get(p.message_id.as_str()), Some(&1), "exactly one ending each");
        }
        assert_eq!(endings.len(), TURNS);
        // What the store replays is exactly what subscribers saw.
        let stored = h.store.events_after(tenant, id, 0, usize::MAX).await.unwrap();
        assert!(stored.complete, "{TURNS} turns fit one page");
        let stored = stored.events;
        let live: Vec<ConversationEvent> = events.iter().map(|e| (**e).clone()).collect();
        assert_eq!(stored, live, "store replay of {id}");
    }
    assert_eq!(done + failed, CONVERSATIONS * TURNS);
    let failure_rate = failed as f64 / (CONVERSATIONS * TURNS) as f64;
    assert!((0.15..0.25).contains(&failure_rate), "about 20% fail, got {failure_rate}");
    // Roles survive in the store too.
    let loaded = h.store.load(&conversations[0].0, &conversations[0].1, 100).await.unwrap();
    assert_eq!(loaded.messages.iter().filter(|m| m.role == Role::User).count(), TURNS);
}

/// The harness over an existing store (a node rebuilt on what a crash left behind).
fn harness_on(store: InMemoryConversationStore, plan: Plan, config: ConversationConfig) -> Harness {
    let runner = FakeRunner::new(plan);
    let registry = Registry::new();
    let deps =
        ConversationDeps::new(Arc::new(store.clone()), runner.clone(), registry.clone(), config);
    Harness {
        conversations: Conversations::new(deps, TenantConfig::default()),
        store,
        runner,
        registry,
    }
}

#[actix_rt::test]
async fn a_crash_never_reuses_the_seq_of_an_event_it_lost() {
    // Small blocks, and no checkpoint during the turn: every delta is unsaved at the crash.
    let config = ConversationConfig {
        seq_reserve_block: 16,
        checkpoint_interval: Duration::from_secs(3600),
        checkpoint_bytes: 1 << 20,
        ..fast_config()
    };
    let h = harness(echo_plan(Duration::from_millis(1)), config.clone(), TenantConfig::default());
    let (id, conv) = h.new_conversation("t1").await;
    let mut live = conv.subscribe(None).await.unwrap();
    conv.post(post("long 200")).await.unwrap();
    let seen = read_n(&mut live, 60).await;
    assert_contiguous(&seen, 1);
    let max_seen = *seqs(&seen).last().unwrap();

    // The crash: only what the store holds at this instant survives.
    let crashed = h.store.fork();
    let stored = crashed.get_conversation("t1", &id).await.unwrap();
    assert!(stored.last_seq < max_seen, "the deltas were not persisted: {stored:?}");
    assert!(
        stored.seq_reserved >= max_seen,
        "every emitted seq was reserved durably first ({} < {max_seen})",
        stored.seq_reserved
    );
    assert!(stored.seq_reserved <= max_seen + 16, "reserved in blocks, not without bound");

    let rebuilt = harness_on(crashed.clone(), echo_plan(Duration::ZERO), config);
    let conv = rebuilt.conversations.open("t1", &id).await.unwrap();
    // A client that saw everything resumes: served (no resync), and told of the cut.
    let mut resumed = conv.subscribe(Some(max_seen)).await.unwrap();
    let next = read_n(&mut resumed, 1).await;
    let ConversationEvent::Interrupted { seq: cut, lost_after, .. } = *next[0] else {
        panic!("expected interrupted, got {:?}", next[0]);
    };
    assert!(cut > max_seen, "the interrupted event must not reuse a seen seq");
    assert_eq!(cut, stored.seq_reserved + 1);
    // It names the range clients cannot get back: all the reply's seqs, none of them stored.
    assert_eq!(lost_after, 1, "only the ack (seq 1) was stored");
    // From the start: the ack, then the honest jump to `interrupted`.
    let mut full = conv.subscribe(Some(0)).await.unwrap();
    let history = read_n(&mut full, 2).await;
    assert!(matches!(*history[0], ConversationEvent::Ack { seq: 1, .. }));
    assert_eq!(history[1].seq(), Some(cut));
    // A resume from inside the lost range is served too.
    let mut middle = conv.subscribe(Some(max_seen - 10)).await.unwrap();
    assert_eq!(read_n(&mut middle, 1).await[0].seq(), Some(cut));
    // The conversation continues after the jump.
    assert_eq!(conv.post(post("again")).await.unwrap().seq, cut + 1);
    let turn = read_turns(&mut resumed, 1).await;
    assert!(matches!(**turn.last().unwrap(), ConversationEvent::Done { .. }));
    assert_contiguous(&turn, cut + 1);
}

/// A terminal event is a promise that the reply is stored: it is published only once the
/// reply's final write is durable. Before this, a node that died between streaming `done`
/// and storing it left a reply that recovery closed again with `interrupted` — two terminal
/// events for one turn.
#[actix_rt::test]
async fn done_is_published_only_after_the_reply_is_stored() {
    let config = ConversationConfig {
        write_attempts: 100,
        write_retry_backoff: Duration::from_millis(5),
        checkpoint_interval: Duration::from_secs(3600),
        checkpoint_bytes: 1 << 20,
        ..fast_config()
    };
    let h = harness(echo_plan(Duration::from_millis(5)), config.clone(), TenantConfig::default());
    let (id, conv) = h.new_conversation("t1").await;
    let mut live = conv.subscribe(None).await.unwrap();
    conv.post(post("long 20")).await.unwrap();
    let mut seen = read_n(&mut live, 3).await;
    // The reply finishes while its writes fail.
    h.store.set_available(false);
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), live.receiver.recv()).await
    {
        assert!(!event.is_terminal(), "a terminal event before its write: {event:?}");
        seen.push(event);
    }
    assert_eq!(text_of(&seen).split(' ').count(), 21, "every delta streamed: {seen:?}");
    // A message posted meanwhile is not answered ahead of the held `done`.
    h.store.set_available(true);
    let crashed = h.store.fork();
    let queued = conv.post(post("next")).await.unwrap();
    h.store.set_available(false);

    // A crash now: nothing says the reply finished, so recovery ends it once, `interrupted`.
    let rebuilt = harness_on(crashed, echo_plan(Duration::ZERO), config);
    let after_crash = rebuilt.conversations.open("t1", &id).await.unwrap();
    let max_seen = *seqs(&seen).last().unwrap();
    let mut resumed = after_crash.subscribe(Some(max_seen)).await.unwrap();
    let next = read_n(&mut resumed, 1).await;
    assert!(matches!(*next[0], ConversationEvent::Interrupted { .. }), "{next:?}");

    // On the live node the write lands at last: `done`, then the queued message's ack, in
    // seq order, then its reply.
    h.store.set_available(true);
    let rest = read_turns(&mut live, 2).await;
    assert!(matches!(*rest[0], ConversationEvent::Done { .. }), "{rest:?}");
    assert!(matches!(*rest[1], ConversationEvent::Ack { seq, .. } if seq == queued.seq));
    seen.extend(rest);
    assert_contiguous(&seen, 1);
    assert_eq!(seen.iter().filter(|e| e.is_terminal()).count(), 2, "one terminal per turn");
}

#[actix_rt::test]
async fn long_replies_extend_the_reservation_ahead_of_use() {
    let config = ConversationConfig { seq_reserve_block: 8, ..fast_config() };
    let h = harness(echo_plan(Duration::ZERO), config, TenantConfig::default());
    let (id, conv) = h.new_conversation("t1").await;
    let mut live = conv.subscribe(None).await.unwrap();
    conv.post(post("long 100")).await.unwrap();
    let events = read_turns(&mut live, 1).await;
    assert_contiguous(&events, 1);
    let last = *seqs(&events).last().unwrap();
    let stored = h.store.get_conversation("t1", &id).await.unwrap();
    assert_eq!(stored.last_seq, last);
    assert!(stored.seq_reserved >= last - 1, "the reply's events stayed inside the reservation");
    // A clean rebuild (nothing left streaming) continues right after the last seq: the
    // unused rest of the reservation is not a jump.
    let rebuilt = harness_on(h.store.fork(), echo_plan(Duration::ZERO), fast_config());
    let conv = rebuilt.conversations.open("t1", &id).await.unwrap();
    assert_eq!(conv.post(post("again")).await.unwrap().seq, last + 1);
}
