//! The provider side of the actor tree, end to end: provider actors under supervision, the
//! router's failover and continuation, backpressure and the operator hooks — all against the
//! scripted in-memory fake provider (`actors::testing`), no network.

// clippy.toml allows these inside `#[test]` functions only; the helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actors::ports::llm::{
    BadRequestKind, ChatMessage, GenerationRequest, LlmProvider, ProviderError, Role,
};
use actors::provider::{CircuitBreakerConfig, ProviderActorConfig};
use actors::registry::{ActorKind, ActorState, CircuitState, Registry};
use actors::retries::Backoff;
use actors::supervisor::{OperatorError, ProviderTree, ProviderTreeConfig};
use actors::testing::{FakeProvider, Step, reply_for};
use actors::turn::{
    ContinuationMode, LegOutcome, TurnError, TurnEvent, TurnRequest, TurnRunner, TurnStream,
    TurnSummary,
};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// Helpers

struct Tree {
    tree: ProviderTree,
    registry: Registry,
}

impl Tree {
    fn runner(&self) -> &dyn TurnRunner {
        &self.tree.router
    }

    fn entry(&self, model: &str) -> actors::registry::ActorSnapshot {
        self.registry.get(&format!("provider:{model}")).unwrap().snapshot()
    }

    /// The provider's snapshot once it reaches `state` (or after 2 s): restarts happen after
    /// a backoff, and a loaded machine may take longer than the backoff to run them.
    async fn wait_for(&self, model: &str, state: ActorState) -> actors::registry::ActorSnapshot {
        for _ in 0..200 {
            let snap = self.entry(model);
            if snap.state == state {
                return snap;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.entry(model)
    }
}

/// A config with quick timings; `chains` gives each model's fallbacks.
fn config(chains: &[(&str, &[&str])]) -> ProviderTreeConfig {
    let mut c = ProviderTreeConfig::default();
    for (model, fallbacks) in chains {
        c.router.fallbacks.insert((*model).into(), fallbacks.iter().map(|s| (*s).into()).collect());
    }
    c.supervisor.restart_backoff = Backoff::fixed(Duration::from_millis(30));
    c.router.first_token_timeout_ms = 2_000;
    c.router.idle_timeout_ms = 2_000;
    c
}

fn model_config(f: impl FnOnce(&mut ProviderActorConfig)) -> ProviderActorConfig {
    let mut c = ProviderActorConfig::default();
    f(&mut c);
    c
}

async fn start(config: ProviderTreeConfig, fakes: &[&FakeProvider], names: &[&str]) -> Tree {
    let providers: HashMap<String, Arc<dyn LlmProvider>> =
        names.iter().zip(fakes).map(|(n, f)| ((*n).to_owned(), f.shared())).collect();
    let registry = Registry::new();
    let tree = ProviderTree::start(config, providers, &registry).unwrap();
    // Let the actors start (mailbox capacities, etc.).
    tokio::time::sleep(Duration::from_millis(5)).await;
    Tree { tree, registry }
}

fn turn_with(model: &str, prompt: &str, deadline: Duration, mode: ContinuationMode) -> TurnRequest {
    TurnRequest {
        tenant_id: "t1".into(),
        conversation_id: format!("c-{prompt}"),
        model: model.into(),
        request: GenerationRequest {
            messages: vec![ChatMessage::user(prompt)],
            ..Default::default()
        },
        deadline: Instant::now() + deadline,
        continuation: mode,
        cache: actors::turn::CacheMode::Use,
        origin: Default::default(),
    }
}

fn turn(model: &str, prompt: &str) -> TurnRequest {
    turn_with(model, prompt, Duration::from_secs(5), ContinuationMode::Continue)
}

/// Drains a turn: its events and how it ended.
async fn collect(mut stream: TurnStream) -> (Vec<TurnEvent>, Result<TurnSummary, TurnError>) {
    let mut events = Vec::new();
    let mut end = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(TurnEvent::Finished(summary)) => {
                assert!(end.is_none(), "nothing after the end");
                end = Some(Ok(summary));
            }
            Ok(event) => {
                assert!(end.is_none(), "nothing after the end");
                events.push(event);
            }
            Err(error) => {
                assert!(end.is_none(), "one terminal item");
                end = Some(Err(error));
            }
        }
    }
    (events, end.expect("the turn ended with Finished or an error"))
}

/// The text a consumer ends up with: deltas, minus whatever a `Retract` withdrew.
fn text(events: &[TurnEvent]) -> String {
    let mut out = String::new();
    for event in events {
        match event {
            TurnEvent::Delta(d) => out.push_str(d),
            TurnEvent::Retract { .. } => out.clear(),
            _ => {}
        }
    }
    out
}

fn failovers(events: &[TurnEvent]) -> Vec<(String, String, &'static str)> {
    events
        .iter()
        .filter_map(|e| match e {
            TurnEvent::Failover { from, to, reason } => Some((from.clone(), to.clone(), *reason)),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Supervision

#[actix_rt::test]
async fn a_panicking_provider_is_restarted_and_its_queued_requests_complete_on_the_fallback() {
    let p = FakeProvider::new("p").then(Step::PanicAfter(2));
    let f = FakeProvider::new("f");
    let mut c = config(&[("p", &["f"])]);
    // One slot, long queue wait: later requests queue behind the one that will panic.
    c.models.insert(
        "p".into(),
        model_config(|m| {
            m.max_in_flight = 1;
            m.queue_timeout_ms = 5_000;
        }),
    );
    let tree = start(c, &[&p, &f], &["p", "f"]).await;

    let mut first = tree.runner().run_turn(turn("p", "first"));
    let mut head = String::new();
    for _ in 0..2 {
        match first.next().await {
            Some(Ok(TurnEvent::Delta(d))) => head.push_str(&d),
            other => panic!("expected a delta, got {other:?}"),
        }
    }

    // Two requests the actor has taken and parked waiting for the in-flight slot…
    let mut waiting: Vec<TurnStream> =
        (0..2).map(|i| tree.runner().run_turn(turn("p", &format!("waiting-{i}")))).collect();
    for t in &mut waiting {
        assert!(t.next().now_or_never().is_none());
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    // …and two still sitting in its mailbox when the provider panics.
    let mut queued: Vec<TurnStream> =
        (0..2).map(|i| tree.runner().run_turn(turn("p", &format!("queued-{i}")))).collect();
    for t in &mut queued {
        assert!(t.next().now_or_never().is_none());
    }
    assert_eq!(tree.entry("p").mailbox_depth, 2);

    let (events, end) = collect(first).await; // polling it now hits the panic
    let summary = end.unwrap();
    assert_eq!(head + &text(&events), reply_for("first"));
    assert_eq!(failovers(&events), vec![("p".into(), "f".into(), "stream_broken")]);
    assert_eq!(summary.model, "f");

    for (i, t) in waiting.into_iter().chain(queued).enumerate() {
        let (events, end) = collect(t).await;
        let summary = end.unwrap_or_else(|e| panic!("turn {i} failed: {e}"));
        assert_eq!(summary.model, "f", "turn {i} rerouted");
        let prompt = if i < 2 { format!("waiting-{i}") } else { format!("queued-{}", i - 2) };
        assert_eq!(text(&events), reply_for(&prompt));
    }
    assert_eq!(p.calls(), 1, "nothing queued for the crashed actor reached the provider");

    let snap = tree.entry("p");
    assert_eq!(snap.restarts, 1);
    assert_eq!(snap.mailbox_depth, 0);
    assert_eq!(snap.last_error.as_deref(), Some("the provider panicked"));

    // After the restart backoff the endpoint serves again.
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(tree.entry("p").state, ActorState::Running);
    let (events, end) = collect(tree.runner().run_turn(turn("p", "after"))).await;
    assert_eq!(end.unwrap().model, "p");
    assert_eq!(text(&events), reply_for("after"));
}

#[actix_rt::test]
async fn a_panic_when_starting_a_stream_fails_over_and_restarts_the_actor() {
    let p = FakeProvider::new("p").then(Step::PanicOnStart);
    let f = FakeProvider::new("f");
    let tree = start(config(&[("p", &["f"])]), &[&p, &f], &["p", "f"]).await;
    let (events, end) = collect(tree.runner().run_turn(turn("p", "x"))).await;
    assert_eq!(end.unwrap().model, "f");
    assert_eq!(text(&events), reply_for("x"));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(tree.entry("p").restarts, 1);
}

#[actix_rt::test]
async fn operator_drills_restart_budget_and_manual_restart() {
    let p = FakeProvider::new("p");
    let f = FakeProvider::new("f");
    let mut c = config(&[("p", &["f"])]);
    c.supervisor.max_restarts = 2;
    c.supervisor.restart_backoff = Backoff::fixed(Duration::from_millis(5));
    let tree = start(c, &[&p, &f], &["p", "f"]).await;
    let op = &tree.tree.operator;

    assert_eq!(op.fail("nope").await, Err(OperatorError::UnknownProvider("nope".into())));
    op.fail("p").await.unwrap();
    let snap = tree.wait_for("p", ActorState::Running).await;
    assert_eq!(snap.state, ActorState::Running, "within budget: back after backoff");
    op.fail("provider:p").await.unwrap();
    tree.wait_for("p", ActorState::Running).await;
    op.fail("p").await.unwrap();
    let snap = tree.wait_for("p", ActorState::Failed).await;
    assert_eq!(snap.restarts, 3);
    assert_eq!(snap.state, ActorState::Failed, "third restart within the window exceeds 2");

    // Failed: no traffic at all, turns go to the fallback.
    let (_, end) = collect(tree.runner().run_turn(turn("p", "x"))).await;
    assert_eq!(end.unwrap().model, "f");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(tree.entry("p").state, ActorState::Failed, "stays failed");
    assert_eq!(p.calls(), 0);

    op.restart("p").await.unwrap();
    assert_eq!(tree.wait_for("p", ActorState::Running).await.state, ActorState::Running);
    let (_, end) = collect(tree.runner().run_turn(turn("p", "y"))).await;
    assert_eq!(end.unwrap().model, "p");
}

#[actix_rt::test]
async fn the_registry_shows_the_tree() {
    let p = FakeProvider::new("p");
    let tree = start(config(&[]), &[&p], &["p"]).await;
    let snap = tree.registry.snapshot();
    let find = |id: &str| snap.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("{id}"));
    assert_eq!(find("root_supervisor").kind, ActorKind::RootSupervisor);
    assert_eq!(find("provider_supervisor").parent.as_deref(), Some("root_supervisor"));
    assert_eq!(find("router").parent.as_deref(), Some("root_supervisor"));
    let provider = find("provider:p");
    assert_eq!(provider.parent.as_deref(), Some("provider_supervisor"));
    assert_eq!(provider.circuit, Some(CircuitState::Closed));
    assert_eq!(provider.state, ActorState::Running);
}

// ---------------------------------------------------------------------------------------
// Circuit breaker

#[actix_rt::test]
async fn the_circuit_opens_sends_nothing_while_open_then_half_opens_and_closes_on_a_probe() {
    let gate = Arc::new(Semaphore::new(0));
    let p = FakeProvider::new("p")
        .then(Step::Fail(ProviderError::Server { status: 500 }))
        .then(Step::Fail(ProviderError::Server { status: 502 }))
        .then(Step::Fail(ProviderError::Timeout(actors::ports::llm::TimeoutPhase::FirstToken)))
        .then(Step::Gate(gate.clone()));
    let f = FakeProvider::new("f");
    let mut c = config(&[("p", &["f"])]);
    c.models.insert(
        "p".into(),
        model_config(|m| {
            m.circuit_breaker = CircuitBreakerConfig {
                consecutive_failures: 3,
                cooldown_ms: 400,
                ..Default::default()
            };
        }),
    );
    let tree = start(c, &[&p, &f], &["p", "f"]).await;

    for i in 0..3 {
        let (events, end) = collect(tree.runner().run_turn(turn("p", &format!("a{i}")))).await;
        assert_eq!(end.unwrap().model, "f");
        assert_eq!(failovers(&events).len(), 1);
    }
    assert_eq!(p.calls(), 3);
    assert_eq!(tree.entry("p").circuit, Some(CircuitState::Open));

    let opened = Instant::now();
    for i in 0..5 {
        let (events, end) = collect(tree.runner().run_turn(turn("p", &format!("b{i}")))).await;
        assert_eq!(end.unwrap().model, "f");
        assert!(failovers(&events).is_empty(), "an open circuit is skipped, not tried");
    }
    assert_eq!(p.calls(), 3, "no traffic while open");

    tokio::time::sleep_until(opened + Duration::from_millis(420)).await;
    let probe = tokio::spawn(collect(tree.runner().run_turn(turn("p", "probe"))));
    while p.calls() < 4 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(tree.entry("p").circuit, Some(CircuitState::HalfOpen));
    // While the probe is out, other turns do not pile onto the endpoint.
    let (_, end) = collect(tree.runner().run_turn(turn("p", "during"))).await;
    assert_eq!(end.unwrap().model, "f");
    assert_eq!(p.calls(), 4);

    gate.add_permits(1);
    let (events, end) = probe.await.unwrap();
    assert_eq!(end.unwrap().model, "p");
    assert_eq!(text(&events), reply_for("probe"));
    assert_eq!(tree.entry("p").circuit, Some(CircuitState::Closed));
    let (_, end) = collect(tree.runner().run_turn(turn("p", "closed"))).await;
    assert_eq!(end.unwrap().model, "p");
    assert_eq!(p.calls(), 5);
}

#[actix_rt::test]
async fn retry_after_parks_the_endpoint_for_that_long() {
    let p = FakeProvider::new("p").then(Step::Fail(ProviderError::RateLimited {
        retry_after: Some(Duration::from_millis(300)),
    }));
    let f = FakeProvider::new("f");
    let tree = start(config(&[("p", &["f"])]), &[&p, &f], &["p", "f"]).await;
    let (_, end) = collect(tree.runner().run_turn(turn("p", "a"))).await;
    assert_eq!(end.unwrap().model, "f");
    let (_, end) = collect(tree.runner().run_turn(turn("p", "b"))).await;
    assert_eq!(end.unwrap().model, "f");
    assert_eq!(p.calls(), 1);
    tokio::time::sleep(Duration::from_millis(330)).await;
    let (_, end) = collect(tree.runner().run_turn(turn("p", "c"))).await;
    assert_eq!(end.unwrap().model, "p");
}

// ---------------------------------------------------------------------------------------
// Mid-stream failover

#[actix_rt::test]
async fn a_stream_broken_mid_answer_continues_on_the_fallback_by_prefill() {
    let p = FakeProvider::new("p").then(Step::BreakAfter(4));
    let f = FakeProvider::new("f");
    let tree = start(config(&[("p", &["f"])]), &[&p, &f], &["p", "f"]).await;

    let (events, end) = collect(tree.runner().run_turn(turn("p", "hello"))).await;
    let summary = end.unwrap();
    assert_eq!(text(&events), reply_for("hello"), "no duplicated, no missing text");
    let failover_at = events.iter().position(|e| matches!(e, TurnEvent::Failover { .. })).unwrap();
    assert_eq!(failover_at, 4, "four deltas, then the failover, then the rest");
    assert_eq!(failovers(&events), vec![("p".into(), "f".into(), "stream_broken")]);

    assert_eq!(summary.model, "f");
    assert_eq!(summary.legs.len(), 2);
    assert_eq!(summary.legs[0].model, "p");
    assert_eq!(summary.legs[0].outcome, LegOutcome::Failed { code: "stream_broken" });
    assert_eq!(summary.legs[0].usage.output_tokens, 4);
    assert_eq!(summary.legs[1].outcome, LegOutcome::Completed);
    assert_eq!(summary.usage, summary.legs[0].usage + summary.legs[1].usage);

    let sent = f.last_request().unwrap();
    let partial: String = events[..4]
        .iter()
        .map(|e| match e {
            TurnEvent::Delta(d) => d.as_str(),
            _ => "",
        })
        .collect();
    assert_eq!(sent.messages.last(), Some(&ChatMessage::assistant(partial)), "prefill");
}

#[actix_rt::test]
async fn a_fallback_that_rejects_prefill_is_continued_by_instruction_and_remembered() {
    let p = FakeProvider::new("p").then(Step::BreakAfter(5)).then(Step::BreakAfter(3));
    // Repeats the last 12 characters of the partial text: must be stripped.
    let f = FakeProvider::new("f").rejecting_prefill().repeating_tail(12);
    let tree = start(config(&[("p", &["f"])]), &[&p, &f], &["p", "f"]).await;
    assert!(tree.tree.router.endpoint("f").unwrap().supports_prefill());

    let (events, end) = collect(tree.runner().run_turn(turn("p", "first"))).await;
    let summary = end.unwrap();
    assert_eq!(text(&events), reply_for("first"));
    assert_eq!(failovers(&events).len(), 1);
    assert_eq!(f.calls(), 2, "prefill rejected, then the instruction");
    let sent = f.last_request().unwrap();
    assert_eq!(sent.messages.len(), 3);
    assert_eq!(sent.messages[1].role, Role::Assistant);
    assert_eq!(sent.messages[2].role, Role::User);
    assert!(!tree.tree.router.endpoint("f").unwrap().supports_prefill(), "remembered");
    let codes: Vec<_> = summary.legs.iter().map(|l| l.outcome.clone()).collect();
    assert_eq!(
        codes,
        vec![
            LegOutcome::Failed { code: "stream_broken" },
            LegOutcome::Failed { code: "prefill_unsupported" },
            LegOutcome::Completed,
        ]
    );

    let (events, end) = collect(tree.runner().run_turn(turn("p", "second"))).await;
    assert_eq!(end.unwrap().legs.len(), 2);
    assert_eq!(text(&events), reply_for("second"));
    assert_eq!(f.calls(), 3, "straight to the instruction the second time");
    assert_eq!(tree.entry("f").circuit, Some(CircuitState::Closed), "a 400 is not ill health");
}

#[actix_rt::test]
async fn a_model_configured_without_prefill_goes_straight_to_the_instruction() {
    let p = FakeProvider::new("p").then(Step::BreakAfter(3));
    let f = FakeProvider::new("f").rejecting_prefill();
    let mut c = config(&[("p", &["f"])]);
    c.models.insert("f".into(), model_config(|m| m.prefill = false));
    let tree = start(c, &[&p, &f], &["p", "f"]).await;
    let (events, end) = collect(tree.runner().run_turn(turn("p", "q"))).await;
    end.unwrap();
    assert_eq!(text(&events), reply_for("q"));
    assert_eq!(f.calls(), 1);
}

#[actix_rt::test]
async fn restart_mode_retracts_and_answers_afresh() {
    let p = FakeProvider::new("p").then(Step::BreakAfter(3));
    let f = FakeProvider::new("f");
    let tree = start(config(&[("p", &["f"])]), &[&p, &f], &["p", "f"]).await;
    let request = turn_with("p", "again", Duration::from_secs(5), ContinuationMode::Restart);
    let (events, end) = collect(tree.runner().run_turn(request)).await;
    end.unwrap();
    let retract = events.iter().position(|e| matches!(e, TurnEvent::Retract { .. })).unwrap();
    assert_eq!(events[retract], TurnEvent::Retract { from: "p".into() });
    assert!(matches!(events[retract - 1], TurnEvent::Failover { .. }));
    let fresh: String = events[retract + 1..]
        .iter()
        .map(|e| match e {
            TurnEvent::Delta(d) => d.as_str(),
            other => panic!("only deltas after the retract, got {other:?}"),
        })
        .collect();
    assert_eq!(fresh, reply_for("again"), "a fresh, full answer");
    assert_eq!(f.last_request().unwrap().messages.len(), 1, "no partial text sent");
}

// ---------------------------------------------------------------------------------------
// Exhaustion, deadlines, cancellation, refusals

#[actix_rt::test]
async fn all_models_down_is_one_clear_error_within_the_deadline() {
    let p = FakeProvider::new("p").otherwise(Step::Fail(ProviderError::Server { status: 500 }));
    let f = FakeProvider::new("f")
        .otherwise(Step::Fail(ProviderError::Overloaded { retry_after: None }));
    let tree = start(config(&[("p", &["f"])]), &[&p, &f], &["p", "f"]).await;
    let started = Instant::now();
    let (_, end) = collect(tree.runner().run_turn(turn("p", "x"))).await;
    assert_eq!(
        end.unwrap_err(),
        TurnError::Exhausted { last: ProviderError::Overloaded { retry_after: None } }
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[actix_rt::test]
async fn a_provider_that_hangs_forever_is_abandoned_and_nothing_hangs() {
    let p = FakeProvider::new("p").otherwise(Step::Hang);
    let f = FakeProvider::new("f").otherwise(Step::Fail(ProviderError::Connect));
    let mut c = config(&[("p", &["f"])]);
    c.router.first_token_timeout_ms = 100;
    let tree = start(c, &[&p, &f], &["p", "f"]).await;

    let started = Instant::now();
    let request = turn_with("p", "x", Duration::from_secs(2), ContinuationMode::Continue);
    let (_, end) = collect(tree.runner().run_turn(request)).await;
    assert_eq!(end.unwrap_err(), TurnError::Exhausted { last: ProviderError::Connect });
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(p.open_streams(), 0);
    assert_eq!(
        tree.entry("p").last_error.as_deref(),
        Some("timed out waiting for the provider (first token)")
    );

    // A chain of nothing but a hanging model: the turn deadline ends it.
    let mut c2 = config(&[]);
    c2.router.first_token_timeout_ms = 10_000;
    let q = FakeProvider::new("q").otherwise(Step::HangAfter(1));
    let tree2 = start(c2, &[&q], &["q"]).await;
    let started = Instant::now();
    let alone = turn_with("q", "y", Duration::from_millis(60), ContinuationMode::Continue);
    let (events, end) = collect(tree2.runner().run_turn(alone)).await;
    assert_eq!(end.unwrap_err(), TurnError::DeadlineExceeded);
    assert_eq!(events.len(), 1, "the one delta before the hang");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(q.open_streams(), 0);
}

#[actix_rt::test]
async fn a_stream_that_stalls_mid_answer_is_abandoned_and_continued_on_the_fallback() {
    let p = FakeProvider::new("p").then(Step::HangAfter(3));
    let f = FakeProvider::new("f");
    let mut c = config(&[("p", &["f"])]);
    c.router.idle_timeout_ms = 50;
    let tree = start(c, &[&p, &f], &["p", "f"]).await;
    let (events, end) = collect(tree.runner().run_turn(turn("p", "stall"))).await;
    let summary = end.unwrap();
    assert_eq!(text(&events), reply_for("stall"));
    assert_eq!(failovers(&events), vec![("p".into(), "f".into(), "provider_timeout")]);
    assert_eq!(summary.legs[0].outcome, LegOutcome::Failed { code: "provider_timeout" });
    assert_eq!(p.open_streams(), 0, "the stalled stream was dropped");
}

#[actix_rt::test]
async fn dropping_the_turn_stream_drops_the_provider_stream() {
    let p = FakeProvider::new("p").otherwise(Step::HangAfter(2));
    let tree = start(config(&[]), &[&p], &["p"]).await;
    let mut stream = tree.runner().run_turn(turn("p", "x"));
    for _ in 0..2 {
        assert!(matches!(stream.next().await, Some(Ok(TurnEvent::Delta(_)))));
    }
    assert_eq!(p.open_streams(), 1);
    assert_eq!(tree.entry("p").in_flight, 1);
    assert_eq!(tree.tree.router.turns_in_flight(), 1);
    drop(stream);
    assert_eq!(p.open_streams(), 0);
    assert_eq!(p.cancelled_streams(), 1);
    assert_eq!(tree.entry("p").in_flight, 0);
    assert_eq!(tree.tree.router.turns_in_flight(), 0);
    assert_eq!(tree.entry("p").circuit, Some(CircuitState::Closed), "a cancel is not a failure");
}

#[actix_rt::test]
async fn non_retryable_errors_do_not_fail_over() {
    let p = FakeProvider::new("p").then(Step::Fail(ProviderError::Auth { status: 401 })).then(
        Step::Fail(ProviderError::BadRequest {
            kind: BadRequestKind::Invalid,
            message: "bad".into(),
        }),
    );
    let f = FakeProvider::new("f");
    let tree = start(config(&[("p", &["f"])]), &[&p, &f], &["p", "f"]).await;
    let (_, end) = collect(tree.runner().run_turn(turn("p", "a"))).await;
    assert_eq!(end.unwrap_err(), TurnError::Rejected(ProviderError::Auth { status: 401 }));
    let (_, end) = collect(tree.runner().run_turn(turn("p", "b"))).await;
    assert!(matches!(end.unwrap_err(), TurnError::Rejected(ProviderError::BadRequest { .. })));
    assert_eq!(f.calls(), 0);
}

#[actix_rt::test]
async fn same_model_retries_back_off_on_the_same_model_first() {
    let p = FakeProvider::new("p").then(Step::Fail(ProviderError::Server { status: 500 }));
    let f = FakeProvider::new("f");
    let mut c = config(&[("p", &["f"])]);
    c.router.same_model_retries = 1;
    c.router.retry_backoff = Backoff::fixed(Duration::from_millis(20));
    let tree = start(c, &[&p, &f], &["p", "f"]).await;
    let started = Instant::now();
    let (events, end) = collect(tree.runner().run_turn(turn("p", "a"))).await;
    let summary = end.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(20), "backed off");
    assert_eq!(summary.model, "p");
    assert_eq!(summary.legs.len(), 2);
    assert!(failovers(&events).is_empty());
    assert_eq!(f.calls(), 0);
}

#[actix_rt::test]
async fn aliases_tenants_and_unknown_models() {
    let a = FakeProvider::new("a");
    let b = FakeProvider::new("b");
    let mut c = config(&[]);
    c.router.aliases.insert("auto".into(), vec!["b".into(), "a".into()]);
    let mut acme = actors::router::TenantRoutes::default();
    acme.aliases.insert("auto".into(), vec!["a".into()]);
    c.router.tenants.insert("acme".into(), acme);
    let tree = start(c, &[&a, &b], &["a", "b"]).await;

    let (_, end) = collect(tree.runner().run_turn(turn("auto", "x"))).await;
    assert_eq!(end.unwrap().model, "b");
    let mut for_acme = turn("auto", "y");
    for_acme.tenant_id = "acme".into();
    let (_, end) = collect(tree.runner().run_turn(for_acme)).await;
    assert_eq!(end.unwrap().model, "a");
    let (events, end) = collect(tree.runner().run_turn(turn("gpt-9", "z"))).await;
    assert!(events.is_empty());
    assert_eq!(end.unwrap_err(), TurnError::UnknownModel("gpt-9".into()));
}

#[actix_rt::test]
async fn an_overloaded_tree_refuses_at_once() {
    // Router-wide turn limit.
    let p = FakeProvider::new("p").otherwise(Step::Hang);
    let mut c = config(&[]);
    c.router.max_concurrent_turns = 1;
    let tree = start(c, &[&p], &["p"]).await;
    let _held = tree.runner().run_turn(turn("p", "a"));
    let (_, end) = collect(tree.runner().run_turn(turn("p", "b"))).await;
    assert_eq!(end.unwrap_err(), TurnError::Overloaded);

    // A full provider mailbox refuses instead of queueing.
    let q = FakeProvider::new("q");
    let mut c = config(&[]);
    c.models.insert("q".into(), model_config(|m| m.mailbox_capacity = 1));
    let tree = start(c, &[&q], &["q"]).await;
    let mut first = tree.runner().run_turn(turn("q", "a"));
    assert!(first.next().now_or_never().is_none(), "queued in the mailbox");
    let refused = tree.runner().run_turn(turn("q", "b")).next().now_or_never();
    assert_eq!(refused, Some(Some(Err(TurnError::Overloaded))), "refused without waiting");
    let (events, end) = collect(first).await;
    end.unwrap();
    assert_eq!(text(&events), reply_for("a"));

    // An endpoint at its in-flight limit refuses after the short queue wait.
    let r = FakeProvider::new("r").otherwise(Step::Hang);
    let mut c = config(&[]);
    c.models.insert(
        "r".into(),
        model_config(|m| {
            m.max_in_flight = 1;
            m.queue_timeout_ms = 20;
        }),
    );
    let tree = start(c, &[&r], &["r"]).await;
    let mut busy = tree.runner().run_turn(turn("r", "a"));
    assert!(busy.next().now_or_never().is_none());
    tokio::time::sleep(Duration::from_millis(5)).await;
    let started = Instant::now();
    let (_, end) = collect(tree.runner().run_turn(turn("r", "b"))).await;
    assert_eq!(end.unwrap_err(), TurnError::Overloaded);
    assert!(started.elapsed() < Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------
// Load

#[actix_rt::test]
async fn ten_thousand_concurrent_turns_with_random_failures_are_neither_lost_nor_mixed() {
    const TURNS: usize = 10_000;
    let a = FakeProvider::new("a").failing_randomly(0.2, 1).interleaved();
    let b = FakeProvider::new("b")
        .failing_randomly(0.2, 2)
        .interleaved()
        .rejecting_prefill()
        .repeating_tail(10);
    let c3 = FakeProvider::new("c").failing_randomly(0.2, 3).interleaved();
    let mut c = config(&[("a", &["b", "c"]), ("b", &["c", "a"])]);
    c.router.max_concurrent_turns = TURNS;
    c.router.max_attempts = 4;
    for m in ["a", "b", "c"] {
        c.models.insert(
            m.into(),
            model_config(|m| {
                m.max_in_flight = TURNS;
                m.mailbox_capacity = TURNS;
                // This test is about failover under load, not the breaker. In a burst of 10k
                // simultaneous calls, the fast failures (before the first token) all complete
                // before the first slow success, so both breaker rules see a long run of
                // failures and (rightly) open the circuits. Turn them off here; the breaker
                // has its own tests.
                m.circuit_breaker.failure_rate = 0.0;
                m.circuit_breaker.consecutive_failures = 0;
            }),
        );
    }
    let tree = start(c, &[&a, &b, &c3], &["a", "b", "c"]).await;

    let handles: Vec<_> = (0..TURNS)
        .map(|i| {
            let model = if i % 2 == 0 { "a" } else { "b" };
            let stream = tree.runner().run_turn(turn_with(
                model,
                &format!("turn-{i}"),
                Duration::from_secs(60),
                ContinuationMode::Continue,
            ));
            tokio::spawn(collect(stream))
        })
        .collect();

    let (mut completed, mut failed, mut failed_over) = (0, 0, 0);
    let mut errors: HashMap<String, usize> = HashMap::new();
    for (i, handle) in handles.into_iter().enumerate() {
        let (events, end) = handle.await.unwrap();
        match end {
            Ok(summary) => {
                assert_eq!(text(&events), reply_for(&format!("turn-{i}")), "turn {i}");
                assert_eq!(summary.legs.last().unwrap().outcome, LegOutcome::Completed);
                completed += 1;
                failed_over += usize::from(summary.legs.len() > 1);
            }
            Err(error) => {
                assert!(
                    matches!(error, TurnError::Exhausted { .. } | TurnError::Overloaded),
                    "turn {i}: unexpected {error:?}"
                );
                failed += 1;
                *errors.entry(format!("{error:?}")).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(completed + failed, TURNS, "none lost");
    assert!(completed >= TURNS * 95 / 100, "completed {completed}, failed {failed}: {errors:?}");
    assert!(failed_over > TURNS / 10, "random failures were failed over: {failed_over}");
    assert_eq!(a.open_streams() + b.open_streams() + c3.open_streams(), 0);
    assert_eq!(tree.tree.router.turns_in_flight(), 0);
    eprintln!("10k turns: {completed} completed ({failed_over} after failover), {failed} failed");
}
