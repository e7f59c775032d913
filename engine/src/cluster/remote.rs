//! The proxy side: a conversation owned by another node.
//!
//! * **subscribe** listens on the conversation's channel *first*, then replays from the
//!   store (`events_after`), and delivers in seq order with no duplicate: live events that
//!   arrive during the replay wait in a small ordered buffer. A seq that jumps ahead (a
//!   publish missed while Redis was away, or events not yet checkpointed when the replay
//!   read the store) is filled from the store, retried a few times while the owner
//!   checkpoints; if the gap cannot be filled the subscription closes and the client
//!   resumes, exactly as when a local subscriber falls behind.
//! * **post** and **cancel** go to the owner's node channel; a post waits for its reply
//!   (`Posted` or the error) up to `request_timeout`. No listener on the owner's channel
//!   means its process is gone: the caller gets `Stopped` and re-resolves the owner (taking
//!   the conversation over once the dead owner's lease expires).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actors::conversation::{ConversationError, PostUserMessage, Posted};
use actors::events::ConversationEvent;
use bb8_redis::redis;
use tokio::sync::{mpsc, oneshot};

use super::Cluster;
use super::fanout::{FanoutItem, Listener};
use super::wire::{NodeMessage, WireResult};

/// How long a proxy waits for a gap to be filled before closing the subscription.
const GAP_RETRIES: u32 = 40;
const GAP_RETRY_DELAY: Duration = Duration::from_millis(250);

/// A conversation owned by another node, as an edge link holds it.
#[derive(Clone)]
pub struct RemoteConversation {
    cluster: Cluster,
    tenant_id: String,
    conversation_id: String,
    owner: String,
}

/// A proxy subscription's pump: stops (and with it the channel's listener) when dropped.
pub struct PumpHandle(tokio::task::AbortHandle);

impl Drop for PumpHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RemoteConversation {
    pub(crate) fn new(
        cluster: Cluster,
        tenant_id: &str,
        conversation_id: &str,
        owner: String,
    ) -> Self {
        Self {
            cluster,
            tenant_id: tenant_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            owner,
        }
    }

    /// The node that owns the conversation.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Events after `after_seq` (from the store) then live; `None`: live only.
    pub async fn subscribe(
        &self,
        after_seq: Option<u64>,
        buffer: usize,
    ) -> Result<(mpsc::Receiver<Arc<ConversationEvent>>, u64, PumpHandle), ConversationError> {
        let channel = self.cluster.events_channel(&self.conversation_id);
        // Redis unreachable: the caller re-resolves (and serves locally, degraded).
        let listener =
            self.cluster.fanout().listen(&channel).await.map_err(|_| ConversationError::Stopped)?;
        let store = self.cluster.store();
        let conversation = store.get_conversation(&self.tenant_id, &self.conversation_id).await?;
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let pump = Pump {
            cluster: self.cluster.clone(),
            tenant_id: self.tenant_id.clone(),
            conversation_id: self.conversation_id.clone(),
            next: after_seq.map(|s| s + 1),
            pending: BTreeMap::new(),
            out: tx,
        };
        let task = actix_rt::spawn(pump.run(listener));
        let last_seq = after_seq.unwrap_or(conversation.last_seq);
        Ok((rx, last_seq, PumpHandle(task.abort_handle())))
    }

    /// Forwards a post to the owner and waits for its answer.
    pub async fn post(&self, message: PostUserMessage) -> Result<Posted, ConversationError> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let request = NodeMessage::Post {
            request_id: request_id.clone(),
            reply_to: self.cluster.node_id().to_owned(),
            tenant_id: self.tenant_id.clone(),
            conversation_id: self.conversation_id.clone(),
            user_id: message.user_id,
            client_id: message.client_id,
            content: message.content,
            cache: message.cache,
        };
        let (tx, rx) = oneshot::channel::<WireResult>();
        let _pending = self.cluster.await_reply(&request_id, tx);
        match self.send(&request).await {
            Ok(true) => {}
            // Nobody listens on the owner's channel (it died), or Redis is unreachable.
            Ok(false) | Err(()) => return Err(ConversationError::Stopped),
        }
        match tokio::time::timeout(self.cluster.request_timeout(), rx).await {
            Ok(Ok(result)) => result.into_result(),
            // Nothing was acknowledged to us; the client may retry.
            _ => Err(ConversationError::Unavailable),
        }
    }

    /// Asks the owner to cancel the running turn.
    pub async fn cancel(&self) -> Result<(), ConversationError> {
        let request = NodeMessage::Cancel {
            tenant_id: self.tenant_id.clone(),
            conversation_id: self.conversation_id.clone(),
        };
        match self.send(&request).await {
            Ok(true) => Ok(()),
            _ => Err(ConversationError::Stopped),
        }
    }

    /// Publishes to the owner's channel; `Ok(false)` when no one received it.
    async fn send(&self, message: &NodeMessage) -> Result<bool, ()> {
        let json = serde_json::to_string(message).map_err(|_| ())?;
        let channel = self.cluster.node_channel(&self.owner);
        let receivers: i64 = self
            .cluster
            .redis()
            .query(redis::cmd("PUBLISH").arg(&channel).arg(json))
            .await
            .map_err(|_| ())?;
        Ok(receivers > 0)
    }
}

/// Orders, deduplicates and gap-fills one proxy subscription.
struct Pump {
    cluster: Cluster,
    tenant_id: String,
    conversation_id: String,
    /// The seq the client needs next; `None` until the first live event (live-only start).
    next: Option<u64>,
    pending: BTreeMap<u64, Arc<ConversationEvent>>,
    out: mpsc::Sender<Arc<ConversationEvent>>,
}

impl Pump {
    async fn run(mut self, mut listener: Listener) {
        if self.next.is_some() && !self.fill().await {
            return;
        }
        let mut retries = 0u32;
        loop {
            if !self.deliver().await {
                return;
            }
            let gap = !self.pending.is_empty();
            let item = if gap {
                match tokio::time::timeout(GAP_RETRY_DELAY, listener.receiver.recv()).await {
                    Ok(item) => item,
                    Err(_) => Some(FanoutItem::Resync),
                }
            } else {
                listener.receiver.recv().await
            };
            match item {
                Some(FanoutItem::Event(event)) => self.accept(event),
                Some(FanoutItem::Resync) => {
                    if gap {
                        retries += 1;
                        if retries > GAP_RETRIES {
                            tracing::warn!(conversation_id = %self.conversation_id, "proxy could not fill a gap; closing the subscription");
                            return;
                        }
                    }
                    if self.next.is_some() && !self.fill().await {
                        return;
                    }
                }
                // Dropped for falling behind, or the node is shutting down.
                None => return,
            }
            if self.pending.is_empty() {
                retries = 0;
            }
        }
    }

    fn accept(&mut self, event: Arc<ConversationEvent>) {
        let Some(seq) = event.seq() else { return };
        let next = *self.next.get_or_insert(seq);
        if seq >= next {
            self.pending.insert(seq, event);
        }
    }

    /// Sends every event that is next in line; false when the client went away.
    async fn deliver(&mut self) -> bool {
        while let Some(next) = self.next {
            let Some(event) = self.pending.remove(&next) else { break };
            if self.out.send(event).await.is_err() {
                return false;
            }
            self.next = Some(next + 1);
        }
        true
    }

    /// Reads what the store has after what the client has seen; false when the store
    /// refuses (the subscription closes and the client resumes).
    async fn fill(&mut self) -> bool {
        let Some(next) = self.next else { return true };
        let store = self.cluster.store();
        match store.events_after(&self.tenant_id, &self.conversation_id, next - 1).await {
            Ok(events) => {
                for event in events {
                    if let Some(seq) = event.seq().filter(|s| *s >= next) {
                        self.pending.entry(seq).or_insert_with(|| Arc::new(event));
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(conversation_id = %self.conversation_id, error = %e, "proxy replay failed");
                false
            }
        }
    }
}
