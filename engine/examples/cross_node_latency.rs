//! Cross-node delivery latency: how much later a conversation's events reach a client on a
//! proxy node (B) than a client on the owner node (A).
//!
//! Starts `fake-llm` and two engine nodes in this process (sharing PostgreSQL and Redis),
//! opens one conversation with a WebSocket on each node, runs turns from A and records when
//! each seq arrives on each socket. Prints p50/p90/p99/max of `arrival on B − arrival on A`.
//!
//! ```sh
//! TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test TEST_REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo run --release -p engine --example cross_node_latency -- 40 50
//! ```
//! Arguments: turns (default 40) and tokens per turn (default 50).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use engine::config::Config;
use engine::server::Engine;
use futures_util::{SinkExt, StreamExt};
use loadtest::fake_llm::{FakeLlmServer, Scenario};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn start_node(toml: String) -> SocketAddr {
    let config = Config::parse(&toml).unwrap().finish(&BTreeMap::<&str, &str>::new()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let engine = Engine::start(config).await.expect("engine starts");
            tx.send(engine.addr()).unwrap();
            let _ = engine.run().await;
        });
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap()
}

async fn connect(addr: SocketAddr, id: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws/{id}")).await.unwrap().0
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads one turn, stamping each seq's arrival.
async fn read_turn(ws: &mut Ws, stamps: &mut HashMap<u64, Instant>) {
    loop {
        let frame = next_json(ws).await;
        if let Some(seq) = frame["seq"].as_u64() {
            stamps.insert(seq, Instant::now());
        }
        if frame["type"] == "error" && frame.get("seq").is_none() {
            panic!("refused: {frame}");
        }
        if frame["type"] == "done" || frame["type"] == "error" {
            return;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[actix_rt::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let turns: usize = args.next().map_or(40, |a| a.parse().unwrap());
    let tokens: u32 = args.next().map_or(50, |a| a.parse().unwrap());
    let admin = std::env::var("TEST_DATABASE_URL").expect("set TEST_DATABASE_URL");
    let redis = std::env::var("TEST_REDIS_URL").expect("set TEST_REDIS_URL");

    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) =
        tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.unwrap();
    actix_rt::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let database = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);

    let fake = FakeLlmServer::start(Scenario { tokens, token_delay_ms: 1, ..Scenario::default() })
        .unwrap();
    let prefix = format!("bench-{}:", uuid::Uuid::new_v4().simple());
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[models]]
name = "primary"
provider = "openai_compatible"
upstream_model = "gpt-4o"
base_url = "{}/v1"
[routing]
default_model = "primary"
[database]
url = "{database}"
[redis]
url = "{redis}"
key_prefix = "{prefix}"
"#,
        fake.base_url()
    );
    let a = start_node(toml.clone());
    let b = start_node(toml);

    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("http://{a}/api/v1/conversations"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let mut on_a = connect(a, &id).await;
    let mut on_b = connect(b, &id).await;
    on_b.send(Message::Text(json!({"type": "resume", "after_seq": 0}).to_string().into()))
        .await
        .unwrap();
    on_b.send(Message::Text(json!({"type": "ping"}).to_string().into())).await.unwrap();
    while next_json(&mut on_b).await["type"] != "pong" {}

    let (mut at_a, mut at_b) = (HashMap::new(), HashMap::new());
    for turn in 0..turns {
        // Stay under the per-socket frame rate limit (5 frames/s sustained).
        tokio::time::sleep(Duration::from_millis(250)).await;
        let message = json!({"type": "user_message", "content": format!("turn {turn}")});
        on_a.send(Message::Text(message.to_string().into())).await.unwrap();
        let mut turn_b = HashMap::new();
        let mut turn_a = HashMap::new();
        tokio::join!(read_turn(&mut on_a, &mut turn_a), read_turn(&mut on_b, &mut turn_b));
        at_a.extend(turn_a);
        at_b.extend(turn_b);
    }

    let mut deltas: Vec<f64> = at_a
        .iter()
        .filter_map(|(seq, ta)| at_b.get(seq).map(|tb| tb.duration_since(*ta).as_secs_f64() * 1e3))
        .collect();
    deltas.sort_by(|x, y| x.total_cmp(y));
    assert_eq!(deltas.len(), at_a.len(), "B saw every event A saw");
    println!(
        "events: {}  cross-node extra latency (B − A), ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        deltas.len(),
        percentile(&deltas, 0.50),
        percentile(&deltas, 0.90),
        percentile(&deltas, 0.99),
        deltas.last().unwrap()
    );
    drop((on_a, on_b));
    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    std::process::exit(0);
}
