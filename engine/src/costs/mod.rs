//! Cost management: prices, the ledger, routing by complexity, budgets, anomalies, reports.
//!
//! - [`prices`]: the versioned price table and the integer micro-dollar arithmetic;
//! - [`ledger`]: one priced row per turn leg (memory or PostgreSQL);
//! - [`meter`]: the `TurnRunner` decorator that routes `auto`, enforces budgets and prices
//!   every finished turn;
//! - [`budgets`]: monthly limits per tenant or user, month-to-date spend shared across nodes;
//! - [`anomaly`]: per-tenant spend spikes against an EWMA baseline;
//! - [`reports`]: totals by model/user/day/tenant/tier, CSV, chargeback, recommendations.
//!
//! [`Costs`] ties them together; the edges reach it through `AppState::tree.costs`
//! (`crate::http::costs` serves the REST API).

pub mod anomaly;
pub mod budgets;
pub mod ledger;
pub mod meter;
pub mod policy;
pub mod prices;
pub mod reports;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use actors::router::Router;
use actors::turn::{RouteNote, TurnRequest};
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};

use self::anomaly::{AnomalyConfig, AnomalyDetector};
use self::budgets::{Budget, BudgetStore, CachedBudgets, OnExceeded, Scope, SpendCounters};
use self::ledger::{LedgerEntry, LedgerError, SharedLedger};
use self::policy::{CachedRouting, RoutingStore, TenantRouting};
use self::prices::{Price, PriceInDollars, PriceTable};
use self::reports::Month;
use crate::config::Config;
use crate::routing::complexity::{self, Tier};
use crate::telemetry::metrics as m;

/// The model name that asks the engine to choose (unless the configuration defines an alias
/// with that name, which then wins).
pub const AUTO_MODEL: &str = "auto";

/// `[costs]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostsConfig {
    /// Model name → price in dollars per million tokens; overrides the built-in list prices.
    pub prices: BTreeMap<String, PriceInDollars>,
    pub anomaly: AnomalyConfig,
    /// Rows the in-memory ledger keeps (the embedded default); the oldest go first.
    pub memory_ledger_rows: usize,
}

impl Default for CostsConfig {
    fn default() -> Self {
        Self {
            prices: BTreeMap::new(),
            anomaly: AnomalyConfig::default(),
            memory_ledger_rows: 1_000_000,
        }
    }
}

impl CostsConfig {
    pub fn validate(&self, models: &[String]) -> anyhow::Result<()> {
        for (model, price) in &self.prices {
            if !models.contains(model) {
                anyhow::bail!("costs.prices names unknown model `{model}`");
            }
            price.to_price().map_err(|e| anyhow::anyhow!("costs.prices.{model}: {e}"))?;
        }
        self.anomaly.validate().map_err(anyhow::Error::msg)
    }
}

/// The tier of a catalogue model, when its configuration does not say.
pub fn default_tier(model: &str) -> Tier {
    match model {
        "gpt-4o" | "gpt-4.1" | "claude-sonnet-4-5" | "claude-opus-4-1" => Tier::Premium,
        "gpt-4o-mini" | "mock" => Tier::Economy,
        _ => Tier::Standard,
    }
}

/// The tier named by `s` (`economy`, `standard`, `premium`).
pub fn parse_tier(s: &str) -> Option<Tier> {
    [Tier::Economy, Tier::Standard, Tier::Premium].into_iter().find(|t| t.as_str() == s)
}

/// A routing decision for `auto`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub model: String,
    pub note: RouteNote,
}

/// Time-to-first-token samples of one model (the latest [`TTFT_SAMPLES`]).
const TTFT_SAMPLES: usize = 64;

/// Models whose blended prices are within this share of each other count as equally cheap,
/// and the faster one (rolling p50 time to first token) wins.
const PRICE_TIE_PERCENT: u64 = 10;

/// One tenant's spend against its budget (`GET /api/v1/costs/spend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantSpend {
    pub tenant_id: String,
    pub name: String,
    pub month: String,
    pub spend_micros: u64,
    pub budget_micros: Option<u64>,
}

pub struct Costs {
    prices: RwLock<Arc<PriceTable>>,
    tiers: HashMap<String, Tier>,
    /// Configured models, in configuration order.
    models: Vec<String>,
    /// Route aliases from the configuration: `auto` among them disables the scorer.
    aliases: HashSet<String>,
    ledger: SharedLedger,
    budgets: CachedBudgets,
    routing: CachedRouting,
    spend: SpendCounters,
    anomalies: AnomalyDetector,
    ttft: Mutex<HashMap<String, VecDeque<u32>>>,
    router: Router,
    pool: Option<Pool>,
}

impl Costs {
    /// `pool`: the database (ledger, budgets, price versions, anomalies), if configured.
    pub fn new(config: &Config, router: Router, pool: Option<Pool>) -> Arc<Costs> {
        let models: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
        let configured: BTreeMap<String, Price> = config
            .costs
            .prices
            .iter()
            .filter_map(|(m, p)| p.to_price().ok().map(|p| (m.clone(), p)))
            .collect();
        let tiers = config
            .models
            .iter()
            .map(|m| (m.name.clone(), m.tier.unwrap_or_else(|| default_tier(&m.name))))
            .collect();
        let (ledger, budgets, routing): (
            SharedLedger,
            Arc<dyn BudgetStore>,
            Arc<dyn RoutingStore>,
        ) = match &pool {
            Some(pool) => (
                Arc::new(ledger::PgLedger::new(pool.clone())),
                Arc::new(budgets::PgBudgets::new(pool.clone())),
                Arc::new(policy::PgRouting::new(pool.clone())),
            ),
            None => (
                Arc::new(ledger::MemoryLedger::new(config.costs.memory_ledger_rows)),
                Arc::new(budgets::MemoryBudgets::default()),
                Arc::new(policy::MemoryRouting::default()),
            ),
        };
        Arc::new(Costs {
            prices: RwLock::new(Arc::new(PriceTable::initial(&models, &configured))),
            tiers,
            aliases: config.routing.aliases.keys().cloned().collect(),
            models,
            spend: SpendCounters::new(ledger.clone()),
            ledger,
            budgets: CachedBudgets::new(budgets),
            routing: CachedRouting::new(routing),
            anomalies: AnomalyDetector::new(config.costs.anomaly.clone(), pool.clone()),
            ttft: Mutex::default(),
            router,
            pool,
        })
    }

    /// Starts the background work: closing anomaly intervals, loading the newest stored
    /// price version. Must run inside the actix system.
    pub fn start(self: &Arc<Self>) {
        let costs = self.clone();
        actix_rt::spawn(async move {
            if let Err(error) = costs.load_price_versions().await {
                tracing::warn!(%error, "could not load stored price versions; using configured prices");
            }
            let every = Duration::from_millis(
                (costs.anomalies.config().interval_secs.saturating_mul(1000) / 4)
                    .clamp(250, 60_000),
            );
            let mut tick = tokio::time::interval(every);
            let weak = Arc::downgrade(&costs);
            drop(costs);
            loop {
                tick.tick().await;
                let Some(costs) = weak.upgrade() else { return };
                costs.anomalies.tick(crate::accounts::now_ms());
            }
        });
    }

    /// Counts month-to-date spend in Redis from now on (shared by every node).
    pub fn share_spend(&self, counters: crate::cluster::counters::Counters) {
        self.spend.share(counters);
    }

    pub fn ledger(&self) -> &SharedLedger {
        &self.ledger
    }

    pub fn anomalies(&self) -> &AnomalyDetector {
        &self.anomalies
    }

    pub fn budgets(&self) -> &CachedBudgets {
        &self.budgets
    }

    pub fn prices(&self) -> Arc<PriceTable> {
        self.prices.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn tier_of(&self, model: &str) -> Option<Tier> {
        self.tiers.get(model).copied()
    }

    /// Sets one model's price: a new version of the table, stored when there is a database.
    pub async fn set_price(
        &self,
        model: &str,
        price: Price,
        by: &str,
    ) -> Result<Arc<PriceTable>, LedgerError> {
        let next = {
            let mut current = self.prices.write().unwrap_or_else(PoisonError::into_inner);
            let next = Arc::new(current.with_price(model, price));
            *current = next.clone();
            next
        };
        if let Some(pool) = &self.pool {
            let client = pool.get().await.map_err(ledger::db)?;
            let json = serde_json::to_value(&next.models).unwrap_or_default();
            client
                .execute(
                    "INSERT INTO price_versions (version, prices, created_by) VALUES ($1, $2, $3)
                     ON CONFLICT (version) DO UPDATE SET prices = $2, created_by = $3",
                    &[
                        &i64::try_from(next.version).unwrap_or(i64::MAX),
                        &tokio_postgres::types::Json(&json),
                        &by,
                    ],
                )
                .await
                .map_err(ledger::db)?;
        }
        tracing::info!(model, version = next.version, by, "price changed");
        Ok(next)
    }

    /// The newest stored version replaces the configured table (an admin's edit outlives a
    /// restart); models added to the configuration since keep their configured price.
    async fn load_price_versions(&self) -> Result<(), LedgerError> {
        let Some(pool) = &self.pool else { return Ok(()) };
        let client = pool.get().await.map_err(ledger::db)?;
        let row = client
            .query_opt(
                "SELECT version, prices, (extract(epoch FROM created_at) * 1000)::int8
                 FROM price_versions ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(ledger::db)?;
        let Some(row) = row else { return Ok(()) };
        let tokio_postgres::types::Json(stored): tokio_postgres::types::Json<
            BTreeMap<String, Price>,
        > = row.get(1);
        let mut current = self.prices.write().unwrap_or_else(PoisonError::into_inner);
        let mut models = current.models.clone();
        models.extend(stored.into_iter().filter(|(m, _)| self.models.contains(m)));
        *current = Arc::new(PriceTable {
            version: u64::try_from(row.get::<_, i64>(0)).unwrap_or(1),
            created_at_ms: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            models,
        });
        Ok(())
    }

    /// Whether `model` asks the engine to choose by complexity.
    pub fn is_auto(&self, _tenant_id: &str, model: &str) -> bool {
        model == AUTO_MODEL && !self.auto_is_alias()
    }

    /// Whether the configuration defines an alias named `auto` (which then wins).
    pub fn auto_is_alias(&self) -> bool {
        self.aliases.contains(AUTO_MODEL)
    }

    /// The tenant's routing settings; the defaults when they cannot be read (logged).
    pub async fn tenant_routing(&self, tenant_id: &str) -> TenantRouting {
        match self.routing.get(tenant_id).await {
            Ok(routing) => routing,
            Err(error) => {
                tracing::warn!(%error, "routing settings unavailable; routing as named");
                TenantRouting::default()
            }
        }
    }

    pub async fn set_tenant_routing(
        &self,
        tenant_id: &str,
        routing: Option<TenantRouting>,
    ) -> Result<(), LedgerError> {
        self.routing.put(tenant_id, routing).await
    }

    /// `cheapest:<tier>` or a tenant's `cheapest` policy: no scoring.
    pub fn cheapest(&self, requested: &str, tier: Tier) -> Decision {
        let model = self.cheapest_at_least(tier);
        metrics::counter!(
            m::ROUTE_DECISIONS,
            "policy" => "cheapest",
            "tier" => tier.as_str(),
            "model" => model.clone()
        )
        .increment(1);
        Decision {
            model,
            note: RouteNote {
                requested: requested.to_owned(),
                policy: "cheapest".into(),
                tier: Some(tier.as_str().into()),
                reason: format!("cheapest healthy model of tier {} or above", tier.as_str()),
            },
        }
    }

    /// The cheapest healthy model of the tier the scorer gives `request` (never a lower
    /// tier; a higher one when the tier has no healthy model), the faster of equally cheap
    /// ones.
    /// `floor` is the tenant's minimum tier.
    pub fn choose(
        &self,
        requested: &str,
        assessment: &complexity::Assessment,
        floor: Tier,
    ) -> Decision {
        let tier = assessment.tier.max(floor);
        let model = self.cheapest_at_least(tier);
        let mut reason = if assessment.reasons.is_empty() {
            format!("score {:.2}", assessment.score)
        } else {
            format!("score {:.2}: {}", assessment.score, assessment.reasons.join(", "))
        };
        if tier > assessment.tier {
            reason.push_str(&format!("; raised to the tenant's minimum tier {}", tier.as_str()));
        }
        metrics::counter!(
            m::ROUTE_DECISIONS,
            "policy" => "complexity",
            "tier" => tier.as_str(),
            "model" => model.clone()
        )
        .increment(1);
        Decision {
            model,
            note: RouteNote {
                requested: requested.to_owned(),
                policy: "complexity".into(),
                tier: Some(tier.as_str().into()),
                reason,
            },
        }
    }

    pub fn cheapest_at_least(&self, tier: Tier) -> String {
        let prices = self.prices();
        let now = tokio::time::Instant::now();
        let healthy = |m: &str| self.router.endpoint(m).is_none_or(|h| h.admits(now));
        let p50 = |m: &str| self.ttft_p50(m).unwrap_or(u32::MAX);
        for t in [Tier::Economy, Tier::Standard, Tier::Premium].into_iter().filter(|t| *t >= tier) {
            let mut candidates: Vec<(&String, u64)> = self
                .models
                .iter()
                .filter(|m| self.tiers.get(*m) == Some(&t) && healthy(m))
                .map(|m| (m, prices.get(m).map_or(u64::MAX, Price::blended)))
                .collect();
            let Some(cheapest) = candidates.iter().map(|(_, p)| *p).min() else { continue };
            let tie = cheapest.saturating_add(cheapest / 100 * PRICE_TIE_PERCENT);
            candidates.retain(|(_, p)| *p <= tie);
            candidates.sort_by_key(|(m, p)| (p50(m), *p));
            return candidates[0].0.clone();
        }
        // Nothing healthy at or above the tier: the highest-tier model there is (the router
        // fails over from it as usual).
        self.models
            .iter()
            .max_by_key(|m| self.tiers.get(*m).copied().unwrap_or_default())
            .cloned()
            .unwrap_or_else(|| AUTO_MODEL.into())
    }

    pub fn observe_first_token(&self, model: &str, elapsed: Duration) {
        let ms = u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX);
        let mut ttft = self.ttft.lock().unwrap_or_else(PoisonError::into_inner);
        let samples = ttft.entry(model.to_owned()).or_default();
        if samples.len() == TTFT_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(ms);
    }

    /// Rolling median time to first token, in ms.
    pub fn ttft_p50(&self, model: &str) -> Option<u32> {
        let ttft = self.ttft.lock().unwrap_or_else(PoisonError::into_inner);
        let mut samples: Vec<u32> = ttft.get(model)?.iter().copied().collect();
        drop(ttft);
        samples.sort_unstable();
        samples.get(samples.len() / 2).copied()
    }

    /// Whether a budget stops the turn: `Some((policy, message))` when the tenant's or the
    /// user's hard limit is reached.
    pub async fn check_budget(
        &self,
        request: &TurnRequest,
    ) -> Result<Option<(OnExceeded, String)>, LedgerError> {
        let month = Month::of(crate::accounts::now_ms());
        let tenant = request.tenant_id.as_str();
        let mut scopes = vec![Scope::Tenant];
        if let Some(user) = &request.origin.user_id {
            scopes.push(Scope::User(user.clone()));
        }
        for scope in scopes {
            let Some(budget) = self.budgets.get(tenant, &scope).await? else { continue };
            let spent = self.spend.get(tenant, &scope, month).await?;
            if spent >= budget.monthly_limit_micros {
                let whose = match scope {
                    Scope::Tenant => "the tenant's".to_owned(),
                    Scope::User(_) => "your".to_owned(),
                };
                let message = format!(
                    "{whose} monthly budget of ${} is used up (${} spent in {})",
                    reports::usd(budget.monthly_limit_micros),
                    reports::usd(spent),
                    month.label()
                );
                let kind = match budget.on_exceeded {
                    OnExceeded::Refuse => "blocked",
                    OnExceeded::Downgrade => "downgraded",
                };
                metrics::counter!(m::BUDGET_EVENTS, "tenant" => tenant.to_owned(), "kind" => kind)
                    .increment(1);
                return Ok(Some((budget.on_exceeded, message)));
            }
        }
        Ok(None)
    }

    /// The model a downgraded turn runs on: the budget's choice, else the cheapest economy
    /// model.
    pub async fn downgrade_model(&self, tenant_id: &str) -> String {
        let chosen = self
            .budgets
            .get(tenant_id, &Scope::Tenant)
            .await
            .ok()
            .flatten()
            .and_then(|b| b.downgrade_model)
            .filter(|m| self.models.contains(m));
        chosen.unwrap_or_else(|| self.cheapest_at_least(Tier::Economy))
    }

    /// Records priced legs: metrics now; ledger, spend counters, budget alerts and anomaly
    /// detection in the background.
    pub fn record(self: &Arc<Self>, entries: Vec<LedgerEntry>) {
        let Some(first) = entries.first() else { return };
        let tenant = first.tenant_id.clone();
        let user = first.user_id.clone();
        let total: u64 = entries.iter().map(|e| e.cost_micros).sum();
        for e in &entries {
            if e.cost_micros > 0 {
                metrics::counter!(m::COST, "tenant" => e.tenant_id.clone(), "model" => e.model.clone())
                    .increment(e.cost_micros);
            }
        }
        let costs = self.clone();
        actix_rt::spawn(async move {
            if let Err(error) = costs.ledger.record(entries).await {
                tracing::warn!(%error, tenant = %tenant, "could not write the cost ledger");
            }
            if total == 0 {
                return;
            }
            costs.anomalies.record(&tenant, total, crate::accounts::now_ms());
            let month = Month::of(crate::accounts::now_ms());
            let mut scopes = vec![Scope::Tenant];
            scopes.extend(user.map(Scope::User));
            for scope in scopes {
                match costs.spend.add(&tenant, &scope, month, total).await {
                    Ok(now) => {
                        costs.budget_alerts(&tenant, &scope, now - now.min(total), now).await
                    }
                    Err(error) => tracing::warn!(%error, "could not count spend"),
                }
            }
        });
    }

    /// Alerts when spend crosses the soft threshold or the hard limit.
    async fn budget_alerts(&self, tenant: &str, scope: &Scope, before: u64, now: u64) {
        let Ok(Some(budget)) = self.budgets.get(tenant, scope).await else { return };
        for (limit, kind) in
            [(budget.soft_limit_micros(), "warning"), (budget.monthly_limit_micros, "exceeded")]
        {
            if before < limit && now >= limit {
                tracing::warn!(
                    target: "switchyard::alerts",
                    tenant,
                    scope = %scope.key(),
                    kind,
                    spent_micros = now,
                    limit_micros = budget.monthly_limit_micros,
                    "budget {kind}"
                );
                metrics::counter!(m::BUDGET_EVENTS, "tenant" => tenant.to_owned(), "kind" => kind)
                    .increment(1);
            }
        }
    }

    /// Month-to-date spend of a tenant (or user).
    pub async fn month_spend(&self, tenant: &str, scope: &Scope) -> Result<u64, LedgerError> {
        self.spend.get(tenant, scope, Month::of(crate::accounts::now_ms())).await
    }

    pub async fn set_budget(
        &self,
        tenant: &str,
        scope: &Scope,
        budget: Option<Budget>,
    ) -> Result<(), LedgerError> {
        self.budgets.put(tenant, scope, budget).await
    }

    /// Tenants' month-to-date spend against their budgets.
    pub async fn spend_overview(
        &self,
        tenants: &[(String, String)],
    ) -> Result<Vec<TenantSpend>, LedgerError> {
        let month = Month::of(crate::accounts::now_ms());
        let mut out = Vec::with_capacity(tenants.len());
        for (id, name) in tenants {
            let budget = self.budgets.get(id, &Scope::Tenant).await?;
            out.push(TenantSpend {
                tenant_id: id.clone(),
                name: name.clone(),
                month: month.label(),
                spend_micros: self.spend.get(id, &Scope::Tenant, month).await?,
                budget_micros: budget.map(|b| b.monthly_limit_micros),
            });
        }
        Ok(out)
    }

    /// Savings recommendations over a tenant's ledger rows in `[from, to)` (the latest
    /// 100 000 rows at most): premium-model turns the scorer rated as needing less, priced on
    /// the cheapest model of the rated tier, and what the cache saved.
    pub async fn recommendations(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<reports::Recommendations, LedgerError> {
        let rows = self.ledger.entries(tenant, from_ms, to_ms, 100_000).await?;
        let prices = self.prices();
        let rated: Vec<reports::Rated<'_>> = rows
            .iter()
            .map(|e| {
                let needed = e.scored_tier.as_deref().and_then(parse_tier);
                let cost_if_routed = needed.and_then(|t| {
                    let model = self.cheapest_at_least(t);
                    prices.get(&model).map(|p| {
                        p.cost_micros(actors::ports::llm::Usage {
                            input_tokens: e.input_tokens,
                            output_tokens: e.output_tokens,
                        })
                    })
                });
                reports::Rated {
                    entry: e,
                    model_tier: self.tier_of(&e.model),
                    needed_tier: needed,
                    cost_if_routed,
                }
            })
            .collect();
        Ok(reports::recommend(&rated))
    }
}
