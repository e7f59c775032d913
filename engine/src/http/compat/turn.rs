//! Running one compatible-API turn through the actor tree, as one stream of [`Piece`]s that
//! both renderers (OpenAI, Anthropic) consume.
//!
//! Two sources:
//!
//! - [`stateless`]: the request's own messages go to the router (`TurnRunner` on
//!   `state.tree.runner`: the response cache in front of the router), so caching, routing, fallback chains, mid-stream failover and the router's
//!   turn limit apply, and the turn is counted in flight in the registry. Dropping the
//!   stream (the client went away) cancels the upstream request.
//! - [`conversation`]: the request names a stored conversation (`x-switchyard-conversation`);
//!   its last user message is posted to the conversation actor, which keeps the history,
//!   stores the reply and applies the tenant's limits, and the turn's events are relayed.
//!
//! Failovers stay inside the stream as [`Piece::Failover`]: the renderers keep the text
//! seamless and report the count in headers (whole answers) and logs.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actors::events::{CacheStatus, ConversationEvent};
use actors::ports::llm::{FinishReason, GenerationRequest, ProviderError, Usage};
use actors::turn::{
    CacheMode, ContinuationMode, RouteNote, TurnError, TurnEvent, TurnOrigin, TurnRequest,
};
use futures_util::{Stream, StreamExt, future, stream};
use tokio::sync::mpsc;

use super::{CompatError, provider_of};
use crate::conversations::{ConversationLink, Principal, api_error};
use crate::error::ApiError;
use crate::server::AppState;

/// The whole turn, every fallback included, must end within this.
pub const TURN_TIMEOUT: Duration = Duration::from_secs(300);

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The configured model that finished the turn.
    pub model: String,
    /// Its provider kind (`openai`, `anthropic`, `openai_compatible`, `mock`).
    pub provider: String,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    /// How many times the turn moved to another model.
    pub failovers: u32,
    /// What the turn cost upstream (`x-switchyard-cost-micros`).
    pub cost_micros: Option<u64>,
    /// Whether the response cache answered.
    pub cache: CacheStatus,
    /// Why this model, when the engine chose it (`x-switchyard-route`).
    pub route: Option<RouteNote>,
}

/// One item of a running turn, whichever source it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Answer text, in order; never duplicated across a failover.
    Delta(String),
    /// The turn moved to another model; the text goes on seamlessly.
    Failover { from: String, to: String },
    /// (Conversations in `restart` continuation mode) drop the text so far.
    Retract,
    /// The turn ended; always the last item.
    Done(Finish),
}

/// A running turn: pieces, ending after `Done` or after one error.
pub type Pieces = Pin<Box<dyn Stream<Item = Result<Piece, CompatError>> + Send>>;

/// What a failed turn looks like to the client.
pub fn turn_error(error: TurnError) -> CompatError {
    match error {
        TurnError::UnknownModel(model) => CompatError::model_not_found(&model),
        TurnError::Rejected(ProviderError::BadRequest { message, .. }) => {
            CompatError::new(StatusCode::BAD_REQUEST, "upstream_bad_request", message)
        }
        other => CompatError::from(ApiError::from(other)),
    }
}

/// Runs the request's messages statelessly through the router.
pub fn stateless(
    state: &AppState,
    principal: &Principal,
    request_id: &str,
    model: String,
    request: GenerationRequest,
) -> Pieces {
    let turn = TurnRequest {
        tenant_id: principal.tenant_id.clone(),
        // No stored conversation: the request id names the turn in the router's logs.
        conversation_id: format!("compat:{request_id}"),
        model,
        request,
        deadline: tokio::time::Instant::now() + TURN_TIMEOUT,
        continuation: ContinuationMode::Continue,
        cache: CacheMode::Use,
        origin: TurnOrigin {
            user_id: Some(principal.user_id.clone()),
            api_key_id: None,
            message_id: None,
        },
    };
    // The provider kind comes from the configuration: the tree's endpoint health does not
    // carry the engine's provider kinds.
    let providers = providers_by_model(state);
    let events = state.tree.runner.run_turn(turn).map(move |item| match item {
        Ok(TurnEvent::Delta(text)) => Ok(Piece::Delta(text)),
        Ok(TurnEvent::Failover { from, to, .. }) => Ok(Piece::Failover { from, to }),
        Ok(TurnEvent::Retract { .. }) => Ok(Piece::Retract),
        Ok(TurnEvent::Finished(summary)) => Ok(Piece::Done(Finish {
            provider: provider_name(&providers, &summary.model),
            model: summary.model,
            usage: summary.usage,
            finish_reason: summary.finish_reason,
            failovers: 0,
            cost_micros: summary.cost_micros,
            cache: summary.cache,
            route: summary.route,
        })),
        Err(e) => Err(turn_error(e)),
    });
    counted(Box::pin(events))
}

/// Starts a turn: statelessly with the request's messages, or — when the request named a
/// conversation — by posting its last message to that conversation. Per-request generation
/// settings (`per_request`) are refused in conversation mode, where the stored ones apply.
pub async fn start(
    state: &AppState,
    principal: &Principal,
    request_id: &str,
    conversation_id: Option<&str>,
    model: &str,
    request: &GenerationRequest,
    per_request: &[&'static str],
) -> Result<Pieces, CompatError> {
    let Some(id) = conversation_id else {
        return Ok(stateless(state, principal, request_id, model.to_owned(), request.clone()));
    };
    if let Some(param) = per_request.first() {
        return Err(CompatError::invalid(
            *param,
            "the conversation's own settings apply; drop this parameter when sending x-switchyard-conversation",
        ));
    }
    let last = match request.messages.last() {
        Some(m) if m.role == actors::ports::llm::Role::User => m.content.clone(),
        _ => {
            return Err(CompatError::invalid(
                "messages",
                "with x-switchyard-conversation the last message must be the new user message",
            ));
        }
    };
    // Appended to a stored conversation, it obeys the rule of every other way in.
    crate::conversations::check_message(&last, state.config.limits.max_message_bytes)
        .map_err(|e| CompatError { param: Some("messages".into()), ..CompatError::from(e) })?;
    conversation(state, principal, id, model, last).await
}

/// Provider kind per configured model name.
fn providers_by_model(state: &AppState) -> Arc<[(String, &'static str)]> {
    state
        .config
        .models
        .iter()
        .filter_map(|m| provider_of(state, &m.name).map(|p| (m.name.clone(), p)))
        .collect()
}

fn provider_name(providers: &[(String, &'static str)], model: &str) -> String {
    providers.iter().find(|(name, _)| name == model).map_or("unknown", |(_, p)| p).to_owned()
}

/// Sets [`Finish::failovers`] from the failovers seen on the way.
fn counted(inner: Pieces) -> Pieces {
    Box::pin(inner.scan(0u32, |seen, item| {
        let item = match item {
            Ok(Piece::Failover { from, to }) => {
                *seen += 1;
                Ok(Piece::Failover { from, to })
            }
            Ok(Piece::Done(mut finish)) => {
                finish.failovers = *seen;
                Ok(Piece::Done(finish))
            }
            other => other,
        };
        future::ready(Some(item))
    }))
}

/// State of a relayed conversation turn.
struct Relay {
    link: ConversationLink,
    events: mpsc::Receiver<Arc<ConversationEvent>>,
    last_seq: u64,
    /// Our user message; its turn's events are the ones relayed.
    ours: String,
    /// User messages acknowledged since we subscribed and not yet answered, in order: turns
    /// run one at a time in this order, so deltas belong to the first.
    queue: std::collections::VecDeque<String>,
    /// Provider kind per configured model name, for `Finish::provider`.
    providers: Arc<[(String, &'static str)]>,
}

/// Posts `content` (the request's last user message) to a stored conversation and relays
/// its turn. The conversation's own history, model and settings apply; `model` must be the
/// conversation's model (or alias).
pub async fn conversation(
    state: &AppState,
    principal: &Principal,
    conversation_id: &str,
    model: &str,
    content: String,
) -> Result<Pieces, CompatError> {
    let stored = state
        .tree
        .store
        .get_conversation(&principal.tenant_id, conversation_id)
        .await
        .map_err(|e| CompatError::from(api_error(e.into())))?;
    if stored.settings.model != model {
        return Err(CompatError::invalid(
            "model",
            format!(
                "conversation `{conversation_id}` uses model `{}`; send that model name",
                stored.settings.model
            ),
        ));
    }
    let mut link =
        ConversationLink::open(&state.tree.conversations, principal.clone(), conversation_id)
            .await
            .map_err(CompatError::from)?;
    let (events, last_seq) = link.subscribe(None).await.map_err(CompatError::from)?;
    // A turn already running when we subscribed started before we could see its `ack`, so
    // its deltas could not be told from ours: ask the client to wait instead of guessing.
    let entry = state.registry.get(&format!("conversation:{}", link.conversation_id()));
    if entry.is_some_and(|e| e.in_flight() > 0) {
        return Err(CompatError::new(
            StatusCode::CONFLICT,
            "conversation_busy",
            "another reply of this conversation is being generated; retry when it is done",
        ));
    }
    let posted = link.post(None, content).await.map_err(CompatError::from)?;
    let providers = providers_by_model(state);
    let relay = Relay {
        link,
        events,
        last_seq,
        ours: posted.message_id,
        queue: Default::default(),
        providers,
    };
    let pieces = stream::unfold(Some(relay), |relay| async move {
        let mut relay = relay?;
        loop {
            let Some(event) = relay.events.recv().await else {
                // Dropped for falling behind (or the actor restarted): resume where we were.
                match relay.link.subscribe(Some(relay.last_seq)).await {
                    Ok((events, _)) => {
                        relay.events = events;
                        continue;
                    }
                    Err(e) => return Some((Err(CompatError::from(e)), None)),
                }
            };
            relay.last_seq = event.seq().unwrap_or(relay.last_seq);
            let current = relay.queue.front().is_some_and(|id| *id == relay.ours);
            match &*event {
                ConversationEvent::Ack { message_id, .. } => {
                    relay.queue.push_back(message_id.clone());
                }
                ConversationEvent::Delta { text, .. } if current => {
                    return Some((Ok(Piece::Delta(text.clone())), Some(relay)));
                }
                ConversationEvent::Failover { from, to, .. } if current => {
                    let piece = Piece::Failover { from: from.clone(), to: to.clone() };
                    return Some((Ok(piece), Some(relay)));
                }
                ConversationEvent::Retract { .. } if current => {
                    return Some((Ok(Piece::Retract), Some(relay)));
                }
                terminal if terminal.is_terminal() => {
                    let reply_to = terminal.reply_to().unwrap_or_default();
                    if reply_to != relay.ours {
                        relay.queue.retain(|id| id != reply_to);
                        continue;
                    }
                    return Some((relay_terminal(&relay, terminal), None));
                }
                _ => {}
            }
        }
    });
    Ok(counted(Box::pin(pieces)))
}

/// Our turn's terminal event as the last piece.
fn relay_terminal(relay: &Relay, event: &ConversationEvent) -> Result<Piece, CompatError> {
    match event {
        ConversationEvent::Done {
            model, usage, finish_reason, cost_micros, cache, route, ..
        } => {
            let provider = provider_name(&relay.providers, model);
            Ok(Piece::Done(Finish {
                model: model.clone(),
                provider,
                usage: *usage,
                finish_reason: *finish_reason,
                failovers: 0,
                cost_micros: *cost_micros,
                cache: *cache,
                route: route.clone(),
            }))
        }
        ConversationEvent::Error { code, message, .. } => {
            Err(CompatError::from(api_error(actors::conversation::ConversationError::Turn {
                code: code.clone(),
                message: message.clone(),
            })))
        }
        _ => Err(CompatError::new(
            StatusCode::BAD_GATEWAY,
            "interrupted",
            "the reply was interrupted; it is stored as far as it got",
        )),
    }
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub text: String,
    pub finish: Finish,
}

/// Drains a turn into one answer (non-streaming requests).
pub async fn collect(mut pieces: Pieces) -> Result<Collected, CompatError> {
    let mut text = String::new();
    while let Some(piece) = pieces.next().await {
        match piece? {
            Piece::Delta(more) => text.push_str(&more),
            Piece::Retract => text.clear(),
            Piece::Failover { .. } => {}
            Piece::Done(finish) => return Ok(Collected { text, finish }),
        }
    }
    Err(ended_early())
}

/// Waits for the turn's first piece, so a turn that fails before producing anything is
/// answered with a proper HTTP error instead of a stream that starts and then fails.
/// Failovers before the first text are invisible to the client, so they are skipped here.
pub async fn first_piece(mut pieces: Pieces) -> Result<(Piece, Pieces), CompatError> {
    loop {
        match pieces.next().await {
            Some(Ok(Piece::Failover { .. })) => continue,
            Some(Ok(piece)) => return Ok((piece, pieces)),
            Some(Err(e)) => return Err(e),
            None => return Err(ended_early()),
        }
    }
}

fn ended_early() -> CompatError {
    CompatError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
        "the turn ended without an answer",
    )
}
