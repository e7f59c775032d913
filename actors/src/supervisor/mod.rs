//! Supervision of the provider side: the [`ProviderSupervisor`] and the root of the tree.
//!
//! Each [`ProviderActor`] runs under actix's `Supervisor`, which restarts it whenever it
//! stops; this module supplies the *policy* around that mechanism ([`SupervisorConfig`]):
//! a growing backoff before a restarted actor takes traffic again, and a restart budget
//! (`max_restarts` per `restart_window_ms`) beyond which the endpoint is marked `Failed` in
//! the Registry and refuses all work until an operator restarts it. The policy is applied
//! synchronously in the actor's `restarting()` (so no request slips through between the
//! restart and the decision); the actor then reports the decision to its
//! [`ProviderSupervisor`] with [`ProviderRestarted`].
//!
//! The ProviderSupervisor owns the provider actors' addresses and serves the operator hooks
//! ([`FailProvider`], [`RestartProvider`]) that the engine's admin endpoint calls through
//! [`Operator`]. [`root`] builds the whole provider tree from configuration.

pub mod root;

use std::collections::HashMap;

use actix::prelude::*;
use serde::Deserialize;

use crate::provider::{Crash, OperatorRestart, ProviderActor, RestartDecision};
use crate::registry::Registration;
use crate::retries::Backoff;

pub use root::{Operator, ProviderTree, ProviderTreeConfig, RootSupervisor, TreeError};

/// Restart policy for provider actors.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Restarts allowed within `restart_window_ms`; one more marks the endpoint `Failed`.
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    /// Delay before a restarted actor takes traffic again, growing with recent restarts.
    pub restart_backoff: Backoff,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            restart_window_ms: 60_000,
            restart_backoff: Backoff { base_ms: 100, max_ms: 5_000, jitter: 0.2 },
        }
    }
}

/// Why an operator hook could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("no provider `{0}`")]
    UnknownProvider(String),
    #[error("the provider supervisor is not running")]
    SupervisorDown,
}

/// A provider actor was restarted; sent by the actor from `restarting()`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ProviderRestarted {
    pub model: String,
    pub decision: RestartDecision,
}

/// Drill: make the provider actor fail as if it had panicked. Its queued requests reroute.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), OperatorError>")]
pub struct FailProvider {
    /// The model name, or its registry id `provider:<model>`.
    pub provider_id: String,
}

/// Restart a provider actor now, clearing its restart history (and a `Failed` state).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), OperatorError>")]
pub struct RestartProvider {
    /// The model name, or its registry id `provider:<model>`.
    pub provider_id: String,
}

/// Owns the provider actors and carries out operator hooks.
pub struct ProviderSupervisor {
    providers: HashMap<String, Addr<ProviderActor>>,
    _registration: Registration,
}

impl ProviderSupervisor {
    pub(crate) fn new(
        providers: HashMap<String, Addr<ProviderActor>>,
        registration: Registration,
    ) -> Self {
        Self { providers, _registration: registration }
    }

    fn find(&self, provider_id: &str) -> Result<&Addr<ProviderActor>, OperatorError> {
        let model = provider_id.strip_prefix("provider:").unwrap_or(provider_id);
        self.providers.get(model).ok_or_else(|| OperatorError::UnknownProvider(model.to_owned()))
    }
}

impl Actor for ProviderSupervisor {
    type Context = Context<Self>;
}

impl Handler<ProviderRestarted> for ProviderSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ProviderRestarted, _ctx: &mut Context<Self>) {
        tracing::info!(model = %msg.model, decision = ?msg.decision, "provider restart recorded");
    }
}

impl Handler<FailProvider> for ProviderSupervisor {
    type Result = Result<(), OperatorError>;

    fn handle(&mut self, msg: FailProvider, _ctx: &mut Context<Self>) -> Self::Result {
        // `do_send` ignores the mailbox bound: a drill must get through a busy actor.
        self.find(&msg.provider_id)?.do_send(Crash { reason: "operator drill: failed on request" });
        Ok(())
    }
}

impl Handler<RestartProvider> for ProviderSupervisor {
    type Result = Result<(), OperatorError>;

    fn handle(&mut self, msg: RestartProvider, _ctx: &mut Context<Self>) -> Self::Result {
        self.find(&msg.provider_id)?.do_send(OperatorRestart);
        Ok(())
    }
}
