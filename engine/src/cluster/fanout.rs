//! Pub/sub fan-out: the node's one subscriber connection to Redis.
//!
//! A single dedicated pub/sub connection per node carries
//! * the node's own channel `{prefix}node:{node_id}` (requests forwarded to it as an owner,
//!   and replies to requests it forwarded), handed to [`super::Cluster::on_node_message`];
//! * one channel `{prefix}conv:{id}:events` per conversation that local proxies watch,
//!   subscribed when the first local [`Listener`] appears and unsubscribed with the last.
//!
//! Routing never blocks: each listener has a bounded channel fed with `try_send`, and a
//! listener that falls behind is dropped (its subscription closes, the client resumes), so
//! one slow proxy never delays the others. When the connection breaks, the loop reconnects
//! with backoff, resubscribes everything, and sends every listener a [`FanoutItem::Resync`]:
//! events published meanwhile were missed, and the proxies fill them in from the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actors::events::ConversationEvent;
use bb8_redis::redis::aio::PubSubSink;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::redis::{RedisFailure, RedisLink};
use super::wire;

/// What a listener receives.
#[derive(Debug, Clone)]
pub enum FanoutItem {
    Event(Arc<ConversationEvent>),
    /// Events may have been missed (reconnect, owner change): re-read the store.
    Resync,
}

/// Bound on each listener's queue; a proxy this far behind is dropped.
const LISTENER_BUFFER: usize = 1024;

/// Local listeners by channel: (listener id, its queue).
type Listeners = HashMap<String, Vec<(u64, mpsc::Sender<FanoutItem>)>>;

pub(crate) struct Fanout {
    redis: RedisLink,
    node_channel: String,
    listeners: Mutex<Listeners>,
    next_id: AtomicU64,
    sink: Mutex<Option<PubSubSink>>,
}

/// A local watcher of one conversation channel; unsubscribes when dropped.
pub struct Listener {
    fanout: Arc<Fanout>,
    channel: String,
    id: u64,
    pub receiver: mpsc::Receiver<FanoutItem>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.fanout.remove(&self.channel, self.id);
    }
}

impl Fanout {
    pub fn new(redis: RedisLink, node_channel: String) -> Arc<Fanout> {
        Arc::new(Fanout {
            redis,
            node_channel,
            listeners: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            sink: Mutex::new(None),
        })
    }

    /// Whether the subscriber connection is up.
    pub fn is_connected(&self) -> bool {
        self.sink.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Starts watching `channel`; returns once Redis confirmed the subscription, so every
    /// event published after this returns reaches the listener.
    pub async fn listen(self: &Arc<Self>, channel: &str) -> Result<Listener, RedisFailure> {
        let (tx, receiver) = mpsc::channel(LISTENER_BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(channel.to_owned())
            .or_default()
            .push((id, tx));
        let listener = Listener { fanout: self.clone(), channel: channel.to_owned(), id, receiver };
        let sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(mut sink) = sink else {
            return Err(RedisFailure::Down("the subscriber connection is down".into()));
        };
        // Subscribing to a channel already subscribed is harmless, and waiting for our own
        // confirmation means the first listener's SUBSCRIBE cannot still be in flight.
        match tokio::time::timeout(self.redis.timeout(), sink.subscribe(channel)).await {
            Ok(Ok(())) => Ok(listener),
            Ok(Err(_)) => Err(RedisFailure::Down("subscribe failed".into())),
            Err(_) => Err(RedisFailure::Timeout(self.redis.timeout())),
        }
    }

    fn remove(&self, channel: &str, id: u64) {
        let last = {
            let mut listeners = self.listeners.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(entry) = listeners.get_mut(channel) else { return };
            entry.retain(|(i, _)| *i != id);
            let last = entry.is_empty();
            if last {
                listeners.remove(channel);
            }
            last
        };
        if last {
            self.unsubscribe_later(channel.to_owned());
        }
    }

    fn unsubscribe_later(&self, channel: String) {
        let sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner).clone();
        // A listener dropped outside the runtime (process exit) has nothing to clean up.
        if let (Some(mut sink), Ok(runtime)) = (sink, tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), sink.unsubscribe(channel)).await;
            });
        }
    }

    /// Hands an item to every listener of `channel`, dropping those that fell behind.
    fn route(&self, channel: &str, item: FanoutItem) {
        let mut listeners = self.listeners.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = listeners.get_mut(channel) {
            entry.retain(|(id, tx)| match tx.try_send(item.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(listener = id, channel, "dropping a proxy that fell behind");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
    }

    fn resync_all(&self) {
        let channels: Vec<String> =
            self.listeners.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        for channel in channels {
            self.route(&channel, FanoutItem::Resync);
        }
    }

    /// Keeps the subscriber connection up for the life of the process, handing the node
    /// channel's messages to `on_node_message`.
    pub async fn run(self: Arc<Self>, on_node_message: impl Fn(Vec<u8>) + 'static) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.connect().await {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!("redis pub/sub connected");
                    // Whatever was published while we were away is in the store.
                    self.resync_all();
                    while let Some(message) = stream.next().await {
                        let channel = message.get_channel_name();
                        let payload = message.get_payload_bytes();
                        if channel == self.node_channel {
                            on_node_message(payload.to_vec());
                        } else if let Ok(event) =
                            serde_json::from_slice::<ConversationEvent>(payload)
                        {
                            self.route(channel, FanoutItem::Event(Arc::new(event)));
                        } else if serde_json::from_slice::<wire::Sync>(payload).is_ok() {
                            self.route(channel, FanoutItem::Resync);
                        }
                    }
                    *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    self.redis.set_up(false);
                    tracing::warn!("redis pub/sub connection lost; reconnecting");
                }
                Err(e) => tracing::debug!(error = %e, "redis pub/sub connect failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn connect(&self) -> Result<bb8_redis::redis::aio::PubSubStream, RedisFailure> {
        let timeout = self.redis.timeout();
        let pubsub = tokio::time::timeout(timeout, self.redis.client().get_async_pubsub())
            .await
            .map_err(|_| RedisFailure::Timeout(timeout))?
            .map_err(|_| RedisFailure::Down("pub/sub connect failed".into()))?;
        let (mut sink, stream) = pubsub.split();
        let mut channels: Vec<String> =
            self.listeners.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        channels.push(self.node_channel.clone());
        tokio::time::timeout(timeout, sink.subscribe(&channels))
            .await
            .map_err(|_| RedisFailure::Timeout(timeout))?
            .map_err(|_| RedisFailure::Down("subscribe failed".into()))?;
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = Some(sink.clone());
        // Channels whose first listener arrived while we were subscribing.
        let late: Vec<String> = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter(|c| !channels.contains(c))
            .cloned()
            .collect();
        if !late.is_empty() {
            let _ = tokio::time::timeout(timeout, sink.subscribe(&late)).await;
        }
        Ok(stream)
    }
}
