//! The tenant's turn gate: a counter of in-flight turns with a hard limit.
//!
//! Owned by the [`super::TenantActor`] and shared (by `Arc`) with its conversations, so a
//! conversation takes a [`TurnPermit`] synchronously when it goes from idle to busy, without
//! a mailbox round trip on the hot path. A conversation keeps its permit while it has work
//! (a turn running or messages queued) and drops it when it goes idle, so the limit counts
//! busy conversations, which is in-flight turns (one turn per conversation at a time).
//! Beyond the limit a new message is refused at once (`tenant_concurrency`), never queued.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::conversation::ConversationError;
use crate::registry::ActorEntry;

#[derive(Debug)]
pub struct TenantGate {
    limit: usize,
    in_flight: AtomicUsize,
    /// The tenant's registry entry, whose `in_flight` mirrors ours for the admin view.
    entry: OnceLock<Arc<ActorEntry>>,
}

impl TenantGate {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, in_flight: AtomicUsize::new(0), entry: OnceLock::new() })
    }

    pub(crate) fn attach_entry(&self, entry: Arc<ActorEntry>) {
        let _ = self.entry.set(entry);
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes a slot, or refuses with `tenant_concurrency` when all are taken.
    pub fn try_acquire(self: &Arc<Self>) -> Result<TurnPermit, ConversationError> {
        let taken = self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < self.limit).then_some(n + 1)
        });
        match taken {
            Ok(n) => {
                self.publish(n + 1);
                Ok(TurnPermit { gate: self.clone() })
            }
            Err(_) => Err(ConversationError::TenantConcurrency { limit: self.limit }),
        }
    }

    fn publish(&self, n: usize) {
        if let Some(entry) = self.entry.get() {
            entry.set_in_flight(n as u64);
        }
    }
}

/// One in-flight slot of a tenant; released on drop.
#[derive(Debug)]
pub struct TurnPermit {
    gate: Arc<TenantGate>,
}

impl Drop for TurnPermit {
    fn drop(&mut self) {
        let before = self.gate.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.gate.publish(before.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_the_limit_and_frees_on_drop() {
        let gate = TenantGate::new(2);
        let a = gate.try_acquire().unwrap();
        let _b = gate.try_acquire().unwrap();
        assert_eq!(
            gate.try_acquire().unwrap_err(),
            ConversationError::TenantConcurrency { limit: 2 }
        );
        drop(a);
        assert_eq!(gate.in_flight(), 1);
        assert!(gate.try_acquire().is_ok());
    }
}
