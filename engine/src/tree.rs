//! Starting the actor tree from the configuration: one provider adapter per configured
//! model, the provider side (supervisor, provider actors, router), then the conversation side
//! (tenant and conversation actors) wired to the router and the store.

use std::collections::HashMap;
use std::sync::Arc;

use actors::conversation::{ConversationConfig, ConversationDeps};
use actors::ports::llm::LlmProvider;
use actors::ports::store::ConversationStore;
use actors::registry::{ActorKind, Registry};
use actors::router::{Router, RouterConfig};
use actors::store_memory::InMemoryConversationStore;
use actors::supervisor::{Operator, OperatorError, ProviderTree, ProviderTreeConfig};
use actors::tenant::{Conversations, TenantConfig};
use anyhow::{Context, bail};

use crate::config::Config;
use crate::providers;

/// The running tree, as the edges see it.
pub struct Tree {
    pub router: Router,
    pub operator: Operator,
    pub conversations: Conversations,
    pub store: Arc<dyn ConversationStore>,
    registry: Registry,
    /// Keeps the provider side's actors addressed for the life of the engine.
    _providers: ProviderTree,
}

impl Tree {
    /// Must run inside an actix `System`.
    pub fn start(config: &Config, registry: Registry) -> anyhow::Result<Tree> {
        if config.database.is_some() {
            bail!(
                "database.url / DATABASE_URL: PostgreSQL storage is not available in this build yet; unset it to run on in-memory state"
            );
        }
        tracing::warn!("state is in memory: conversations are lost when the engine stops");

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
        let tree_config =
            ProviderTreeConfig { router: router_config, ..ProviderTreeConfig::default() };
        let provider_tree = ProviderTree::start(tree_config, adapters, &registry)
            .context("failed to start the provider tree")?;

        let store: Arc<dyn ConversationStore> = Arc::new(InMemoryConversationStore::new());
        let conversation_config = ConversationConfig {
            subscriber_buffer: config.limits.ws_outbox_events,
            ..ConversationConfig::default()
        };
        let deps = ConversationDeps::new(
            store.clone(),
            Arc::new(provider_tree.router.clone()),
            registry.clone(),
            conversation_config,
        );
        let conversations = Conversations::new(deps, TenantConfig::default());
        Ok(Tree {
            router: provider_tree.router.clone(),
            operator: provider_tree.operator.clone(),
            conversations,
            store,
            registry,
            _providers: provider_tree,
        })
    }

    /// Turns being generated right now, across every conversation (for graceful shutdown).
    pub fn turns_in_flight(&self) -> u64 {
        self.registry
            .snapshot()
            .iter()
            .filter(|a| a.kind == ActorKind::Conversation)
            .map(|a| a.in_flight)
            .sum()
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
