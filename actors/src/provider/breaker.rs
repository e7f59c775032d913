//! The circuit breaker of one model endpoint: a plain state machine, no I/O, no clock of
//! its own (every method takes `now`), so it is unit-tested without an actor or a runtime.
//!
//! Closed → Open on a run of consecutive failures, or when the failure rate over a sliding
//! time window reaches a threshold once the window holds enough calls. Open → HalfOpen once
//! the cool-down has passed; HalfOpen lets a few probes through: one success closes the
//! circuit, one failure opens it again. A rate limit or overload that says `Retry-After`
//! opens the circuit for that long whatever the counts say. [`super::health`] wraps it in
//! a mutex and mirrors its state into atomics the router reads without locking.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::registry::CircuitState;

/// Thresholds of a circuit breaker. Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Open after this many failures in a row (0 disables the rule).
    pub consecutive_failures: u32,
    /// Open when failures / calls over the window reach this (0..=1; 0 disables the rule).
    pub failure_rate: f64,
    /// The sliding window the failure rate is computed over.
    pub window_ms: u64,
    /// The rate rule applies only once the window holds at least this many calls.
    pub min_calls: u32,
    /// How long the circuit stays open before probing.
    pub cooldown_ms: u64,
    /// How many probe requests may be in flight while half-open.
    pub half_open_probes: u32,
    /// Upper bound on a provider's `Retry-After`, so a bogus header cannot park a model.
    pub max_retry_after_ms: u64,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window_ms: 30_000,
            min_calls: 20,
            cooldown_ms: 5_000,
            half_open_probes: 1,
            max_retry_after_ms: 60_000,
        }
    }
}

/// How a request was let through; hand it back with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Circuit closed: a normal call.
    Normal,
    /// Circuit half-open: this call decides whether it closes.
    Probe,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Open until the given instant.
    Open { until: Instant },
    /// Half-open and every probe slot is taken.
    ProbesBusy,
}

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (`elapsed / width`) the counts belong to.
    slot: u64,
    calls: u32,
    failures: u32,
}

/// One endpoint's breaker. Not thread-safe by itself; see [`super::health::EndpointHealth`].
#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    state: CircuitState,
    open_until: Instant,
    probes_in_flight: u32,
    consecutive: u32,
    /// Time-bucketed counts: constant memory whatever the request rate.
    buckets: [Bucket; BUCKETS],
    epoch: Instant,
}

impl CircuitBreaker {
    pub fn new(config: CircuitBreakerConfig, now: Instant) -> Self {
        Self {
            config,
            state: CircuitState::Closed,
            open_until: now,
            probes_in_flight: 0,
            consecutive: 0,
            buckets: [Bucket::default(); BUCKETS],
            epoch: now,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Until when the circuit is open (meaningful only in [`CircuitState::Open`]).
    pub fn open_until(&self) -> Instant {
        self.open_until
    }

    /// Back to a fresh closed circuit (a restarted actor starts clean).
    pub fn reset(&mut self, now: Instant) {
        *self = Self::new(self.config.clone(), now);
    }

    /// Asks to send one request.
    pub fn admit(&mut self, now: Instant) -> Result<Admission, Refusal> {
        if self.state == CircuitState::Open {
            if now < self.open_until {
                return Err(Refusal::Open { until: self.open_until });
            }
            self.state = CircuitState::HalfOpen;
            self.probes_in_flight = 0;
        }
        match self.state {
            CircuitState::Closed => Ok(Admission::Normal),
            _ if self.probes_in_flight < self.config.half_open_probes.max(1) => {
                self.probes_in_flight += 1;
                Ok(Admission::Probe)
            }
            _ => Err(Refusal::ProbesBusy),
        }
    }

    /// The request completed normally.
    pub fn on_success(&mut self, now: Instant, admission: Admission) {
        match admission {
            Admission::Probe => {
                self.release_probe();
                if self.state == CircuitState::HalfOpen {
                    self.close(now);
                }
            }
            Admission::Normal => {
                self.consecutive = 0;
                self.record(now, false);
            }
        }
    }

    /// The request failed in a way that counts against the endpoint's health.
    pub fn on_failure(
        &mut self,
        now: Instant,
        admission: Admission,
        retry_after: Option<Duration>,
    ) {
        let cooldown = Duration::from_millis(self.config.cooldown_ms);
        match admission {
            Admission::Probe => {
                self.release_probe();
                self.open(now + cooldown);
            }
            Admission::Normal => {
                self.consecutive = self.consecutive.saturating_add(1);
                self.record(now, true);
                if self.state == CircuitState::Closed && self.should_trip(now) {
                    self.open(now + cooldown);
                }
            }
        }
        if let Some(wait) = retry_after {
            let wait = wait.min(Duration::from_millis(self.config.max_retry_after_ms));
            self.open(now + wait);
        }
    }

    /// The request ended without a verdict (cancelled by the caller, or refused before it
    /// reached the provider): frees a probe slot without judging the endpoint.
    pub fn on_cancel(&mut self, admission: Admission) {
        if admission == Admission::Probe {
            self.release_probe();
        }
    }

    /// Opens the circuit until `until` at least (operator drills, `Retry-After`).
    pub fn open(&mut self, until: Instant) {
        if self.state != CircuitState::Open || until > self.open_until {
            self.open_until = until;
        }
        self.state = CircuitState::Open;
    }

    fn close(&mut self, now: Instant) {
        let probes = self.probes_in_flight;
        self.reset(now);
        self.probes_in_flight = probes;
    }

    fn release_probe(&mut self) {
        self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
    }

    fn should_trip(&self, now: Instant) -> bool {
        let c = &self.config;
        if c.consecutive_failures > 0 && self.consecutive >= c.consecutive_failures {
            return true;
        }
        if c.failure_rate <= 0.0 {
            return false;
        }
        let current = self.slot(now);
        let (calls, failures) = self
            .buckets
            .iter()
            .filter(|b| b.slot + BUCKETS as u64 > current && b.slot <= current)
            .fold((0u32, 0u32), |(c, f), b| (c + b.calls, f + b.failures));
        calls >= c.min_calls.max(1) && f64::from(failures) / f64::from(calls) >= c.failure_rate
    }

    fn slot(&self, now: Instant) -> u64 {
        let width = (self.config.window_ms.max(BUCKETS as u64) / BUCKETS as u64).max(1);
        let elapsed = u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        elapsed / width
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let slot = self.slot(now);
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket { slot, calls: 0, failures: 0 };
        }
        bucket.calls += 1;
        bucket.failures += u32::from(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window_ms: 10_000,
            min_calls: 10,
            cooldown_ms: 1_000,
            half_open_probes: 1,
            max_retry_after_ms: 60_000,
        }
    }

    fn fail(b: &mut CircuitBreaker, now: Instant) {
        let a = b.admit(now).unwrap();
        b.on_failure(now, a, None);
    }

    fn succeed(b: &mut CircuitBreaker, now: Instant) {
        let a = b.admit(now).unwrap();
        b.on_success(now, a);
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_and_closes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config(), t0);
        fail(&mut b, t0);
        fail(&mut b, t0);
        assert_eq!(b.state(), CircuitState::Closed);
        fail(&mut b, t0);
        assert_eq!(b.state(), CircuitState::Open);
        assert!(matches!(b.admit(t0 + Duration::from_millis(999)), Err(Refusal::Open { .. })));

        let later = t0 + Duration::from_millis(1_000);
        let probe = b.admit(later).unwrap();
        assert_eq!(probe, Admission::Probe);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.admit(later), Err(Refusal::ProbesBusy), "one probe at a time");
        b.on_success(later, probe);
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.admit(later), Ok(Admission::Normal));
    }

    #[test]
    fn a_failed_probe_reopens_and_a_cancelled_one_frees_its_slot() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config(), t0);
        (0..3).for_each(|_| fail(&mut b, t0));
        let t1 = t0 + Duration::from_secs(1);
        let probe = b.admit(t1).unwrap();
        b.on_cancel(probe);
        let probe = b.admit(t1).unwrap();
        b.on_failure(t1, probe, None);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.open_until(), t1 + Duration::from_secs(1));
    }

    #[test]
    fn opens_on_failure_rate_once_the_window_has_enough_calls() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config(), t0);
        // Alternate so the consecutive rule never fires: 5 failures out of 9 calls.
        for i in 0..9 {
            if i % 2 == 0 { fail(&mut b, t0) } else { succeed(&mut b, t0) }
        }
        assert_eq!(b.state(), CircuitState::Closed, "below the minimum number of calls");
        succeed(&mut b, t0);
        fail(&mut b, t0);
        assert_eq!(b.state(), CircuitState::Open, "6 of 11 failed");
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config(), t0);
        for i in 0..10 {
            if i % 2 == 0 { fail(&mut b, t0) } else { succeed(&mut b, t0) }
        }
        let t1 = t0 + Duration::from_secs(11);
        succeed(&mut b, t1);
        fail(&mut b, t1);
        assert_eq!(b.state(), CircuitState::Closed, "the first ten calls are outside the window");
    }

    #[test]
    fn retry_after_opens_for_that_long() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config(), t0);
        let a = b.admit(t0).unwrap();
        b.on_failure(t0, a, Some(Duration::from_secs(7)));
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.open_until(), t0 + Duration::from_secs(7));
    }
}
