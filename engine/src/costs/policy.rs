//! Routing policy per request and per tenant.
//!
//! Per request, the model name says it: a configured model or alias runs as named; `auto`
//! routes by complexity; `cheapest:<tier>` runs on the cheapest healthy model of at least that
//! tier without scoring.
//!
//! Per tenant, an admin may set (`PUT /api/v1/tenants/{id}/routing`):
//! - `policy`: `explicit` (the default: honour the model named), `auto` (route every turn by
//!   complexity, whatever it names) or `cheapest` (every turn on the cheapest healthy model of
//!   at least `min_tier`);
//! - `min_tier`: a quality floor for `auto` and `cheapest` (default `economy`).
//!
//! Settings are stored like budgets (PostgreSQL `tenant_routing`, V13, else memory) and read
//! through the same short per-node cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};

use super::budgets::{BudgetFuture, ReadThrough};
use super::ledger::{LedgerError, db};
use crate::routing::complexity::Tier;

/// Prefix of a per-request tier choice: `cheapest:standard`.
pub const CHEAPEST_PREFIX: &str = "cheapest:";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Explicit,
    Auto,
    Cheapest,
}

impl Policy {
    fn as_str(self) -> &'static str {
        match self {
            Policy::Explicit => "explicit",
            Policy::Auto => "auto",
            Policy::Cheapest => "cheapest",
        }
    }

    fn parse(s: &str) -> Policy {
        match s {
            "auto" => Policy::Auto,
            "cheapest" => Policy::Cheapest,
            _ => Policy::Explicit,
        }
    }
}

/// A tenant's routing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRouting {
    #[serde(default)]
    pub policy: Policy,
    #[serde(default = "economy")]
    pub min_tier: Tier,
}

fn economy() -> Tier {
    Tier::Economy
}

impl Default for TenantRouting {
    /// Honour the model named; no quality floor.
    fn default() -> Self {
        TenantRouting { policy: Policy::Explicit, min_tier: Tier::Economy }
    }
}

/// What the meter does with one turn's requested model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Run the named model.
    AsNamed,
    /// Score the turn; never below `floor`.
    Complexity { floor: Tier },
    /// The cheapest healthy model of at least this tier.
    Cheapest { tier: Tier },
}

/// The plan for `model` under the tenant's settings. `auto_is_alias`: the configuration
/// defines an alias named `auto`, which then routes as an alias.
pub fn plan(model: &str, tenant: TenantRouting, auto_is_alias: bool) -> Plan {
    if let Some(tier) = model.strip_prefix(CHEAPEST_PREFIX).and_then(super::parse_tier) {
        return Plan::Cheapest { tier: tier.max(tenant.min_tier) };
    }
    match tenant.policy {
        Policy::Auto => Plan::Complexity { floor: tenant.min_tier },
        Policy::Cheapest => Plan::Cheapest { tier: tenant.min_tier },
        Policy::Explicit if model == super::AUTO_MODEL && !auto_is_alias => {
            Plan::Complexity { floor: tenant.min_tier }
        }
        Policy::Explicit => Plan::AsNamed,
    }
}

/// Whether `model` is a per-request tier choice the configuration must accept.
pub fn is_tier_choice(model: &str) -> bool {
    model.strip_prefix(CHEAPEST_PREFIX).and_then(super::parse_tier).is_some()
}

pub trait RoutingStore: Send + Sync + 'static {
    fn get(&self, tenant_id: &str) -> BudgetFuture<Option<TenantRouting>>;
    fn put(&self, tenant_id: &str, routing: Option<TenantRouting>) -> BudgetFuture<()>;
}

#[derive(Default)]
pub struct MemoryRouting {
    settings: Mutex<HashMap<String, TenantRouting>>,
}

impl RoutingStore for MemoryRouting {
    fn get(&self, tenant_id: &str) -> BudgetFuture<Option<TenantRouting>> {
        let found =
            self.settings.lock().unwrap_or_else(PoisonError::into_inner).get(tenant_id).copied();
        Box::pin(async move { Ok(found) })
    }

    fn put(&self, tenant_id: &str, routing: Option<TenantRouting>) -> BudgetFuture<()> {
        let mut settings = self.settings.lock().unwrap_or_else(PoisonError::into_inner);
        match routing {
            Some(r) => settings.insert(tenant_id.to_owned(), r),
            None => settings.remove(tenant_id),
        };
        Box::pin(async { Ok(()) })
    }
}

pub struct PgRouting {
    pool: Pool,
}

impl PgRouting {
    pub fn new(pool: Pool) -> PgRouting {
        PgRouting { pool }
    }
}

impl RoutingStore for PgRouting {
    fn get(&self, tenant_id: &str) -> BudgetFuture<Option<TenantRouting>> {
        let (pool, tenant_id) = (self.pool.clone(), tenant_id.to_owned());
        Box::pin(async move {
            let client = pool.get().await.map_err(db)?;
            let statement = client
                .prepare_cached("SELECT policy, min_tier FROM tenant_routing WHERE tenant_id = $1")
                .await
                .map_err(db)?;
            let row = client.query_opt(&statement, &[&tenant_id]).await.map_err(db)?;
            Ok(row.map(|r| TenantRouting {
                policy: Policy::parse(r.get(0)),
                min_tier: super::parse_tier(r.get(1)).unwrap_or(Tier::Economy),
            }))
        })
    }

    fn put(&self, tenant_id: &str, routing: Option<TenantRouting>) -> BudgetFuture<()> {
        let (pool, tenant_id) = (self.pool.clone(), tenant_id.to_owned());
        Box::pin(async move {
            let client = pool.get().await.map_err(db)?;
            match routing {
                None => client
                    .execute("DELETE FROM tenant_routing WHERE tenant_id = $1", &[&tenant_id])
                    .await
                    .map_err(db)?,
                Some(r) => client
                    .execute(
                        "INSERT INTO tenant_routing (tenant_id, policy, min_tier) VALUES ($1, $2, $3)
                         ON CONFLICT (tenant_id) DO UPDATE SET policy = $2, min_tier = $3,
                         updated_at = now()",
                        &[&tenant_id, &r.policy.as_str(), &r.min_tier.as_str()],
                    )
                    .await
                    .map_err(db)?,
            };
            Ok(())
        })
    }
}

/// The store read through a per-node cache of [`BUDGET_CACHE`](super::budgets::BUDGET_CACHE).
pub struct CachedRouting {
    inner: Arc<dyn RoutingStore>,
    cache: ReadThrough<String, TenantRouting>,
}

impl CachedRouting {
    pub fn new(inner: Arc<dyn RoutingStore>) -> CachedRouting {
        CachedRouting { inner, cache: ReadThrough::default() }
    }

    /// The tenant's settings (the defaults when it has none).
    pub async fn get(&self, tenant_id: &str) -> Result<TenantRouting, LedgerError> {
        if let Some(routing) = self.cache.fresh(&tenant_id.to_owned()) {
            return Ok(routing);
        }
        let routing = self.inner.get(tenant_id).await?.unwrap_or_default();
        self.cache.remember(tenant_id.to_owned(), routing);
        Ok(routing)
    }

    pub async fn put(
        &self,
        tenant_id: &str,
        routing: Option<TenantRouting>,
    ) -> Result<(), LedgerError> {
        self.inner.put(tenant_id, routing).await?;
        self.cache.remember(tenant_id.to_owned(), routing.unwrap_or_default());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(policy: Policy, min_tier: Tier) -> TenantRouting {
        TenantRouting { policy, min_tier }
    }

    #[test]
    fn requests_and_tenants_choose_the_plan() {
        let default = TenantRouting::default();
        assert_eq!(default, tenant(Policy::Explicit, Tier::Economy));
        assert_eq!(plan("gpt-4o", default, false), Plan::AsNamed);
        assert_eq!(plan("auto", default, false), Plan::Complexity { floor: Tier::Economy });
        assert_eq!(plan("auto", default, true), Plan::AsNamed, "an alias named auto wins");
        assert_eq!(
            plan("cheapest:standard", default, false),
            Plan::Cheapest { tier: Tier::Standard }
        );
        assert_eq!(plan("cheapest:gold", default, false), Plan::AsNamed);
        let floor = tenant(Policy::Explicit, Tier::Standard);
        assert_eq!(plan("auto", floor, false), Plan::Complexity { floor: Tier::Standard });
        assert_eq!(plan("cheapest:economy", floor, false), Plan::Cheapest { tier: Tier::Standard });
        let auto = tenant(Policy::Auto, Tier::Economy);
        assert_eq!(plan("gpt-4o", auto, false), Plan::Complexity { floor: Tier::Economy });
        let cheapest = tenant(Policy::Cheapest, Tier::Premium);
        assert_eq!(plan("gpt-4o-mini", cheapest, false), Plan::Cheapest { tier: Tier::Premium });
        assert!(
            is_tier_choice("cheapest:premium")
                && !is_tier_choice("cheapest:")
                && !is_tier_choice("auto")
        );
    }

    #[test]
    fn settings_parse_with_defaults() {
        let r: TenantRouting = serde_json::from_str(r#"{"policy":"auto"}"#).unwrap();
        assert_eq!(r, tenant(Policy::Auto, Tier::Economy));
        assert!(serde_json::from_str::<TenantRouting>(r#"{"policy":"magic"}"#).is_err());
        assert!(serde_json::from_str::<TenantRouting>(r#"{"tier":"premium"}"#).is_err());
    }
}
