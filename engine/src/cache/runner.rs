//! [`CachingRunner`]: the response cache as a `TurnRunner` decorator around the router.
//!
//! A hit is streamed as a live reply would be — `Delta`s, then `Finished` — with zero usage,
//! no legs, provider `cache` and `cache: exact | semantic` in the summary (the conversation
//! actor puts that into its `done` event). A miss runs the inner runner and passes every
//! event through untouched, and stores the answer only when the turn finished normally on
//! one model: not after a `Retract` or a `Failover` (a stitched or restarted answer), not
//! when cut (`length`, content filter, error, cancellation — the stream dropped early).

use std::sync::Arc;

use actors::events::CacheStatus;
use actors::ports::llm::{FinishReason, Usage};
use actors::turn::{TurnEvent, TurnRequest, TurnRunner, TurnStream, TurnSummary};
use futures_util::{StreamExt, stream};

use super::{Cache, CachedAnswer, Lookup};

/// Wraps `inner` (the router) with `cache`.
pub struct CachingRunner {
    inner: Arc<dyn TurnRunner>,
    cache: Arc<Cache>,
}

impl CachingRunner {
    pub fn new(inner: Arc<dyn TurnRunner>, cache: Arc<Cache>) -> CachingRunner {
        CachingRunner { inner, cache }
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }
}

impl TurnRunner for CachingRunner {
    fn run_turn(&self, request: TurnRequest) -> TurnStream {
        let inner = self.inner.clone();
        let cache = self.cache.clone();
        // The caller's (turn) span: the stream is polled outside it, so the lookup and the
        // router's spans are parented explicitly.
        let span = tracing::Span::current();
        let lookup = async move {
            let lookup_span =
                tracing::info_span!(parent: &span, "cache.lookup", result = tracing::field::Empty);
            let outcome = tracing::Instrument::instrument(
                cache.lookup(&request.tenant_id, &request.model, &request.request, request.cache),
                lookup_span.clone(),
            )
            .await;
            lookup_span.record(
                "result",
                match &outcome {
                    Lookup::Hit { kind: CacheStatus::Exact, .. } => "exact_hit",
                    Lookup::Hit { .. } => "semantic_hit",
                    Lookup::Miss { .. } => "miss",
                    Lookup::Skip => "skip",
                },
            );
            drop(lookup_span);
            match outcome {
                Lookup::Hit { answer, kind } => replay(answer, kind),
                Lookup::Skip => span.in_scope(|| inner.run_turn(request)),
                Lookup::Miss { key, vector } => {
                    let tenant = request.tenant_id.clone();
                    let mut text = String::new();
                    let mut clean = true;
                    let mut pending = Some((key, vector));
                    span.in_scope(|| inner.run_turn(request))
                        .map(move |item| {
                            match &item {
                                Ok(TurnEvent::Delta(piece)) => text.push_str(piece),
                                Ok(TurnEvent::Retract { .. } | TurnEvent::Failover { .. }) => {
                                    clean = false;
                                }
                                Ok(TurnEvent::Finished(summary)) => {
                                    let complete = matches!(
                                        summary.finish_reason,
                                        FinishReason::Stop | FinishReason::StopSequence
                                    );
                                    if clean
                                        && complete
                                        && let Some((key, vector)) = pending.take()
                                    {
                                        let answer = CachedAnswer {
                                            text: std::mem::take(&mut text),
                                            model: summary.model.clone(),
                                            finish_reason: summary.finish_reason,
                                            usage: summary.usage,
                                        };
                                        cache.store(&tenant, key, vector, answer);
                                    }
                                }
                                Err(_) => clean = false,
                            }
                            item
                        })
                        .boxed()
                }
            }
        };
        stream::once(lookup).flatten().boxed()
    }
}

/// The cached answer as a stream of deltas (a few words each, as a model streams) and a
/// zero-cost summary.
fn replay(answer: CachedAnswer, kind: CacheStatus) -> TurnStream {
    let mut events: Vec<Result<TurnEvent, actors::turn::TurnError>> =
        chunks(&answer.text).into_iter().map(|c| Ok(TurnEvent::Delta(c))).collect();
    events.push(Ok(TurnEvent::Finished(TurnSummary {
        model: answer.model,
        provider: "cache".into(),
        finish_reason: answer.finish_reason,
        usage: Usage::default(),
        legs: Vec::new(),
        cache: kind,
        saved_usage: answer.usage,
        cost_micros: None,
        route: None,
    })));
    stream::iter(events).boxed()
}

/// Splits `text` after every few words, keeping every byte (whitespace included).
fn chunks(text: &str) -> Vec<String> {
    const WORDS_PER_CHUNK: usize = 3;
    let mut out = Vec::new();
    let mut current = String::new();
    let mut words = 0;
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if in_word {
                words += 1;
                in_word = false;
                if words == WORDS_PER_CHUNK {
                    out.push(std::mem::take(&mut current));
                    words = 0;
                }
            }
        } else {
            in_word = true;
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_every_byte() {
        let text = "One two three four five  six\nseven";
        let parts = chunks(text);
        assert!(parts.len() > 1);
        assert_eq!(parts.concat(), text);
        assert_eq!(chunks(""), Vec::<String>::new());
    }
}
