//! Health of one model endpoint, shared by its provider actor, the streams it hands out and
//! the router.
//!
//! The router must decide "is this model worth trying?" for every turn without messaging
//! the actor, so the verdict lives in atomics here: lifecycle (running / restarting /
//! failed), circuit state and open-until, and the restart *epoch* that tells a restarted
//! actor which queued requests were sent to its previous life. Outcomes are recorded by the
//! [`super::GuardedStream`] where the stream ends (in the caller's task), so the breaker
//! sees every result without a round trip through the mailbox. Every change is mirrored into
//! the actor's [`Registry`](crate::registry::Registry) entry for the admin view.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::breaker::{Admission, CircuitBreaker, Refusal};
use super::{ProviderActorConfig, Refused};
use crate::ports::llm::ProviderError;
use crate::registry::{ActorEntry, ActorState, CircuitState};
use crate::supervisor::SupervisorConfig;

const LIFE_RUNNING: u8 = 0;
const LIFE_RESTARTING: u8 = 1;
const LIFE_FAILED: u8 = 2;

const CIRCUIT_CLOSED: u8 = 0;
const CIRCUIT_OPEN: u8 = 1;
const CIRCUIT_HALF_OPEN: u8 = 2;

/// What the restart policy decided for an actor that just stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Take traffic again at once (operator restart).
    Resume,
    /// Refuse traffic until the backoff has passed.
    Backoff(Duration),
    /// Restart budget spent: refuse traffic until an operator restarts it.
    Failed,
}

/// The shared health of one endpoint. Cheap reads, short locks.
#[derive(Debug)]
pub struct EndpointHealth {
    model: String,
    provider_kind: String,
    entry: Arc<ActorEntry>,
    base: Instant,
    life: AtomicU8,
    circuit: AtomicU8,
    /// Milliseconds since `base` until which the circuit is open.
    open_until_ms: AtomicU64,
    /// Bumped on every crash: requests stamped with an older epoch were queued for the
    /// previous life of the actor and are answered "unavailable" so they reroute at once.
    epoch: AtomicU64,
    in_flight: AtomicU64,
    prefill: AtomicBool,
    /// A crash is on its way to the actor; later panics need not send another.
    crash_pending: AtomicBool,
    breaker: Mutex<CircuitBreaker>,
    restarts: Mutex<VecDeque<Instant>>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) config: ProviderActorConfig,
}

impl EndpointHealth {
    pub(crate) fn new(model: &str, config: ProviderActorConfig, entry: Arc<ActorEntry>) -> Self {
        let now = Instant::now();
        entry.set_circuit(CircuitState::Closed);
        entry.set_state(ActorState::Running);
        Self {
            model: model.to_owned(),
            provider_kind: config.provider.clone(),
            entry,
            base: now,
            life: AtomicU8::new(LIFE_RUNNING),
            circuit: AtomicU8::new(CIRCUIT_CLOSED),
            open_until_ms: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            prefill: AtomicBool::new(config.prefill),
            crash_pending: AtomicBool::new(false),
            breaker: Mutex::new(CircuitBreaker::new(config.circuit_breaker.clone(), now)),
            restarts: Mutex::new(VecDeque::new()),
            permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            config,
        }
    }

    /// The configured model name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The provider kind (`openai`, `anthropic`, `mock`, …).
    pub fn provider_kind(&self) -> &str {
        &self.provider_kind
    }

    /// The registry entry of the endpoint's actor.
    pub fn entry(&self) -> &Arc<ActorEntry> {
        &self.entry
    }

    /// Lock-free pre-check for the router: false when the endpoint certainly refuses
    /// (restarting, failed, or circuit open and still cooling down). A true answer may
    /// still be refused by the actor (probe slots taken, at capacity).
    pub fn admits(&self, now: Instant) -> bool {
        if self.life.load(Ordering::Acquire) != LIFE_RUNNING {
            return false;
        }
        self.circuit.load(Ordering::Acquire) != CIRCUIT_OPEN
            || self.millis(now) >= self.open_until_ms.load(Ordering::Acquire)
    }

    /// The circuit as last mirrored.
    pub fn circuit(&self) -> CircuitState {
        match self.circuit.load(Ordering::Acquire) {
            CIRCUIT_OPEN => CircuitState::Open,
            CIRCUIT_HALF_OPEN => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }

    /// Lifecycle as the admin sees it.
    pub fn state(&self) -> ActorState {
        match self.life.load(Ordering::Acquire) {
            LIFE_RESTARTING => ActorState::Restarting,
            LIFE_FAILED => ActorState::Failed,
            _ => ActorState::Running,
        }
    }

    /// Whether this model is believed to accept a trailing assistant message.
    pub fn supports_prefill(&self) -> bool {
        self.prefill.load(Ordering::Relaxed)
    }

    /// The model answered `PrefillUnsupported`: continue it with an instruction from now on.
    pub fn mark_no_prefill(&self) {
        if self.prefill.swap(false, Ordering::Relaxed) {
            tracing::info!(model = %self.model, "model rejects prefill; continuing with an instruction from now on");
        }
    }

    /// Requests currently streaming from this endpoint.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Asks the circuit breaker for a slot.
    pub(crate) fn admit(&self, now: Instant) -> Result<Admission, Refused> {
        let mut breaker = self.breaker();
        let result = breaker.admit(now);
        self.mirror(&breaker);
        result.map_err(|refusal| match refusal {
            Refusal::Open { .. } => Refused::CircuitOpen,
            Refusal::ProbesBusy => Refused::ProbesBusy,
        })
    }

    pub(crate) fn record_success(&self, admission: Admission) {
        let mut breaker = self.breaker();
        breaker.on_success(Instant::now(), admission);
        self.mirror(&breaker);
    }

    /// Records a failed request; only failures that say something about the endpoint count.
    pub(crate) fn record_failure(&self, admission: Admission, error: &ProviderError) {
        self.entry.set_last_error(error.to_string());
        let mut breaker = self.breaker();
        if error.counts_against_health() {
            breaker.on_failure(Instant::now(), admission, error.retry_after());
        } else {
            breaker.on_cancel(admission);
        }
        self.mirror(&breaker);
    }

    pub(crate) fn record_cancel(&self, admission: Admission) {
        let mut breaker = self.breaker();
        breaker.on_cancel(admission);
        self.mirror(&breaker);
    }

    pub(crate) fn stream_started(&self) {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.entry.set_in_flight(n);
    }

    pub(crate) fn stream_ended(&self) {
        let n = self.in_flight.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.entry.set_in_flight(n);
    }

    /// The actor is going down (panic, fatal error, operator drill): from now on it takes no
    /// traffic, and everything already queued for it is stale. Returns false when a crash
    /// is already pending, so concurrent panics restart the actor once.
    pub(crate) fn begin_crash(&self, reason: &str) -> bool {
        if self.crash_pending.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if self.life.load(Ordering::Acquire) != LIFE_FAILED {
            self.set_life(LIFE_RESTARTING);
        }
        self.entry.set_last_error(reason);
        true
    }

    /// Applies the restart policy to a restart happening now.
    pub(crate) fn on_restart(&self, policy: &SupervisorConfig, operator: bool) -> RestartDecision {
        let now = Instant::now();
        self.crash_pending.store(false, Ordering::Release);
        self.breaker().reset(now);
        self.mirror(&self.breaker());
        let mut history = self.restarts.lock().unwrap_or_else(PoisonError::into_inner);
        if operator {
            history.clear();
            self.set_life(LIFE_RUNNING);
            return RestartDecision::Resume;
        }
        let window = Duration::from_millis(policy.restart_window_ms);
        while history.front().is_some_and(|t| now.saturating_duration_since(*t) > window) {
            history.pop_front();
        }
        history.push_back(now);
        if history.len() > policy.max_restarts as usize {
            self.set_life(LIFE_FAILED);
            return RestartDecision::Failed;
        }
        self.set_life(LIFE_RESTARTING);
        let attempt = u32::try_from(history.len().saturating_sub(1)).unwrap_or(u32::MAX);
        RestartDecision::Backoff(policy.restart_backoff.delay(attempt))
    }

    /// The backoff after a restart has passed: take traffic again.
    pub(crate) fn resume(&self) {
        if self.life.load(Ordering::Acquire) == LIFE_RESTARTING {
            self.set_life(LIFE_RUNNING);
        }
    }

    fn set_life(&self, life: u8) {
        self.life.store(life, Ordering::Release);
        self.entry.set_state(match life {
            LIFE_RESTARTING => ActorState::Restarting,
            LIFE_FAILED => ActorState::Failed,
            _ => ActorState::Running,
        });
    }

    fn breaker(&self) -> MutexGuard<'_, CircuitBreaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the breaker's state into the atomics the router reads and the registry.
    fn mirror(&self, breaker: &CircuitBreaker) {
        let state = breaker.state();
        let raw = match state {
            CircuitState::Closed => CIRCUIT_CLOSED,
            CircuitState::Open => CIRCUIT_OPEN,
            CircuitState::HalfOpen => CIRCUIT_HALF_OPEN,
        };
        self.open_until_ms.store(self.millis(breaker.open_until()), Ordering::Release);
        if self.circuit.swap(raw, Ordering::AcqRel) != raw {
            self.entry.set_circuit(state);
            tracing::info!(model = %self.model, circuit = ?state, "circuit changed");
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ActorKind, Registry};
    use crate::retries::Backoff;

    fn health(registry: &Registry) -> (EndpointHealth, crate::registry::Registration) {
        let registration = registry.register(ActorKind::Provider, "provider:m", None);
        let health =
            EndpointHealth::new("m", ProviderActorConfig::default(), registration.entry().clone());
        (health, registration)
    }

    #[test]
    fn restarts_back_off_then_exhaust_the_budget_until_an_operator_restart() {
        let registry = Registry::new();
        let (h, _registration) = health(&registry);
        let policy = SupervisorConfig {
            max_restarts: 2,
            restart_window_ms: 60_000,
            restart_backoff: Backoff { base_ms: 10, max_ms: 1_000, jitter: 0.0 },
        };
        assert!(h.begin_crash("boom"));
        assert!(!h.begin_crash("again"), "one crash at a time");
        assert!(!h.admits(Instant::now()));
        assert_eq!(
            h.on_restart(&policy, false),
            RestartDecision::Backoff(Duration::from_millis(10))
        );
        assert_eq!(h.state(), ActorState::Restarting);
        h.resume();
        assert!(h.admits(Instant::now()));
        assert_eq!(
            h.on_restart(&policy, false),
            RestartDecision::Backoff(Duration::from_millis(20))
        );
        assert_eq!(h.on_restart(&policy, false), RestartDecision::Failed);
        h.resume();
        assert_eq!(h.state(), ActorState::Failed, "only an operator brings it back");
        assert_eq!(registry.get("provider:m").unwrap().state(), ActorState::Failed);
        assert_eq!(h.on_restart(&policy, true), RestartDecision::Resume);
        assert_eq!(h.state(), ActorState::Running);
        assert_eq!(h.epoch(), 1, "the crash made queued requests stale");
    }

    #[test]
    fn only_failures_that_count_against_health_move_the_breaker() {
        let registry = Registry::new();
        let mut config = ProviderActorConfig::default();
        config.circuit_breaker.consecutive_failures = 1;
        let registration = registry.register(ActorKind::Provider, "provider:m", None);
        let h = EndpointHealth::new("m", config, registration.entry().clone());
        let bad = ProviderError::BadRequest {
            kind: crate::ports::llm::BadRequestKind::PrefillUnsupported,
            message: "no".into(),
        };
        let a = h.admit(Instant::now()).unwrap();
        h.record_failure(a, &bad);
        assert_eq!(h.circuit(), CircuitState::Closed);
        let a = h.admit(Instant::now()).unwrap();
        h.record_failure(a, &ProviderError::Server { status: 500 });
        assert_eq!(h.circuit(), CircuitState::Open);
        assert_eq!(registration.circuit(), Some(CircuitState::Open));
        assert!(!h.admits(Instant::now()));
    }
}
