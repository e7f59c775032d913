//! `InMemoryConversationStore`: the [`ConversationStore`] kept in process memory.
//!
//! Used by tests and as the engine's embedded default (`cargo run` with nothing configured;
//! the engine logs loudly that nothing persists). Data is partitioned per tenant — one
//! `Mutex` per tenant behind a read-mostly map — so tenants never contend with each other
//! and a tenant can only ever reach its own partition. Every call completes synchronously and
//! returns a ready future.
//!
//! Bounds: nothing is evicted. Memory grows with every message stored (text plus 4 bytes per
//! streamed delta) until conversations are deleted; that is the embedded default's documented
//! limit, and PostgreSQL is the production store.
//!
//! [`InMemoryConversationStore::set_available`] simulates an outage: while unavailable every
//! call fails with [`StoreError::Unavailable`] and writes nothing (for tests and chaos drills).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use futures_util::future::ready;

use crate::events::CacheStatus;
use crate::ports::llm::Role;
use crate::ports::store::{
    AssistantOutcome, AssistantProgress, Conversation, ConversationPage, ConversationSettings,
    ConversationStore, EventsPage, ListQuery, LoadedConversation, MessageStatus, NewUserMessage,
    StoreError, StoreFuture, StoredMessage, page_of_events,
};

#[derive(Default, Clone)]
struct TenantData {
    /// Keyed by id: ids are UUIDv7, so key order is creation order (listing pages by it).
    conversations: BTreeMap<String, ConversationData>,
}

#[derive(Clone)]
struct ConversationData {
    conversation: Conversation,
    messages: Vec<StoredMessage>,
    /// Message id → index in `messages`.
    index: HashMap<String, usize>,
}

/// The in-memory store; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct InMemoryConversationStore {
    tenants: Arc<RwLock<HashMap<String, Arc<Mutex<TenantData>>>>>,
    unavailable: Arc<AtomicBool>,
}

impl std::fmt::Debug for InMemoryConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryConversationStore").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn done<T: Send + 'static>(result: Result<T, StoreError>) -> StoreFuture<T> {
    ready(result).boxed()
}

impl InMemoryConversationStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates an outage (`false`) or ends it (`true`).
    pub fn set_available(&self, available: bool) {
        self.unavailable.store(!available, Ordering::SeqCst);
    }

    fn check_available(&self) -> Result<(), StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("the in-memory store is switched off".into()))
        } else {
            Ok(())
        }
    }

    /// The tenant's partition, created on first write.
    fn tenant(&self, tenant_id: &str) -> Arc<Mutex<TenantData>> {
        if let Some(t) = self.tenants.read().unwrap_or_else(PoisonError::into_inner).get(tenant_id)
        {
            return t.clone();
        }
        self.tenants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant_id.to_owned())
            .or_default()
            .clone()
    }

    /// An independent deep copy of everything stored right now: what a crash at this
    /// instant would leave behind. Tests rebuild conversations from it while the original
    /// actors (the "dead" node) run on against the original.
    pub fn fork(&self) -> InMemoryConversationStore {
        let tenants = self.tenants.read().unwrap_or_else(PoisonError::into_inner);
        let copy = tenants
            .iter()
            .map(|(id, data)| {
                let data = data.lock().unwrap_or_else(PoisonError::into_inner).clone();
                (id.clone(), Arc::new(Mutex::new(data)))
            })
            .collect();
        InMemoryConversationStore {
            tenants: Arc::new(RwLock::new(copy)),
            unavailable: Arc::new(AtomicBool::new(self.unavailable.load(Ordering::Relaxed))),
        }
    }

    /// Runs `f` on one conversation of one tenant, under that tenant's lock.
    fn with_conversation<T>(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        f: impl FnOnce(&mut ConversationData) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.check_available()?;
        let tenant = self.tenant(tenant_id);
        let mut data = tenant.lock().unwrap_or_else(PoisonError::into_inner);
        let conversation =
            data.conversations.get_mut(conversation_id).ok_or(StoreError::NotFound)?;
        f(conversation)
    }
}

impl ConversationData {
    fn bump(&mut self, seq: u64) {
        let c = &mut self.conversation;
        c.last_seq = c.last_seq.max(seq);
        c.updated_at_ms = now_ms();
    }

    fn push(&mut self, message: StoredMessage) {
        self.index.insert(message.id.clone(), self.messages.len());
        self.messages.push(message);
    }

    /// Creates the reply on its first write, appends to it afterwards.
    fn upsert_reply(&mut self, progress: AssistantProgress) -> &mut StoredMessage {
        let AssistantProgress { message_id, reply_to, requested_model, first_seq, last_seq, chunk } =
            progress;
        self.bump(last_seq);
        let index = match self.index.get(&message_id) {
            Some(index) => *index,
            None => {
                self.push(StoredMessage {
                    id: message_id,
                    role: Role::Assistant,
                    status: MessageStatus::Streaming,
                    client_id: None,
                    user_id: None,
                    reply_to: Some(reply_to),
                    text: String::new(),
                    delta_ends: Vec::new(),
                    switches: Vec::new(),
                    foreign_seqs: Vec::new(),
                    model: Some(requested_model),
                    usage: None,
                    finish_reason: None,
                    error: None,
                    cost_micros: None,
                    cache: CacheStatus::Miss,
                    first_seq,
                    last_seq,
                    created_at_ms: now_ms(),
                });
                self.messages.len() - 1
            }
        };
        let message = &mut self.messages[index];
        message.text.push_str(&chunk.text);
        message.delta_ends.extend(chunk.delta_ends);
        message.switches.extend(chunk.switches);
        message.foreign_seqs.extend(chunk.foreign_seqs);
        message.last_seq = message.last_seq.max(last_seq);
        message
    }
}

impl ConversationStore for InMemoryConversationStore {
    fn create_conversation(
        &self,
        tenant_id: &str,
        owner_id: &str,
        settings: ConversationSettings,
    ) -> StoreFuture<Conversation> {
        let result = self.check_available().map(|()| {
            let now = now_ms();
            let conversation = Conversation {
                id: uuid::Uuid::now_v7().to_string(),
                tenant_id: tenant_id.to_owned(),
                owner_id: owner_id.to_owned(),
                settings,
                created_at_ms: now,
                updated_at_ms: now,
                last_seq: 0,
                seq_reserved: 0,
            };
            let tenant = self.tenant(tenant_id);
            tenant.lock().unwrap_or_else(PoisonError::into_inner).conversations.insert(
                conversation.id.clone(),
                ConversationData {
                    conversation: conversation.clone(),
                    messages: Vec::new(),
                    index: HashMap::new(),
                },
            );
            conversation
        });
        done(result)
    }

    fn get_conversation(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> StoreFuture<Conversation> {
        done(self.with_conversation(tenant_id, conversation_id, |c| Ok(c.conversation.clone())))
    }

    fn list_conversations(
        &self,
        tenant_id: &str,
        query: ListQuery,
    ) -> StoreFuture<ConversationPage> {
        let result = self.check_available().map(|()| {
            let limit = query.limit.clamp(1, 100);
            let tenant = self.tenant(tenant_id);
            let data = tenant.lock().unwrap_or_else(PoisonError::into_inner);
            let upper = match &query.cursor {
                Some(cursor) => std::ops::Bound::Excluded(cursor.clone()),
                None => std::ops::Bound::Unbounded,
            };
            let mut items: Vec<Conversation> = data
                .conversations
                .range((std::ops::Bound::Unbounded, upper))
                .rev()
                .map(|(_, c)| &c.conversation)
                .filter(|c| query.owner_id.as_ref().is_none_or(|owner| &c.owner_id == owner))
                .take(limit + 1)
                .cloned()
                .collect();
            let next_cursor = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|c| c.id.clone())
            } else {
                None
            };
            ConversationPage { items, next_cursor }
        });
        done(result)
    }

    fn delete_conversation(&self, tenant_id: &str, conversation_id: &str) -> StoreFuture<()> {
        let result = self.check_available().and_then(|()| {
            let tenant = self.tenant(tenant_id);
            let mut data = tenant.lock().unwrap_or_else(PoisonError::into_inner);
            data.conversations.remove(conversation_id).map(|_| ()).ok_or(StoreError::NotFound)
        });
        done(result)
    }

    fn load(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        max_messages: usize,
    ) -> StoreFuture<LoadedConversation> {
        done(self.with_conversation(tenant_id, conversation_id, |c| {
            // Stored order is creation order, and a reply is created at its first write, after
            // user messages acked while it streamed: sort to the documented seq order.
            let skip = c.messages.len().saturating_sub(max_messages);
            let mut messages = c.messages[skip..].to_vec();
            messages.sort_by_key(|m| m.first_seq);
            Ok(LoadedConversation { conversation: c.conversation.clone(), messages })
        }))
    }

    fn append_user_message(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        message: NewUserMessage,
    ) -> StoreFuture<()> {
        done(self.with_conversation(tenant_id, conversation_id, |c| {
            c.bump(message.seq);
            c.push(StoredMessage {
                id: message.id,
                role: Role::User,
                status: MessageStatus::Complete,
                client_id: message.client_id,
                user_id: Some(message.user_id),
                reply_to: None,
                text: message.content,
                delta_ends: Vec::new(),
                switches: Vec::new(),
                foreign_seqs: Vec::new(),
                model: None,
                usage: None,
                finish_reason: None,
                error: None,
                cost_micros: None,
                cache: CacheStatus::Miss,
                first_seq: message.seq,
                last_seq: message.seq,
                created_at_ms: now_ms(),
            });
            Ok(())
        }))
    }

    fn checkpoint_assistant(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        progress: AssistantProgress,
    ) -> StoreFuture<()> {
        done(self.with_conversation(tenant_id, conversation_id, |c| {
            c.upsert_reply(progress);
            Ok(())
        }))
    }

    fn finish_assistant(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        progress: AssistantProgress,
        outcome: AssistantOutcome,
    ) -> StoreFuture<()> {
        done(self.with_conversation(tenant_id, conversation_id, |c| {
            let message = c.upsert_reply(progress);
            message.status = outcome.status;
            if outcome.model.is_some() {
                message.model = outcome.model;
            }
            message.usage = outcome.usage;
            message.finish_reason = outcome.finish_reason;
            message.error = outcome.error;
            message.cost_micros = outcome.cost_micros;
            message.cache = outcome.cache;
            Ok(())
        }))
    }

    fn mark_interrupted(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        message_id: &str,
        seq: u64,
    ) -> StoreFuture<()> {
        done(self.with_conversation(tenant_id, conversation_id, |c| {
            let index = *c.index.get(message_id).ok_or(StoreError::NotFound)?;
            let message = &mut c.messages[index];
            message.status = MessageStatus::Interrupted;
            message.last_seq = seq;
            c.bump(seq);
            Ok(())
        }))
    }

    fn reserve_seqs(&self, tenant_id: &str, conversation_id: &str, up_to: u64) -> StoreFuture<u64> {
        done(self.with_conversation(tenant_id, conversation_id, |c| {
            let reserved = &mut c.conversation.seq_reserved;
            *reserved = (*reserved).max(up_to);
            Ok(*reserved)
        }))
    }

    fn events_after(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        after_seq: u64,
        max_events: usize,
    ) -> StoreFuture<EventsPage> {
        done(self.with_conversation(tenant_id, conversation_id, |c| {
            // Replies never overlap each other's seq ranges (turns run one at a time), and a
            // user message stored before a reply was acked before that reply closed. So once
            // a *closed* reply ended at or before `after_seq`, nothing earlier is newer.
            let start = c
                .messages
                .iter()
                .rposition(|m| {
                    m.role == Role::Assistant
                        && m.status != MessageStatus::Streaming
                        && m.last_seq <= after_seq
                })
                .map_or(0, |i| i + 1);
            Ok(page_of_events(c.messages[start..].iter().collect(), after_seq, max_events))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ConversationEvent;
    use crate::ports::store::StreamChunk;

    fn settings() -> ConversationSettings {
        ConversationSettings {
            model: "mock".into(),
            temperature: None,
            system_prompt: None,
            title: None,
        }
    }

    #[tokio::test]
    async fn tenants_only_see_their_own_conversations() {
        let store = InMemoryConversationStore::new();
        let c = store.create_conversation("t1", "u", settings()).await.unwrap();
        assert_eq!(store.get_conversation("t1", &c.id).await.unwrap().id, c.id);
        assert_eq!(store.get_conversation("t2", &c.id).await, Err(StoreError::NotFound));
        assert_eq!(store.load("t2", &c.id, 10).await.err(), Some(StoreError::NotFound));
        assert_eq!(store.delete_conversation("t2", &c.id).await, Err(StoreError::NotFound));
        assert!(store.get_conversation("t1", &c.id).await.is_ok());
    }

    #[tokio::test]
    async fn listing_pages_newest_first_and_filters_by_owner() {
        let store = InMemoryConversationStore::new();
        let mut ids = Vec::new();
        for i in 0..5 {
            let owner = if i % 2 == 0 { "alice" } else { "bob" };
            ids.push(store.create_conversation("t", owner, settings()).await.unwrap().id);
        }
        let page = store
            .list_conversations("t", ListQuery { limit: 2, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(page.items.iter().map(|c| &c.id).collect::<Vec<_>>(), vec![&ids[4], &ids[3]]);
        let next = store
            .list_conversations(
                "t",
                ListQuery { limit: 2, cursor: page.next_cursor, ..Default::default() },
            )
            .await
            .unwrap();
        assert_eq!(next.items.iter().map(|c| &c.id).collect::<Vec<_>>(), vec![&ids[2], &ids[1]]);
        let alice = store
            .list_conversations(
                "t",
                ListQuery { owner_id: Some("alice".into()), limit: 10, cursor: None },
            )
            .await
            .unwrap();
        assert_eq!(alice.items.len(), 3);
        assert_eq!(alice.next_cursor, None);
    }

    #[tokio::test]
    async fn an_outage_writes_nothing() {
        let store = InMemoryConversationStore::new();
        let c = store.create_conversation("t", "u", settings()).await.unwrap();
        store.set_available(false);
        let message = NewUserMessage {
            id: "m".into(),
            client_id: None,
            user_id: "u".into(),
            content: "hi".into(),
            seq: 1,
        };
        assert!(matches!(
            store.append_user_message("t", &c.id, message).await,
            Err(StoreError::Unavailable(_))
        ));
        store.set_available(true);
        assert!(store.load("t", &c.id, 10).await.unwrap().messages.is_empty());
    }

    #[tokio::test]
    async fn checkpoints_append_and_replay_from_any_seq() {
        let store = InMemoryConversationStore::new();
        let c = store.create_conversation("t", "u", settings()).await.unwrap();
        let user = NewUserMessage {
            id: "u1".into(),
            client_id: Some("c1".into()),
            user_id: "u".into(),
            content: "hi".into(),
            seq: 1,
        };
        store.append_user_message("t", &c.id, user).await.unwrap();
        let progress = |first: u64, last: u64, chunk: StreamChunk| AssistantProgress {
            message_id: "a1".into(),
            reply_to: "u1".into(),
            requested_model: "mock".into(),
            first_seq: first,
            last_seq: last,
            chunk,
        };
        let chunk = StreamChunk { text: "Hel".into(), delta_ends: vec![3], ..Default::default() };
        store.checkpoint_assistant("t", &c.id, progress(2, 2, chunk)).await.unwrap();
        let chunk = StreamChunk { text: "lo".into(), delta_ends: vec![5], ..Default::default() };
        let outcome = AssistantOutcome {
            status: MessageStatus::Complete,
            model: Some("mock-1".into()),
            usage: None,
            finish_reason: None,
            error: None,
            cost_micros: None,
            cache: CacheStatus::Miss,
        };
        store.finish_assistant("t", &c.id, progress(2, 4, chunk), outcome).await.unwrap();
        let all = store.events_after("t", &c.id, 0, 100).await.unwrap();
        assert!(all.complete);
        let all = all.events;
        assert_eq!(all.iter().filter_map(ConversationEvent::seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(all[2], ConversationEvent::Delta { seq: 3, text: "lo".into() });
        let tail = store.events_after("t", &c.id, 2, 100).await.unwrap();
        assert_eq!(tail.events, all[2..].to_vec());
        let first = store.events_after("t", &c.id, 0, 3).await.unwrap();
        assert_eq!((first.events.as_slice(), first.complete), (&all[..3], false));
        let loaded = store.load("t", &c.id, 10).await.unwrap();
        assert_eq!(loaded.conversation.last_seq, 4);
        assert_eq!(loaded.messages[1].content(), "Hello");
        assert_eq!(
            store.events_after("t", &c.id, 4, 100).await.unwrap(),
            EventsPage { events: vec![], complete: true }
        );
    }
}
