//! The owner side: a conversation whose lease this node holds.
//!
//! An [`Owned`] conversation has the real `ConversationActor` (through its
//! `ConversationHandle`) and two tasks:
//! * the **publisher**, subscribed to the actor like any client, publishes each event to
//!   `{prefix}conv:{id}:events` (batched into one pipeline per wake-up, in seq order). It
//!   unsubscribes when the conversation has been quiet for a while — so the actor can still
//!   stop when idle — and every post (local or forwarded) restarts it first, resuming from
//!   the last seq it published so nothing is skipped;
//! * the **keeper** renews the lease every third of its TTL, and when the actor has stopped
//!   releases it and forgets the conversation. If another node holds the lease (ours expired
//!   while Redis was unreachable) the conversation is marked lost: new requests go to the
//!   other owner; links already holding this actor are refused and re-resolve.
//!
//! Publishing is best effort by design: an event that could not be published (Redis down)
//! is still in the owner's store path, and proxies fill such gaps from the store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actors::conversation::{ConversationError, ConversationHandle};
use actors::events::ConversationEvent;
use bb8_redis::redis;
use tokio::sync::mpsc;

use super::{Cluster, lease, wire};

/// The publisher stops after this long with no event, no link and no turn running.
const PUBLISHER_IDLE: Duration = Duration::from_secs(30);
/// Most events published in one pipeline.
const PUBLISH_BATCH: usize = 64;

pub struct Owned {
    pub(crate) tenant_id: String,
    pub(crate) conversation_id: String,
    pub(crate) handle: ConversationHandle,
    /// Held in Redis (false while degraded: Redis was down when we took it).
    leased: AtomicBool,
    lost: AtomicBool,
    /// Edge links currently holding this conversation on this node.
    links: AtomicU64,
    /// Highest seq published. Starts at the stored last seq read *before* the actor was
    /// rebuilt, so the first publisher also relays what recovery wrote (`interrupted`).
    last_published: AtomicU64,
    last_activity: Mutex<Instant>,
    publisher: tokio::sync::Mutex<bool>,
}

impl Owned {
    pub(crate) fn new(
        tenant_id: &str,
        conversation_id: &str,
        handle: ConversationHandle,
        leased: bool,
        start_seq: u64,
    ) -> Arc<Owned> {
        Arc::new(Owned {
            tenant_id: tenant_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            handle,
            leased: AtomicBool::new(leased),
            lost: AtomicBool::new(false),
            links: AtomicU64::new(0),
            last_published: AtomicU64::new(start_seq),
            last_activity: Mutex::new(Instant::now()),
            publisher: tokio::sync::Mutex::new(false),
        })
    }

    /// Whether requests may still be served by this node's actor.
    pub fn usable(&self) -> bool {
        !self.lost.load(Ordering::Relaxed) && self.handle.is_live()
    }

    /// This node gives the conversation up (shutdown): links re-resolve, publishing stops.
    pub(crate) fn hand_over(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_leased(&self) -> bool {
        self.leased.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn quiet_for(&self) -> Duration {
        self.last_activity.lock().unwrap_or_else(PoisonError::into_inner).elapsed()
    }

    pub(crate) fn link_opened(&self) {
        self.links.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    pub(crate) fn link_closed(&self) {
        self.links.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// Makes sure events are being published before something that produces events (a
    /// post) reaches the actor.
    pub(crate) async fn ensure_publishing(
        self: &Arc<Self>,
        cluster: &Cluster,
    ) -> Result<(), ConversationError> {
        self.touch();
        let mut running = self.publisher.lock().await;
        if *running {
            return Ok(());
        }
        let from = self.last_published.load(Ordering::Relaxed);
        let subscription = match self.handle.subscribe(Some(from)).await {
            // First start (or the actor restarted below what we published): live only.
            Err(ConversationError::ResyncRequired { .. }) => self.handle.subscribe(None).await?,
            other => other?,
        };
        self.last_published.fetch_max(subscription.last_seq, Ordering::Relaxed);
        *running = true;
        let owned = self.clone();
        let cluster = cluster.clone();
        actix_rt::spawn(async move {
            owned.publish(&cluster, subscription.id, subscription.receiver).await;
        });
        Ok(())
    }

    /// The publisher task: relays the actor's events to Redis until the conversation is
    /// quiet, the actor stops, or the lease is lost. The decision to stop is taken under the
    /// publisher lock, after [`Owned::ensure_publishing`] touched the activity clock, so a
    /// post never finds a publisher that is about to leave.
    async fn publish(
        self: &Arc<Self>,
        cluster: &Cluster,
        mut subscriber: u64,
        mut events: mpsc::Receiver<Arc<ConversationEvent>>,
    ) {
        let channel = cluster.events_channel(&self.conversation_id);
        let registry_id = format!("conversation:{}", self.conversation_id);
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            if self.lost.load(Ordering::Relaxed) && self.stop_publisher(true).await {
                break;
            }
            let received = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
            match received {
                Ok(Some(event)) => {
                    batch.push(event);
                    while batch.len() < PUBLISH_BATCH {
                        match events.try_recv() {
                            Ok(event) => batch.push(event),
                            Err(_) => break,
                        }
                    }
                    self.touch();
                    let mut pipe = redis::pipe();
                    let mut top = 0;
                    for event in batch.drain(..) {
                        if let Ok(json) = serde_json::to_string(&*event) {
                            pipe.cmd("PUBLISH").arg(&channel).arg(json).ignore();
                        }
                        top = top.max(event.seq().unwrap_or(0));
                    }
                    // Best effort: a proxy that misses these fills them in from the store.
                    if let Err(e) = cluster.redis().pipe::<()>(&pipe).await {
                        tracing::debug!(error = %e, "could not publish events");
                    }
                    self.last_published.fetch_max(top, Ordering::Relaxed);
                }
                Ok(None) => {
                    // Dropped for falling behind (or the actor stopped): resume where we were.
                    let from = self.last_published.load(Ordering::Relaxed);
                    match self.handle.subscribe(Some(from)).await {
                        Ok(subscription) => {
                            subscriber = subscription.id;
                            events = subscription.receiver;
                        }
                        Err(_) => {
                            self.stop_publisher(true).await;
                            return;
                        }
                    }
                }
                Err(_) => {
                    let busy = cluster
                        .registry()
                        .get(&registry_id)
                        .is_some_and(|entry| entry.in_flight() > 0);
                    let idle = !busy && self.links.load(Ordering::Relaxed) == 0;
                    if (idle || !self.handle.is_live()) && self.stop_publisher(!idle).await {
                        break;
                    }
                }
            }
        }
        let _ = self.handle.unsubscribe(subscriber).await;
    }

    /// Marks the publisher stopped if it must (`force`) or the conversation is still quiet
    /// under the lock; returns whether it stopped.
    async fn stop_publisher(&self, force: bool) -> bool {
        let mut running = self.publisher.lock().await;
        if force || self.quiet_for() >= PUBLISHER_IDLE {
            *running = false;
            return true;
        }
        false
    }

    /// The keeper task: renews the lease while the actor lives, then releases it.
    pub(crate) async fn keep(self: Arc<Self>, cluster: Cluster) {
        let key = cluster.owner_key(&self.conversation_id);
        let period = cluster.lease_ttl() / 3;
        loop {
            tokio::time::sleep(period).await;
            // Handed over (shutdown): the lease was released and must not be claimed again.
            if self.lost.load(Ordering::Relaxed) {
                return;
            }
            if !self.handle.is_live() {
                if self.is_leased() {
                    let _ = lease::release(cluster.redis(), &key, cluster.node_id()).await;
                }
                cluster.forget(&self);
                return;
            }
            match lease::claim(cluster.redis(), &key, cluster.node_id(), cluster.lease_ttl_ms())
                .await
            {
                Ok(holder) if holder == cluster.node_id() => {
                    if !self.leased.swap(true, Ordering::Relaxed) {
                        tracing::info!(conversation_id = %self.conversation_id, "took the lease after redis came back");
                    }
                }
                Ok(holder) => {
                    tracing::error!(
                        conversation_id = %self.conversation_id, %holder,
                        "lost the conversation's lease to another node (redis was unreachable for longer than the lease); handing it over"
                    );
                    self.lost.store(true, Ordering::Relaxed);
                    cluster.forget(&self);
                    return;
                }
                // Degraded: keep serving; the lease is claimed again once Redis is back.
                Err(_) => {}
            }
        }
    }

    /// Tells proxies to re-read the store (after a takeover recovered cut turns there).
    pub(crate) async fn announce(&self, cluster: &Cluster, last_seq: u64) {
        let hint = wire::Sync { kind: wire::SyncTag::Sync, last_seq };
        if let Ok(json) = serde_json::to_string(&hint) {
            let channel = cluster.events_channel(&self.conversation_id);
            let _ =
                cluster.redis().query::<i64>(redis::cmd("PUBLISH").arg(&channel).arg(json)).await;
        }
    }
}
