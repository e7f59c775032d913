//! A scripted, in-memory [`LlmProvider`] for tests, drills and benchmarks: no network, no
//! clock, deterministic.
//!
//! Every fake model "knows" one answer per prompt, [`reply_for`] of the latest user message,
//! and streams it a word per delta. So any model can continue any other's partial answer
//! (prefill: the rest after the trailing assistant text; instruction: the same, optionally
//! repeating the last few characters to exercise de-duplication), and a test can assert the
//! exact text a turn must produce, whichever legs it took. Behaviour per call comes from a
//! script of [`Step`]s, then a default step, optionally with seeded random failures. The
//! fake counts calls and open streams, and notices streams dropped before they finished.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::Stream;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;

use crate::ports::llm::{
    BadRequestKind, ChatMessage, Completion, FinishReason, GenerationRequest, LlmProvider,
    ProviderError, ProviderStream, Role, StreamEvent, Usage,
};
use crate::router::ContinuationConfig;

/// The answer every fake model gives to `prompt`.
pub fn reply_for(prompt: &str) -> String {
    format!("Reply to {prompt}: the quick brown fox jumps over the lazy dog and runs far away.")
}

/// What one call does.
#[derive(Debug, Clone)]
pub enum Step {
    /// Stream the whole answer (or the continuation asked for).
    Answer,
    /// Fail before the first delta.
    Fail(ProviderError),
    /// Stream this many deltas, then break (`StreamBroken`).
    BreakAfter(u32),
    /// Stream this many deltas, then panic inside `poll_next`.
    PanicAfter(u32),
    /// Panic inside `LlmProvider::stream` itself.
    PanicOnStart,
    /// Never produce anything.
    Hang,
    /// Stream this many deltas, then never produce anything more.
    HangAfter(u32),
    /// Wait until the semaphore grants a permit, then answer.
    Gate(Arc<Semaphore>),
}

#[derive(Debug)]
struct Inner {
    model: String,
    script: Mutex<VecDeque<Step>>,
    default: Mutex<Step>,
    random: Mutex<Option<(f64, SmallRng)>>,
    reject_prefill: AtomicBool,
    repeat_tail: AtomicUsize,
    interleave: AtomicBool,
    calls: AtomicU64,
    open: AtomicU64,
    cancelled: AtomicU64,
    last_request: Mutex<Option<GenerationRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The scripted fake. Clones share the script and the counters.
#[derive(Debug, Clone)]
pub struct FakeProvider {
    inner: Arc<Inner>,
}

impl FakeProvider {
    /// A model that answers every call.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                model: model.into(),
                script: Mutex::new(VecDeque::new()),
                default: Mutex::new(Step::Answer),
                random: Mutex::new(None),
                reject_prefill: AtomicBool::new(false),
                repeat_tail: AtomicUsize::new(0),
                interleave: AtomicBool::new(false),
                calls: AtomicU64::new(0),
                open: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                last_request: Mutex::new(None),
            }),
        }
    }

    /// Adds a step for the next unscripted call.
    pub fn then(self, step: Step) -> Self {
        lock(&self.inner.script).push_back(step);
        self
    }

    /// What calls do once the script is used up (default [`Step::Answer`]).
    pub fn otherwise(self, step: Step) -> Self {
        *lock(&self.inner.default) = step;
        self
    }

    /// Unscripted calls fail with probability `rate` (half before the first delta, half
    /// mid-stream), drawn from a generator seeded with `seed`.
    pub fn failing_randomly(self, rate: f64, seed: u64) -> Self {
        *lock(&self.inner.random) = Some((rate, SmallRng::seed_from_u64(seed)));
        self
    }

    /// Answers a trailing assistant message with `PrefillUnsupported`.
    pub fn rejecting_prefill(self) -> Self {
        self.inner.reject_prefill.store(true, Ordering::Relaxed);
        self
    }

    /// When asked to continue by instruction, repeats the last `chars` bytes of the partial
    /// text first (as real models sometimes do).
    pub fn repeating_tail(self, chars: usize) -> Self {
        self.inner.repeat_tail.store(chars, Ordering::Relaxed);
        self
    }

    /// Yields to the scheduler between deltas, so concurrent streams interleave.
    pub fn interleaved(self) -> Self {
        self.inner.interleave.store(true, Ordering::Relaxed);
        self
    }

    /// As the trait object the tree takes.
    pub fn shared(&self) -> Arc<dyn LlmProvider> {
        Arc::new(self.clone())
    }

    /// Calls to `stream` so far.
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Streams created and not yet dropped.
    pub fn open_streams(&self) -> u64 {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Streams dropped before they had ended (cancelled by the caller).
    pub fn cancelled_streams(&self) -> u64 {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// The request of the latest call.
    pub fn last_request(&self) -> Option<GenerationRequest> {
        lock(&self.inner.last_request).clone()
    }

    fn next_step(&self) -> Step {
        if let Some(step) = lock(&self.inner.script).pop_front() {
            return step;
        }
        if let Some((rate, rng)) = lock(&self.inner.random).as_mut()
            && rng.random_bool(rate.clamp(0.0, 1.0))
        {
            return if rng.random_bool(0.5) {
                Step::Fail(ProviderError::Server { status: 503 })
            } else {
                Step::BreakAfter(rng.random_range(1..6))
            };
        }
        lock(&self.inner.default).clone()
    }
}

/// What text a call must produce: the answer, or the part of it after the partial text.
///
/// The prompt is the latest real user message, so multi-turn conversations get a fresh
/// answer per turn. A continuation is recognised by its shape: a trailing assistant message
/// (prefill), or the router's continuation instruction after an assistant message.
fn text_for(request: &GenerationRequest, repeat_tail: usize) -> (String, bool) {
    let messages = &request.messages;
    let latest_user = |messages: &[ChatMessage]| {
        messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or(String::new(), |m| m.content.clone())
    };
    let n = messages.len();
    let instruction = ContinuationConfig::default().instruction;
    let (prompt, partial, back, prefill) = match messages.last() {
        Some(last) if last.role == Role::Assistant => {
            (latest_user(messages), Some(last.content.as_str()), 0, true)
        }
        Some(last)
            if last.content == instruction && n >= 3 && messages[n - 2].role == Role::Assistant =>
        {
            (
                latest_user(&messages[..n - 2]),
                Some(messages[n - 2].content.as_str()),
                repeat_tail,
                false,
            )
        }
        _ => (latest_user(messages), None, 0, false),
    };
    let full = reply_for(&prompt);
    let Some(partial) = partial else { return (full, prefill) };
    if !full.starts_with(partial) {
        return (full, prefill);
    }
    let mut start = partial.len().saturating_sub(back).min(full.len());
    while !full.is_char_boundary(start) {
        start -= 1;
    }
    (full[start..].to_owned(), prefill)
}

impl LlmProvider for FakeProvider {
    #[allow(clippy::panic, reason = "a scripted panic is the point of this step")]
    fn stream(&self, request: GenerationRequest) -> ProviderStream {
        let inner = &self.inner;
        inner.calls.fetch_add(1, Ordering::SeqCst);
        let (text, prefill) = text_for(&request, inner.repeat_tail.load(Ordering::Relaxed));
        let input_tokens =
            request.messages.iter().map(|m| m.content.split_whitespace().count() as u64).sum();
        *lock(&inner.last_request) = Some(request);

        let step = if prefill && inner.reject_prefill.load(Ordering::Relaxed) {
            Step::Fail(ProviderError::BadRequest {
                kind: BadRequestKind::PrefillUnsupported,
                message: "this model does not support assistant prefill".into(),
            })
        } else {
            self.next_step()
        };
        let (limit, end, error, gate) = match step {
            Step::Answer => (None, End::Finish, None, None),
            Step::Fail(e) => (None, End::Finish, Some(e), None),
            Step::BreakAfter(n) => (Some(n), End::Break, None, None),
            Step::PanicAfter(n) => (Some(n), End::Panic, None, None),
            Step::PanicOnStart => panic!("scripted panic in LlmProvider::stream"),
            Step::Hang => (Some(0), End::Hang, None, None),
            Step::HangAfter(n) => (Some(n), End::Hang, None, None),
            Step::Gate(permits) => {
                let wait: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                    let _ = permits.acquire_owned().await.map(|p| p.forget());
                });
                (None, End::Finish, None, Some(wait))
            }
        };
        inner.open.fetch_add(1, Ordering::SeqCst);
        Box::pin(FakeStream {
            inner: inner.clone(),
            model: inner.model.clone(),
            text,
            pos: 0,
            emitted: 0,
            limit,
            end,
            error,
            gate,
            yielded: false,
            interleave: inner.interleave.load(Ordering::Relaxed),
            input_tokens,
            ended: false,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finish,
    Break,
    Panic,
    Hang,
}

struct FakeStream {
    inner: Arc<Inner>,
    model: String,
    text: String,
    pos: usize,
    emitted: u32,
    limit: Option<u32>,
    end: End,
    error: Option<ProviderError>,
    gate: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    yielded: bool,
    interleave: bool,
    input_tokens: u64,
    ended: bool,
}

impl Stream for FakeStream {
    type Item = Result<StreamEvent, ProviderError>;

    #[allow(clippy::panic, reason = "a scripted panic is the point of this step")]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(error) = this.error.take() {
            this.ended = true;
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(gate) = this.gate.as_mut() {
            if gate.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.gate = None;
        }
        if this.interleave && !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.yielded = false;
        let more = this.limit.is_none_or(|n| this.emitted < n);
        if more && this.pos < this.text.len() {
            let rest = &this.text[this.pos..];
            let len = rest.find(' ').map_or(rest.len(), |i| i + 1);
            let piece = rest[..len].to_owned();
            this.pos += len;
            this.emitted += 1;
            return Poll::Ready(Some(Ok(StreamEvent::Delta(piece))));
        }
        match this.end {
            End::Finish => {
                this.ended = true;
                Poll::Ready(Some(Ok(StreamEvent::Finished(Completion {
                    usage: Usage {
                        input_tokens: this.input_tokens,
                        output_tokens: u64::from(this.emitted),
                    },
                    finish_reason: FinishReason::Stop,
                    model: this.model.clone(),
                    provider_request_id: None,
                }))))
            }
            End::Break => {
                this.ended = true;
                Poll::Ready(Some(Err(ProviderError::StreamBroken {
                    tokens: this.emitted,
                    reason: "scripted break".into(),
                })))
            }
            End::Panic => {
                this.ended = true;
                panic!("scripted panic mid-stream")
            }
            End::Hang => Poll::Pending,
        }
    }
}

impl Drop for FakeStream {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::SeqCst);
        if !self.ended {
            self.inner.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::llm::{ChatMessage, collect_stream};

    fn ask(prompt: &str) -> GenerationRequest {
        GenerationRequest { messages: vec![ChatMessage::user(prompt)], ..Default::default() }
    }

    #[tokio::test]
    async fn answers_and_continues_deterministically() {
        let fake = FakeProvider::new("m");
        let full = reply_for("hi");
        assert_eq!(collect_stream(fake.stream(ask("hi"))).await.unwrap().text, full);

        let mut prefill = ask("hi");
        prefill.messages.push(ChatMessage::assistant(&full[..10]));
        assert_eq!(collect_stream(fake.stream(prefill)).await.unwrap().text, full[10..]);

        let fake = fake.repeating_tail(4);
        let mut instructed = ask("hi");
        instructed.messages.push(ChatMessage::assistant(&full[..10]));
        instructed.messages.push(ChatMessage::user(ContinuationConfig::default().instruction));
        assert_eq!(collect_stream(fake.stream(instructed)).await.unwrap().text, full[6..]);
        assert_eq!(fake.calls(), 3);
        assert_eq!(fake.open_streams(), 0);
        assert_eq!(fake.cancelled_streams(), 0);
    }

    #[tokio::test]
    async fn follows_its_script_then_the_default() {
        let fake = FakeProvider::new("m")
            .then(Step::Fail(ProviderError::Connect))
            .then(Step::BreakAfter(2))
            .rejecting_prefill();
        let err = collect_stream(fake.stream(ask("a"))).await.unwrap_err();
        assert_eq!(err, ProviderError::Connect);
        let err = collect_stream(fake.stream(ask("a"))).await.unwrap_err();
        assert!(matches!(err, ProviderError::StreamBroken { tokens: 2, .. }));
        let mut prefill = ask("a");
        prefill.messages.push(ChatMessage::assistant("Reply"));
        let err = collect_stream(fake.stream(prefill)).await.unwrap_err();
        assert_eq!(err.code(), "prefill_unsupported");
        assert!(collect_stream(fake.stream(ask("a"))).await.is_ok());
        let hanging = FakeProvider::new("h").otherwise(Step::Hang);
        drop(hanging.stream(ask("a")));
        assert_eq!(hanging.cancelled_streams(), 1);
    }
}
