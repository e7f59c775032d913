//! The whole tree at once: conversations → tenant actors → router → supervised provider
//! actors, with scripted providers failing at random. The other suites test each side with a
//! fake of the other; this one checks they hold together under load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actors::conversation::{ConversationConfig, ConversationDeps, PostUserMessage};
use actors::events::ConversationEvent;
use actors::ports::llm::LlmProvider;
use actors::ports::store::ConversationSettings;
use actors::provider::{CircuitBreakerConfig, ProviderActorConfig};
use actors::registry::Registry;
use actors::store_memory::InMemoryConversationStore;
use actors::supervisor::{ProviderTree, ProviderTreeConfig};
use actors::tenant::{Conversations, TenantConfig};
use actors::testing::{FakeProvider, reply_for};
use actors::turn::CacheMode;

const CONVERSATIONS: usize = 1_000;
const TURNS_PER_CONVERSATION: usize = 10;

#[actix_rt::test]
async fn ten_thousand_turns_across_a_thousand_conversations_with_failing_providers() {
    let primary = FakeProvider::new("primary").failing_randomly(0.2, 11).interleaved();
    let second = FakeProvider::new("second").failing_randomly(0.2, 12).interleaved();
    let third = FakeProvider::new("third").failing_randomly(0.2, 13).interleaved();
    let mut config = ProviderTreeConfig::default();
    config.router.fallbacks.insert("primary".into(), vec!["second".into(), "third".into()]);
    config.router.max_concurrent_turns = CONVERSATIONS * 2;
    for model in ["primary", "second", "third"] {
        let endpoint = ProviderActorConfig {
            max_in_flight: CONVERSATIONS * 2,
            mailbox_capacity: CONVERSATIONS * 2,
            // Random failures in a burst would (rightly) open circuits; this test is about
            // failover and ordering, the breaker has its own tests.
            circuit_breaker: CircuitBreakerConfig {
                failure_rate: 0.0,
                consecutive_failures: 0,
                ..CircuitBreakerConfig::default()
            },
            ..ProviderActorConfig::default()
        };
        config.models.insert(model.into(), endpoint);
    }
    let providers: HashMap<String, Arc<dyn LlmProvider>> = [
        ("primary".to_owned(), primary.shared()),
        ("second".to_owned(), second.shared()),
        ("third".to_owned(), third.shared()),
    ]
    .into_iter()
    .collect();
    let registry = Registry::new();
    let tree = ProviderTree::start(config, providers, &registry).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    let store = Arc::new(InMemoryConversationStore::new());
    let conversation_config = ConversationConfig {
        max_pending_messages: TURNS_PER_CONVERSATION,
        ..ConversationConfig::default()
    };
    let deps = ConversationDeps::new(
        store,
        Arc::new(tree.router.clone()),
        registry.clone(),
        conversation_config,
    );
    let tenant_config =
        TenantConfig { max_in_flight_turns: CONVERSATIONS, ..TenantConfig::default() };
    let conversations = Conversations::new(deps, tenant_config);

    let mut tasks = Vec::with_capacity(CONVERSATIONS);
    for c in 0..CONVERSATIONS {
        let conversations = conversations.clone();
        tasks.push(actix_rt::spawn(async move {
            let settings = ConversationSettings {
                model: "primary".into(),
                temperature: None,
                system_prompt: None,
                title: None,
            };
            let conversation = conversations.create("tenant", "user", settings).await.unwrap();
            let handle = conversations.open("tenant", &conversation.id).await.unwrap();
            let mut subscription = handle.subscribe(None).await.unwrap();
            for t in 0..TURNS_PER_CONVERSATION {
                let message = PostUserMessage {
                    user_id: "user".into(),
                    client_id: Some(format!("{c}-{t}")),
                    content: format!("conversation {c} turn {t}"),
                    cache: CacheMode::default(),
                };
                handle.post(message).await.unwrap();
            }
            let mut events = Vec::new();
            let mut terminals = 0;
            while terminals < TURNS_PER_CONVERSATION {
                let event =
                    tokio::time::timeout(Duration::from_secs(60), subscription.receiver.recv())
                        .await
                        .expect("events keep coming")
                        .expect("the subscription stays open");
                terminals += usize::from(event.is_terminal());
                events.push(event);
            }
            (c, events)
        }));
    }

    let (mut completed, mut failed, mut failed_over) = (0usize, 0usize, 0usize);
    for task in tasks {
        let (c, events) = task.await.unwrap();
        // Gap-free, strictly increasing seqs across every event of the conversation.
        let seqs: Vec<u64> = events.iter().map(|e| e.seq().unwrap()).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "conversation {c}");
        // Each user message acknowledged exactly once, in order.
        let acks: Vec<String> = events
            .iter()
            .filter_map(|e| match &**e {
                ConversationEvent::Ack { client_id, .. } => client_id.clone(),
                _ => None,
            })
            .collect();
        let want: Vec<String> = (0..TURNS_PER_CONVERSATION).map(|t| format!("{c}-{t}")).collect();
        assert_eq!(acks, want, "conversation {c}");
        // Every turn ends exactly once, in order; a completed turn carries exactly the
        // expected text, with no duplicate or missing piece across failovers.
        let mut text = String::new();
        let mut turn = 0;
        for event in &events {
            match &**event {
                ConversationEvent::Delta { text: piece, .. } => text.push_str(piece),
                ConversationEvent::Retract { .. } => text.clear(),
                ConversationEvent::Failover { .. } => failed_over += 1,
                ConversationEvent::Done { .. } => {
                    assert_eq!(
                        text,
                        reply_for(&format!("conversation {c} turn {turn}")),
                        "conversation {c}"
                    );
                    completed += 1;
                    turn += 1;
                    text.clear();
                }
                ConversationEvent::Error { code, .. } => {
                    assert!(
                        ["upstream_unavailable", "overloaded", "timeout"].contains(&code.as_str()),
                        "conversation {c}: unexpected error code {code}"
                    );
                    failed += 1;
                    turn += 1;
                    text.clear();
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        completed + failed,
        CONVERSATIONS * TURNS_PER_CONVERSATION,
        "no turn lost or doubled"
    );
    // With three models each failing 20% of calls, a turn fails only when all do (~0.8%).
    assert!(failed < CONVERSATIONS * TURNS_PER_CONVERSATION / 20, "{failed} turns failed");
    assert!(failed_over > 1_000, "failover must have been exercised ({failed_over})");
    println!("completed {completed}, failed {failed}, failovers {failed_over}");
}
