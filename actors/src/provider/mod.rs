//! The provider side's leaves: one [`ProviderActor`] per configured (provider, model)
//! endpoint.
//!
//! The actor is the endpoint's gatekeeper. The router sends it [`Generate`]; the actor checks
//! its lifecycle and circuit breaker ([`breaker`]), takes an in-flight permit (waiting at
//! most `queue_timeout_ms`), starts the provider's stream and replies with a
//! [`GuardedStream`] ([`stream`]) that the router polls in its own task. Health is shared
//! with the router through [`EndpointHealth`] ([`health`]) so routing never waits on a
//! mailbox.
//!
//! Failure handling, because actix's `Supervisor` restarts an actor that *stops* but neither
//! catches panics nor keeps the message being handled: provider code only ever runs under
//! `catch_unwind` (here in `Generate` and in the guarded stream); a panic fails that request
//! with a retryable error and sends the actor [`Crash`], which stops it. The supervisor then
//! calls `restarting()`, which applies the restart policy (backoff, budget) from
//! [`crate::supervisor`]. Requests still queued in the mailbox carry the epoch they were sent
//! in; the crash bumps the epoch, so the restarted actor answers each of them at once with a
//! retryable [`Refused::Restarted`] and the router moves them down their fallback chain.

pub mod breaker;
pub mod health;
pub mod stream;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use crate::ports::llm::{GenerationRequest, LlmProvider, ProviderError};
use crate::registry::Registration;
use crate::supervisor::{ProviderRestarted, SupervisorConfig};

pub use breaker::{CircuitBreaker, CircuitBreakerConfig};
pub use health::{EndpointHealth, RestartDecision};
pub use stream::GuardedStream;

/// Settings of one model endpoint and its actor.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderActorConfig {
    /// The provider kind reported in turn legs and metrics (`openai`, `anthropic`, `mock`).
    pub provider: String,
    /// Whether the model is known to accept a trailing assistant message (prefill). When
    /// false, mid-stream continuation on this model uses an instruction instead. Learned at
    /// run time too: a `PrefillUnsupported` answer turns it off.
    pub prefill: bool,
    /// Concurrent generations on this endpoint.
    pub max_in_flight: usize,
    /// How long a request may wait for an in-flight slot before it is refused (and the
    /// router moves on). 0 refuses at once.
    pub queue_timeout_ms: u64,
    /// Bounded mailbox: a full one refuses work instead of queueing it.
    pub mailbox_capacity: usize,
    pub circuit_breaker: CircuitBreakerConfig,
}

impl Default for ProviderActorConfig {
    fn default() -> Self {
        Self {
            provider: "mock".into(),
            prefill: true,
            max_in_flight: 256,
            queue_timeout_ms: 50,
            mailbox_capacity: 1_024,
            circuit_breaker: CircuitBreakerConfig::default(),
        }
    }
}

/// Why a provider actor refused a request without calling the provider. Always retryable:
/// the router moves to the next model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    CircuitOpen,
    ProbesBusy,
    /// Every in-flight slot stayed taken for `queue_timeout_ms`, or the mailbox was full.
    AtCapacity,
    /// The actor is in its post-restart backoff.
    Restarting,
    /// Restart budget spent; waits for an operator.
    Failed,
    /// Queued for a previous life of the actor, which crashed.
    Restarted,
    /// The actor stopped before answering (mailbox error).
    Stopped,
}

impl Refused {
    /// Whether the refusal means "too much load" (as opposed to "unhealthy").
    pub fn is_capacity(self) -> bool {
        matches!(self, Refused::AtCapacity)
    }

    pub fn into_error(self) -> ProviderError {
        ProviderError::Unavailable(
            match self {
                Refused::CircuitOpen => "circuit open",
                Refused::ProbesBusy => "circuit half-open, probe in flight",
                Refused::AtCapacity => "at capacity",
                Refused::Restarting => "restarting",
                Refused::Failed => "failed; waiting for an operator restart",
                Refused::Restarted => "the actor restarted while the request was queued",
                Refused::Stopped => "the actor stopped before answering",
            }
            .into(),
        )
    }
}

/// The answer to [`Generate`].
pub type GenerateReply = Result<GuardedStream, Refused>;

/// Start a generation. The reply goes through `reply` rather than the message's result, so
/// the router can `try_send` (a full mailbox refuses at once) and still get an answer; a
/// dropped `reply` (actor stopped) reads as [`Refused::Stopped`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct Generate {
    pub request: GenerationRequest,
    /// [`EndpointHealth`]'s epoch when the request was sent.
    pub epoch: u64,
    pub reply: oneshot::Sender<GenerateReply>,
}

/// Stop as if the provider had panicked (a caught panic, or an operator drill); the
/// supervisor restarts the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash {
    pub reason: &'static str,
}

/// Operator restart: clear the restart history (leaving `Failed`) and restart now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct OperatorRestart;

/// One model endpoint under actix supervision.
pub struct ProviderActor {
    health: Arc<EndpointHealth>,
    provider: Arc<dyn LlmProvider>,
    policy: Arc<SupervisorConfig>,
    supervisor: Option<Recipient<ProviderRestarted>>,
    /// Set by [`OperatorRestart`] so `restarting()` skips the backoff and budget.
    operator_restart: bool,
    /// When the post-restart backoff ends (`started` schedules the resume).
    resume_at: Option<Instant>,
    _registration: Registration,
}

impl ProviderActor {
    pub fn new(
        health: Arc<EndpointHealth>,
        provider: Arc<dyn LlmProvider>,
        policy: Arc<SupervisorConfig>,
        supervisor: Option<Recipient<ProviderRestarted>>,
        registration: Registration,
    ) -> Self {
        Self {
            health,
            provider,
            policy,
            supervisor,
            operator_restart: false,
            resume_at: None,
            _registration: registration,
        }
    }

    /// Admission passed and a slot is held: call the provider (under `catch_unwind`).
    fn start(
        &mut self,
        request: GenerationRequest,
        admission: breaker::Admission,
        permit: OwnedSemaphorePermit,
        reply: oneshot::Sender<GenerateReply>,
        ctx: &mut Context<Self>,
    ) {
        let provider = &self.provider;
        match catch_unwind(AssertUnwindSafe(|| provider.stream(request))) {
            Ok(inner) => {
                let guarded = GuardedStream::new(
                    inner,
                    self.health.clone(),
                    admission,
                    ctx.address(),
                    permit,
                );
                // A caller that went away drops the stream here, which cancels it.
                let _ = reply.send(Ok(guarded));
            }
            Err(_panic) => {
                let error = ProviderError::StreamBroken {
                    tokens: 0,
                    reason: "the provider panicked".into(),
                };
                self.health.record_failure(admission, &error);
                drop(reply); // reads as Stopped: retryable, the router moves on
                self.crash("the provider panicked starting a request", ctx);
            }
        }
    }

    fn crash(&mut self, reason: &'static str, ctx: &mut Context<Self>) {
        tracing::error!(model = %self.health.model(), reason, "provider actor stopping");
        // The stream that caught a panic already began the crash; an operator drill or a
        // panic in `Generate` begins it here.
        let _ = self.health.begin_crash(reason);
        ctx.stop();
    }
}

impl Actor for ProviderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.health.config.mailbox_capacity.max(1));
        if let Some(at) = self.resume_at.take() {
            ctx.run_later(at.saturating_duration_since(Instant::now()), |act, _| {
                act.health.resume();
            });
        }
    }
}

impl Supervised for ProviderActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.health.entry().record_restart();
        let operator = std::mem::take(&mut self.operator_restart);
        let decision = self.health.on_restart(&self.policy, operator);
        if let RestartDecision::Backoff(wait) = decision {
            self.resume_at = Some(Instant::now() + wait);
        }
        match decision {
            RestartDecision::Failed => tracing::error!(
                model = %self.health.model(),
                "provider actor exceeded its restart budget; no traffic until an operator restarts it"
            ),
            _ => {
                tracing::warn!(model = %self.health.model(), ?decision, "provider actor restarted")
            }
        }
        if let Some(supervisor) = &self.supervisor {
            supervisor
                .do_send(ProviderRestarted { model: self.health.model().to_owned(), decision });
        }
    }
}

impl Handler<Generate> for ProviderActor {
    type Result = ();

    fn handle(&mut self, msg: Generate, ctx: &mut Context<Self>) {
        self.health.entry().add_mailbox_depth(-1);
        let Generate { request, epoch, reply } = msg;
        if epoch != self.health.epoch() {
            let _ = reply.send(Err(Refused::Restarted));
            return;
        }
        match self.health.state() {
            crate::registry::ActorState::Restarting => {
                let _ = reply.send(Err(Refused::Restarting));
                return;
            }
            crate::registry::ActorState::Failed => {
                let _ = reply.send(Err(Refused::Failed));
                return;
            }
            _ => {}
        }
        if reply.is_closed() {
            return; // the turn was cancelled while this waited in the mailbox
        }
        let admission = match self.health.admit(Instant::now()) {
            Ok(admission) => admission,
            Err(refused) => {
                let _ = reply.send(Err(refused));
                return;
            }
        };
        match self.health.permits.clone().try_acquire_owned() {
            Ok(permit) => self.start(request, admission, permit, reply, ctx),
            Err(_) if self.health.config.queue_timeout_ms == 0 => {
                self.health.record_cancel(admission);
                let _ = reply.send(Err(Refused::AtCapacity));
            }
            Err(_) => {
                // Wait for a slot inside the actor's context: if the actor stops meanwhile,
                // actix drops this future and with it `reply`, which the router reads as a
                // retryable refusal.
                let wait = Duration::from_millis(self.health.config.queue_timeout_ms);
                let permits = self.health.permits.clone();
                let acquire =
                    async move { tokio::time::timeout(wait, permits.acquire_owned()).await };
                ctx.spawn(acquire.into_actor(self).map(move |acquired, act, ctx| match acquired {
                    // Re-check the epoch: the slot may have been freed by the very stream
                    // whose panic is restarting this actor, and this request belongs to the
                    // life that is ending.
                    Ok(Ok(_)) if epoch != act.health.epoch() => {
                        act.health.record_cancel(admission);
                        let _ = reply.send(Err(Refused::Restarted));
                    }
                    Ok(Ok(permit)) if !reply.is_closed() => {
                        act.start(request, admission, permit, reply, ctx)
                    }
                    _ => {
                        act.health.record_cancel(admission);
                        let _ = reply.send(Err(Refused::AtCapacity));
                    }
                }));
            }
        }
    }
}

impl Handler<Crash> for ProviderActor {
    type Result = ();

    fn handle(&mut self, msg: Crash, ctx: &mut Context<Self>) {
        self.crash(msg.reason, ctx);
    }
}

impl Handler<OperatorRestart> for ProviderActor {
    type Result = ();

    fn handle(&mut self, _msg: OperatorRestart, ctx: &mut Context<Self>) {
        tracing::warn!(model = %self.health.model(), "operator restart");
        self.operator_restart = true;
        let _ = self.health.begin_crash("operator restart");
        ctx.stop();
    }
}
