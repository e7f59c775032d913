//! Several nodes sharing conversations through Redis and PostgreSQL, as clients see them:
//! the same events in the same order on every node, resuming on another node after a
//! `kill -9`, and carrying on through a Redis outage. Plus the shared counters and cache keys.
//!
//! Needs `TEST_DATABASE_URL` and `TEST_REDIS_URL` (skipped loudly without them, a failure
//! when `SWITCHYARD_REQUIRE_SERVICES=1`). Each test uses its own database and key prefix.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use engine::cluster::cache::TtlCache;
use engine::cluster::counters::Counters;
use engine::cluster::redis::RedisLink;
use loadtest::fake_llm::{FakeLlmServer, Scenario, deterministic_text};
use serde_json::{Value, json};

use crate::app::{
    Ws, assert_gap_free, recv, recv_turn, send, spawn_app_with, spawn_process_node, text_of,
};

struct Services {
    database: String,
    redis: String,
}

fn required() -> bool {
    std::env::var("SWITCHYARD_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The service URLs, or `None` (after a loud SKIPPED line) when they are not set.
fn services(test: &str, need_database: bool) -> Option<Services> {
    let database = std::env::var("TEST_DATABASE_URL").ok().filter(|v| !v.is_empty());
    let redis = std::env::var("TEST_REDIS_URL").ok().filter(|v| !v.is_empty());
    let missing = match (&database, &redis) {
        (_, None) => Some("TEST_REDIS_URL"),
        (None, _) if need_database => Some("TEST_DATABASE_URL"),
        _ => None,
    };
    if let Some(var) = missing {
        if required() {
            panic!("{test}: {var} is not set and SWITCHYARD_REQUIRE_SERVICES=1");
        }
        eprintln!("SKIPPED: {test} needs PostgreSQL and Redis (set {var})");
        return None;
    }
    Some(Services { database: database.unwrap_or_default(), redis: redis.unwrap_or_default() })
}

/// A UUID-named database created from the `test` one, dropped afterwards.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create(admin_url: &str) -> TestDatabase {
        let name = format!("cluster_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) =
            tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        drop(client);
        let _ = task.await;
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        TestDatabase { admin_url: admin_url.to_owned(), url: format!("{base}/{name}"), name }
    }

    async fn drop_it(self) {
        let (client, connection) =
            tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(connection);
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        client.batch_execute(&sql).await.unwrap();
        drop(client);
        let _ = task.await;
    }
}

fn prefix() -> String {
    format!("test-{}:", uuid::Uuid::new_v4().simple())
}

fn cluster_toml(database: &str, redis: &str, prefix: &str) -> String {
    format!(
        "\n[database]\nurl = \"{database}\"\n\n[redis]\nurl = \"{redis}\"\nkey_prefix = \"{prefix}\"\nlease_ttl_ms = 2000\n"
    )
}

fn scenario() -> Scenario {
    Scenario { tokens: 8, token_delay_ms: 3, ..Scenario::default() }
}

fn expected(prompt: &str) -> String {
    deterministic_text(prompt, 0, 8).concat()
}

/// Starts watching the whole conversation; returns once the subscription is in place
/// (frames are handled in order, so the pong comes after the resume was served).
async fn watch(ws: &mut Ws, after_seq: u64) {
    send(ws, json!({"type": "resume", "after_seq": after_seq})).await;
    send(ws, json!({"type": "ping"})).await;
    loop {
        if recv(ws).await["type"] == "pong" {
            return;
        }
    }
}

/// Conversation actors running on a node, from its admin inspection.
async fn conversation_actors(http: &reqwest::Client, base: &str) -> Vec<String> {
    let body: Value =
        http.get(format!("{base}/admin/actors")).send().await.unwrap().json().await.unwrap();
    body["actors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "conversation")
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn two_nodes_show_one_conversation_identically_and_only_the_owner_runs_it() {
    let Some(services) = services("two_nodes_share_a_conversation", true) else { return };
    let db = TestDatabase::create(&services.database).await;
    let prefix = prefix();
    let toml = cluster_toml(&db.url, &services.redis, &prefix);
    let a = spawn_app_with("", scenario(), &toml);
    let b = spawn_app_with("", scenario(), &toml);

    let id = a.create_conversation(json!({})).await;
    // A client on A opens the conversation first: A takes the lease and runs the actor.
    let mut on_a = a.ws_connect(&id).await;
    let mut on_b = b.ws_connect(&id).await;
    watch(&mut on_b, 0).await;

    send(&mut on_a, json!({"type": "user_message", "client_id": "a1", "content": "Hello there"}))
        .await;
    let seen_on_a = recv_turn(&mut on_a).await;
    let seen_on_b = recv_turn(&mut on_b).await;
    assert_eq!(seen_on_a, seen_on_b, "both nodes deliver the same events in the same order");
    assert_eq!(seen_on_a[0]["type"], "ack");
    assert_eq!(seen_on_a[0]["seq"], 1);
    assert_eq!(seen_on_a.last().unwrap()["type"], "done");
    assert_eq!(text_of(&seen_on_b), expected("Hello there"));
    assert_gap_free(&seen_on_b);

    // A message posted on B is forwarded to the owner; its events reach both.
    send(&mut on_b, json!({"type": "user_message", "client_id": "b1", "content": "And trains?"}))
        .await;
    let second_on_b = recv_turn(&mut on_b).await;
    let second_on_a = recv_turn(&mut on_a).await;
    assert_eq!(second_on_a, second_on_b);
    assert_eq!(second_on_b[0]["client_id"], "b1");
    assert_eq!(
        second_on_b[0]["seq"].as_u64().unwrap(),
        seen_on_a.last().unwrap()["seq"].as_u64().unwrap() + 1,
        "seqs continue across nodes with no gap"
    );
    assert_eq!(text_of(&second_on_a), expected("And trains?"));
    assert_gap_free(&second_on_a);

    // Non-streaming REST on B is answered through the owner too.
    let response = b
        .post_json(&format!("/api/v1/conversations/{id}/messages"), &json!({"content": "Third"}))
        .await;
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["content"], expected("Third"));
    let third_on_a = recv_turn(&mut on_a).await;
    assert_eq!(recv_turn(&mut on_b).await, third_on_a);
    assert_eq!(third_on_a.last().unwrap()["seq"], reply["seq"]);

    // One actor assigns seqs: it runs on A only.
    let on_node_a = conversation_actors(&a.http, &a.url("")).await;
    let on_node_b = conversation_actors(&b.http, &b.url("")).await;
    let actor = format!("conversation:{id}");
    assert!(on_node_a.contains(&actor), "{on_node_a:?}");
    assert!(
        !on_node_b.contains(&actor),
        "B proxies instead of running its own actor: {on_node_b:?}"
    );

    // A node that shuts down hands its conversations back at once (no lease left to expire),
    // and B's client carries on: B takes the conversation over.
    drop(on_a);
    drop(a);
    let redis = RedisLink::new(&services.redis, Duration::from_secs(2)).unwrap();
    let lease = format!("{prefix}conv:{id}:owner");
    let holder: Option<String> =
        redis.query(bb8_redis::redis::cmd("GET").arg(&lease)).await.unwrap();
    assert_eq!(holder, None, "the lease was released on shutdown");
    send(&mut on_b, json!({"type": "user_message", "content": "Still there?"})).await;
    let fourth = recv_turn(&mut on_b).await;
    let third_seq = third_on_a.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(fourth[0]["seq"].as_u64().unwrap(), third_seq + 1);
    assert_eq!(text_of(&fourth), expected("Still there?"));
    assert!(conversation_actors(&b.http, &b.url("")).await.contains(&actor), "B owns it now");

    drop((on_b, b));
    db.drop_it().await;
}

fn process_toml(fake: &FakeLlmServer, cluster: &str) -> String {
    format!(
        r#"
[[models]]
name = "primary"
provider = "openai_compatible"
upstream_model = "gpt-4o"
base_url = "{}/v1"

[routing]
default_model = "primary"
{cluster}"#,
        fake.base_url()
    )
}

#[tokio::test]
async fn a_client_whose_node_is_killed_resumes_on_another_node_with_no_gap() {
    let Some(services) = services("node_killed_resume", true) else { return };
    let db = TestDatabase::create(&services.database).await;
    let fake = FakeLlmServer::start(scenario()).unwrap();
    let toml = process_toml(&fake, &cluster_toml(&db.url, &services.redis, &prefix()));
    let mut a = spawn_process_node("a", &toml).signed_in().await;
    let b = spawn_process_node("b", &toml).signed_in().await;
    let (http_a, http_b) = (a.client(), b.client());

    let created: Value = http_a
        .post(a.url("/api/v1/conversations"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let mut on_a = a.ws(&id).await;
    let mut watcher_on_b = b.ws(&id).await;
    watch(&mut watcher_on_b, 0).await;
    send(&mut on_a, json!({"type": "user_message", "content": "Before the crash"})).await;
    let seen = recv_turn(&mut on_a).await;
    assert_eq!(recv_turn(&mut watcher_on_b).await, seen);
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();

    // Let the owner's batched writes land, as they would for a turn finished a moment ago.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = http_b
            .get(b.url(&format!("/api/v1/conversations/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["conversation"]["last_seq"].as_u64() == Some(last) {
            break;
        }
        assert!(Instant::now() < deadline, "the turn was never persisted: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    a.kill();
    drop(on_a);

    // The client reconnects to B and resumes from the middle of what it saw.
    let mid = seen[3]["seq"].as_u64().unwrap();
    let mut resumed = b.ws(&id).await;
    send(&mut resumed, json!({"type": "resume", "after_seq": mid})).await;
    let mut replayed = Vec::new();
    while replayed.len() < (last - mid) as usize {
        replayed.push(recv(&mut resumed).await);
    }
    assert_eq!(replayed, seen[4..].to_vec(), "no gap, no duplicate, same text");

    // The next turn runs on B, which took the dead owner's conversation over.
    send(&mut resumed, json!({"type": "user_message", "content": "After the crash"})).await;
    let after = recv_turn(&mut resumed).await;
    assert_eq!(after[0]["type"], "ack");
    assert_eq!(after[0]["seq"].as_u64().unwrap(), last + 1);
    assert_eq!(after.last().unwrap()["type"], "done", "{after:?}");
    assert_eq!(text_of(&after), expected("After the crash"));
    assert_gap_free(&after);
    // The watcher that was proxying on B all along sees the new owner's events too.
    assert_eq!(recv_turn(&mut watcher_on_b).await, after);

    drop((resumed, watcher_on_b, a, b));
    db.drop_it().await;
}

/// A private `redis-server` the test can stop and restart.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = OwnRedis { port, child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `/readyz` until its `redis` field is `want`; returns the last status and body.
async fn wait_for_redis(http: &reqwest::Client, base: &str, want: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = http.get(format!("{base}/readyz")).send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if body["redis"] == want {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "readyz never showed redis {want}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_redis_outage_degrades_the_nodes_and_cross_node_delivery_recovers() {
    let Some(services) = services("redis_outage", true) else { return };
    let db = TestDatabase::create(&services.database).await;
    let mut redis = OwnRedis::start();
    let toml = cluster_toml(&db.url, &redis.url(), &prefix());
    let a = spawn_app_with("", scenario(), &toml);
    let b = spawn_app_with("", scenario(), &toml);
    let http = reqwest::Client::new();
    wait_for_redis(&http, &a.url(""), "up").await;
    wait_for_redis(&http, &b.url(""), "up").await;

    let id = a.create_conversation(json!({})).await;
    let mut on_a = a.ws_connect(&id).await;
    let mut on_b = b.ws_connect(&id).await;
    watch(&mut on_b, 0).await;
    send(&mut on_a, json!({"type": "user_message", "content": "One"})).await;
    let first = recv_turn(&mut on_a).await;
    assert_eq!(recv_turn(&mut on_b).await, first);

    redis.stop();
    let (status, body) = wait_for_redis(&http, &a.url(""), "down").await;
    assert_eq!(status, 200, "a node that can serve stays ready without redis: {body}");
    assert_eq!(body["status"], "degraded");

    // The owner keeps serving its clients on local state.
    send(&mut on_a, json!({"type": "user_message", "content": "Two"})).await;
    let second = recv_turn(&mut on_a).await;
    assert_eq!(second.last().unwrap()["type"], "done", "{second:?}");
    assert_eq!(text_of(&second), expected("Two"));
    // So does the other node, for a conversation it is asked about (served locally).
    let other = b.create_conversation(json!({})).await;
    let mut alone_on_b = b.ws_connect(&other).await;
    send(&mut alone_on_b, json!({"type": "user_message", "content": "Anyone there?"})).await;
    let alone = recv_turn(&mut alone_on_b).await;
    assert_eq!(alone.last().unwrap()["type"], "done", "{alone:?}");

    redis.restart();
    wait_for_redis(&http, &a.url(""), "up").await;
    wait_for_redis(&http, &b.url(""), "up").await;

    // B's watcher gets what it missed during the outage (from the store), then live again.
    assert_eq!(recv_turn(&mut on_b).await, second, "the outage's turn reaches B, gap-free");
    send(&mut on_b, json!({"type": "user_message", "content": "Three"})).await;
    let third = recv_turn(&mut on_b).await;
    assert_eq!(recv_turn(&mut on_a).await, third, "cross-node delivery is back");
    assert_eq!(text_of(&third), expected("Three"));
    let mut all = first.clone();
    all.extend(second);
    all.extend(third);
    assert_gap_free(&all);

    drop((on_a, on_b, alone_on_b, a, b));
    db.drop_it().await;
}

#[tokio::test]
async fn shared_counters_limit_atomically_and_per_tenant() {
    let Some(services) = services("shared_counters", false) else { return };
    let prefix = prefix();
    let redis = RedisLink::new(&services.redis, Duration::from_secs(2)).unwrap();
    let counters = Counters::new(redis.clone(), prefix.clone());

    // 40 concurrent calls against a limit of 5: exactly 5 get through.
    let key = counters.tenant_key("rate", "acme", "messages");
    let calls = (0..40).map(|_| counters.fixed_window(&key, 5, Duration::from_secs(30)));
    let decisions = futures_util::future::join_all(calls).await;
    let allowed = decisions.iter().filter(|d| d.as_ref().unwrap().allowed).count();
    assert_eq!(allowed, 5);
    let refused = decisions.iter().map(|d| d.as_ref().unwrap()).find(|d| !d.allowed).unwrap();
    assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(30));
    // Another tenant's counter is untouched.
    let other = counters.tenant_key("rate", "globex", "messages");
    assert!(counters.fixed_window(&other, 5, Duration::from_secs(30)).await.unwrap().allowed);

    let sliding = counters.tenant_key("sliding", "acme", "turns");
    for n in 1..=3 {
        let d = counters.sliding_window(&sliding, 3, Duration::from_secs(30)).await.unwrap();
        assert!(d.allowed && d.count == n, "{d:?}");
    }
    let d = counters.sliding_window(&sliding, 3, Duration::from_secs(30)).await.unwrap();
    assert!(!d.allowed && d.retry_after > Duration::ZERO, "{d:?}");
    // A short window frees up again.
    let short = counters.tenant_key("sliding", "acme", "short");
    assert!(counters.sliding_window(&short, 1, Duration::from_millis(200)).await.unwrap().allowed);
    assert!(!counters.sliding_window(&short, 1, Duration::from_millis(200)).await.unwrap().allowed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(counters.sliding_window(&short, 1, Duration::from_millis(200)).await.unwrap().allowed);

    let counter = counters.tenant_key("tokens", "acme", "day");
    let (n, ttl) = counters.incr_with_ttl(&counter, 2, Duration::from_secs(60)).await.unwrap();
    assert_eq!(n, 2);
    assert!(ttl > Duration::from_secs(50) && ttl <= Duration::from_secs(60));
    assert_eq!(counters.incr_with_ttl(&counter, 5, Duration::from_secs(60)).await.unwrap().0, 7);

    let slots = counters.tenant_key("concurrency", "acme", "turns");
    assert!(counters.acquire_slot(&slots, 2, Duration::from_secs(30)).await.unwrap());
    assert!(counters.acquire_slot(&slots, 2, Duration::from_secs(30)).await.unwrap());
    assert!(!counters.acquire_slot(&slots, 2, Duration::from_secs(30)).await.unwrap());
    assert_eq!(counters.release_slot(&slots).await.unwrap(), 1);
    assert!(counters.acquire_slot(&slots, 2, Duration::from_secs(30)).await.unwrap());

    let cache = TtlCache::new(redis, prefix);
    let key = cache.tenant_key("acme", "digest-1");
    assert_eq!(cache.get(&key).await, None);
    assert!(cache.set(&key, b"reply", Duration::from_secs(30), true).await.unwrap());
    assert!(
        !cache.set(&key, b"other", Duration::from_secs(30), true).await.unwrap(),
        "NX keeps the first"
    );
    assert_eq!(cache.get(&key).await.as_deref(), Some(&b"reply"[..]));
    assert_eq!(cache.get(&cache.tenant_key("globex", "digest-1")).await, None, "tenants are walls");
    assert!(cache.ttl(&key).await.unwrap().is_some_and(|t| t <= Duration::from_secs(30)));
    assert!(cache.delete(&key).await.unwrap());
    assert_eq!(cache.get(&key).await, None);
}
