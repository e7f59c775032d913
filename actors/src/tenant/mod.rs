//! The tenant side of the tree: one [`TenantActor`] per tenant, and the [`Conversations`]
//! directory the engine's edges call.
//!
//! * [`Conversations`] gets-or-starts the `TenantActor` of a tenant id (registry entry
//!   `tenant:<id>`, parent `root_supervisor`) and asks it to open a conversation.
//! * A `TenantActor` owns its live conversations: on [`OpenConversation`] it returns the
//!   running [`ConversationActor`]'s handle, or loads the conversation *through the store
//!   scoped by this tenant* (another tenant's id is simply `NotFound`), recovers a reply cut
//!   by a crash, and starts the actor (`conversation:<id>`, parent `tenant:<id>`). Concurrent
//!   opens of one conversation share a single load. The actor runs on the arbiter (thread)
//!   of the caller that opened it — the HTTP worker holding the client's socket — not on
//!   the tenant's: a big tenant's conversations then spread over every worker thread (on
//!   one thread, one worker did 0.51 cores of work while the other did 0.14 at 1,000
//!   chatting clients), and events reach the socket that asked for them without crossing
//!   threads.
//! * Its [`gate::TenantGate`] limits the tenant's in-flight turns (refused beyond the limit
//!   with `tenant_concurrency`); rate limits and budgets plug in through
//!   [`crate::conversation::TurnPolicy`].
//! * A tenant with no live conversation and no turn for `idle_timeout` stops; the directory
//!   starts a fresh one on the next call.

pub mod gate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::conversation::actor::{ConversationStopped, recover};
use crate::conversation::{
    ConversationActor, ConversationDeps, ConversationError, ConversationHandle,
};
use crate::ports::store::{Conversation, ConversationSettings, ConversationStore};
use crate::registry::{ActorKind, Registration};
use gate::TenantGate;

/// Tuning for tenant actors.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// Turns in flight at once across the tenant's conversations.
    pub max_in_flight_turns: usize,
    pub mailbox_capacity: usize,
    pub idle_timeout: Duration,
    pub idle_check_interval: Duration,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            max_in_flight_turns: 64,
            mailbox_capacity: 256,
            idle_timeout: Duration::from_secs(600),
            idle_check_interval: Duration::from_secs(30),
        }
    }
}

/// Open (get or start) one of the tenant's conversations.
#[derive(Message)]
#[rtype(result = "Result<ConversationHandle, ConversationError>")]
pub struct OpenConversation {
    pub conversation_id: String,
    /// Where a conversation that is not running yet starts: the caller's arbiter. `None`
    /// (outside any arbiter): the tenant actor's.
    pub home: Option<ArbiterHandle>,
}

type Waiter = oneshot::Sender<Result<ConversationHandle, ConversationError>>;

enum Slot {
    Live {
        handle: ConversationHandle,
        instance: u64,
    },
    /// Being loaded; everyone who asked meanwhile gets the same result.
    Loading(Vec<Waiter>),
}

pub struct TenantActor {
    tenant_id: String,
    deps: Arc<ConversationDeps>,
    config: TenantConfig,
    gate: Arc<TenantGate>,
    conversations: HashMap<String, Slot>,
    registration: Option<Registration>,
    last_active: Instant,
}

impl TenantActor {
    pub fn new(tenant_id: &str, deps: Arc<ConversationDeps>, config: TenantConfig) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            gate: TenantGate::new(config.max_in_flight_turns),
            deps,
            config,
            conversations: HashMap::new(),
            registration: None,
            last_active: Instant::now(),
        }
    }

    /// The tenant's turn gate (in-flight count and limit).
    pub fn gate(&self) -> &Arc<TenantGate> {
        &self.gate
    }

    fn check_idle(&mut self, ctx: &mut Context<Self>) {
        if !self.conversations.is_empty() || self.gate.in_flight() > 0 {
            self.last_active = Instant::now();
        } else if self.last_active.elapsed() >= self.config.idle_timeout {
            ctx.stop();
        }
    }
}

impl Actor for TenantActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.config.mailbox_capacity);
        let registration = self.deps.registry.register(
            ActorKind::Tenant,
            format!("tenant:{}", self.tenant_id),
            Some("root_supervisor"),
        );
        self.gate.attach_entry(registration.entry().clone());
        self.registration = Some(registration);
        ctx.run_interval(self.config.idle_check_interval, |act, ctx| act.check_idle(ctx));
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        self.registration = None;
        Running::Stop
    }
}

impl Handler<OpenConversation> for TenantActor {
    type Result = ResponseFuture<Result<ConversationHandle, ConversationError>>;

    fn handle(&mut self, msg: OpenConversation, ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let OpenConversation { conversation_id: id, home } = msg;
        let (tx, rx) = oneshot::channel();
        match self.conversations.get_mut(&id) {
            Some(Slot::Live { handle, .. }) if handle.is_live() => {
                let _ = tx.send(Ok(handle.clone()));
            }
            Some(Slot::Loading(waiters)) => waiters.push(tx),
            _ => {
                self.conversations.insert(id.clone(), Slot::Loading(vec![tx]));
                let deps = self.deps.clone();
                let tenant_id = self.tenant_id.clone();
                let load_id = id.clone();
                let load = async move { recover(&deps, &tenant_id, &load_id).await };
                ctx.spawn(load.into_actor(self).map(move |recovered, act, ctx| {
                    let result = recovered.map(|recovered| {
                        ConversationActor::launch(
                            act.deps.clone(),
                            &act.tenant_id,
                            recovered,
                            act.gate.clone(),
                            Some(ctx.address().recipient()),
                            home.as_ref(),
                        )
                    });
                    let waiters = match act.conversations.remove(&id) {
                        Some(Slot::Loading(waiters)) => waiters,
                        _ => Vec::new(),
                    };
                    let answer = match result {
                        Ok((handle, instance)) => {
                            act.conversations
                                .insert(id, Slot::Live { handle: handle.clone(), instance });
                            Ok(handle)
                        }
                        Err(e) => Err(e),
                    };
                    for waiter in waiters {
                        let _ = waiter.send(answer.clone());
                    }
                }));
            }
        }
        Box::pin(async move { rx.await.unwrap_or(Err(ConversationError::Stopped)) })
    }
}

impl Handler<ConversationStopped> for TenantActor {
    type Result = ();

    fn handle(&mut self, msg: ConversationStopped, _ctx: &mut Self::Context) {
        let stale = matches!(
            self.conversations.get(&msg.conversation_id),
            Some(Slot::Live { instance, .. }) if *instance == msg.instance
        );
        if stale {
            self.conversations.remove(&msg.conversation_id);
        }
        self.last_active = Instant::now();
    }
}

/// The engine's entry point to tenants and conversations. Cheap to clone; call from inside
/// an actix `System` (tenant actors start on the calling thread's arbiter).
#[derive(Clone)]
pub struct Conversations {
    inner: Arc<Directory>,
}

struct Directory {
    deps: Arc<ConversationDeps>,
    tenant_config: TenantConfig,
    tenants: Mutex<HashMap<String, Addr<TenantActor>>>,
}

impl Conversations {
    pub fn new(deps: ConversationDeps, tenant_config: TenantConfig) -> Self {
        Self {
            inner: Arc::new(Directory {
                deps: Arc::new(deps),
                tenant_config,
                tenants: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn ConversationStore> {
        &self.inner.deps.store
    }

    /// Creates a conversation owned by `owner_id` (no actor starts until it is opened).
    pub async fn create(
        &self,
        tenant_id: &str,
        owner_id: &str,
        settings: ConversationSettings,
    ) -> Result<Conversation, ConversationError> {
        Ok(self.store().create_conversation(tenant_id, owner_id, settings).await?)
    }

    /// The tenant's actor, started if it is not running.
    pub fn tenant(&self, tenant_id: &str) -> Addr<TenantActor> {
        let mut tenants = self.inner.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = tenants.get(tenant_id).filter(|a| a.connected()) {
            return addr.clone();
        }
        let actor =
            TenantActor::new(tenant_id, self.inner.deps.clone(), self.inner.tenant_config.clone());
        let addr = actor.start();
        tenants.insert(tenant_id.to_owned(), addr.clone());
        addr
    }

    /// Opens a conversation of a tenant: its live actor, or one rebuilt from the store.
    /// `NotFound` when the conversation does not exist *for this tenant*.
    pub async fn open(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<ConversationHandle, ConversationError> {
        // One retry covers a tenant or conversation actor that stopped idle just as we
        // reached it.
        let mut last = ConversationError::Stopped;
        for _ in 0..2 {
            let open = OpenConversation {
                conversation_id: conversation_id.to_owned(),
                home: Arbiter::try_current(),
            };
            match self.tenant(tenant_id).send(open).await {
                Ok(Ok(handle)) if handle.is_live() => return Ok(handle),
                Ok(Ok(_)) => last = ConversationError::Stopped,
                Ok(Err(ConversationError::Stopped)) | Err(_) => last = ConversationError::Stopped,
                Ok(Err(e)) => return Err(e),
            }
        }
        Err(last)
    }
}
