//! Mid-stream continuation: how a fallback model is asked to finish a partial answer, and
//! how its output is de-duplicated against what the client already has.
//!
//! Two methods, chosen per model (see [`crate::provider::EndpointHealth::supports_prefill`]):
//! *prefill* appends the partial text as a trailing assistant message, which the model
//! continues verbatim; *instruction* sends the partial text as an assistant message followed
//! by a user message asking the model to continue exactly where it stopped. Models asked
//! with an instruction sometimes repeat the last words anyway, so their output goes through
//! an [`OverlapFilter`] that drops a leading part duplicating the tail of the partial text.

use serde::Deserialize;

use crate::ports::llm::{ChatMessage, GenerationRequest};

/// How continuations are asked for and checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContinuationConfig {
    /// The user message sent after the partial answer when prefill is not available.
    pub instruction: String,
    /// Shorter overlaps are kept: a continuation may legitimately start with the same few
    /// characters the partial text ended with.
    pub min_overlap_chars: usize,
    /// Longest tail of the partial text compared against the continuation (bytes).
    pub max_overlap_chars: usize,
}

impl Default for ContinuationConfig {
    fn default() -> Self {
        Self {
            instruction: "Your previous reply was cut off. Continue it exactly where it stopped, \
                          without repeating any of it and without any preamble."
                .into(),
            min_overlap_chars: 8,
            max_overlap_chars: 512,
        }
    }
}

/// How a leg's request was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The original request, from scratch.
    Fresh,
    Prefill,
    Instruction,
}

/// The request for a leg that continues `partial`.
pub fn continue_request(
    original: &GenerationRequest,
    partial: &str,
    method: Method,
    config: &ContinuationConfig,
) -> GenerationRequest {
    let mut request = original.clone();
    match method {
        Method::Fresh => {}
        Method::Prefill => request.messages.push(ChatMessage::assistant(partial)),
        Method::Instruction => {
            request.messages.push(ChatMessage::assistant(partial));
            request.messages.push(ChatMessage::user(config.instruction.clone()));
        }
    }
    request
}

/// Holds back the start of an instruction-continued leg until it is long enough to tell
/// whether it repeats the tail of the partial text, then releases the rest.
#[derive(Debug)]
pub struct OverlapFilter {
    buffer: String,
    /// Bytes to collect before deciding: as much as the longest possible overlap.
    needed: usize,
    min: usize,
}

impl OverlapFilter {
    /// `None` when `partial` is empty (nothing to repeat).
    pub fn new(partial: &str, config: &ContinuationConfig) -> Option<Self> {
        if partial.is_empty() {
            return None;
        }
        let min = config.min_overlap_chars.max(1);
        // One byte more than the longest overlap, to see what follows a whole-partial repeat.
        let needed = partial.len().min(config.max_overlap_chars.max(min)) + 1;
        Some(Self { buffer: String::with_capacity(needed + 64), needed, min })
    }

    /// Feeds a delta. Returns the text to deliver once decided (possibly empty), or `None`
    /// while still collecting.
    pub fn push(&mut self, partial: &str, delta: &str) -> Option<String> {
        self.buffer.push_str(delta);
        (self.buffer.len() >= self.needed).then(|| self.finish(partial))
    }

    /// Decides with what was collected (the leg ended early).
    pub fn finish(&mut self, partial: &str) -> String {
        let cut = overlap(partial, &self.buffer, self.min, self.needed - 1);
        let mut rest = std::mem::take(&mut self.buffer);
        rest.drain(..cut);
        rest
    }
}

/// Length in bytes of the longest prefix of `continuation` (at most `max`) that repeats a
/// suffix of `partial`; 0 when none.
///
/// An overlap counts when it is at least `min` bytes long, or when it is the *whole* partial
/// text (the model started its answer over) and ends at a word boundary — so a partial
/// "I " followed by "I think" is a repeat, but a partial "a" followed by "and" is not.
pub fn overlap(partial: &str, continuation: &str, min: usize, max: usize) -> usize {
    let longest = continuation.len().min(partial.len()).min(max);
    let counts = |k: usize| {
        if k >= min {
            return true;
        }
        let at_boundary = partial.ends_with(|c: char| !c.is_alphanumeric())
            || continuation[k..].chars().next().is_none_or(|c| !c.is_alphanumeric());
        k == partial.len() && at_boundary
    };
    (1..=longest)
        .rev()
        .find(|&k| {
            continuation.is_char_boundary(k) && partial.ends_with(&continuation[..k]) && counts(k)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_repeated_tail_and_ignores_short_coincidences() {
        let partial = "The quick brown fox jumps over";
        assert_eq!(overlap(partial, "fox jumps over the lazy dog", 8, 512), 14);
        assert_eq!(overlap(partial, " the lazy dog", 8, 512), 0);
        assert_eq!(overlap(partial, "over and out", 8, 512), 0, "4 chars is below the minimum");
        assert_eq!(overlap("héllo wörld", "wörld!", 3, 512), 6);
    }

    #[test]
    fn a_short_partial_repeated_whole_counts_only_at_a_word_boundary() {
        assert_eq!(overlap("Reply ", "Reply to you", 8, 512), 6);
        assert_eq!(overlap("I", "I think", 8, 512), 1);
        assert_eq!(overlap("a", "and so on", 8, 512), 0);
        assert_eq!(overlap("to you", "you too", 8, 512), 0, "a short suffix is not enough");
    }

    #[test]
    fn the_filter_buffers_until_it_can_decide() {
        let config = ContinuationConfig {
            min_overlap_chars: 4,
            max_overlap_chars: 10,
            ..Default::default()
        };
        let partial = "one two three four";
        let mut f = OverlapFilter::new(partial, &config).unwrap();
        assert_eq!(f.push(partial, "three"), None);
        assert_eq!(f.push(partial, " four five"), Some(" five".into()));
        let mut f = OverlapFilter::new(partial, &config).unwrap();
        assert_eq!(f.push(partial, " fi"), None);
        assert_eq!(f.finish(partial), " fi");
        assert!(OverlapFilter::new("", &config).is_none());
    }

    #[test]
    fn requests_carry_the_partial_text() {
        let original =
            GenerationRequest { messages: vec![ChatMessage::user("q")], ..Default::default() };
        let config = ContinuationConfig::default();
        let prefill = continue_request(&original, "par", Method::Prefill, &config);
        assert_eq!(prefill.messages.last(), Some(&ChatMessage::assistant("par")));
        let instr = continue_request(&original, "par", Method::Instruction, &config);
        assert_eq!(instr.messages.len(), 3);
        assert_eq!(instr.messages[1], ChatMessage::assistant("par"));
        assert_eq!(instr.messages[2], ChatMessage::user(config.instruction.clone()));
    }
}
