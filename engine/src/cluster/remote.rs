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

use actors::conversation::{ConversationError, PostUserMessage, Posted, REPLAY_PAGE};
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
            order: SeqOrder::starting_after(after_seq),
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
    order: SeqOrder,
    out: mpsc::Sender<Arc<ConversationEvent>>,
}

impl Pump {
    async fn run(mut self, mut listener: Listener) {
        if self.order.next.is_some() && !self.fill().await {
            return;
        }
        let mut retries = 0u32;
        loop {
            while let Some(event) = self.order.pop() {
                if self.out.send(event).await.is_err() {
                    return;
                }
            }
            let gap = self.order.has_gap();
            let item = if gap {
                match tokio::time::timeout(GAP_RETRY_DELAY, listener.receiver.recv()).await {
                    Ok(item) => item,
                    Err(_) => Some(FanoutItem::Resync),
                }
            } else {
                listener.receiver.recv().await
            };
            match item {
                Some(FanoutItem::Event(event)) => self.order.accept(event),
                Some(FanoutItem::Resync) => {
                    if gap {
                        retries += 1;
                        if retries > GAP_RETRIES {
                            tracing::warn!(conversation_id = %self.conversation_id, "proxy could not fill a gap; closing the subscription");
                            return;
                        }
                    }
                    if self.order.next.is_some() && !self.fill().await {
                        return;
                    }
                }
                // Dropped for falling behind, or the node is shutting down.
                None => return,
            }
            if !self.order.has_gap() {
                retries = 0;
            }
        }
    }

    /// Reads what the store has after what the client has seen, a page at a time, handing
    /// each page on before reading the next (a client that stops reading holds one page);
    /// false when the store refuses or the client is gone (the subscription closes and the
    /// client resumes).
    async fn fill(&mut self) -> bool {
        let store = self.cluster.store();
        loop {
            let Some(next) = self.order.next else { return true };
            let after_seq = next - 1;
            let page = match store
                .events_after(&self.tenant_id, &self.conversation_id, after_seq, REPLAY_PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(conversation_id = %self.conversation_id, error = %e, "proxy replay failed");
                    return false;
                }
            };
            for event in page.events {
                self.order.accept(Arc::new(event));
            }
            if page.complete {
                return true;
            }
            while let Some(event) = self.order.pop() {
                if self.out.send(event).await.is_err() {
                    return false;
                }
            }
            if self.order.next == Some(next) {
                // Stuck behind a hole the page could not vouch for: the live loop's gap
                // handling (retry, then close) takes it from here.
                return true;
            }
        }
    }
}

/// Events in seq order, each once: what arrives early waits for what comes before it.
#[derive(Debug, Default)]
struct SeqOrder {
    /// The seq the client needs next; `None` until the first event (a live-only start).
    next: Option<u64>,
    pending: BTreeMap<u64, Arc<ConversationEvent>>,
}

impl SeqOrder {
    fn starting_after(after_seq: Option<u64>) -> Self {
        Self { next: after_seq.map(|s| s + 1), pending: BTreeMap::new() }
    }

    /// Takes an event from the channel or the store; duplicates and old ones are dropped.
    fn accept(&mut self, event: Arc<ConversationEvent>) {
        let Some(seq) = event.seq() else { return };
        let next = *self.next.get_or_insert(seq);
        if seq >= next {
            self.pending.entry(seq).or_insert(event);
        }
    }

    /// The next event in line, if it is here.
    fn pop(&mut self) -> Option<Arc<ConversationEvent>> {
        let next = self.next?;
        let event = match self.pending.remove(&next) {
            Some(event) => event,
            None => {
                let to = self.vouched_jump(next)?;
                self.pending.remove(&to)?
            }
        };
        self.next = event.seq().map(|s| s + 1);
        Some(event)
    }

    /// Events are waiting behind a hole.
    fn has_gap(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Seqs a crashed owner streamed but never stored are skipped, never reused: recovery
    /// closes the cut reply with an `interrupted` event after them (see the store port's
    /// "Seq reservation"). A jump up to such an event is the honest trace of that loss, as
    /// the actor's own resume accepts it; any other hole is waited for.
    fn vouched_jump(&self, next: u64) -> Option<u64> {
        let first = *self.pending.keys().next()?;
        let interrupted = self
            .pending
            .values()
            .filter(|e| matches!(***e, ConversationEvent::Interrupted { .. }))
            .filter_map(|e| e.seq())
            .max()?;
        (first > next && first <= interrupted).then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(seq: u64) -> Arc<ConversationEvent> {
        Arc::new(ConversationEvent::Delta { seq, text: format!("t{seq}") })
    }

    fn interrupted(seq: u64) -> Arc<ConversationEvent> {
        Arc::new(ConversationEvent::Interrupted {
            seq,
            message_id: "a".into(),
            reply_to: "u".into(),
            lost_after: 0,
        })
    }

    fn drain(order: &mut SeqOrder) -> Vec<u64> {
        std::iter::from_fn(|| order.pop()).filter_map(|e| e.seq()).collect()
    }

    #[test]
    fn events_come_out_in_order_once_whatever_order_they_arrive_in() {
        let mut order = SeqOrder::starting_after(Some(2));
        for seq in [5, 3, 3, 1, 2, 4, 5] {
            order.accept(delta(seq));
        }
        assert_eq!(drain(&mut order), vec![3, 4, 5]);
        assert!(!order.has_gap());
        order.accept(delta(7));
        assert_eq!(drain(&mut order), Vec::<u64>::new(), "6 is missing: 7 waits");
        assert!(order.has_gap());
        order.accept(delta(6));
        assert_eq!(drain(&mut order), vec![6, 7]);
    }

    #[test]
    fn a_live_only_subscription_starts_at_the_first_event_it_sees() {
        let mut order = SeqOrder::starting_after(None);
        order.accept(delta(40));
        order.accept(delta(39));
        order.accept(delta(41));
        assert_eq!(drain(&mut order), vec![40, 41]);
    }

    #[test]
    fn only_a_crash_trace_may_skip_seqs() {
        let mut order = SeqOrder::starting_after(Some(10));
        // 11..=20 were streamed by an owner that died and never stored; recovery closed
        // the reply with `interrupted` at 21.
        order.accept(interrupted(21));
        order.accept(delta(22));
        assert_eq!(drain(&mut order), vec![21, 22]);
        // Without an `interrupted` after it, a hole is waited for.
        order.accept(delta(25));
        assert_eq!(drain(&mut order), Vec::<u64>::new());
    }
}
