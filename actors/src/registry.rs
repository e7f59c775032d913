//! The Registry: every live actor of the tree, for the admin inspection endpoint.
//!
//! Not an actor itself: a shared map of entries whose counters the actors update in place
//! (atomics), so registering, updating and snapshotting never wait on a mailbox and the
//! snapshot stays cheap even with tens of thousands of conversations. An actor registers in
//! `started` and keeps the returned [`Registration`]; dropping it (in `stopping`, or when
//! the actor is dropped) removes the entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// What an actor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    RootSupervisor,
    ProviderSupervisor,
    Provider,
    Router,
    Tenant,
    Conversation,
}

/// Lifecycle state as the admin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    Running,
    /// A conversation with no turn in flight.
    Idle,
    /// Stopped and about to be restarted by its supervisor.
    Restarting,
    /// Restart budget exhausted: stays down until an operator restarts it.
    Failed,
}

/// A provider's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

const NO_CIRCUIT: u8 = 0;

fn encode_state(state: ActorState) -> u8 {
    state as u8
}

fn decode_state(raw: u8) -> ActorState {
    match raw {
        1 => ActorState::Idle,
        2 => ActorState::Restarting,
        3 => ActorState::Failed,
        _ => ActorState::Running,
    }
}

fn decode_circuit(raw: u8) -> Option<CircuitState> {
    match raw {
        1 => Some(CircuitState::Closed),
        2 => Some(CircuitState::Open),
        3 => Some(CircuitState::HalfOpen),
        _ => None,
    }
}

/// The live counters of one actor, updated by the actor itself.
#[derive(Debug)]
pub struct ActorEntry {
    pub kind: ActorKind,
    pub id: String,
    pub parent: Option<String>,
    state: AtomicU8,
    mailbox_depth: AtomicI64,
    in_flight: AtomicU64,
    restarts: AtomicU32,
    circuit: AtomicU8,
    last_error: Mutex<Option<String>>,
}

impl ActorEntry {
    pub fn set_state(&self, state: ActorState) {
        self.state.store(encode_state(state), Ordering::Relaxed);
    }

    pub fn state(&self) -> ActorState {
        decode_state(self.state.load(Ordering::Relaxed))
    }

    /// A message was queued for this actor (`+1`) or taken from its mailbox (`-1`).
    pub fn add_mailbox_depth(&self, delta: i64) {
        self.mailbox_depth.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn mailbox_depth(&self) -> u64 {
        self.mailbox_depth.load(Ordering::Relaxed).max(0) as u64
    }

    pub fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn record_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn set_circuit(&self, circuit: CircuitState) {
        self.circuit.store(circuit as u8 + 1, Ordering::Relaxed);
    }

    pub fn circuit(&self) -> Option<CircuitState> {
        decode_circuit(self.circuit.load(Ordering::Relaxed))
    }

    /// Records the last error. Callers pass our own error text, never an upstream body
    /// or anything holding a secret: this is served to admins.
    pub fn set_last_error(&self, error: impl Into<String>) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.into());
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn snapshot(&self) -> ActorSnapshot {
        ActorSnapshot {
            kind: self.kind,
            id: self.id.clone(),
            parent: self.parent.clone(),
            state: self.state(),
            mailbox_depth: self.mailbox_depth(),
            in_flight: self.in_flight(),
            restarts: self.restarts(),
            last_error: self.last_error(),
            circuit: self.circuit(),
        }
    }
}

/// A point-in-time view of one actor, as `GET /admin/actors` serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActorSnapshot {
    pub kind: ActorKind,
    pub id: String,
    pub parent: Option<String>,
    pub state: ActorState,
    pub mailbox_depth: u64,
    pub in_flight: u64,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub circuit: Option<CircuitState>,
}

/// Every live actor. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Arc<Mutex<HashMap<String, Arc<ActorEntry>>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces, for an actor that re-registers after a restart) an entry. Keep the
    /// returned guard for as long as the actor lives. A restarted actor should look up its
    /// previous entry with [`Registry::get`] first if it wants to keep its counters.
    pub fn register(
        &self,
        kind: ActorKind,
        id: impl Into<String>,
        parent: Option<&str>,
    ) -> Registration {
        let id = id.into();
        let entry = Arc::new(ActorEntry {
            kind,
            id: id.clone(),
            parent: parent.map(str::to_owned),
            state: AtomicU8::new(encode_state(ActorState::Running)),
            mailbox_depth: AtomicI64::new(0),
            in_flight: AtomicU64::new(0),
            restarts: AtomicU32::new(0),
            circuit: AtomicU8::new(NO_CIRCUIT),
            last_error: Mutex::new(None),
        });
        self.lock().insert(id, entry.clone());
        Registration { registry: self.clone(), entry }
    }

    pub fn get(&self, id: &str) -> Option<Arc<ActorEntry>> {
        self.lock().get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every actor, parents before children where ids sort that way; sorted by kind then
    /// id so consecutive snapshots diff cleanly.
    pub fn snapshot(&self) -> Vec<ActorSnapshot> {
        let entries: Vec<Arc<ActorEntry>> = self.lock().values().cloned().collect();
        let mut out: Vec<ActorSnapshot> = entries.iter().map(|e| e.snapshot()).collect();
        out.sort_by(|a, b| (a.kind as u8, &a.id).cmp(&(b.kind as u8, &b.id)));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ActorEntry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remove(&self, entry: &Arc<ActorEntry>) {
        let mut entries = self.lock();
        // Only remove our own entry: a restarted actor may already have replaced it.
        if entries.get(&entry.id).is_some_and(|current| Arc::ptr_eq(current, entry)) {
            entries.remove(&entry.id);
        }
    }
}

/// Keeps an actor's entry in the registry; dropping it deregisters the actor.
#[derive(Debug)]
pub struct Registration {
    registry: Registry,
    entry: Arc<ActorEntry>,
}

impl Registration {
    pub fn entry(&self) -> &Arc<ActorEntry> {
        &self.entry
    }
}

impl std::ops::Deref for Registration {
    type Target = ActorEntry;

    fn deref(&self) -> &ActorEntry {
        &self.entry
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_lives_as_long_as_its_guard() {
        let registry = Registry::new();
        let guard =
            registry.register(ActorKind::Provider, "provider:gpt-4o", Some("provider_supervisor"));
        guard.set_circuit(CircuitState::Open);
        guard.record_restart();
        guard.add_mailbox_depth(3);
        guard.add_mailbox_depth(-1);
        let snap = registry.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].circuit, Some(CircuitState::Open));
        assert_eq!(snap[0].restarts, 1);
        assert_eq!(snap[0].mailbox_depth, 2);
        assert_eq!(snap[0].parent.as_deref(), Some("provider_supervisor"));
        drop(guard);
        assert!(registry.is_empty());
    }

    #[test]
    fn a_stale_guard_does_not_remove_its_replacement() {
        let registry = Registry::new();
        let old = registry.register(ActorKind::Provider, "p", None);
        let new = registry.register(ActorKind::Provider, "p", None);
        drop(old);
        assert_eq!(registry.len(), 1);
        drop(new);
        assert!(registry.is_empty());
    }
}
