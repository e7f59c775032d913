//! A turn's journey from a conversation to the models, as a port.
//!
//! The conversation side (tenant and conversation actors) asks a [`TurnRunner`] to run one
//! turn and consumes the resulting [`TurnStream`]; the provider side (router, provider
//! supervisor and provider actors) implements it: it picks the model and fallback chain,
//! fails over on retryable errors — also mid-stream — and reports every leg. Keeping this
//! seam a trait lets each side be tested with a fake of the other.

use std::pin::Pin;

use futures_util::Stream;
use serde::Serialize;
use tokio::time::Instant;

use crate::events::CacheStatus;
use crate::ports::llm::{FinishReason, GenerationRequest, ProviderError, Usage};

/// What to do with text already delivered when a stream breaks mid-answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContinuationMode {
    /// The fallback model continues the partial answer; the client sees one message.
    #[default]
    Continue,
    /// The fallback answers afresh; the client is told to drop the partial text (`retract`).
    Restart,
}

/// Whether a turn may be answered from (and stored into) the response cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Look the turn up and store its answer, as the tenant's cache settings allow.
    #[default]
    Use,
    /// The client opted out (`"cache": false`): neither read nor store.
    Bypass,
}

/// One turn to run.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub tenant_id: String,
    pub conversation_id: String,
    /// A configured model name or a route alias such as `auto`.
    pub model: String,
    pub request: GenerationRequest,
    /// The whole turn, every fallback included, must end by then.
    pub deadline: Instant,
    pub continuation: ContinuationMode,
    /// The client's cache opt-out; runners without a cache ignore it.
    pub cache: CacheMode,
    /// Who asked, for the cost ledger and per-user budgets.
    pub origin: TurnOrigin,
}

/// Who a turn is for and which message it answers: what the cost ledger charges it to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnOrigin {
    pub user_id: Option<String>,
    /// The API key the request came with, if it came with one.
    pub api_key_id: Option<String>,
    /// The assistant message the turn produces (conversation turns only).
    pub message_id: Option<String>,
}

/// Why a turn ran on the model it did, when the engine chose it (`model: "auto"`, or a
/// budget downgrade). Shown in the `done` event, the compatible APIs' headers and the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RouteNote {
    /// What the client asked for (`auto`, or the model a downgrade replaced).
    pub requested: String,
    /// `complexity` or `budget_downgrade`.
    pub policy: String,
    /// The tier the complexity scorer chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Human-readable cues (`code, multi_step`; `monthly budget reached`).
    pub reason: String,
}

/// How one attempt on one model ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LegOutcome {
    Completed,
    Failed { code: &'static str },
}

/// One attempt on one model; a turn with failovers has several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leg {
    /// The configured model name.
    pub model: String,
    /// The provider kind (`openai`, `anthropic`, `mock`, …).
    pub provider: String,
    pub usage: Usage,
    pub outcome: LegOutcome,
    pub provider_request_id: Option<String>,
}

/// The end of a successful turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnSummary {
    /// The model that finished the turn.
    pub model: String,
    pub provider: String,
    pub finish_reason: FinishReason,
    /// Sum over all legs.
    pub usage: Usage,
    pub legs: Vec<Leg>,
    /// `Miss` for a live answer; `Exact`/`Semantic` when the cache answered (no legs, zero
    /// usage: nothing was spent upstream).
    pub cache: CacheStatus,
    /// What a cache hit did not spend: the usage of the answer it replayed.
    pub saved_usage: Usage,
    /// Priced by the cost meter (`None` where no meter runs, e.g. in actor tests).
    pub cost_micros: Option<u64>,
    /// Set when the engine chose the model.
    pub route: Option<RouteNote>,
}

/// One item of a running turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// Answer text, in order, across legs: never duplicated, never missing.
    Delta(String),
    /// The turn moved to another model; in `Continue` mode the text goes on seamlessly.
    Failover { from: String, to: String, reason: &'static str },
    /// `Restart` mode: drop the partial text delivered so far; a fresh answer follows.
    Retract { from: String },
    /// The turn ended normally; always the last item.
    Finished(TurnSummary),
}

/// Why a turn failed, as the client will be told.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TurnError {
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    /// Not worth trying elsewhere (bad request, provider credentials).
    #[error(transparent)]
    Rejected(ProviderError),
    /// Every model in the chain failed or was unavailable.
    #[error("no model could answer: {last}")]
    Exhausted { last: ProviderError },
    #[error("the turn did not finish within its deadline")]
    DeadlineExceeded,
    /// The tree refuses work instead of queueing without bound.
    #[error("the engine is overloaded; try again shortly")]
    Overloaded,
    #[error("the turn was cancelled")]
    Cancelled,
    /// The tenant's (or user's) hard spending limit is reached.
    #[error("{0}")]
    BudgetExceeded(String),
}

impl TurnError {
    /// Stable snake_case code for the wire.
    pub fn code(&self) -> &'static str {
        match self {
            TurnError::UnknownModel(_) => "unknown_model",
            TurnError::Rejected(e) => e.code(),
            TurnError::Exhausted { .. } => "upstream_unavailable",
            TurnError::DeadlineExceeded => "timeout",
            TurnError::Overloaded => "overloaded",
            TurnError::Cancelled => "cancelled",
            TurnError::BudgetExceeded(_) => "budget_exceeded",
        }
    }
}

/// A turn in progress. Dropping it cancels the turn, including the upstream request.
pub type TurnStream = Pin<Box<dyn Stream<Item = Result<TurnEvent, TurnError>> + Send>>;

/// How a turn that ended with `code` counts for the availability SLO (the `outcome` label of
/// `switchyard_turns_total`): `rejected` when the client asked for something that cannot be
/// served (unknown model, invalid or oversized request, limits), `cancelled` when it withdrew,
/// else `failed` — the engine or its providers let the client down.
pub fn slo_outcome(code: &str) -> &'static str {
    match code {
        "cancelled" => "cancelled",
        "unknown_model"
        | "bad_request"
        | "context_length_exceeded"
        | "invalid_request"
        | "rate_limited"
        | "quota_exceeded"
        | "budget_exceeded"
        | "forbidden" => "rejected",
        _ => "failed",
    }
}

/// Runs turns: implemented by the router, faked in conversation tests.
pub trait TurnRunner: Send + Sync + 'static {
    fn run_turn(&self, request: TurnRequest) -> TurnStream;
}
