//! Running several engine nodes: conversation ownership and cross-node fan-out in Redis.
//!
//! Nodes share PostgreSQL and Redis and are otherwise stateless. Each live conversation has
//! exactly one **owner** node — the one holding its Redis lease ([`lease`]) — which runs the
//! real `ConversationActor` (the only thing that assigns seqs) and publishes every event to
//! the conversation's channel ([`owner`]). Any other node serves its clients through a
//! **proxy** ([`remote`]): replay from the store, then the published events, ordered and
//! deduplicated by seq; posts and cancels are forwarded to the owner's node channel. The
//! edges do not see the difference: `crate::conversations::ConversationLink` holds either.
//!
//! * [`redis`]: the pooled command connection, health and reconnection;
//! * [`fanout`]: the node's one pub/sub connection and its routing to local proxies;
//! * [`wire`]: the JSON nodes exchange;
//! * [`counters`], [`cache`]: atomic shared counters (rate limits, concurrency) and TTL
//!   cache keys, for the features that need cluster-wide state.
//!
//! When Redis is unreachable every node serves what it is asked from its own actors (as if
//! it owned everything) and `/readyz` reports `redis: down`; see `docs/architecture.md`
//! ("Running several nodes") for what that risks and how the cluster heals.

pub mod cache;
pub mod counters;
pub mod fanout;
pub mod lease;
pub mod owner;
pub mod redis;
pub mod remote;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actors::conversation::{ConversationError, ConversationHandle, PostUserMessage};
use actors::ports::store::ConversationStore;
use actors::registry::Registry;
use actors::tenant::Conversations;
use secrecy::ExposeSecret;
use tokio::sync::oneshot;

use crate::config::RedisConfig;
use fanout::Fanout;
use owner::Owned;
use redis::RedisLink;
use remote::RemoteConversation;
use wire::{NodeMessage, WireError, WireResult};

/// How often the health task pings Redis.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Where a conversation is served from, as [`Cluster::open`] resolved it.
pub enum Resolved {
    /// This node owns it (or Redis is down and it serves locally).
    Local(Arc<Owned>),
    /// Another node owns it.
    Remote(RemoteConversation),
}

/// This node's membership in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    prefix: String,
    lease_ttl: Duration,
    request_timeout: Duration,
    redis: RedisLink,
    fanout: Arc<Fanout>,
    conversations: Conversations,
    store: Arc<dyn ConversationStore>,
    registry: Registry,
    owned: Mutex<HashMap<String, Arc<Owned>>>,
    replies: Mutex<HashMap<String, oneshot::Sender<WireResult>>>,
}

/// Removes a forwarded request's reply slot when the wait ends.
pub(crate) struct ReplySlot {
    cluster: Cluster,
    request_id: String,
}

impl Drop for ReplySlot {
    fn drop(&mut self) {
        self.cluster
            .inner
            .replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.request_id);
    }
}

impl Cluster {
    /// Connects the node to Redis (in the background: the node starts even if Redis is
    /// down) and starts its health and pub/sub tasks. Must run inside an actix `System`.
    pub fn start(
        config: &RedisConfig,
        conversations: Conversations,
        store: Arc<dyn ConversationStore>,
        registry: Registry,
    ) -> anyhow::Result<Cluster> {
        let timeout = Duration::from_millis(config.command_timeout_ms);
        let redis = RedisLink::new(config.url.expose_secret(), timeout)?;
        let node_id = config.node_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let prefix = config.key_prefix.clone();
        let node_channel = format!("{prefix}node:{node_id}");
        let fanout = Fanout::new(redis.clone(), node_channel);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                node_id,
                prefix,
                lease_ttl: Duration::from_millis(config.lease_ttl_ms),
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                redis: redis.clone(),
                fanout: fanout.clone(),
                conversations,
                store,
                registry,
                owned: Mutex::new(HashMap::new()),
                replies: Mutex::new(HashMap::new()),
            }),
        };
        tracing::info!(node_id = %cluster.node_id(), "cluster mode: conversations are shared through redis");
        actix_rt::spawn(redis.health_loop(HEALTH_INTERVAL));
        let handler = cluster.clone();
        actix_rt::spawn(fanout.run(move |payload| handler.on_node_message(payload)));
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn redis(&self) -> &RedisLink {
        &self.inner.redis
    }

    /// Whether Redis is reachable (commands and the pub/sub connection).
    pub fn redis_up(&self) -> bool {
        self.inner.redis.is_up() && self.inner.fanout.is_connected()
    }

    /// Conversations this node owns right now.
    pub fn owned_count(&self) -> usize {
        self.inner.owned.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// A key under this deployment's prefix (for counters and cache keys too).
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.inner.prefix)
    }

    pub(crate) fn owner_key(&self, conversation_id: &str) -> String {
        self.key(&format!("conv:{conversation_id}:owner"))
    }

    pub(crate) fn events_channel(&self, conversation_id: &str) -> String {
        self.key(&format!("conv:{conversation_id}:events"))
    }

    pub(crate) fn node_channel(&self, node_id: &str) -> String {
        self.key(&format!("node:{node_id}"))
    }

    pub(crate) fn fanout(&self) -> &Arc<Fanout> {
        &self.inner.fanout
    }

    pub(crate) fn store(&self) -> &Arc<dyn ConversationStore> {
        &self.inner.store
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub(crate) fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    pub(crate) fn lease_ttl_ms(&self) -> u64 {
        self.inner.lease_ttl.as_millis() as u64
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    fn owned(&self, conversation_id: &str) -> Option<Arc<Owned>> {
        self.inner
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(conversation_id)
            .cloned()
    }

    /// Forgets an owned conversation (its actor stopped, or its lease went elsewhere).
    pub(crate) fn forget(&self, owned: &Arc<Owned>) {
        let mut map = self.inner.owned.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&owned.conversation_id).is_some_and(|o| Arc::ptr_eq(o, owned)) {
            map.remove(&owned.conversation_id);
        }
    }

    /// Registers a forwarded request's reply slot; it is removed when the guard drops.
    pub(crate) fn await_reply(
        &self,
        request_id: &str,
        tx: oneshot::Sender<WireResult>,
    ) -> ReplySlot {
        self.inner
            .replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request_id.to_owned(), tx);
        ReplySlot { cluster: self.clone(), request_id: request_id.to_owned() }
    }

    /// Resolves who serves `conversation_id` for `tenant_id`: this node (taking the lease
    /// if it is free) or the owner. A conversation whose owner died is taken over once the
    /// dead owner's lease expires (at most one lease TTL). `NotFound` for another tenant's id.
    pub async fn open(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<Resolved, ConversationError> {
        let deadline = Instant::now() + self.inner.lease_ttl + Duration::from_secs(2);
        loop {
            if let Some(owned) = self.owned(conversation_id).filter(|o| o.usable()) {
                if owned.tenant_id != tenant_id {
                    return Err(ConversationError::NotFound);
                }
                return Ok(Resolved::Local(owned));
            }
            // The tenant wall, and the seq the new owner's publisher starts after.
            let stored = self.inner.store.get_conversation(tenant_id, conversation_id).await?;
            let key = self.owner_key(conversation_id);
            let claimed = if self.redis_up() {
                lease::claim(&self.inner.redis, &key, self.node_id(), self.lease_ttl_ms()).await
            } else {
                Err(redis::RedisFailure::Down("redis is down".into()))
            };
            let holder = match claimed {
                Ok(holder) if holder == self.node_id() => {
                    return self
                        .become_owner(tenant_id, conversation_id, stored.last_seq, true)
                        .await;
                }
                Ok(holder) => holder,
                Err(_) => {
                    // Degraded: serve from this node's own actor (see the module docs).
                    return self
                        .become_owner(tenant_id, conversation_id, stored.last_seq, false)
                        .await;
                }
            };
            let alive = lease::node_listening(&self.inner.redis, &self.node_channel(&holder))
                .await
                .unwrap_or(true);
            if alive {
                let remote =
                    RemoteConversation::new(self.clone(), tenant_id, conversation_id, holder);
                return Ok(Resolved::Remote(remote));
            }
            // The owner's process is gone but its lease has not expired yet.
            if Instant::now() >= deadline {
                return Err(ConversationError::Unavailable);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn become_owner(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        stored_last_seq: u64,
        leased: bool,
    ) -> Result<Resolved, ConversationError> {
        let handle: ConversationHandle =
            self.inner.conversations.open(tenant_id, conversation_id).await?;
        let (owned, new) = {
            let mut map = self.inner.owned.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(conversation_id).filter(|o| o.usable()) {
                Some(existing) => (existing.clone(), false),
                None => {
                    let owned =
                        Owned::new(tenant_id, conversation_id, handle, leased, stored_last_seq);
                    map.insert(conversation_id.to_owned(), owned.clone());
                    (owned, true)
                }
            }
        };
        if new {
            if leased {
                tracing::debug!(conversation_id, "took ownership");
            }
            actix_rt::spawn(owned.clone().keep(self.clone()));
            owned.ensure_publishing(self).await?;
            owned.announce(self, stored_last_seq).await;
        }
        Ok(Resolved::Local(owned))
    }

    /// A message on this node's channel: a request for a conversation it owns, or the
    /// answer to one it forwarded.
    fn on_node_message(&self, payload: Vec<u8>) {
        let Ok(message) = serde_json::from_slice::<NodeMessage>(&payload) else {
            tracing::warn!("ignoring a malformed node message");
            return;
        };
        match message {
            NodeMessage::Reply { request_id, result } => {
                let waiter = self
                    .inner
                    .replies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&request_id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(result);
                }
            }
            NodeMessage::Post {
                request_id,
                reply_to,
                tenant_id,
                conversation_id,
                user_id,
                client_id,
                content,
                cache,
            } => {
                let cluster = self.clone();
                actix_rt::spawn(async move {
                    let result = match cluster
                        .owned(&conversation_id)
                        .filter(|o| o.usable() && o.tenant_id == tenant_id)
                    {
                        None => WireResult::Failed(WireError::not_owner()),
                        Some(owned) => {
                            let posted = async {
                                owned.ensure_publishing(&cluster).await?;
                                owned
                                    .handle
                                    .post(PostUserMessage { user_id, client_id, content, cache })
                                    .await
                            };
                            WireResult::from_result(posted.await)
                        }
                    };
                    let reply = NodeMessage::Reply { request_id, result };
                    if let Ok(json) = serde_json::to_string(&reply) {
                        let channel = cluster.node_channel(&reply_to);
                        let publish =
                            ::bb8_redis::redis::cmd("PUBLISH").arg(&channel).arg(json).clone();
                        let _ = cluster.redis().query::<i64>(&publish).await;
                    }
                });
            }
            NodeMessage::Cancel { tenant_id, conversation_id } => {
                if let Some(owned) =
                    self.owned(&conversation_id).filter(|o| o.usable() && o.tenant_id == tenant_id)
                {
                    actix_rt::spawn(async move {
                        let _ = owned.handle.cancel().await;
                    });
                }
            }
        }
    }

    /// Graceful shutdown: hand every owned conversation's lease back so other nodes take
    /// over at once instead of waiting for the leases to expire.
    pub async fn release_all(&self) {
        let owned: Vec<Arc<Owned>> = self
            .inner
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, o)| o)
            .collect();
        for conversation in &owned {
            conversation.hand_over();
        }
        for conversation in owned.iter().filter(|o| o.is_leased()) {
            let key = self.owner_key(&conversation.conversation_id);
            let _ = lease::release(&self.inner.redis, &key, self.node_id()).await;
        }
    }
}
