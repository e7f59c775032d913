//! [`GuardedStream`]: a provider's stream as handed to the router.
//!
//! It runs in the caller's task, not in the actor, so a slow consumer never blocks the
//! actor's mailbox. It polls the provider's stream under `catch_unwind`: a panic in provider
//! code becomes a retryable failure of this one request, and the actor is told to stop so
//! its supervisor restarts it. It also holds the in-flight permit and settles the circuit
//! breaker exactly once: success on the final record, failure on an error, neutral when the
//! caller simply drops it (cancellation).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix::Addr;
use futures_util::Stream;
use tokio::sync::OwnedSemaphorePermit;

use super::breaker::Admission;
use super::health::EndpointHealth;
use super::{Crash, ProviderActor};
use crate::ports::llm::{ProviderError, ProviderStream, StreamEvent};

const PANIC_REASON: &str = "the provider panicked";

/// A running generation on one endpoint. Dropping it cancels the upstream request.
pub struct GuardedStream {
    inner: Option<ProviderStream>,
    health: Arc<EndpointHealth>,
    admission: Admission,
    actor: Addr<ProviderActor>,
    tokens: u32,
    settled: bool,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("model", &self.health.model())
            .field("tokens", &self.tokens)
            .field("settled", &self.settled)
            .finish()
    }
}

impl GuardedStream {
    pub(crate) fn new(
        inner: ProviderStream,
        health: Arc<EndpointHealth>,
        admission: Admission,
        actor: Addr<ProviderActor>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        health.stream_started();
        Self {
            inner: Some(inner),
            health,
            admission,
            actor,
            tokens: 0,
            settled: false,
            _permit: permit,
        }
    }

    /// The model this stream comes from.
    pub fn model(&self) -> &str {
        self.health.model()
    }

    /// Deltas delivered so far.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }

    /// The caller gives up on this stream for a reason that is the endpoint's fault (it
    /// stalled past the first-token or idle timeout): counts against its health.
    pub fn abandon(&mut self, error: &ProviderError) {
        self.settle_failure(error);
        self.drop_inner();
    }

    fn settle_failure(&mut self, error: &ProviderError) {
        if !self.settled {
            self.settled = true;
            self.health.record_failure(self.admission, error);
        }
    }

    /// Drops the provider's stream; its destructor is provider code too, so it may panic.
    fn drop_inner(&mut self) {
        if let Some(inner) = self.inner.take()
            && catch_unwind(AssertUnwindSafe(move || drop(inner))).is_err()
        {
            self.crash();
        }
    }

    fn crash(&self) {
        if self.health.begin_crash(PANIC_REASON) {
            self.actor.do_send(Crash { reason: PANIC_REASON });
        }
    }
}

impl Stream for GuardedStream {
    type Item = Result<StreamEvent, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll_next(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Some(Ok(StreamEvent::Delta(text))))) => {
                this.tokens = this.tokens.saturating_add(1);
                Poll::Ready(Some(Ok(StreamEvent::Delta(text))))
            }
            Ok(Poll::Ready(Some(Ok(StreamEvent::Finished(completion))))) => {
                if !this.settled {
                    this.settled = true;
                    this.health.record_success(this.admission);
                }
                this.drop_inner();
                Poll::Ready(Some(Ok(StreamEvent::Finished(completion))))
            }
            Ok(Poll::Ready(Some(Err(error)))) => {
                this.settle_failure(&error);
                this.drop_inner();
                Poll::Ready(Some(Err(error)))
            }
            Ok(Poll::Ready(None)) => {
                let error = ProviderError::StreamBroken {
                    tokens: this.tokens,
                    reason: "the stream ended without a final record".into(),
                };
                this.settle_failure(&error);
                this.drop_inner();
                Poll::Ready(Some(Err(error)))
            }
            Err(_panic) => {
                let error = ProviderError::StreamBroken {
                    tokens: this.tokens,
                    reason: PANIC_REASON.into(),
                };
                tracing::error!(model = %this.health.model(), "provider panicked mid-stream; restarting its actor");
                this.settle_failure(&error);
                this.drop_inner();
                this.crash();
                Poll::Ready(Some(Err(error)))
            }
        }
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        if !self.settled {
            self.health.record_cancel(self.admission);
        }
        self.drop_inner();
        self.health.stream_ended();
    }
}
