//! Helpers for the fixture tests: feed a transcript through [`replay_sse`] split every way.

use actors::ports::llm::{ProviderError, StreamEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{ProviderKind, replay_sse};

type Items = [Result<StreamEvent, ProviderError>];

/// The transcript as written (`\n`) and with `\r\n` line endings.
fn variants(transcript: &str) -> [String; 2] {
    [transcript.to_owned(), transcript.replace('\n', "\r\n")]
}

/// Feeds `transcript` in two reads split at every byte boundary (so every multi-byte
/// character, `\r\n` pair, field and event is split somewhere) and checks the result.
pub(crate) fn assert_every_split(kind: ProviderKind, transcript: &str, expected: &Items) {
    for variant in variants(transcript) {
        let bytes = variant.as_bytes();
        for at in 0..=bytes.len() {
            let got = replay_sse(kind, "fixture-model", [&bytes[..at], &bytes[at..]]);
            assert_eq!(got, expected, "split at byte {at}");
        }
    }
}

/// Feeds `transcript` in random reads of 1 to 16 bytes, many times over.
pub(crate) fn assert_random_chunks(kind: ProviderKind, transcript: &str, expected: &Items) {
    for variant in variants(transcript) {
        let bytes = variant.as_bytes();
        for seed in 0..200 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut chunks = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let n = rng.random_range(1..=16).min(rest.len());
                let (head, tail) = rest.split_at(n);
                chunks.push(head);
                rest = tail;
            }
            let got = replay_sse(kind, "fixture-model", chunks);
            assert_eq!(got, expected, "seed {seed}");
        }
    }
}
