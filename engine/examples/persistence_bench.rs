//! What durable state costs: user messages persisted per second, and the latency the store
//! adds to a message's `ack`, with PostgreSQL vs the in-memory store, through the real
//! conversation actors (a trivial instant model, so only the store is measured).
//!
//! ```sh
//! TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p engine --example persistence_bench -- 50 40
//! ```
//!
//! Arguments: concurrent conversations (default 50), turns per conversation (default 40).
//! Each conversation posts a message, waits for its reply's `done`, and posts the next, so a
//! turn costs what production pays: the user message written before its `ack` (timed here
//! as the `post` call), the reply's record and seq reservation before its first event, and
//! its final write. A fresh database is created from `TEST_DATABASE_URL` and dropped after.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::conversation::{ConversationConfig, ConversationDeps, PostUserMessage};
use actors::events::{CacheStatus, ConversationEvent};
use actors::ports::llm::{FinishReason, Usage};
use actors::ports::store::{ConversationSettings, ConversationStore};
use actors::registry::Registry;
use actors::store_memory::InMemoryConversationStore;
use actors::tenant::{Conversations, TenantConfig};
use actors::turn::{CacheMode, TurnEvent, TurnRequest, TurnRunner, TurnStream, TurnSummary};
use engine::config::DatabaseConfig;
use engine::store::PgConversationStore;
use tokio_postgres::NoTls;

/// Answers every turn at once with one delta.
struct InstantModel;

impl TurnRunner for InstantModel {
    fn run_turn(&self, _request: TurnRequest) -> TurnStream {
        let summary = TurnSummary {
            model: "instant".into(),
            provider: "bench".into(),
            finish_reason: FinishReason::Stop,
            usage: Usage { input_tokens: 1, output_tokens: 1 },
            legs: Vec::new(),
            cache: CacheStatus::Miss,
            saved_usage: Usage::default(),
            cost_micros: None,
            route: None,
        };
        Box::pin(futures_util::stream::iter([
            Ok(TurnEvent::Delta("ok".into())),
            Ok(TurnEvent::Finished(summary)),
        ]))
    }
}

struct Report {
    turns: usize,
    elapsed: Duration,
    ack: Vec<Duration>,
}

async fn run(store: Arc<dyn ConversationStore>, conversations: usize, turns: usize) -> Report {
    let deps = ConversationDeps::new(
        store.clone(),
        Arc::new(InstantModel),
        Registry::new(),
        ConversationConfig::default(),
    );
    let directory = Conversations::new(
        deps,
        TenantConfig { max_in_flight_turns: conversations * 2, ..TenantConfig::default() },
    );
    let settings = ConversationSettings {
        model: "instant".into(),
        temperature: None,
        system_prompt: None,
        title: None,
    };
    let mut handles = Vec::new();
    for _ in 0..conversations {
        let c = directory.create("bench", "alice", settings.clone()).await.unwrap();
        handles.push(directory.open("bench", &c.id).await.unwrap());
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for handle in handles {
        tasks.push(actix_rt::spawn(async move {
            let mut sub = handle.subscribe(None).await.unwrap();
            let mut ack = Vec::with_capacity(turns);
            for i in 0..turns {
                let message = PostUserMessage {
                    user_id: "alice".into(),
                    client_id: None,
                    content: format!("message {i}"),
                    cache: CacheMode::Use,
                };
                let t = Instant::now();
                handle.post(message).await.unwrap();
                ack.push(t.elapsed());
                loop {
                    let event = sub.receiver.recv().await.expect("subscribed");
                    if matches!(*event, ConversationEvent::Done { .. }) {
                        break;
                    }
                    assert!(!event.is_terminal(), "turn failed: {event:?}");
                }
            }
            ack
        }));
    }
    let mut ack = Vec::new();
    for task in tasks {
        ack.extend(task.await.unwrap());
    }
    Report { turns: conversations * turns, elapsed: started.elapsed(), ack }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn print(name: &str, mut report: Report) -> Duration {
    report.ack.sort();
    let per_sec = report.turns as f64 / report.elapsed.as_secs_f64();
    let p50 = percentile(&report.ack, 0.50);
    let p99 = percentile(&report.ack, 0.99);
    println!(
        "{name:<10} {:>6} turns in {:>6.2} s = {per_sec:>8.0} user messages (and replies) persisted/s; ack p50 {:>7.3} ms, p99 {:>7.3} ms, max {:>7.3} ms",
        report.turns,
        report.elapsed.as_secs_f64(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        report.ack.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    p99
}

fn main() {
    tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).init();
    let mut args = std::env::args().skip(1);
    let conversations: usize = args.next().map_or(50, |a| a.parse().unwrap());
    let turns: usize = args.next().map_or(40, |a| a.parse().unwrap());
    let admin = std::env::var("TEST_DATABASE_URL")
        .expect("set TEST_DATABASE_URL (a database to create the bench database from)");
    actix_rt::System::new().block_on(async move {
        let name = format!("switchyard_bench_{}", uuid::Uuid::now_v7().simple());
        let (client, connection) = tokio_postgres::connect(&admin, NoTls).await.unwrap();
        actix_rt::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.unwrap();
        let base = &admin[..admin.rfind('/').unwrap()];
        let config = DatabaseConfig::new(format!("{base}/{name}").into());
        let pg = PgConversationStore::connect(&config).unwrap();
        pg.migrate().await.unwrap();

        println!("{conversations} concurrent conversations × {turns} turns each");
        // Warm both paths (connections, prepared statements) before measuring.
        let _ = run(Arc::new(pg.clone()), conversations.min(8), 2).await;
        let memory_p99 = print(
            "memory",
            run(Arc::new(InMemoryConversationStore::new()), conversations, turns).await,
        );
        let pg_p99 = print("postgres", run(Arc::new(pg), conversations, turns).await);
        println!(
            "persistence adds {:.3} ms to the p99 ack",
            (pg_p99.saturating_sub(memory_p99)).as_secs_f64() * 1e3
        );
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        client.batch_execute(&drop).await.unwrap();
    });
}
