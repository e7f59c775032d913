//! One turn, run as a lazily polled stream in the consumer's task.
//!
//! The [`Turn`] state machine walks its chain: connect to the next healthy endpoint (a
//! [`Generate`] round trip to its actor), relay deltas, and on a retryable failure record the
//! leg and move on — announcing `Failover` (and, in `Restart` mode, `Retract`) right before
//! the next leg's text. Nothing is spawned: the consumer's polling drives everything, so
//! dropping the stream drops the provider stream (cancellation) and no task outlives its
//! turn. One timer, always armed at `min(turn deadline, attempt limit)`, bounds every wait.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use actix::dev::SendError;
use futures_util::{StreamExt, stream};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::{Duration, Instant, Sleep};

use super::RouterInner;
use super::continuation::{Method, OverlapFilter, continue_request};
use crate::ports::llm::{
    BadRequestKind, Completion, ProviderError, StreamEvent, TimeoutPhase, Usage,
};
use crate::provider::{Generate, GuardedStream, Refused};
use crate::registry::ActorState;
use crate::turn::{
    ContinuationMode, Leg, LegOutcome, TurnError, TurnEvent, TurnRequest, TurnStream, TurnSummary,
};

/// The leg being streamed.
struct Active {
    endpoint: usize,
    stream: GuardedStream,
    method: Method,
    tokens: u32,
    /// Instruction continuations only: holds back a repeated tail of the partial text.
    filter: Option<OverlapFilter>,
    /// The `provider.attempt` span of this leg, and when the leg started.
    span: tracing::Span,
    started: Instant,
}

/// What one wait on the active leg produced.
enum Polled {
    Timer,
    Item(Option<Result<StreamEvent, ProviderError>>),
}

pub(crate) struct Turn {
    router: Arc<RouterInner>,
    request: TurnRequest,
    chain: Arc<[usize]>,
    /// Position in `chain` of the endpoint to try next (or being streamed).
    pos: usize,
    /// Provider calls made (refusals are free).
    attempts: u32,
    same_model_tries: u32,
    retry_delay: Option<Duration>,
    /// Text the consumer has received, across legs: what a fallback continues.
    delivered: String,
    /// The endpoint that produced the last delivered text (for `Retract`).
    delivered_by: Option<usize>,
    legs: Vec<Leg>,
    active: Option<Active>,
    /// Events to hand out before doing more work (`Failover`, `Retract`, `Finished`).
    pending: VecDeque<TurnEvent>,
    /// The leg that just failed and why, announced as `Failover` when the next one starts.
    failed_from: Option<(usize, &'static str)>,
    last_failure: Option<ProviderError>,
    last_refusal: Option<Refused>,
    refused_for_capacity: bool,
    /// Created on first poll: a timer needs the runtime, `run_turn` may be called outside.
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
    permit: Option<OwnedSemaphorePermit>,
    /// The consumer's span when the turn started (the `turn` span): parent of every attempt.
    span: tracing::Span,
    /// For the time-to-first-token and duration histograms.
    started: Instant,
    first_token: bool,
}

impl Turn {
    pub(crate) fn start(
        router: Arc<RouterInner>,
        request: TurnRequest,
        chain: Arc<[usize]>,
        permit: OwnedSemaphorePermit,
    ) -> TurnStream {
        let turn = Box::new(Turn {
            router,
            request,
            chain,
            pos: 0,
            attempts: 0,
            same_model_tries: 0,
            retry_delay: None,
            delivered: String::new(),
            delivered_by: None,
            legs: Vec::new(),
            active: None,
            pending: VecDeque::new(),
            failed_from: None,
            last_failure: None,
            last_refusal: None,
            refused_for_capacity: false,
            timer: None,
            done: false,
            permit: Some(permit),
            span: tracing::Span::current(),
            started: Instant::now(),
            first_token: false,
        });
        turn.publish_in_flight();
        Box::pin(stream::unfold(turn, |mut turn| async move {
            let item = turn.next().await?;
            Some((item, turn))
        }))
    }

    async fn next(&mut self) -> Option<Result<TurnEvent, TurnError>> {
        if let Some(event) = self.pending.pop_front() {
            return Some(Ok(event));
        }
        if self.done {
            return None;
        }
        let result = self.step().await;
        if result.is_err() {
            self.finish();
        }
        Some(result)
    }

    /// Runs until the next event for the consumer.
    async fn step(&mut self) -> Result<TurnEvent, TurnError> {
        loop {
            if self.active.is_none() {
                self.connect().await?;
                if let Some(event) = self.pending.pop_front() {
                    return Ok(event);
                }
                continue;
            }
            let deadline = self.request.deadline;
            let timer =
                self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            let Some(active) = self.active.as_mut() else { continue };
            let polled = tokio::select! {
                biased;
                item = active.stream.next() => Polled::Item(item),
                () = timer.as_mut() => Polled::Timer,
            };
            match polled {
                Polled::Timer => {
                    if Instant::now() >= deadline {
                        return Err(TurnError::DeadlineExceeded);
                    }
                    let phase = if active.tokens == 0 {
                        TimeoutPhase::FirstToken
                    } else {
                        TimeoutPhase::Idle
                    };
                    let error = ProviderError::Timeout(phase);
                    active.stream.abandon(&error);
                    self.leg_failed(error)?;
                }
                Polled::Item(Some(Ok(StreamEvent::Delta(text)))) => {
                    active.tokens = active.tokens.saturating_add(1);
                    let idle = Duration::from_millis(self.router.config.idle_timeout_ms);
                    timer.as_mut().reset(deadline.min(Instant::now() + idle));
                    let text = match active.filter.as_mut() {
                        None => text,
                        Some(filter) => match filter.push(&self.delivered, &text) {
                            None => continue,
                            Some(rest) => {
                                active.filter = None;
                                rest
                            }
                        },
                    };
                    if text.is_empty() {
                        continue;
                    }
                    self.delivered.push_str(&text);
                    self.delivered_by = Some(active.endpoint);
                    if !self.first_token {
                        self.first_token = true;
                        let model = self.router.endpoints[active.endpoint].health.model();
                        metrics::histogram!("switchyard_turn_time_to_first_token_seconds", "model" => model.to_owned())
                            .record(self.started.elapsed().as_secs_f64());
                    }
                    return Ok(TurnEvent::Delta(text));
                }
                Polled::Item(Some(Ok(StreamEvent::Finished(completion)))) => {
                    let held = active.filter.take().map(|mut f| f.finish(&self.delivered));
                    let summary = self.complete(completion);
                    match held.filter(|text| !text.is_empty()) {
                        Some(text) => {
                            self.delivered.push_str(&text);
                            self.pending.push_back(TurnEvent::Finished(summary));
                            return Ok(TurnEvent::Delta(text));
                        }
                        None => return Ok(TurnEvent::Finished(summary)),
                    }
                }
                Polled::Item(Some(Err(error))) => self.leg_failed(error)?,
                Polled::Item(None) => {
                    let tokens = active.tokens;
                    self.leg_failed(ProviderError::StreamBroken {
                        tokens,
                        reason: "the stream ended without a final record".into(),
                    })?
                }
            }
        }
    }

    /// Starts the next leg: the first endpoint from `pos` on that accepts the request.
    async fn connect(&mut self) -> Result<(), TurnError> {
        let router = self.router.clone();
        let config = &router.config;
        let deadline = self.request.deadline;
        loop {
            if let Some(delay) = self.retry_delay.take() {
                tokio::time::sleep_until(deadline.min(Instant::now() + delay)).await;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TurnError::DeadlineExceeded);
            }
            if self.pos >= self.chain.len() || self.attempts >= config.max_attempts {
                return Err(self.exhausted());
            }
            let index = self.chain[self.pos];
            let endpoint = &router.endpoints[index];
            let health = &endpoint.health;
            if !health.admits(now) {
                self.refused(match health.state() {
                    ActorState::Restarting => Refused::Restarting,
                    ActorState::Failed => Refused::Failed,
                    _ => Refused::CircuitOpen,
                });
                continue;
            }

            let method = if self.delivered.is_empty()
                || self.request.continuation == ContinuationMode::Restart
            {
                Method::Fresh
            } else if health.supports_prefill() {
                Method::Prefill
            } else {
                Method::Instruction
            };
            let request = continue_request(
                &self.request.request,
                &self.delivered,
                method,
                &config.continuation,
            );
            let (reply, answer) = oneshot::channel();
            match endpoint.addr.try_send(Generate { request, epoch: health.epoch(), reply }) {
                Ok(()) => health.entry().add_mailbox_depth(1),
                Err(SendError::Full(_)) => {
                    self.refused(Refused::AtCapacity);
                    continue;
                }
                Err(SendError::Closed(_)) => {
                    self.refused(Refused::Stopped);
                    continue;
                }
            }
            let timer =
                self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            timer.as_mut().reset(deadline);
            let answer = tokio::select! {
                biased;
                answer = answer => answer,
                () = timer.as_mut() => return Err(TurnError::DeadlineExceeded),
            };
            // A dropped reply means the actor stopped with our request in hand: retryable.
            let stream = match answer.unwrap_or(Err(Refused::Stopped)) {
                Ok(stream) => stream,
                Err(refused) => {
                    self.refused(refused);
                    continue;
                }
            };

            self.attempts += 1;
            if let Some((from, reason)) = self.failed_from.take()
                && from != index
            {
                self.pending.push_back(TurnEvent::Failover {
                    from: router.endpoints[from].health.model().to_owned(),
                    to: health.model().to_owned(),
                    reason,
                });
                metrics::counter!(
                    "switchyard_failovers_total",
                    "from" => router.endpoints[from].health.model().to_owned(),
                    "to" => health.model().to_owned(),
                    "reason" => reason,
                )
                .increment(1);
            }
            if self.request.continuation == ContinuationMode::Restart && !self.delivered.is_empty()
            {
                let from = self
                    .delivered_by
                    .map_or(health.model(), |i| router.endpoints[i].health.model());
                self.pending.push_back(TurnEvent::Retract { from: from.to_owned() });
                self.delivered.clear();
            }
            let filter = match method {
                Method::Instruction => OverlapFilter::new(&self.delivered, &config.continuation),
                _ => None,
            };
            let first_token = Duration::from_millis(config.first_token_timeout_ms);
            timer.as_mut().reset(deadline.min(Instant::now() + first_token));
            let span = tracing::info_span!(
                parent: &self.span,
                "provider.attempt",
                model = %health.model(),
                provider = %health.provider_kind(),
                attempt = self.attempts,
                outcome = tracing::field::Empty,
                tokens = tracing::field::Empty,
            );
            let started = Instant::now();
            self.active =
                Some(Active { endpoint: index, stream, method, tokens: 0, filter, span, started });
            return Ok(());
        }
    }

    /// The endpoint at `pos` refused without calling the provider: move on.
    fn refused(&mut self, refused: Refused) {
        self.refused_for_capacity |= refused.is_capacity();
        self.last_refusal = Some(refused);
        self.pos += 1;
        self.same_model_tries = 0;
    }

    /// The active leg failed with `error`: record it and decide where to go next.
    fn leg_failed(&mut self, error: ProviderError) -> Result<(), TurnError> {
        let Some(active) = self.active.take() else { return Ok(()) };
        drop(active.stream);
        let health = &self.router.endpoints[active.endpoint].health;
        active.span.record("outcome", error.code());
        active.span.record("tokens", active.tokens);
        record_attempt(health.provider_kind(), health.model(), error.code(), active.started);
        self.legs.push(Leg {
            model: health.model().to_owned(),
            provider: health.provider_kind().to_owned(),
            // Providers report usage only on success; what they streamed is still billed.
            usage: Usage { input_tokens: 0, output_tokens: u64::from(active.tokens) },
            outcome: LegOutcome::Failed { code: error.code() },
            provider_request_id: None,
        });
        tracing::debug!(model = %health.model(), code = error.code(), tokens = active.tokens, "leg failed");

        if active.method == Method::Prefill
            && matches!(
                error,
                ProviderError::BadRequest { kind: BadRequestKind::PrefillUnsupported, .. }
            )
        {
            // Same model again, this time with an instruction; the rejection cost nothing.
            health.mark_no_prefill();
            self.attempts = self.attempts.saturating_sub(1);
            return Ok(());
        }
        if !error.is_retryable() {
            return Err(TurnError::Rejected(error));
        }
        let config = &self.router.config;
        if active.tokens == 0
            && self.same_model_tries < config.same_model_retries
            && error.retry_after().is_none()
        {
            self.retry_delay = Some(config.retry_backoff.delay(self.same_model_tries));
            self.same_model_tries += 1;
        } else {
            self.pos += 1;
            self.same_model_tries = 0;
            self.failed_from = Some((active.endpoint, error.code()));
        }
        self.last_failure = Some(error);
        Ok(())
    }

    /// The active leg finished: the turn is done.
    fn complete(&mut self, completion: Completion) -> TurnSummary {
        let active = self.active.take();
        let endpoint = active.as_ref().map_or(0, |a| a.endpoint);
        let health = &self.router.endpoints[endpoint].health;
        self.legs.push(Leg {
            model: health.model().to_owned(),
            provider: health.provider_kind().to_owned(),
            usage: completion.usage,
            outcome: LegOutcome::Completed,
            provider_request_id: completion.provider_request_id,
        });
        if let Some(active) = &active {
            active.span.record("outcome", "completed");
            active.span.record("tokens", active.tokens);
            record_attempt(health.provider_kind(), health.model(), "completed", active.started);
        }
        metrics::histogram!("switchyard_turn_duration_seconds", "model" => health.model().to_owned())
            .record(self.started.elapsed().as_secs_f64());
        let usage = self.legs.iter().fold(Usage::default(), |sum, leg| sum + leg.usage);
        let summary = TurnSummary {
            model: health.model().to_owned(),
            provider: health.provider_kind().to_owned(),
            finish_reason: completion.finish_reason,
            usage,
            legs: std::mem::take(&mut self.legs),
            cache: crate::events::CacheStatus::Miss,
            saved_usage: Usage::default(),
            cost_micros: None,
            route: None,
        };
        self.finish();
        summary
    }

    fn exhausted(&self) -> TurnError {
        match (&self.last_failure, self.last_refusal) {
            (Some(last), _) => TurnError::Exhausted { last: last.clone() },
            (None, _) if self.refused_for_capacity => TurnError::Overloaded,
            (None, Some(refused)) => TurnError::Exhausted { last: refused.into_error() },
            (None, None) => TurnError::Exhausted {
                last: ProviderError::Unavailable("the attempt budget is spent".into()),
            },
        }
    }

    /// The turn is over: free its slot now rather than when the consumer drops the stream.
    fn finish(&mut self) {
        self.done = true;
        self.active = None;
        self.timer = None;
        if self.permit.take().is_some() {
            self.publish_in_flight();
        }
    }

    fn publish_in_flight(&self) {
        let max = self.router.config.max_concurrent_turns.max(1);
        let in_flight = max.saturating_sub(self.router.turns.available_permits());
        self.router.registration.set_in_flight(in_flight as u64);
    }
}

/// One provider attempt's outcome (`completed` or an error code) and duration.
fn record_attempt(provider: &str, model: &str, outcome: &'static str, started: Instant) {
    let (provider, model) = (provider.to_owned(), model.to_owned());
    metrics::counter!(
        "switchyard_provider_requests_total",
        "provider" => provider.clone(),
        "model" => model.clone(),
        "outcome" => outcome,
    )
    .increment(1);
    metrics::histogram!("switchyard_provider_request_duration_seconds", "provider" => provider, "model" => model)
        .record(started.elapsed().as_secs_f64());
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.publish_in_flight();
        }
    }
}
