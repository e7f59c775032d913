//! The replay buffer: a conversation's recent events, so a subscriber that reconnects with
//! `after_seq` gets what it missed without a store round trip.
//!
//! Events are contiguous in `seq` (every seq'd event of the conversation passes through
//! here), so finding the events after a seq is an index computation. The buffer keeps at
//! least `capacity` events, and never evicts an event above the eviction *floor* its owner
//! passes: events not yet persisted (the store could not replay them) and events a pending
//! store-backed resume still needs.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::events::ConversationEvent;

#[derive(Debug)]
pub struct ReplayBuffer {
    events: VecDeque<Arc<ConversationEvent>>,
    capacity: usize,
}

impl ReplayBuffer {
    pub fn new(capacity: usize) -> Self {
        Self { events: VecDeque::new(), capacity }
    }

    pub fn push(&mut self, event: Arc<ConversationEvent>) {
        self.events.push_back(event);
    }

    /// The seq of the oldest buffered event; `last_seq + 1` when empty.
    pub fn front_seq(&self, last_seq: u64) -> u64 {
        self.events.front().and_then(|e| e.seq()).unwrap_or(last_seq + 1)
    }

    /// Whether every event after `after_seq` is still here.
    pub fn covers(&self, after_seq: u64, last_seq: u64) -> bool {
        after_seq + 1 >= self.front_seq(last_seq)
    }

    /// Buffered events with `seq > after_seq`, in order.
    pub fn after(&self, after_seq: u64) -> impl Iterator<Item = &Arc<ConversationEvent>> {
        let skip = match self.events.front().and_then(|e| e.seq()) {
            Some(front) => (after_seq + 1).saturating_sub(front) as usize,
            None => 0,
        };
        self.events.iter().skip(skip)
    }

    /// Drops the oldest events beyond `capacity`, but none with `seq >= floor`.
    pub fn evict(&mut self, floor: u64) {
        while self.events.len() > self.capacity
            && self.events.front().and_then(|e| e.seq()).is_some_and(|s| s < floor)
        {
            self.events.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(seq: u64) -> Arc<ConversationEvent> {
        Arc::new(ConversationEvent::Delta { seq, text: String::new() })
    }

    #[test]
    fn replays_after_a_seq_and_evicts_only_below_the_floor() {
        let mut b = ReplayBuffer::new(2);
        for seq in 5..=9 {
            b.push(delta(seq));
        }
        assert_eq!(b.after(6).filter_map(|e| e.seq()).collect::<Vec<_>>(), vec![7, 8, 9]);
        assert!(b.covers(4, 9) && !b.covers(3, 9));
        b.evict(7);
        assert_eq!(b.front_seq(9), 7, "7 and above are pinned by the floor");
        b.evict(u64::MAX);
        assert_eq!(b.len(), 2);
        assert_eq!(b.front_seq(9), 8);
        assert_eq!(ReplayBuffer::new(2).front_seq(9), 10);
    }
}
