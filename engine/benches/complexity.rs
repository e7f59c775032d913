//! Complexity scorer cost per turn: what `model: "auto"` adds before a model is chosen
//! (`engine::routing::complexity::assess`). Target: a few microseconds.
//!
//! `cargo bench -p engine --bench complexity`
//!
//! Cases: a one-line question, a code request, a design question, a follow-up deep in a
//! technical conversation, a 64 KiB paste (the scan is bounded), and the whole labelled cost
//! workload (`loadtest/workloads/cost/prompts.jsonl`, reported per turn).

// A benchmark that cannot set up has nothing to measure: failing loudly is right.
#![allow(clippy::panic)]

use std::hint::black_box;

use actors::ports::llm::{ChatMessage, GenerationRequest};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::routing::complexity::assess;

const WORKLOAD: &str = include_str!("../../loadtest/workloads/cost/prompts.jsonl");

fn request(system: Option<&str>, messages: Vec<ChatMessage>) -> GenerationRequest {
    GenerationRequest {
        system: system.map(str::to_owned),
        messages,
        temperature: None,
        max_tokens: None,
        stop: Vec::new(),
    }
}

fn workload() -> Vec<GenerationRequest> {
    WORKLOAD
        .lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad workload line: {e}"));
            let mut messages: Vec<ChatMessage> = v["history"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let text = m["content"].as_str().unwrap_or_default();
                    match m["role"].as_str() {
                        Some("user") => ChatMessage::user(text),
                        _ => ChatMessage::assistant(text),
                    }
                })
                .collect();
            messages.push(ChatMessage::user(v["prompt"].as_str().unwrap_or_default()));
            let mut r = request(v["system"].as_str(), messages);
            r.max_tokens = v["max_tokens"].as_u64().map(|n| n as u32);
            r
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("complexity");
    let cases = [
        ("lookup", request(None, vec![ChatMessage::user("What is the capital of Australia?")])),
        (
            "code_request",
            request(
                None,
                vec![ChatMessage::user(
                    "Write a Python function that reads a CSV file, skips malformed rows and \
                     returns the average of the 'price' column, with unit tests.",
                )],
            ),
        ),
        (
            "design_question",
            request(
                None,
                vec![ChatMessage::user(
                    "Design a distributed rate limiter that works across 20 API gateway nodes \
                     with a global limit per customer. Compare token bucket vs sliding window \
                     approaches, and explain how you keep it accurate without a round trip to \
                     Redis on every request.",
                )],
            ),
        ),
        (
            "deep_follow_up",
            request(
                Some("You are a principal engineer. Be rigorous."),
                vec![
                    ChatMessage::user("We run a job queue on Postgres with SKIP LOCKED."),
                    ChatMessage::assistant(
                        "Use a lease column and a reaper.\n```sql\nUPDATE jobs SET state = \
                         'queued' WHERE lease_until < now();\n```",
                    ),
                    ChatMessage::user("Jobs still get stuck after a worker crash."),
                    ChatMessage::assistant("Extend the lease while the job runs."),
                    ChatMessage::user(
                        "How do I make sure a requeued job isn't completed twice if the first \
                         worker was only slow?",
                    ),
                ],
            ),
        ),
        (
            "paste_64k",
            request(
                None,
                vec![ChatMessage::user(format!(
                    "Summarise this:\n\n{}",
                    "The committee met on Tuesday and reviewed the budget. ".repeat(1200)
                ))],
            ),
        ),
    ];
    for (name, r) in &cases {
        group.bench_function(*name, |b| b.iter(|| black_box(assess(black_box(r)))));
    }
    let turns = workload();
    group.throughput(Throughput::Elements(turns.len() as u64));
    group.bench_function("workload_per_turn", |b| {
        b.iter(|| {
            for r in &turns {
                black_box(assess(black_box(r)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
