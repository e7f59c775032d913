//! The actor path's own latency: turn in → first delta out, through the Router and a
//! ProviderActor, with an instant fake provider (so everything measured is the tree).
//!
//! Prints p50/p99/p99.9 over many sequential turns, next to the same figures for calling
//! the fake provider directly, then runs criterion for the mean. Run with
//! `cargo bench -p actors --bench actor_path`.

// A benchmark binary: failing loudly on a broken setup is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::ports::llm::{ChatMessage, GenerationRequest, LlmProvider};
use actors::registry::Registry;
use actors::router::Router;
use actors::supervisor::{ProviderTree, ProviderTreeConfig};
use actors::testing::FakeProvider;
use actors::turn::{ContinuationMode, TurnEvent, TurnRequest, TurnRunner};
use criterion::Criterion;
use futures_util::StreamExt;

const SAMPLES: usize = 50_000;

fn request() -> GenerationRequest {
    GenerationRequest { messages: vec![ChatMessage::user("bench")], ..Default::default() }
}

fn turn() -> TurnRequest {
    TurnRequest {
        tenant_id: "t".into(),
        conversation_id: "c".into(),
        model: "m".into(),
        request: request(),
        deadline: tokio::time::Instant::now() + Duration::from_secs(10),
        continuation: ContinuationMode::Continue,
        cache: actors::turn::CacheMode::Use,
        origin: Default::default(),
    }
}

async fn first_delta_via_tree(router: &Router) -> Duration {
    let started = Instant::now();
    let mut stream = router.run_turn(turn());
    match stream.next().await {
        Some(Ok(TurnEvent::Delta(d))) => {
            let elapsed = started.elapsed();
            black_box(d);
            elapsed
        }
        other => panic!("expected a delta, got {other:?}"),
    }
}

async fn first_delta_direct(fake: &FakeProvider) -> Duration {
    let started = Instant::now();
    let mut stream = fake.stream(request());
    let first = stream.next().await;
    let elapsed = started.elapsed();
    black_box(first);
    elapsed
}

fn percentiles(label: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let (p50, p99, p999) = (at(0.50), at(0.99), at(0.999));
    println!("{label:<28} p50 {p50:>9.2?}   p99 {p99:>9.2?}   p99.9 {p999:>9.2?}");
    (p50, p99)
}

fn main() {
    let system = actix_rt::System::new();
    let fake = FakeProvider::new("m");
    let router = system.block_on(async {
        let providers: HashMap<String, Arc<dyn LlmProvider>> =
            HashMap::from([("m".to_owned(), fake.shared())]);
        let tree = ProviderTree::start(ProviderTreeConfig::default(), providers, &Registry::new())
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        tree.router
    });

    let (tree, direct) = system.block_on(async {
        for _ in 0..5_000 {
            first_delta_via_tree(&router).await;
        }
        let mut tree = Vec::with_capacity(SAMPLES);
        let mut direct = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            tree.push(first_delta_via_tree(&router).await);
            direct.push(first_delta_direct(&fake).await);
        }
        (tree, direct)
    });
    println!("turn in -> first delta out, {SAMPLES} sequential turns:");
    let (tree50, tree99) = percentiles("router + provider actor", tree);
    let (direct50, direct99) = percentiles("fake provider alone", direct);
    println!(
        "{:<28} p50 {:>9.2?}   p99 {:>9.2?}",
        "added by the tree",
        tree50.saturating_sub(direct50),
        tree99.saturating_sub(direct99)
    );

    let mut criterion = Criterion::default().configure_from_args();
    criterion.bench_function("turn_to_first_delta", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += first_delta_via_tree(&router).await;
                }
                total
            })
        })
    });
    criterion.bench_function("whole_turn", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let mut stream = router.run_turn(turn());
                    while let Some(item) = stream.next().await {
                        black_box(item.unwrap());
                    }
                }
                started.elapsed()
            })
        })
    });
    criterion.final_summary();
}
