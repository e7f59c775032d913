//! Provider streams end to end: bytes → SSE parser → the OpenAI or Anthropic stream-event
//! decoder → the engine's stream items, through `engine::providers::replay_sse` (the same
//! decoder a live stream uses, minus the timeouts).
//!
//! Input: one byte whose low bit picks the provider (0 OpenAI Chat Completions, 1 Anthropic
//! Messages) and whose other bits seed how the stream is split into reads, then the
//! transcript. Checked: the items are the same however the bytes arrive; no delta is empty;
//! an error that reports how many tokens were delivered counts exactly the deltas before it.

#![no_main]

use actors::ports::llm::{ProviderError, StreamEvent};
use engine::providers::{ProviderKind, replay_sse};
use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::chunks;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, transcript)) = data.split_first() else { return };
    let kind = if selector & 1 == 0 { ProviderKind::Openai } else { ProviderKind::Anthropic };

    let whole = replay_sse(kind, "fuzz-model", [transcript]);
    let split = replay_sse(kind, "fuzz-model", chunks(selector >> 1, transcript));
    assert_eq!(split, whole, "the split stream decoded differently");

    let mut deltas = 0u32;
    for item in &whole {
        match item {
            Ok(StreamEvent::Delta(text)) => {
                assert!(!text.is_empty(), "empty delta");
                deltas += 1;
            }
            Err(ProviderError::StreamBroken { tokens, .. }) => {
                assert_eq!(*tokens, deltas, "StreamBroken miscounts the delivered tokens");
            }
            _ => {}
        }
    }
    // Items end at the first non-delta (a finish or an error).
    let ends = whole.iter().filter(|item| !matches!(item, Ok(StreamEvent::Delta(_)))).count();
    assert!(ends <= 1);
});
