//! The Router: picks the chain of models for a turn and runs the turn down it.
//!
//! [`Router`] is a cheap cloneable handle (an `Arc`) implementing [`TurnRunner`]; there is
//! no router mailbox on the hot path. A turn resolves its chain in the [`RoutingTable`]
//! ([`table`]), skips endpoints whose shared health says they refuse (circuit open,
//! restarting, failed), sends [`Generate`](crate::provider::Generate) to the first healthy
//! provider actor with `try_send` (a full mailbox refuses instead of queueing), and polls the
//! returned stream itself, inside the consumer's task ([`turn`]). So dropping the
//! [`TurnStream`] drops the provider stream, and every wait is bounded by the turn's
//! deadline. On a retryable failure the turn moves down the chain — mid-stream too, asking
//! the fallback to continue the partial answer ([`continuation`]); non-retryable errors
//! surface as [`TurnError::Rejected`].

pub mod continuation;
pub mod table;
pub mod turn;

use std::collections::HashMap;
use std::sync::Arc;

use actix::Addr;
use futures_util::stream;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::provider::{EndpointHealth, ProviderActor};
use crate::registry::{ActorKind, Registration, Registry};
use crate::retries::Backoff;
use crate::turn::{TurnError, TurnRequest, TurnRunner, TurnStream};

pub use continuation::{ContinuationConfig, Method};
pub use table::{RouteError, RoutingTable};

/// Per-tenant overrides of the routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantRoutes {
    /// Model name → its fallback chain (replaces the global one for this tenant).
    pub fallbacks: HashMap<String, Vec<String>>,
    /// Alias → chain.
    pub aliases: HashMap<String, Vec<String>>,
}

/// Routing and failover settings. Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Model name → ordered fallbacks tried after it (`gpt-4o = ["claude-sonnet", "gpt-4o-mini"]`).
    pub fallbacks: HashMap<String, Vec<String>>,
    /// Route aliases (`auto = ["gpt-4o-mini", "gpt-4o"]`): a name standing for a whole chain.
    pub aliases: HashMap<String, Vec<String>>,
    /// Tenant id → overrides.
    pub tenants: HashMap<String, TenantRoutes>,
    /// Provider calls per turn, every model and retry included.
    pub max_attempts: u32,
    /// Extra tries on the same model (after a backoff) before moving down the chain; only
    /// for failures before any text and without a `Retry-After`.
    pub same_model_retries: u32,
    pub retry_backoff: Backoff,
    /// An attempt that has produced nothing for this long is abandoned (the provider is
    /// hanging) and the turn moves on.
    pub first_token_timeout_ms: u64,
    /// Same, between two deltas of a started stream.
    pub idle_timeout_ms: u64,
    /// Turns in flight across the router; beyond it a turn is refused with `Overloaded`.
    pub max_concurrent_turns: usize,
    pub continuation: ContinuationConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            fallbacks: HashMap::new(),
            aliases: HashMap::new(),
            tenants: HashMap::new(),
            max_attempts: 4,
            same_model_retries: 0,
            retry_backoff: Backoff::default(),
            first_token_timeout_ms: 20_000,
            idle_timeout_ms: 30_000,
            max_concurrent_turns: 10_000,
            continuation: ContinuationConfig::default(),
        }
    }
}

/// One routable model endpoint: its actor and its shared health.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: Addr<ProviderActor>,
    pub health: Arc<EndpointHealth>,
}

pub(crate) struct RouterInner {
    pub(crate) config: RouterConfig,
    pub(crate) table: RoutingTable,
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) turns: Arc<Semaphore>,
    pub(crate) registration: Registration,
}

/// The turn runner of the provider side. Clone freely.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

impl Router {
    /// Normally built by [`crate::supervisor::ProviderTree::start`].
    pub fn new(
        config: RouterConfig,
        table: RoutingTable,
        endpoints: Vec<Endpoint>,
        registry: &Registry,
    ) -> Self {
        let registration = registry.register(ActorKind::Router, "router", Some("root_supervisor"));
        let turns = Arc::new(Semaphore::new(config.max_concurrent_turns.max(1)));
        Self { inner: Arc::new(RouterInner { config, table, endpoints, turns, registration }) }
    }

    /// The shared health of a model endpoint (for inspection and tests).
    pub fn endpoint(&self, model: &str) -> Option<&Arc<EndpointHealth>> {
        self.inner.endpoints.iter().map(|e| &e.health).find(|h| h.model() == model)
    }

    /// Turns in flight.
    pub fn turns_in_flight(&self) -> usize {
        self.inner.config.max_concurrent_turns.max(1) - self.inner.turns.available_permits()
    }
}

impl TurnRunner for Router {
    fn run_turn(&self, request: TurnRequest) -> TurnStream {
        let route = tracing::info_span!(
            "route",
            requested_model = %request.model,
            chain = tracing::field::Empty,
        )
        .entered();
        let Some(chain) = self.inner.table.resolve(&request.tenant_id, &request.model).cloned()
        else {
            return Box::pin(stream::once(
                async move { Err(TurnError::UnknownModel(request.model)) },
            ));
        };
        let Ok(permit) = self.inner.turns.clone().try_acquire_owned() else {
            return Box::pin(stream::once(async { Err(TurnError::Overloaded) }));
        };
        let models: Vec<&str> =
            chain.iter().map(|i| self.inner.endpoints[*i].health.model()).collect();
        route.record("chain", models.join(" -> "));
        // Provider attempts are children of the turn, not of this (already finished) span.
        drop(route);
        turn::Turn::start(self.inner.clone(), request, chain, permit)
    }
}
