//! The root of the provider tree and the builder that starts it from configuration.
//!
//! [`ProviderTree::start`] validates the routing table, starts one supervised
//! [`ProviderActor`] per model under a [`ProviderSupervisor`], builds the [`Router`] over
//! them and a [`RootSupervisor`] at the top, registering `root_supervisor`,
//! `provider_supervisor`, `router` and `provider:<model>` in the [`Registry`]. It returns the
//! router handle (the `TurnRunner` the conversation side uses) and the [`Operator`] hooks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::prelude::*;
use serde::Deserialize;

use super::{FailProvider, OperatorError, ProviderSupervisor, RestartProvider, SupervisorConfig};
use crate::ports::llm::LlmProvider;
use crate::provider::{EndpointHealth, ProviderActor, ProviderActorConfig};
use crate::registry::{ActorKind, Registration, Registry};
use crate::router::{Endpoint, RouteError, Router, RouterConfig, RoutingTable};

/// Everything the provider side needs from the engine's configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderTreeConfig {
    /// Per model name: its endpoint settings. Models given an `LlmProvider` but not listed
    /// here run with the defaults.
    pub models: HashMap<String, ProviderActorConfig>,
    pub router: RouterConfig,
    pub supervisor: SupervisorConfig,
}

/// Why the tree could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("model `{0}` is configured but no provider adapter was given for it")]
    MissingProvider(String),
    #[error(transparent)]
    Routes(#[from] RouteError),
}

/// The top of the tree: holds the root's registry entry and the provider supervisor, so
/// the tree lives as long as the System (or this actor) does.
pub struct RootSupervisor {
    provider_supervisor: Addr<ProviderSupervisor>,
    _registration: Registration,
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;
}

impl RootSupervisor {
    pub fn provider_supervisor(&self) -> &Addr<ProviderSupervisor> {
        &self.provider_supervisor
    }
}

/// Operator hooks for drills and recovery (the engine's admin endpoint calls these).
#[derive(Clone)]
pub struct Operator {
    supervisor: Addr<ProviderSupervisor>,
}

impl Operator {
    /// Makes the provider actor fail as if it had panicked: it restarts (counted against
    /// its budget) and the requests queued in its mailbox move to their fallbacks.
    pub async fn fail(&self, provider_id: &str) -> Result<(), OperatorError> {
        self.supervisor
            .send(FailProvider { provider_id: provider_id.to_owned() })
            .await
            .map_err(|_| OperatorError::SupervisorDown)?
    }

    /// Restarts the provider actor now and clears its restart history: the way out of
    /// `Failed`.
    pub async fn restart(&self, provider_id: &str) -> Result<(), OperatorError> {
        self.supervisor
            .send(RestartProvider { provider_id: provider_id.to_owned() })
            .await
            .map_err(|_| OperatorError::SupervisorDown)?
    }
}

/// A started provider tree.
pub struct ProviderTree {
    pub router: Router,
    pub operator: Operator,
    pub root: Addr<RootSupervisor>,
    pub provider_supervisor: Addr<ProviderSupervisor>,
}

impl ProviderTree {
    /// Starts the tree. Must be called inside a running actix `System`.
    pub fn start(
        config: ProviderTreeConfig,
        providers: HashMap<String, Arc<dyn LlmProvider>>,
        registry: &Registry,
    ) -> Result<Self, TreeError> {
        if let Some(missing) = config.models.keys().find(|m| !providers.contains_key(*m)) {
            return Err(TreeError::MissingProvider(missing.clone()));
        }
        // Sorted so endpoint indices (and logs) are the same on every start.
        let providers: BTreeMap<String, Arc<dyn LlmProvider>> = providers.into_iter().collect();
        let names: Vec<String> = providers.keys().cloned().collect();
        let table = RoutingTable::build(&config.router, &names)?;

        let root_registration =
            registry.register(ActorKind::RootSupervisor, "root_supervisor", None);
        let policy = Arc::new(config.supervisor.clone());
        let mut endpoints = Vec::with_capacity(providers.len());
        let provider_supervisor = ProviderSupervisor::create(|ctx| {
            let restarted = ctx.address().recipient();
            let mut addrs = HashMap::with_capacity(providers.len());
            for (model, provider) in providers {
                let actor_config = config.models.get(&model).cloned().unwrap_or_default();
                let registration = registry.register(
                    ActorKind::Provider,
                    format!("provider:{model}"),
                    Some("provider_supervisor"),
                );
                let health = Arc::new(EndpointHealth::new(
                    &model,
                    actor_config,
                    registration.entry().clone(),
                ));
                let (policy, restarted, actor_health) =
                    (policy.clone(), restarted.clone(), health.clone());
                let capacity = health.config.mailbox_capacity.max(1);
                let addr = actix::Supervisor::start(move |ctx: &mut Context<ProviderActor>| {
                    // Bounded before the first message can arrive, not only once started.
                    ctx.set_mailbox_capacity(capacity);
                    ProviderActor::new(
                        actor_health,
                        provider,
                        policy,
                        Some(restarted),
                        registration,
                    )
                });
                addrs.insert(model, addr.clone());
                endpoints.push(Endpoint { addr, health });
            }
            ProviderSupervisor::new(
                addrs,
                registry.register(
                    ActorKind::ProviderSupervisor,
                    "provider_supervisor",
                    Some("root_supervisor"),
                ),
            )
        });
        let router = Router::new(config.router, table, endpoints, registry);
        let root = RootSupervisor {
            provider_supervisor: provider_supervisor.clone(),
            _registration: root_registration,
        }
        .start();
        Ok(Self {
            router,
            operator: Operator { supervisor: provider_supervisor.clone() },
            root,
            provider_supervisor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_deserialises_with_defaults_and_rejects_unknown_keys() {
        let config: ProviderTreeConfig = serde_json::from_value(serde_json::json!({
            "models": {
                "gpt-4o": { "provider": "openai", "max_in_flight": 64 },
                "claude-sonnet": { "provider": "anthropic", "circuit_breaker": { "cooldown_ms": 1000 } }
            },
            "router": {
                "fallbacks": { "gpt-4o": ["claude-sonnet"] },
                "aliases": { "auto": ["gpt-4o", "claude-sonnet"] },
                "tenants": { "acme": { "fallbacks": { "gpt-4o": [] } } },
                "retry_backoff": { "base_ms": 10 }
            },
            "supervisor": { "max_restarts": 3 }
        }))
        .unwrap();
        let gpt = &config.models["gpt-4o"];
        assert_eq!(gpt.max_in_flight, 64);
        assert!(gpt.prefill, "defaults fill the rest");
        assert_eq!(config.models["claude-sonnet"].circuit_breaker.cooldown_ms, 1_000);
        assert_eq!(config.models["claude-sonnet"].circuit_breaker.consecutive_failures, 5);
        assert_eq!(config.router.retry_backoff.base_ms, 10);
        assert_eq!(config.router.max_attempts, 4);
        assert_eq!(config.supervisor.max_restarts, 3);

        let typo = serde_json::json!({ "router": { "max_attempt": 3 } });
        let err = serde_json::from_value::<ProviderTreeConfig>(typo).unwrap_err();
        assert!(err.to_string().contains("max_attempt"), "{err}");
    }
}
