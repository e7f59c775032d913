//! Starting the actor tree from the configuration: one provider adapter per configured
//! model, the provider side (supervisor, provider actors, router), then the conversation side
//! (tenant and conversation actors) wired to the router and the store — PostgreSQL when
//! `[database]` is configured (migrated at start, swept for replies cut by a crash), else
//! in memory (logged loudly: nothing persists). With `[redis]` the node joins the cluster
//! (`crate::cluster`): conversations are owned by one node and proxied by the others.

use std::collections::HashMap;
use std::sync::Arc;

use actors::conversation::{ConversationConfig, ConversationDeps, TurnPolicy};
use actors::ports::llm::LlmProvider;
use actors::ports::store::ConversationStore;
use actors::registry::{ActorKind, Registry};
use actors::router::{Router, RouterConfig};
use actors::store_memory::InMemoryConversationStore;
use actors::supervisor::{Operator, OperatorError, ProviderTree, ProviderTreeConfig};
use actors::tenant::{Conversations, TenantConfig};
use actors::turn::TurnRunner;
use anyhow::Context;

use crate::cache::{Cache, CachingRunner};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::conversations::Directory;
use crate::costs::Costs;
use crate::costs::meter::MeteredRunner;
use crate::providers;
use crate::store::{PgConversationStore, StoreBackend};

/// The running tree, as the edges see it.
pub struct Tree {
    pub router: Router,
    pub operator: Operator,
    /// Where the edges open conversations (this node's actors, or their owner node's).
    pub conversations: Directory,
    pub store: Arc<dyn ConversationStore>,
    /// Runs turns: the router behind the response cache. The OpenAI-compatible edge runs its
    /// turns through this too, so it gets the same cache.
    pub runner: Arc<dyn TurnRunner>,
    /// The response cache, unless both tiers are off.
    pub cache: Option<Arc<Cache>>,
    /// Prices, ledger, budgets, anomalies; its meter wraps `runner`.
    pub costs: Arc<Costs>,
    /// Which store `store` is, for readiness.
    pub backend: StoreBackend,
    registry: Registry,
    /// Keeps the provider side's actors addressed for the life of the engine.
    _providers: ProviderTree,
}

impl Tree {
    /// Must run inside an actix `System`.
    pub async fn start(
        config: &Config,
        registry: Registry,
        policy: Arc<dyn TurnPolicy>,
    ) -> anyhow::Result<Tree> {
        let backend = open_store(config).await?;

        let http = providers::http_client().context("failed to build the provider HTTP client")?;
        let mut adapters: HashMap<String, Arc<dyn LlmProvider>> = HashMap::new();
        for model in &config.models {
            let adapter = providers::build_provider(&model.endpoint, &http)
                .with_context(|| format!("model `{}`", model.name))?;
            adapters.insert(model.name.clone(), adapter);
        }
        let router_config = RouterConfig {
            fallbacks: config
                .models
                .iter()
                .map(|m| (m.name.clone(), m.fallbacks.clone()))
                .collect(),
            aliases: config.routing.aliases.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ..RouterConfig::default()
        };
        let mut tree_config =
            ProviderTreeConfig { router: router_config, ..ProviderTreeConfig::default() };
        // The provider kind labels legs, metrics and spans; the actor would default to `mock`.
        for model in &config.models {
            let provider = model.endpoint.provider.as_str().to_owned();
            let defaults = actors::provider::ProviderActorConfig::default();
            let actor = actors::provider::ProviderActorConfig {
                provider,
                max_in_flight: model.max_in_flight.unwrap_or(defaults.max_in_flight),
                queue_timeout_ms: model.queue_timeout_ms.unwrap_or(defaults.queue_timeout_ms),
                ..defaults
            };
            tree_config.models.insert(model.name.clone(), actor);
        }
        let provider_tree = ProviderTree::start(tree_config, adapters, &registry)
            .context("failed to start the provider tree")?;

        let store = backend.port();
        let router: Arc<dyn TurnRunner> = Arc::new(provider_tree.router.clone());
        let cache =
            if config.cache.exact || config.cache.semantic || !config.cache.tenants.is_empty() {
                Some(Arc::new(Cache::from_config(&config.cache, &http)?))
            } else {
                None
            };
        let cached: Arc<dyn TurnRunner> = match &cache {
            Some(cache) => Arc::new(CachingRunner::new(router, cache.clone())),
            None => router,
        };
        // Outermost: routes `auto` before the cache looks the turn up (the key names the
        // model that will answer), refuses over-budget turns before anything runs, and prices
        // what the cache and the router report.
        let pool = match &backend {
            StoreBackend::Postgres(pg) => Some(pg.pool()),
            StoreBackend::Memory(_) => None,
        };
        if let (Some(cache), Some(pool)) = (&cache, &pool) {
            // Entries persist in PostgreSQL; this node's maps are rebuilt in the background.
            cache.persist(pool.clone());
        }
        let costs = Costs::new(config, provider_tree.router.clone(), pool);
        costs.start();
        let runner: Arc<dyn TurnRunner> = Arc::new(MeteredRunner::new(cached, costs.clone()));
        let defaults = ConversationConfig::default();
        let conversation_config = ConversationConfig {
            subscriber_buffer: config.limits.ws_outbox_events,
            checkpoint_interval: config
                .database
                .as_ref()
                .map_or(defaults.checkpoint_interval, |d| {
                    std::time::Duration::from_millis(d.checkpoint_interval_ms)
                }),
            ..defaults
        };
        let mut deps = ConversationDeps::new(
            store.clone(),
            runner.clone(),
            registry.clone(),
            conversation_config,
        );
        // Tenant token quotas (engine::auth::limits::TokenQuota) admit or refuse turns.
        deps.policy = policy;
        let conversations = Conversations::new(
            deps,
            TenantConfig {
                max_in_flight_turns: config.limits.tenant_turns_in_flight.max(1),
                ..TenantConfig::default()
            },
        );
        let cluster = match &config.redis {
            Some(redis) => Some(
                Cluster::start(redis, conversations.clone(), store.clone(), registry.clone())
                    .context("failed to start the cluster (redis)")?,
            ),
            None => None,
        };
        if let Some(cluster) = &cluster {
            costs.share_spend(crate::cluster::counters::Counters::new(
                cluster.redis().clone(),
                cluster.key(""),
            ));
        }
        let conversations = Directory::new(conversations, cluster, config.limits.ws_outbox_events);
        Ok(Tree {
            router: provider_tree.router.clone(),
            operator: provider_tree.operator.clone(),
            conversations,
            store,
            runner,
            cache,
            costs,
            backend,
            registry,
            _providers: provider_tree,
        })
    }

    /// Turns being generated right now (for graceful shutdown): conversation turns, or the
    /// router's count when larger — it also holds the stateless turns of the compatible APIs.
    pub fn turns_in_flight(&self) -> u64 {
        let conversations: u64 = self
            .registry
            .snapshot()
            .iter()
            .filter(|a| a.kind == ActorKind::Conversation)
            .map(|a| a.in_flight)
            .sum();
        conversations.max(self.router.turns_in_flight() as u64)
    }

    /// Drill: make the provider actor for `model` fail as if it had panicked.
    pub async fn fail_provider(&self, model: &str) -> Result<(), OperatorError> {
        self.operator.fail(model).await
    }

    /// Restart the provider actor for `model` now (also the way out of `failed`).
    pub async fn restart_provider(&self, model: &str) -> Result<(), OperatorError> {
        self.operator.restart(model).await
    }
}

/// The configured store: PostgreSQL (migrated unless `migrate_on_start = false`, with its
/// crash sweep running) or, with no `[database]`, memory.
async fn open_store(config: &Config) -> anyhow::Result<StoreBackend> {
    let Some(database) = &config.database else {
        tracing::warn!(
            "no [database] configured: state is in memory and every conversation is lost when the engine stops"
        );
        return Ok(StoreBackend::Memory(InMemoryConversationStore::new()));
    };
    let pg = PgConversationStore::connect(database)?;
    if database.migrate_on_start {
        let report = pg.migrate().await?;
        tracing::info!(applied = ?report.applied, current = ?report.current, "database migrated");
    }
    pg.ping().await.map_err(|e| anyhow::anyhow!("{e}")).context("the database does not answer")?;
    let sweeper = pg.clone();
    let every = std::time::Duration::from_secs(database.sweep_interval_secs.max(1));
    let stale = std::time::Duration::from_secs(database.sweep_stale_after_secs);
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(error) = sweeper.sweep_interrupted(stale).await {
                tracing::warn!(%error, "crash sweep failed; retrying next interval");
            }
        }
    });
    tracing::info!("state is in PostgreSQL");
    Ok(StoreBackend::Postgres(pg))
}
