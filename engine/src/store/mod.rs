//! Durable state: where the engine keeps conversations when PostgreSQL is configured.
//!
//! * [`postgres`]: [`PgConversationStore`], the `actors::ports::store::ConversationStore`
//!   port on PostgreSQL (deadpool-postgres pool, cached prepared statements, every query
//!   scoped by `tenant_id`, a statement timeout plus a client-side deadline), and the crash
//!   sweep that closes replies left `streaming` by a node that died.
//! * [`checkpoints`]: mid-stream reply checkpoints from every conversation, written as one
//!   statement per batch.
//! * [`migrate`]: the SQL in `migrations/`, embedded and applied at start and by
//!   `switchyard migrate`.
//!
//! [`StoreBackend`] is what `tree` picks from the configuration: PostgreSQL when
//! `[database]` is set, otherwise the in-memory store (logged loudly: nothing persists). The
//! health endpoint asks it whether the store is reachable.

mod checkpoints;
pub mod migrate;
pub mod postgres;

use std::sync::Arc;

use actors::ports::store::ConversationStore;
use actors::store_memory::InMemoryConversationStore;

pub use postgres::PgConversationStore;

/// The configured conversation store.
#[derive(Clone)]
pub enum StoreBackend {
    Memory(InMemoryConversationStore),
    Postgres(PgConversationStore),
}

impl StoreBackend {
    /// `memory` or `postgres`, as `/readyz` reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreBackend::Memory(_) => "memory",
            StoreBackend::Postgres(_) => "postgres",
        }
    }

    /// Whether the store answers right now (always, in memory).
    pub async fn reachable(&self) -> bool {
        match self {
            StoreBackend::Memory(_) => true,
            StoreBackend::Postgres(pg) => pg.ping().await.is_ok(),
        }
    }

    /// The port the actors write through.
    pub fn port(&self) -> Arc<dyn ConversationStore> {
        match self {
            StoreBackend::Memory(m) => Arc::new(m.clone()),
            StoreBackend::Postgres(pg) => Arc::new(pg.clone()),
        }
    }
}
