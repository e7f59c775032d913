//! The streaming body shared by both APIs: a hand-rolled `Stream` state machine that paces
//! tokens, injects in-stream faults and keeps the stats honest.
//!
//! Provider specifics live behind [`Wire`], which writes one provider's SSE frames into a
//! reused `BytesMut`. Per token the hot path is: one timer reset, one small copy into the
//! buffer, one `split().freeze()` (which reuses the allocation once the previous frame has been
//! written out), and no locks.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use super::Counters;
use super::scenario::Scenario;
use super::text::{Finish, Generation, Step};

/// One provider's SSE framing.
pub(crate) trait Wire: Unpin + 'static {
    /// Frames sent with the response head, before the first token.
    fn preamble(&self, out: &mut BytesMut);
    /// One token frame.
    fn token(&self, out: &mut BytesMut, token: &str);
    /// Everything after the last token, through the terminator.
    fn finish(&self, out: &mut BytesMut, finish: &Finish, output_tokens: u32);
    /// The provider's in-band error event (`break_after`).
    fn in_band_error(&self, out: &mut BytesMut);
    /// A frame whose data is not valid JSON (`malformed_after`).
    fn malformed(&self, out: &mut BytesMut);
}

/// Counts a stream in `active_streams` while it lives, and on drop classifies how it ended:
/// finished, aborted by the fake on purpose, or dropped by the client (an unfinished body
/// dropped by the server means the connection went away).
pub(crate) struct StreamGuard {
    counters: Arc<Counters>,
    finished: bool,
    aborted: bool,
}

impl StreamGuard {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        counters.active_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard { counters, finished: false, aborted: false }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let c = &self.counters;
        c.active_streams.fetch_sub(1, Ordering::Relaxed);
        if self.finished {
            c.completed_streams.fetch_add(1, Ordering::Relaxed);
        } else if !self.aborted {
            c.client_disconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Preamble,
    Next,
    Sleeping,
    /// `drop_after` fired: one `Pending` lets the server flush what was sent, then abort.
    Dropping,
    Hanging,
    Ending,
    Done,
}

/// In-stream faults, each firing once after that many tokens were sent.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Faults {
    pub break_after: Option<u32>,
    pub drop_after: Option<u32>,
    pub hang_after: Option<u32>,
    pub malformed_after: Option<u32>,
}

impl Faults {
    pub(crate) fn from_scenario(s: &Scenario) -> Self {
        Faults {
            break_after: s.break_after,
            drop_after: s.drop_after,
            hang_after: s.hang_after,
            malformed_after: s.malformed_after,
        }
    }
}

/// Frames reserved up front; most fit, so the buffer rarely grows.
const FRAME_CAPACITY: usize = 4096;

/// The SSE body of one streamed completion.
pub(crate) struct TokenStream<W: Wire> {
    wire: W,
    generation: Generation,
    faults: Faults,
    malformed_sent: bool,
    ttft: Duration,
    delay: Duration,
    emitted: u32,
    pending: &'static str,
    phase: Phase,
    sleep: Pin<Box<Sleep>>,
    buf: BytesMut,
    guard: StreamGuard,
}

impl<W: Wire> TokenStream<W> {
    pub(crate) fn new(
        wire: W,
        generation: Generation,
        scenario: &Scenario,
        counters: Arc<Counters>,
    ) -> Self {
        TokenStream {
            wire,
            generation,
            faults: Faults::from_scenario(scenario),
            malformed_sent: false,
            ttft: Duration::from_millis(scenario.ttft_ms),
            delay: Duration::from_millis(scenario.token_delay_ms),
            emitted: 0,
            pending: "",
            phase: Phase::Preamble,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            buf: BytesMut::with_capacity(FRAME_CAPACITY),
            guard: StreamGuard::new(counters),
        }
    }

    fn take_frame(&mut self) -> Bytes {
        let frame = self.buf.split().freeze();
        // Reclaims the original allocation when earlier frames have already been written out.
        self.buf.reserve(FRAME_CAPACITY);
        frame
    }

    fn injected(&self) {
        self.guard.counters.errors_injected.fetch_add(1, Ordering::Relaxed);
    }
}

impl<W: Wire> Stream for TokenStream<W> {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.phase {
                Phase::Preamble => {
                    this.wire.preamble(&mut this.buf);
                    this.phase = Phase::Next;
                    return Poll::Ready(Some(Ok(this.take_frame())));
                }
                Phase::Next => {
                    let n = Some(this.emitted);
                    if this.faults.drop_after == n {
                        this.injected();
                        this.guard.aborted = true;
                        this.phase = Phase::Dropping;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    if this.faults.break_after == n {
                        this.injected();
                        this.wire.in_band_error(&mut this.buf);
                        this.phase = Phase::Ending;
                        return Poll::Ready(Some(Ok(this.take_frame())));
                    }
                    if this.faults.hang_after == n {
                        // Never woken: the connection stays open and silent until the client
                        // gives up, which drops this stream and counts a disconnect.
                        this.phase = Phase::Hanging;
                        continue;
                    }
                    if this.faults.malformed_after == n && !this.malformed_sent {
                        this.malformed_sent = true;
                        this.injected();
                        this.wire.malformed(&mut this.buf);
                        return Poll::Ready(Some(Ok(this.take_frame())));
                    }
                    match this.generation.step() {
                        Step::End(finish) => {
                            this.wire.finish(&mut this.buf, &finish, this.emitted);
                            this.phase = Phase::Ending;
                            return Poll::Ready(Some(Ok(this.take_frame())));
                        }
                        Step::Token(token) => {
                            this.pending = token;
                            let wait = if this.emitted == 0 { this.ttft } else { this.delay };
                            if !wait.is_zero() {
                                this.sleep.as_mut().reset(Instant::now() + wait);
                            }
                            this.phase = Phase::Sleeping;
                        }
                    }
                }
                Phase::Sleeping => {
                    if this.sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.wire.token(&mut this.buf, this.pending);
                    this.emitted += 1;
                    this.phase = Phase::Next;
                    return Poll::Ready(Some(Ok(this.take_frame())));
                }
                Phase::Dropping => {
                    this.phase = Phase::Done;
                    return Poll::Ready(Some(Err(io::Error::other(
                        "fake-llm drop_after: aborting the connection on purpose",
                    ))));
                }
                Phase::Hanging => return Poll::Pending,
                Phase::Ending => {
                    this.guard.finished = true;
                    this.phase = Phase::Done;
                    return Poll::Ready(None);
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }
}

/// The in-stream fault a non-streaming answer of `generated` tokens runs into, if any; same
/// precedence as the streaming path when several fire at the same count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFault {
    Drop,
    Break,
    Hang,
    Malformed,
}

impl Faults {
    pub(crate) fn for_whole_body(&self, generated: u32) -> Option<BodyFault> {
        let hit = |n: Option<u32>| n.is_some_and(|n| n <= generated);
        let fired = [
            (self.drop_after, BodyFault::Drop),
            (self.break_after, BodyFault::Break),
            (self.hang_after, BodyFault::Hang),
            (self.malformed_after, BodyFault::Malformed),
        ];
        fired.into_iter().filter(|(n, _)| hit(*n)).min_by_key(|(n, _)| *n).map(|(_, f)| f)
    }
}

/// Total generation time of a non-streaming answer: first token after `ttft`, then one
/// `token_delay` per further token, as if it had been streamed.
pub(crate) fn generation_time(s: &Scenario, generated: u32) -> Duration {
    Duration::from_millis(
        s.ttft_ms.saturating_add(
            s.token_delay_ms.saturating_mul(u64::from(generated.saturating_sub(1))),
        ),
    )
}

/// A JSON body cut off mid-way by aborting the connection (`drop_after` without streaming).
pub(crate) fn truncated_body(
    full: Vec<u8>,
) -> impl Stream<Item = Result<Bytes, io::Error>> + 'static {
    use futures_util::StreamExt;
    let half = Bytes::from(full).slice(..);
    let cut = half.len() / 2;
    futures_util::stream::iter([Ok(half.slice(..cut))]).chain(futures_util::stream::once(async {
        // Give the server a moment to flush the first half before the abort drops it.
        tokio::time::sleep(Duration::from_millis(5)).await;
        Err(io::Error::other("fake-llm drop_after: aborting the connection on purpose"))
    }))
}
