//! Durable state on a real PostgreSQL (`TEST_DATABASE_URL`): the schema, the tenant wall of
//! every store call, the crash sweep, history across an engine restart, an outage between
//! the engine and the database, and the crash test — the real binary killed with `kill -9`
//! while 100 conversations stream.
//!
//! Each test creates its own UUID-named database (dropped afterwards). Without
//! `TEST_DATABASE_URL` the tests print `SKIPPED` and pass, unless
//! `SWITCHYARD_REQUIRE_SERVICES=1` (CI), where a missing URL fails them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::events::{CacheStatus, ConversationEvent};
use actors::ports::store::{
    AssistantOutcome, AssistantProgress, ConversationSettings, ConversationStore, ListQuery,
    MessageStatus, NewUserMessage, StoreError, StreamChunk, StreamSwitch, SwitchKind,
};
use engine::config::DatabaseConfig;
use engine::store::PgConversationStore;
use futures_util::{SinkExt, StreamExt};
use loadtest::fake_llm::{FakeLlmServer, Scenario};
use serde_json::{Value, json};
use tokio_postgres::NoTls;
use tokio_tungstenite::tungstenite::Message;

use crate::app::{
    assert_gap_free, recv, recv_turn, send, spawn_app_with_database, spawn_process_node, text_of,
};

// ---------------------------------------------------------------------------------------
// Helpers: a database per test, a cuttable proxy, the real binary
// ---------------------------------------------------------------------------------------

/// A fresh database for one test, dropped (with its connections) when this is dropped.
pub struct TestDatabase {
    /// URL of the test's own database.
    pub url: String,
    name: String,
    admin_url: String,
}

/// `scheme://authority/db?query` split into (`scheme://authority`, `?query` or "").
fn split_url(url: &str) -> (String, String) {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    let query = url[path_start..].find('?').map_or(String::new(), |i| url[path_start + i..].into());
    (url[..path_start].to_owned(), query)
}

impl TestDatabase {
    /// `None` (after a loud `SKIPPED` line) when `TEST_DATABASE_URL` is unset; panics
    /// instead when `SWITCHYARD_REQUIRE_SERVICES=1`.
    pub async fn create() -> Option<TestDatabase> {
        let Some(admin_url) = std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())
        else {
            if std::env::var("SWITCHYARD_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("TEST_DATABASE_URL is not set but SWITCHYARD_REQUIRE_SERVICES=1");
            }
            eprintln!("SKIPPED: PostgreSQL test (set TEST_DATABASE_URL)");
            return None;
        };
        let name = format!("switchyard_test_{}", uuid::Uuid::now_v7().simple());
        let (client, connection) = tokio_postgres::connect(&admin_url, NoTls)
            .await
            .expect("TEST_DATABASE_URL accepts connections");
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.unwrap();
        let (base, query) = split_url(&admin_url);
        Some(TestDatabase { url: format!("{base}/{name}{query}"), name, admin_url })
    }

    /// The same database reached through `addr` (a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let (base, query) = split_url(&self.url);
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let userinfo = base[scheme_end..]
            .rfind('@')
            .map_or(String::new(), |i| base[scheme_end..scheme_end + i + 1].to_owned());
        format!("{}{userinfo}{addr}/{}{query}", &base[..scheme_end], self.name)
    }

    /// Where PostgreSQL listens (for the proxy).
    pub fn server_addr(&self) -> SocketAddr {
        let (base, _) = split_url(&self.url);
        let authority = base.rsplit("://").next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        let host = if host.contains(':') { host.to_owned() } else { format!("{host}:5432") };
        host.to_socket_addrs().unwrap().next().unwrap()
    }

    pub fn config(&self) -> DatabaseConfig {
        DatabaseConfig::new(self.url.clone().into())
    }

    /// A store on this database, migrated.
    pub async fn store(&self) -> PgConversationStore {
        let store = PgConversationStore::connect(&self.config()).unwrap();
        store.migrate().await.unwrap();
        store
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok((client, connection)) = tokio_postgres::connect(&admin, NoTls).await {
                    tokio::spawn(connection);
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = client.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

/// A TCP proxy in front of PostgreSQL that the test can cut (every connection closed, new
/// ones refused) and restore. Runs on a runtime of its own so the engine's database
/// traffic never depends on the test's runtime being polled.
struct PgProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl PgProxy {
    fn start(upstream: SocketAddr) -> PgProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (flag, list) = (cut.clone(), connections.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: the database is "down"
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        PgProxy { addr, cut, connections, runtime: Some(runtime) }
    }

    /// The database goes away: every open connection is closed, new ones are refused.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn settings() -> ConversationSettings {
    ConversationSettings {
        model: "mock".into(),
        temperature: None,
        system_prompt: None,
        title: None,
    }
}

fn user(id: &str, content: &str, seq: u64) -> NewUserMessage {
    NewUserMessage {
        id: id.into(),
        client_id: Some(format!("c-{id}")),
        user_id: "alice".into(),
        content: content.into(),
        seq,
    }
}

fn progress(
    message_id: &str,
    first: u64,
    last: u64,
    text: &str,
    ends: Vec<u32>,
) -> AssistantProgress {
    AssistantProgress {
        message_id: message_id.into(),
        reply_to: "u1".into(),
        requested_model: "mock".into(),
        first_seq: first,
        last_seq: last,
        chunk: StreamChunk { text: text.into(), delta_ends: ends, ..Default::default() },
    }
}

fn complete() -> AssistantOutcome {
    AssistantOutcome {
        status: MessageStatus::Complete,
        model: Some("mock-1".into()),
        usage: Some(actors::ports::llm::Usage { input_tokens: 3, output_tokens: 2 }),
        finish_reason: Some(actors::ports::llm::FinishReason::Stop),
        error: None,
        cost_micros: Some(12),
        cache: CacheStatus::Miss,
    }
}

/// Every persisted event after `after_seq`, read through the store's pages.
async fn replay(
    store: &PgConversationStore,
    tenant_id: &str,
    conversation_id: &str,
    after_seq: u64,
) -> Vec<ConversationEvent> {
    let page = store.events_after(tenant_id, conversation_id, after_seq, 10_000).await.unwrap();
    assert!(page.complete, "small conversations fit one page");
    page.events
}

fn seqs_of(events: &[ConversationEvent]) -> Vec<u64> {
    events.iter().filter_map(ConversationEvent::seq).collect()
}

// ---------------------------------------------------------------------------------------
// Schema and store
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn migrations_build_the_schema_and_running_them_again_changes_nothing() {
    let Some(db) = TestDatabase::create().await else { return };
    // `switchyard migrate` applies everything to the empty database…
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "error")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    let versions = engine::store::migrate::embedded_versions();
    let latest = *versions.last().unwrap();
    assert!(
        stdout.contains("applied V1__tenants_users")
            && stdout.contains(&format!("now at V{latest}")),
        "{stdout}"
    );
    // …and running it again (here through the library, as the engine does at start) is a
    // no-op.
    let store = PgConversationStore::connect(&db.config()).unwrap();
    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(again.current, Some(latest));
    assert!(versions.starts_with(&(1..=10).collect::<Vec<_>>()), "{versions:?}");

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT table_name::text, column_name::text, udt_name::text
             FROM information_schema.columns WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap();
    let mut columns: HashMap<String, HashMap<String, String>> = HashMap::new();
    for row in rows {
        columns.entry(row.get(0)).or_default().insert(row.get(1), row.get(2));
    }
    let expected: &[(&str, &[&str])] = &[
        ("tenants", &["id", "name", "created_at"]),
        ("users", &["id", "email", "display_name", "created_at"]),
        ("tenant_memberships", &["tenant_id", "user_id", "role"]),
        (
            "api_keys",
            &["id", "tenant_id", "user_id", "prefix", "key_hash", "scopes", "last_used_at"],
        ),
        ("conversations", &["tenant_id", "id", "owner_id", "settings", "last_seq", "seq_reserved"]),
        (
            "messages",
            &[
                "tenant_id",
                "conversation_id",
                "id",
                "role",
                "status",
                "text",
                "delta_ends",
                "switches",
                "foreign_seqs",
                "model",
                "input_tokens",
                "output_tokens",
                "cost_micros",
                "cache",
                "first_seq",
                "last_seq",
                "updated_at",
            ],
        ),
        (
            "usage_ledger",
            &[
                "tenant_id",
                "user_id",
                "conversation_id",
                "message_id",
                "model",
                "provider",
                "input_tokens",
                "output_tokens",
                "cost_micros",
                "cache",
                "leg",
            ],
        ),
        ("refresh_sessions", &["family_id", "token_hash", "revoked_at", "expires_at"]),
        (
            "signing_keys",
            &["id", "algorithm", "public_key", "private_key", "created_at", "retired_at"],
        ),
        (
            "semantic_cache",
            &[
                "tenant_id",
                "model_family",
                "key_hash",
                "embedding",
                "response",
                "expires_at",
                "hits",
            ],
        ),
        ("audit_log", &["tenant_id", "actor_id", "action", "target", "details", "created_at"]),
    ];
    for (table, wanted) in expected {
        let have = columns.get(*table).unwrap_or_else(|| panic!("table {table} exists"));
        for column in *wanted {
            assert!(have.contains_key(*column), "{table}.{column} exists");
        }
    }
    let types = [
        ("messages", "delta_ends", "_int4"),
        ("messages", "foreign_seqs", "_int8"),
        ("messages", "switches", "jsonb"),
        ("usage_ledger", "cost_micros", "int8"),
        ("semantic_cache", "embedding", "_float4"),
        ("api_keys", "scopes", "_text"),
    ];
    for (table, column, udt) in types {
        assert_eq!(columns[table][column], udt, "{table}.{column}");
    }
    // Constraints hold what the port promises: an unknown status is refused.
    let bad = client
        .execute(
            "INSERT INTO conversations (tenant_id, id, owner_id, settings) VALUES ('t', 'c', 'o', '{}');
             ",
            &[],
        )
        .await;
    assert!(bad.is_ok());
    let bad = client
        .execute(
            "INSERT INTO messages (tenant_id, conversation_id, id, role, status, first_seq, last_seq)
             VALUES ('t', 'c', 'm', 'user', 'lost', 1, 1)",
            &[],
        )
        .await;
    assert!(bad.is_err(), "status must be one of the five");
}

#[tokio::test]
async fn every_store_call_is_walled_by_tenant() {
    let Some(db) = TestDatabase::create().await else { return };
    let store = db.store().await;
    let a = store.create_conversation("tenant-a", "alice", settings()).await.unwrap();
    let b = store.create_conversation("tenant-b", "alice", settings()).await.unwrap();
    // The same message id in both tenants: no clash, no leak.
    store.append_user_message("tenant-a", &a.id, user("u1", "for a", 1)).await.unwrap();
    store.append_user_message("tenant-b", &b.id, user("u1", "for b", 1)).await.unwrap();

    // Tenant B aims at A's conversation with every call.
    let nf = Err(StoreError::NotFound);
    assert_eq!(store.get_conversation("tenant-b", &a.id).await.err(), Some(StoreError::NotFound));
    assert_eq!(store.load("tenant-b", &a.id, 10).await.err(), Some(StoreError::NotFound));
    let theft = user("u2", "injected", 2);
    assert_eq!(store.append_user_message("tenant-b", &a.id, theft).await, nf);
    let reply = progress("a1", 2, 2, "stolen", vec![6]);
    assert_eq!(store.checkpoint_assistant("tenant-b", &a.id, reply.clone()).await, nf);
    assert_eq!(store.finish_assistant("tenant-b", &a.id, reply, complete()).await, nf);
    assert_eq!(store.mark_interrupted("tenant-b", &a.id, "u1", 9).await, nf);
    assert_eq!(store.reserve_seqs("tenant-b", &a.id, 500).await, Err(StoreError::NotFound));
    assert_eq!(
        store.events_after("tenant-b", &a.id, 0, 100).await.err(),
        Some(StoreError::NotFound)
    );
    assert_eq!(store.delete_conversation("tenant-b", &a.id).await, nf);
    let listed = store
        .list_conversations("tenant-b", ListQuery { limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(listed.items.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [b.id.as_str()]);

    // A's conversation is untouched by all of it.
    let loaded = store.load("tenant-a", &a.id, 10).await.unwrap();
    assert_eq!(loaded.messages.len(), 1);
    assert_eq!(loaded.messages[0].text, "for a");
    assert_eq!((loaded.conversation.last_seq, loaded.conversation.seq_reserved), (1, 0));
    assert_eq!(store.load("tenant-b", &b.id, 10).await.unwrap().messages[0].text, "for b");
    let events = replay(&store, "tenant-a", &a.id, 0).await;
    assert_eq!(seqs_of(&events), [1]);
}

#[tokio::test]
async fn checkpoints_append_once_even_when_retried_and_replay_seq_for_seq() {
    let Some(db) = TestDatabase::create().await else { return };
    let store = db.store().await;
    let c = store.create_conversation("t", "alice", settings()).await.unwrap();
    store.append_user_message("t", &c.id, user("u1", "hi", 1)).await.unwrap();
    // The record before any event (as the actor writes it), then two checkpoints, the
    // second one retried as after a lost answer.
    store.checkpoint_assistant("t", &c.id, progress("a1", 2, 1, "", vec![])).await.unwrap();
    store
        .checkpoint_assistant("t", &c.id, progress("a1", 2, 3, "Hello", vec![3, 5]))
        .await
        .unwrap();
    let again = progress("a1", 2, 5, " world", vec![8, 11]);
    store.checkpoint_assistant("t", &c.id, again.clone()).await.unwrap();
    store.checkpoint_assistant("t", &c.id, again).await.unwrap();
    // A resume from inside the reply while it still streams finds what was checkpointed:
    // the progress is in `streamed_seq`, not in the indexed `last_seq` (V14).
    let streaming = replay(&store, "t", &c.id, 3).await;
    assert_eq!(seqs_of(&streaming), [4, 5]);
    assert_eq!(streaming[0], ConversationEvent::Delta { seq: 4, text: " wo".into() });
    let loaded = store.load("t", &c.id, 10).await.unwrap();
    assert_eq!(loaded.messages[1].last_seq, 5);
    assert_eq!(loaded.messages[1].status, MessageStatus::Streaming);
    // An ack inside the reply's range, then the finish (retried too).
    store.append_user_message("t", &c.id, user("u2", "more", 6)).await.unwrap();
    let mut last = progress("a1", 2, 8, "!", vec![12]);
    last.chunk.foreign_seqs = vec![6];
    store.finish_assistant("t", &c.id, last.clone(), complete()).await.unwrap();
    store.finish_assistant("t", &c.id, last, complete()).await.unwrap();

    let loaded = store.load("t", &c.id, 10).await.unwrap();
    let reply = &loaded.messages[1];
    assert_eq!(reply.text, "Hello world!", "no chunk applied twice");
    assert_eq!(reply.delta_ends, [3, 5, 8, 11, 12]);
    assert_eq!(reply.status, MessageStatus::Complete);
    assert_eq!(reply.model.as_deref(), Some("mock-1"));
    assert_eq!(reply.cost_micros, Some(12));
    assert_eq!(loaded.conversation.last_seq, 8);
    assert_eq!(
        loaded.messages.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["u1", "a1", "u2"]
    );

    let events = replay(&store, "t", &c.id, 0).await;
    assert_eq!(seqs_of(&events), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(events[3], ConversationEvent::Delta { seq: 4, text: " wo".into() });
    assert!(matches!(events[5], ConversationEvent::Ack { seq: 6, .. }));
    assert!(matches!(events[7], ConversationEvent::Done { seq: 8, .. }));
    assert_eq!(replay(&store, "t", &c.id, 5).await, events[5..].to_vec());
    assert!(replay(&store, "t", &c.id, 8).await.is_empty());
    // Read in pages of any size, from anywhere, the replay is the same.
    for max_events in 1..=9 {
        for after_seq in [0, 2, 5] {
            let mut paged = Vec::new();
            let mut from = after_seq;
            loop {
                let page = store.events_after("t", &c.id, from, max_events).await.unwrap();
                assert!(page.events.len() <= max_events);
                from = page.events.last().and_then(ConversationEvent::seq).unwrap_or(from);
                paged.extend(page.events);
                if page.complete {
                    break;
                }
            }
            assert_eq!(
                paged,
                events[after_seq as usize..],
                "pages of {max_events} after {after_seq}"
            );
        }
    }
}

#[tokio::test]
async fn a_message_to_an_idle_conversation_and_its_reply_record_are_one_write() {
    let Some(db) = TestDatabase::create().await else { return };
    let store = db.store().await;
    let c = store.create_conversation("t", "alice", settings()).await.unwrap();
    let write = store.append_user_message_opening_reply(
        "t",
        &c.id,
        user("u1", "hi", 1),
        progress("a1", 2, 1, "", vec![]),
        Some(64),
    );
    assert_eq!(write.await.unwrap(), Some(64), "the reservation made with them");
    let loaded = store.load("t", &c.id, 10).await.unwrap();
    let ids: Vec<&str> = loaded.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["u1", "a1"]);
    assert_eq!((loaded.messages[0].first_seq, loaded.messages[0].last_seq), (1, 1));
    let reply = &loaded.messages[1];
    assert_eq!((reply.status, reply.first_seq, reply.last_seq), (MessageStatus::Streaming, 2, 1));
    assert_eq!(reply.reply_to.as_deref(), Some("u1"));
    assert_eq!((loaded.conversation.last_seq, loaded.conversation.seq_reserved), (1, 64));
    let events = replay(&store, "t", &c.id, 0).await;
    assert!(matches!(events[..], [ConversationEvent::Ack { seq: 1, .. }]), "{events:?}");
    // The reply streams on from its record like any other.
    store.checkpoint_assistant("t", &c.id, progress("a1", 2, 3, "Hel", vec![2, 3])).await.unwrap();
    assert_eq!(seqs_of(&replay(&store, "t", &c.id, 0).await), [1, 2, 3]);

    // Another tenant's conversation: nothing written.
    let other = store.append_user_message_opening_reply(
        "other",
        &c.id,
        user("u2", "hi", 2),
        progress("a2", 3, 2, "", vec![]),
        None,
    );
    assert_eq!(other.await, Err(StoreError::NotFound));
    // One write: when the database refuses the message, the reply's record is not kept either.
    let fresh = store.create_conversation("t", "alice", settings()).await.unwrap();
    let refused = store.append_user_message_opening_reply(
        "t",
        &fresh.id,
        user("u1", "a NUL \0 here", 1),
        progress("a1", 2, 1, "", vec![]),
        Some(64),
    );
    assert!(refused.await.is_err());
    let loaded = store.load("t", &fresh.id, 10).await.unwrap();
    assert!(loaded.messages.is_empty(), "{:?}", loaded.messages);
    assert_eq!((loaded.conversation.last_seq, loaded.conversation.seq_reserved), (0, 0));
    assert_eq!(store.load("t", &c.id, 10).await.unwrap().messages.len(), 2);
}

#[tokio::test]
async fn checkpoints_in_flight_together_are_each_stored_once_and_each_answered() {
    let Some(db) = TestDatabase::create().await else { return };
    let store = db.store().await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        let c = store.create_conversation("t", "alice", settings()).await.unwrap();
        store.append_user_message("t", &c.id, user("u1", "hi", 1)).await.unwrap();
        let reserved = store.open_reply("t", &c.id, progress("a1", 2, 1, "", vec![]), Some(64));
        assert_eq!(reserved.await.unwrap(), Some(64), "the record and the reservation at once");
        ids.push(c.id);
    }
    let gone = ids.pop().unwrap();
    store.delete_conversation("t", &gone).await.unwrap();
    // Seqs 2–3 "Hello"; 4 an ack; 5 a failover; 6 "!".
    let switch = StreamSwitch {
        before_delta: 2,
        kind: SwitchKind::Failover { from: "a".into(), to: "b".into(), reason: "cut".into() },
    };

    // Two checkpoints per conversation queued back to back (a conversation's second one
    // must wait for the next batch), a deleted conversation and another tenant's id.
    let mut writes = Vec::new();
    for id in &ids {
        writes.push(store.checkpoint_assistant("t", id, progress("a1", 2, 3, "Hello", vec![3, 5])));
        let mut more = progress("a1", 2, 6, "!", vec![6]);
        more.chunk.switches = vec![switch.clone()];
        more.chunk.foreign_seqs = vec![4];
        writes.push(store.checkpoint_assistant("t", id, more));
    }
    writes.push(store.checkpoint_assistant("t", &gone, progress("a1", 2, 3, "x", vec![1])));
    writes.push(store.checkpoint_assistant("other", &ids[0], progress("a1", 2, 9, "x", vec![1])));
    // The first poll queues a write: in this order, before the writer task runs.
    for write in &mut writes {
        assert!(futures_util::FutureExt::now_or_never(write).is_none());
    }
    let results = futures_util::future::join_all(writes).await;
    let (stored, refused) = results.split_at(results.len() - 2);
    assert!(stored.iter().all(Result::is_ok), "{stored:?}");
    assert_eq!(refused, [Err(StoreError::NotFound), Err(StoreError::NotFound)]);

    // A retried checkpoint (its answer lost) appends nothing.
    let mut retried = progress("a1", 2, 6, "!", vec![6]);
    retried.chunk.foreign_seqs = vec![4];
    retried.chunk.switches = vec![switch.clone()];
    store.checkpoint_assistant("t", &ids[0], retried).await.unwrap();
    for id in &ids {
        let loaded = store.load("t", id, 10).await.unwrap();
        let reply = &loaded.messages[1];
        assert_eq!(reply.text, "Hello!", "each part once, in order");
        assert_eq!(reply.delta_ends, [3, 5, 6]);
        assert_eq!(reply.switches, std::slice::from_ref(&switch));
        assert_eq!(reply.foreign_seqs, [4]);
        assert_eq!(reply.status, MessageStatus::Streaming);
        assert_eq!((loaded.conversation.last_seq, loaded.conversation.seq_reserved), (6, 64));
    }
}

#[tokio::test]
async fn a_checkpoint_the_database_refuses_fails_alone_not_its_batch() {
    let Some(db) = TestDatabase::create().await else { return };
    let store = db.store().await;
    let mut conversations = Vec::new();
    for tenant in ["t", "t", "u"] {
        let c = store.create_conversation(tenant, "alice", settings()).await.unwrap();
        store.append_user_message(tenant, &c.id, user("u1", "hi", 1)).await.unwrap();
        store.open_reply(tenant, &c.id, progress("a1", 2, 1, "", vec![]), None).await.unwrap();
        conversations.push((tenant, c.id));
    }
    // PostgreSQL text cannot hold a NUL byte: that row fails the statement it is in.
    let texts = ["fine", "a NUL \0 here", "also fine"];
    let mut writes: Vec<_> = conversations
        .iter()
        .zip(texts)
        .map(|((tenant, id), text)| {
            let end = u32::try_from(text.len()).unwrap();
            store.checkpoint_assistant(tenant, id, progress("a1", 2, 2, text, vec![end]))
        })
        .collect();
    for write in &mut writes {
        assert!(futures_util::FutureExt::now_or_never(write).is_none());
    }
    let results = futures_util::future::join_all(writes).await;
    assert_eq!(results[0], Ok(()));
    assert!(matches!(results[1], Err(StoreError::Unavailable(_))), "{:?}", results[1]);
    assert_eq!(results[2], Ok(()), "another tenant's checkpoint is not failed by it");
    for (i, (tenant, id)) in conversations.iter().enumerate() {
        let reply = store.load(tenant, id, 10).await.unwrap().messages[1].text.clone();
        assert_eq!(reply, if i == 1 { "" } else { texts[i] });
    }
}

#[tokio::test]
async fn the_sweep_closes_dead_replies_after_their_reservation_and_spares_live_ones() {
    let Some(db) = TestDatabase::create().await else { return };
    let store = db.store().await;
    let dead = store.create_conversation("t", "alice", settings()).await.unwrap();
    store.append_user_message("t", &dead.id, user("u1", "hi", 1)).await.unwrap();
    store
        .checkpoint_assistant("t", &dead.id, progress("a1", 2, 3, "Hey", vec![1, 3]))
        .await
        .unwrap();
    assert_eq!(store.reserve_seqs("t", &dead.id, 40).await, Ok(40));
    assert_eq!(store.reserve_seqs("t", &dead.id, 20).await, Ok(40), "never lowered");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Written just now: alive.
    let live = store.create_conversation("t", "alice", settings()).await.unwrap();
    store.append_user_message("t", &live.id, user("u1", "hi", 1)).await.unwrap();
    store.checkpoint_assistant("t", &live.id, progress("a1", 2, 2, "Yo", vec![2])).await.unwrap();

    assert_eq!(store.sweep_interrupted(Duration::from_secs(1)).await, Ok(1));
    assert_eq!(store.sweep_interrupted(Duration::from_secs(1)).await, Ok(0), "idempotent");

    let loaded = store.load("t", &dead.id, 10).await.unwrap();
    assert_eq!(loaded.messages[1].status, MessageStatus::Interrupted);
    assert_eq!(loaded.conversation.last_seq, 41);
    let events = replay(&store, "t", &dead.id, 0).await;
    assert_eq!(seqs_of(&events), [1, 2, 3, 41], "the jump over the reserved seqs");
    assert!(matches!(events[3], ConversationEvent::Interrupted { seq: 41, .. }));
    let live = store.load("t", &live.id, 10).await.unwrap();
    assert_eq!(live.messages[1].status, MessageStatus::Streaming);
}

// ---------------------------------------------------------------------------------------
// The engine on PostgreSQL
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn history_survives_an_engine_restart_over_rest_and_websocket() {
    let Some(db) = TestDatabase::create().await else { return };
    let fake = Scenario { tokens: 12, ..Scenario::default() };
    let app = spawn_app_with_database(&db.url, fake.clone());
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(
        (status.as_u16(), &ready["store"], &ready["store_reachable"]),
        (200, &json!("postgres"), &json!(true))
    );
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    let mut live = Vec::new();
    for (i, content) in ["Hello there", "Tell me more"].iter().enumerate() {
        send(
            &mut ws,
            json!({"type": "user_message", "client_id": format!("c{i}"), "content": content}),
        )
        .await;
        live.extend(recv_turn(&mut ws).await);
    }
    assert_gap_free(&live);
    assert_eq!(live.iter().filter(|f| f["type"] == "done").count(), 2, "{live:?}");
    drop(ws);
    drop(app); // graceful stop: the engine and its actors are gone

    let app = spawn_app_with_database(&db.url, fake);
    let (status, history) = app.get_json(&format!("/api/v1/conversations/{id}")).await;
    assert_eq!(status, 200, "{history}");
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{history}");
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert!(messages.iter().all(|m| m["status"] == "complete"), "{history}");
    let first_reply: Vec<Value> =
        live.iter().take_while(|f| f["type"] != "done").cloned().collect();
    assert_eq!(messages[1]["content"], text_of(&first_reply));
    let last_seq = live.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(history["conversation"]["last_seq"], last_seq);

    // A client that saw nothing resumes from 0 and gets exactly what was streamed live.
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "resume", "after_seq": 0})).await;
    let mut replayed = Vec::new();
    while replayed.len() < live.len() {
        replayed.push(recv(&mut ws).await);
    }
    assert_eq!(replayed, live, "replay from PostgreSQL is the live stream, event for event");
    // And the conversation goes on where it was.
    send(&mut ws, json!({"type": "user_message", "content": "Third"})).await;
    let next = recv_turn(&mut ws).await;
    assert_eq!(next[0]["type"], "ack");
    assert_eq!(next[0]["seq"], last_seq + 1);
    assert_eq!(next.last().unwrap()["type"], "done");
}

#[tokio::test]
async fn a_database_outage_refuses_writes_acknowledges_nothing_and_heals_by_itself() {
    let Some(db) = TestDatabase::create().await else { return };
    let proxy = PgProxy::start(db.server_addr());
    let app = spawn_app_with_database(
        &db.url_via(proxy.addr),
        Scenario { tokens: 4, ..Scenario::default() },
    );
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "user_message", "client_id": "before", "content": "one"})).await;
    assert_eq!(recv_turn(&mut ws).await.last().unwrap()["type"], "done");
    // The reply's final write follows its `done` event; let it land before the outage.
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.cut();
    // WebSocket: a clear error frame, no ack.
    send(&mut ws, json!({"type": "user_message", "client_id": "during", "content": "two"})).await;
    let refused = recv(&mut ws).await;
    assert_eq!(
        (&refused["type"], &refused["code"]),
        (&json!("error"), &json!("unavailable")),
        "{refused}"
    );
    assert!(refused.get("seq").is_none(), "nothing was stored, so no seq: {refused}");
    // REST: 503 `unavailable` for a message and for a new conversation.
    let posted = app
        .post_json(&format!("/api/v1/conversations/{id}/messages"), &json!({"content": "three"}))
        .await;
    assert_eq!(posted.status(), 503);
    let body: Value = posted.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let created = app.post_json("/api/v1/conversations", &json!({})).await;
    assert_eq!(created.status(), 503);
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!((status.as_u16(), &ready["store_reachable"]), (503, &json!(false)), "{ready}");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = app.get_json("/readyz").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the engine did not recover from the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send(&mut ws, json!({"type": "user_message", "client_id": "after", "content": "four"})).await;
    let frames = recv_turn(&mut ws).await;
    assert_eq!(frames[0]["client_id"], "after");
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");

    // Only what was acknowledged is stored; the seqs carry on with no hole.
    let (_, history) = app.get_json(&format!("/api/v1/conversations/{id}")).await;
    let users: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["one", "four"]);
    let mut replay_ws = app.ws_connect(&id).await;
    send(&mut replay_ws, json!({"type": "resume", "after_seq": 0})).await;
    let last = frames.last().unwrap()["seq"].as_u64().unwrap();
    let mut all = Vec::new();
    while all.last().and_then(|f: &Value| f["seq"].as_u64()) != Some(last) {
        all.push(recv(&mut replay_ws).await);
    }
    assert_gap_free(&all);
}

// ---------------------------------------------------------------------------------------
// The crash test
// ---------------------------------------------------------------------------------------

/// What one client saw before the crash.
#[derive(Default)]
struct Seen {
    frames: Vec<Value>,
    /// `ack` frames: client_id → message_id.
    acks: BTreeMap<String, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_acknowledged_and_resumes_consistently() {
    const CONVERSATIONS: usize = 100;
    let Some(db) = TestDatabase::create().await else { return };
    // Slow tokens: every turn is still streaming when the node dies.
    let fake =
        FakeLlmServer::start(Scenario { tokens: 300, token_delay_ms: 100, ..Scenario::default() })
            .unwrap();
    let config = format!(
        r#"
[limits]
tenant_turns_in_flight = 1000
ws_frames_per_second = 100
ws_frame_burst = 100

[[models]]
name = "primary"
provider = "openai_compatible"
upstream_model = "gpt-4o"
base_url = "{}/v1"

[routing]
default_model = "primary"

[database]
url = "{}"
"#,
        fake.base_url(),
        db.url
    );
    let mut node = spawn_process_node("pg", &config).signed_in().await;
    let http = node.client();
    let mut ids = Vec::new();
    for _ in 0..CONVERSATIONS {
        let created: Value = http
            .post(node.url("/api/v1/conversations"))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }

    // Each client posts a message; every other one posts a second message while the first
    // reply streams (acknowledged, queued behind it). They read until the socket dies.
    let seen: Vec<Arc<Mutex<Seen>>> = ids.iter().map(|_| Arc::default()).collect();
    let ready = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (mut ws, seen, ready) = (node.ws(id).await, seen[i].clone(), ready.clone());
        clients.push(tokio::spawn(async move {
            let first = json!({"type": "user_message", "client_id": "m1", "content": format!("story {i}")});
            if ws.send(Message::Text(first.to_string().into())).await.is_err() {
                return;
            }
            let (mut deltas, mut counted) = (0, false);
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else { continue };
                let frame: Value = serde_json::from_str(&text).unwrap();
                let (second_due, enough) = {
                    let mut seen = seen.lock().unwrap();
                    if frame["type"] == "ack" {
                        let client = frame["client_id"].as_str().unwrap_or_default().to_owned();
                        seen.acks.insert(client, frame["message_id"].as_str().unwrap().to_owned());
                    }
                    deltas += usize::from(frame["type"] == "delta");
                    seen.frames.push(frame);
                    let enough = deltas >= 5 && (i % 2 == 1 || seen.acks.contains_key("m2"));
                    (i % 2 == 0 && deltas == 3 && !seen.acks.contains_key("m2"), enough)
                };
                if second_due {
                    let second = json!({"type": "user_message", "client_id": "m2", "content": format!("and then {i}")});
                    let _ = ws.send(Message::Text(second.to_string().into())).await;
                }
                if enough && !counted {
                    counted = true;
                    ready.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::SeqCst) < CONVERSATIONS {
        assert!(
            Instant::now() < deadline,
            "only {} clients streaming",
            ready.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill();
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), client).await;
    }
    let seen: Vec<Seen> =
        seen.into_iter().map(|s| std::mem::take(&mut *s.lock().unwrap())).collect();

    let node = spawn_process_node("pg", &config).signed_in().await;
    let http = node.client();
    // Every client reconnects and resumes where it was (all at once, as after a real crash:
    // the queued messages' turns then run in parallel).
    let mut resumed = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let before = &seen[i];
        assert_gap_free(&before.frames);
        let max_seen = before.frames.iter().filter_map(|f| f["seq"].as_u64()).max().unwrap();
        let mut ws = node.ws(id).await;
        send(&mut ws, json!({"type": "resume", "after_seq": max_seen})).await;
        resumed.push((ws, max_seen));
    }
    let (mut acked, mut cut, mut lost_events, mut rerun) = (0, 0, 0, 0);
    for (i, (id, (mut ws, max_seen))) in ids.iter().zip(resumed).enumerate() {
        let before = &seen[i];
        let cut_turns = before.frames.iter().filter(|f| f["type"] == "done").count();
        assert_eq!(cut_turns, 0, "conversation {i}: the first reply was still streaming");

        // Served (no resync); the cut reply is `interrupted`, after a jump, never on a seq
        // the client already saw.
        let mut after = Vec::new();
        let turns_to_end = if before.acks.contains_key("m2") { 2 } else { 1 };
        while after.iter().filter(|f: &&Value| is_turn_end(f)).count() < turns_to_end {
            let frame = recv(&mut ws).await;
            assert_ne!(frame["type"], "error", "conversation {i}: {frame}");
            after.push(frame);
        }
        let interrupted = after
            .iter()
            .find(|f| f["type"] == "interrupted")
            .unwrap_or_else(|| panic!("conversation {i}: no interrupted event in {after:?}"));
        assert!(interrupted["seq"].as_u64().unwrap() > max_seen, "conversation {i}: seq reused");
        assert_eq!(interrupted["reply_to"].as_str(), before.acks.get("m1").map(String::as_str));
        let after_seqs: Vec<u64> = after.iter().filter_map(|f| f["seq"].as_u64()).collect();
        assert!(after_seqs.windows(2).all(|w| w[0] < w[1]), "conversation {i}: {after_seqs:?}");
        assert!(after_seqs[0] > max_seen, "no duplicate of what the client saw");
        if turns_to_end == 2 {
            // The queued message is answered after the recovery, once.
            let done = after.last().unwrap();
            assert_eq!(done["type"], "done", "conversation {i}: {done}");
            assert_eq!(done["reply_to"].as_str(), before.acks.get("m2").map(String::as_str));
            assert_gap_free(
                &after[after.iter().position(|f| f["type"] == "interrupted").unwrap()..],
            );
            rerun += 1;
        }
        cut += 1;

        // The whole history from 0: consistent with what the client saw (same seq → same
        // event), gap-free except the jump before `interrupted`, no duplicate.
        let mut full_ws = node.ws(id).await;
        send(&mut full_ws, json!({"type": "resume", "after_seq": 0})).await;
        let last = *after_seqs.last().unwrap();
        let mut full = Vec::new();
        while full.last().and_then(|f: &Value| f["seq"].as_u64()) != Some(last) {
            full.push(recv(&mut full_ws).await);
        }
        let full_seqs: Vec<u64> = full.iter().filter_map(|f| f["seq"].as_u64()).collect();
        assert_eq!(full_seqs.iter().collect::<HashSet<_>>().len(), full_seqs.len(), "no duplicate");
        let by_seq: HashMap<u64, &Value> =
            full.iter().map(|f| (f["seq"].as_u64().unwrap(), f)).collect();
        let stored_before =
            before.frames.iter().filter(|f| by_seq.contains_key(&f["seq"].as_u64().unwrap()));
        for frame in stored_before {
            assert_eq!(
                by_seq[&frame["seq"].as_u64().unwrap()],
                frame,
                "conversation {i}: history rewritten"
            );
        }
        // Before `interrupted` the only holes are deltas the client saw and the crash lost
        // (a persisted ack may follow them); from `interrupted` on, no hole at all.
        let jump = full.iter().position(|f| f["type"] == "interrupted").unwrap();
        let seen_deltas: HashSet<u64> = before
            .frames
            .iter()
            .filter(|f| f["type"] == "delta")
            .filter_map(|f| f["seq"].as_u64())
            .collect();
        let stored_last = full_seqs[..jump].last().copied().unwrap_or(0);
        for seq in 1..=stored_last {
            assert!(
                by_seq.contains_key(&seq) || seen_deltas.contains(&seq),
                "conversation {i}: seq {seq} is neither stored nor a lost delta"
            );
        }
        assert_gap_free(&full[jump..]);
        // What the client saw and the store lacks is only the unsaved tail of the reply.
        let missing: Vec<&Value> = before
            .frames
            .iter()
            .filter(|f| !by_seq.contains_key(&f["seq"].as_u64().unwrap()))
            .collect();
        assert!(missing.iter().all(|f| f["type"] == "delta"), "conversation {i}: lost {missing:?}");
        // And only inside the range the `interrupted` event names as never to be delivered.
        let (lost_after, cut_seq) =
            (full[jump]["lost_after"].as_u64().unwrap(), full[jump]["seq"].as_u64().unwrap());
        assert!(
            missing
                .iter()
                .map(|f| f["seq"].as_u64().unwrap())
                .all(|s| s > lost_after && s < cut_seq),
            "conversation {i}: lost {missing:?} outside ({lost_after}, {cut_seq})"
        );
        lost_events += missing.len();

        // Every acknowledged message is in the store; the cut reply reads as interrupted.
        let history: Value = http
            .get(node.url(&format!("/api/v1/conversations/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let messages = history["messages"].as_array().unwrap();
        for message_id in before.acks.values() {
            assert!(
                messages.iter().any(|m| m["id"] == message_id.as_str() && m["role"] == "user"),
                "conversation {i}: acknowledged message {message_id} was lost"
            );
            acked += 1;
        }
        let first_reply = messages
            .iter()
            .find(|m| {
                m["role"] == "assistant"
                    && m["reply_to"].as_str() == before.acks.get("m1").map(String::as_str)
            })
            .unwrap();
        assert_eq!(first_reply["status"], "interrupted", "conversation {i}");
    }
    eprintln!(
        "crash test: {CONVERSATIONS} conversations, {acked} acknowledged messages all stored, \
         {cut} cut replies interrupted, {rerun} queued messages answered after recovery, \
         {lost_events} unsaved deltas lost (their seqs never reused)"
    );
    assert_eq!(cut, CONVERSATIONS);
    assert_eq!(acked, CONVERSATIONS + CONVERSATIONS / 2);
    assert_eq!(rerun, CONVERSATIONS / 2);
}

fn is_turn_end(frame: &Value) -> bool {
    matches!(frame["type"].as_str(), Some("done" | "interrupted"))
        || (frame["type"] == "error" && frame.get("seq").is_some())
}
