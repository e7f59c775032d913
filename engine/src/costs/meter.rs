//! [`MeteredRunner`]: costs as a `TurnRunner` decorator, outermost around the cache and the
//! router. For every turn it
//!
//! 1. resolves `model: "auto"` with the complexity scorer and the routing policy
//!    ([`super::Costs::choose`]);
//! 2. enforces budgets — refuses with `budget_exceeded`, or downgrades to a cheaper model;
//! 3. prices the finished turn leg by leg, puts the cost and the routing decision into the
//!    summary (so the `done` event and the compatible APIs' headers carry them), and hands the
//!    priced legs to the ledger, the spend counters and the anomaly detector off the turn's
//!    path.

use std::sync::Arc;
use std::time::Instant;

use actors::events::CacheStatus;
use actors::ports::llm::Usage;
use actors::turn::{
    LegOutcome, RouteNote, TurnError, TurnEvent, TurnRequest, TurnRunner, TurnStream, TurnSummary,
};
use futures_util::{StreamExt, stream};

use super::Costs;
use super::budgets::OnExceeded;
use super::ledger::LedgerEntry;
use super::policy::{self, Plan};

pub struct MeteredRunner {
    inner: Arc<dyn TurnRunner>,
    costs: Arc<Costs>,
}

impl MeteredRunner {
    pub fn new(inner: Arc<dyn TurnRunner>, costs: Arc<Costs>) -> MeteredRunner {
        MeteredRunner { inner, costs }
    }
}

impl TurnRunner for MeteredRunner {
    fn run_turn(&self, mut request: TurnRequest) -> TurnStream {
        let inner = self.inner.clone();
        let costs = self.costs.clone();
        let span = tracing::Span::current();
        let start = async move {
            let requested = request.model.clone();
            let mut route = None;
            // Every turn is scored (a few µs), chosen or not: the ledger keeps the tier so
            // the savings report can say what routing would have saved.
            let assessment = crate::routing::complexity::assess(&request.request);
            let scored_tier = Some(assessment.tier.as_str().to_owned());
            let tenant = costs.tenant_routing(&request.tenant_id).await;
            let decision = match policy::plan(&request.model, tenant, costs.auto_is_alias()) {
                Plan::AsNamed => None,
                Plan::Complexity { floor } => Some(costs.choose(&requested, &assessment, floor)),
                Plan::Cheapest { tier } => Some(costs.cheapest(&requested, tier)),
            };
            if let Some(decision) = decision {
                tracing::info!(
                    parent: &span,
                    policy = %decision.note.policy,
                    tier = decision.note.tier.as_deref(),
                    model = %decision.model,
                    reason = %decision.note.reason,
                    "the engine chose the model"
                );
                request.model = decision.model;
                route = Some(decision.note);
            }
            match costs.check_budget(&request).await {
                Ok(None) => {}
                Ok(Some((OnExceeded::Refuse, message))) => {
                    return stream::once(async move { Err(TurnError::BudgetExceeded(message)) })
                        .boxed();
                }
                Ok(Some((OnExceeded::Downgrade, message))) => {
                    let to = costs.downgrade_model(&request.tenant_id).await;
                    if to != request.model {
                        route = Some(RouteNote {
                            requested: request.model.clone(),
                            policy: "budget_downgrade".into(),
                            tier: route.and_then(|r| r.tier),
                            reason: message,
                        });
                        request.model = to;
                    }
                }
                Err(error) => {
                    // Fail open: a ledger outage must not take chat down with it.
                    tracing::warn!(%error, "budget check unavailable; the turn runs unchecked");
                }
            }
            let started = Instant::now();
            let mut current = request.model.clone();
            let mut first_token = true;
            let meta = Meta { request: TurnMeta::of(&request, requested), route, scored_tier };
            span.in_scope(|| inner.run_turn(request))
                .map(move |mut item| {
                    match &mut item {
                        Ok(TurnEvent::Delta(_)) if first_token => {
                            first_token = false;
                            costs.observe_first_token(&current, started.elapsed());
                        }
                        Ok(TurnEvent::Failover { to, .. }) => current = to.clone(),
                        Ok(TurnEvent::Finished(summary)) => meta.price(&costs, summary),
                        _ => {}
                    }
                    item
                })
                .boxed()
        };
        stream::once(start).flatten().boxed()
    }
}

/// What the ledger needs to know about the request, kept until the turn ends.
struct TurnMeta {
    tenant_id: String,
    user_id: Option<String>,
    api_key_id: Option<String>,
    conversation_id: Option<String>,
    message_id: Option<String>,
    requested_model: String,
}

impl TurnMeta {
    fn of(request: &TurnRequest, requested_model: String) -> TurnMeta {
        TurnMeta {
            tenant_id: request.tenant_id.clone(),
            user_id: request.origin.user_id.clone(),
            api_key_id: request.origin.api_key_id.clone(),
            // Stateless compatible-API turns have no stored conversation.
            conversation_id: Some(request.conversation_id.clone())
                .filter(|c| !c.starts_with("compat:")),
            message_id: request.origin.message_id.clone(),
            requested_model,
        }
    }
}

struct Meta {
    request: TurnMeta,
    route: Option<RouteNote>,
    scored_tier: Option<String>,
}

impl Meta {
    /// Prices `summary` in place and records it.
    fn price(&self, costs: &Arc<Costs>, summary: &mut TurnSummary) {
        let prices = costs.prices();
        let at_ms = crate::accounts::now_ms();
        let r = &self.request;
        let cache = summary.cache;
        let entry = |leg: u16, model: &str, provider: &str, usage: Usage, completed: bool| {
            let price = prices.get(model);
            LedgerEntry {
                tenant_id: r.tenant_id.clone(),
                user_id: r.user_id.clone(),
                api_key_id: r.api_key_id.clone(),
                conversation_id: r.conversation_id.clone(),
                message_id: r.message_id.clone(),
                requested_model: r.requested_model.clone(),
                model: model.to_owned(),
                provider: provider.to_owned(),
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cost_micros: price.map_or(0, |p| p.cost_micros(usage)),
                saved_micros: 0,
                cache,
                leg,
                completed,
                route_tier: self.route.as_ref().and_then(|n| n.tier.clone()),
                route_reason: self.route.as_ref().map(|n| n.reason.clone()),
                scored_tier: self.scored_tier.clone(),
                price_version: price.map(|_| prices.version),
                at_ms,
            }
        };
        let mut entries: Vec<LedgerEntry> = summary
            .legs
            .iter()
            .enumerate()
            .map(|(i, leg)| {
                entry(
                    u16::try_from(i).unwrap_or(u16::MAX),
                    &leg.model,
                    &leg.provider,
                    leg.usage,
                    leg.outcome == LegOutcome::Completed,
                )
            })
            .collect();
        if entries.is_empty() {
            // A cache hit (no legs): nothing spent upstream; the saving is what the replayed
            // answer cost when it was made, at today's price.
            let mut hit = entry(0, &summary.model, &summary.provider, summary.usage, true);
            if summary.cache != CacheStatus::Miss {
                hit.saved_micros =
                    prices.get(&summary.model).map_or(0, |p| p.cost_micros(summary.saved_usage));
            }
            entries.push(hit);
        }
        summary.cost_micros = Some(entries.iter().map(|e| e.cost_micros).sum());
        summary.route = self.route.clone();
        costs.record(entries);
    }
}
