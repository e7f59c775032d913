//! Cost of turning provider SSE bytes into `StreamEvent`s, per token.
//!
//! Transcripts are shaped like the providers' real streams (OpenAI `chat.completion.chunk`
//! with every field the API sends, `usage: null` on each chunk and a final usage chunk;
//! Anthropic's full event sequence with pings), 256 tokens each, delivered two ways:
//! one read per event (a live stream) and 4 KiB reads (a burst that arrived at once).
//!
//! `decode/*` is the whole per-token cost in the adapters: SSE parsing, JSON decoding and the
//! delta's `String`. `parse_only/*` compares the SSE layer alone with `eventsource-stream`.
//! Criterion reports throughput in tokens (elements) per second: ns/token = 1e9 / that.
//!
//! Run: `cargo bench -p engine --bench sse_parsing`
//!
//! Measured on the 2-core development box (other builds running, so ±30%): decode
//! ~615 ns/token for OpenAI and ~370 ns/token for Anthropic, whichever the delivery; SSE
//! layer alone ~80 ns/token, against ~520–770 ns/token for `eventsource-stream`. The budget
//! is 2 µs/token.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::providers::ProviderKind;
use engine::providers::replay_sse;
use engine::providers::sse::SseParser;
use eventsource_stream::Eventsource;
use futures_util::{FutureExt, StreamExt};
use std::hint::black_box;

const TOKENS: usize = 256;
const WORDS: &[&str] = &[
    " the",
    " provider",
    " streams",
    " tokens",
    ",",
    " and",
    " Switchyard",
    " forwards",
    " each",
    " one",
    " to",
    " the",
    " client",
    " très",
    " vite",
    " 🚀",
    " —",
    " done",
    ".",
    "\\n\\n",
];

fn openai_transcript() -> Vec<String> {
    let head = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":["#;
    let mut events = vec![format!(
        "data: {head}{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    )];
    for i in 0..TOKENS {
        let word = WORDS[i % WORDS.len()];
        events.push(format!(
            "data: {head}{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    events.push(format!(
        "data: {head}{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
    ));
    events.push(format!(
        "data: {head}],\"usage\":{{\"prompt_tokens\":19,\"completion_tokens\":{TOKENS},\"total_tokens\":{}}}}}\n\n",
        TOKENS + 19
    ));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn anthropic_transcript() -> Vec<String> {
    let mut events = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-20250514\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n".to_owned(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned(),
    ];
    for i in 0..TOKENS {
        if i % 32 == 0 {
            events.push("event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned());
        }
        let word = WORDS[i % WORDS.len()];
        events.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{word}\"}}}}\n\n"
        ));
    }
    events.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_owned(),
    );
    events.push(format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{TOKENS}}}}}\n\n"));
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned());
    events
}

/// The same bytes as one read per event, and as 4 KiB reads.
fn deliveries(events: &[String]) -> [(&'static str, Vec<Vec<u8>>); 2] {
    let per_event = events.iter().map(|e| e.clone().into_bytes()).collect();
    let all: Vec<u8> = events.concat().into_bytes();
    let bulk = all.chunks(4096).map(<[u8]>::to_vec).collect();
    [("per_event", per_event), ("4k_reads", bulk)]
}

fn bench(c: &mut Criterion) {
    for (name, kind, events) in [
        ("openai", ProviderKind::Openai, openai_transcript()),
        ("anthropic", ProviderKind::Anthropic, anthropic_transcript()),
    ] {
        let mut group = c.benchmark_group(format!("decode/{name}"));
        group.throughput(Throughput::Elements(TOKENS as u64));
        for (delivery, chunks) in deliveries(&events) {
            // Sanity: the transcript decodes to TOKENS deltas and a final record.
            let out = replay_sse(kind, "m", chunks.iter().map(Vec::as_slice));
            assert_eq!(out.len(), TOKENS + 1, "{name}/{delivery}");
            assert!(out.iter().all(Result::is_ok), "{name}/{delivery}");
            group.bench_with_input(BenchmarkId::from_parameter(delivery), &chunks, |b, chunks| {
                b.iter(|| replay_sse(kind, "m", chunks.iter().map(|c| black_box(c.as_slice()))))
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("parse_only/{name}"));
        group.throughput(Throughput::Elements(TOKENS as u64));
        for (delivery, chunks) in deliveries(&events) {
            group.bench_with_input(
                BenchmarkId::new("switchyard_sse", delivery),
                &chunks,
                |b, chunks| {
                    b.iter(|| {
                        let mut parser = SseParser::new();
                        let mut bytes = 0usize;
                        for chunk in chunks {
                            parser.feed(black_box(chunk));
                            while let Ok(Some(event)) = parser.next_event() {
                                bytes += event.data.len();
                            }
                        }
                        bytes
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new("eventsource_stream", delivery),
                &chunks,
                |b, chunks| {
                    b.iter(|| {
                        let source = futures_util::stream::iter(
                            chunks.iter().map(|c| Ok::<_, std::io::Error>(black_box(c.clone()))),
                        );
                        let mut events = source.eventsource();
                        let mut bytes = 0usize;
                        while let Some(Some(Ok(event))) = events.next().now_or_never() {
                            bytes += event.data.len();
                        }
                        bytes
                    })
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
