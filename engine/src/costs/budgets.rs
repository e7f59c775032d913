//! Monthly budgets: a limit per tenant (and optionally per user), a soft threshold that
//! alerts, and a hard limit that refuses turns (`budget_exceeded`) or downgrades them to a
//! cheaper model, as the tenant chose.
//!
//! Enforcement needs month-to-date spend on every node: [`SpendCounters`] keeps it in Redis
//! when the node is in a cluster (one `INCRBY` per priced turn; every node reads the same
//! figure), else in memory. A counter is seeded from the ledger the first time a node touches
//! it in a month, so a restart (or a Redis flush) does not forget what was spent. Budgets
//! themselves are in PostgreSQL when configured (read through a short cache, so a change on
//! one node reaches the others within [`BUDGET_CACHE`]) else in memory.
//!
//! The check happens before a turn starts; turns already running when the limit is crossed
//! finish, so spend can overshoot by at most the cost of the turns in flight at that moment.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::ledger::{LedgerError, SharedLedger, db};
use super::reports::Month;
use crate::cluster::counters::Counters;

/// How long a node trusts its copy of a budget before reading it again.
pub const BUDGET_CACHE: Duration = Duration::from_secs(2);

/// What happens at the hard limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExceeded {
    /// Refuse turns with `budget_exceeded`.
    #[default]
    Refuse,
    /// Run them on `downgrade_model` (or the cheapest economy model) instead.
    Downgrade,
}

/// A monthly budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub monthly_limit_micros: u64,
    /// Percent of the limit at which the soft alert fires.
    #[serde(default = "default_soft_percent")]
    pub soft_percent: u8,
    #[serde(default)]
    pub on_exceeded: OnExceeded,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade_model: Option<String>,
}

fn default_soft_percent() -> u8 {
    80
}

impl Budget {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.soft_percent) {
            return Err("soft_percent must be between 1 and 100".into());
        }
        if i64::try_from(self.monthly_limit_micros).is_err() {
            return Err("monthly_limit_micros is too large".into());
        }
        if self.downgrade_model.as_ref().is_some_and(|m| m.is_empty() || m.len() > 128) {
            return Err("downgrade_model must be a model name".into());
        }
        Ok(())
    }

    pub fn soft_limit_micros(&self) -> u64 {
        (u128::from(self.monthly_limit_micros) * u128::from(self.soft_percent) / 100) as u64
    }
}

/// Whose budget: the tenant's, or one user's within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Tenant,
    User(String),
}

impl Scope {
    pub fn key(&self) -> String {
        match self {
            Scope::Tenant => "tenant".into(),
            Scope::User(id) => format!("user:{id}"),
        }
    }

    pub fn parse(key: &str) -> Option<Scope> {
        match key {
            "tenant" => Some(Scope::Tenant),
            _ => key.strip_prefix("user:").filter(|u| !u.is_empty()).map(|u| Scope::User(u.into())),
        }
    }
}

pub type BudgetFuture<T> = BoxFuture<'static, Result<T, LedgerError>>;

/// Where budgets are kept.
pub trait BudgetStore: Send + Sync + 'static {
    fn get(&self, tenant_id: &str, scope: &Scope) -> BudgetFuture<Option<Budget>>;
    fn put(&self, tenant_id: &str, scope: &Scope, budget: Option<Budget>) -> BudgetFuture<()>;
    /// Every tenant-scope budget (for the spend overview).
    fn tenant_budgets(&self) -> BudgetFuture<Vec<(String, Budget)>>;
}

#[derive(Default)]
pub struct MemoryBudgets {
    budgets: Mutex<HashMap<(String, String), Budget>>,
}

impl BudgetStore for MemoryBudgets {
    fn get(&self, tenant_id: &str, scope: &Scope) -> BudgetFuture<Option<Budget>> {
        let found = self
            .budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(tenant_id.to_owned(), scope.key()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn put(&self, tenant_id: &str, scope: &Scope, budget: Option<Budget>) -> BudgetFuture<()> {
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (tenant_id.to_owned(), scope.key());
        match budget {
            Some(b) => budgets.insert(key, b),
            None => budgets.remove(&key),
        };
        Box::pin(async { Ok(()) })
    }

    fn tenant_budgets(&self) -> BudgetFuture<Vec<(String, Budget)>> {
        let all = self
            .budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((_, scope), _)| scope == "tenant")
            .map(|((t, _), b)| (t.clone(), b.clone()))
            .collect();
        Box::pin(async move { Ok(all) })
    }
}

pub struct PgBudgets {
    pool: Pool,
}

impl PgBudgets {
    pub fn new(pool: Pool) -> PgBudgets {
        PgBudgets { pool }
    }
}

fn on_exceeded_name(o: OnExceeded) -> &'static str {
    match o {
        OnExceeded::Refuse => "refuse",
        OnExceeded::Downgrade => "downgrade",
    }
}

fn budget_from(row: &tokio_postgres::Row, offset: usize) -> Budget {
    Budget {
        monthly_limit_micros: u64::try_from(row.get::<_, i64>(offset)).unwrap_or(0),
        soft_percent: u8::try_from(row.get::<_, i16>(offset + 1)).unwrap_or(80),
        on_exceeded: if row.get::<_, &str>(offset + 2) == "downgrade" {
            OnExceeded::Downgrade
        } else {
            OnExceeded::Refuse
        },
        downgrade_model: row.get(offset + 3),
    }
}

impl BudgetStore for PgBudgets {
    fn get(&self, tenant_id: &str, scope: &Scope) -> BudgetFuture<Option<Budget>> {
        let pool = self.pool.clone();
        let (tenant_id, scope) = (tenant_id.to_owned(), scope.key());
        Box::pin(async move {
            let client = pool.get().await.map_err(db)?;
            let statement = client
                .prepare_cached(
                    "SELECT monthly_limit_micros, soft_percent, on_exceeded, downgrade_model
                     FROM cost_budgets WHERE tenant_id = $1 AND scope = $2",
                )
                .await
                .map_err(db)?;
            let row = client.query_opt(&statement, &[&tenant_id, &scope]).await.map_err(db)?;
            Ok(row.map(|r| budget_from(&r, 0)))
        })
    }

    fn put(&self, tenant_id: &str, scope: &Scope, budget: Option<Budget>) -> BudgetFuture<()> {
        let pool = self.pool.clone();
        let (tenant_id, scope) = (tenant_id.to_owned(), scope.key());
        Box::pin(async move {
            let client = pool.get().await.map_err(db)?;
            match budget {
                None => {
                    client
                        .execute(
                            "DELETE FROM cost_budgets WHERE tenant_id = $1 AND scope = $2",
                            &[&tenant_id, &scope],
                        )
                        .await
                        .map_err(db)?;
                }
                Some(b) => {
                    let limit = i64::try_from(b.monthly_limit_micros).unwrap_or(i64::MAX);
                    client
                        .execute(
                            "INSERT INTO cost_budgets (tenant_id, scope, monthly_limit_micros,
                             soft_percent, on_exceeded, downgrade_model) VALUES ($1, $2, $3, $4, $5, $6)
                             ON CONFLICT (tenant_id, scope) DO UPDATE SET
                             monthly_limit_micros = $3, soft_percent = $4, on_exceeded = $5,
                             downgrade_model = $6, updated_at = now()",
                            &[
                                &tenant_id,
                                &scope,
                                &limit,
                                &i16::from(b.soft_percent),
                                &on_exceeded_name(b.on_exceeded),
                                &b.downgrade_model,
                            ],
                        )
                        .await
                        .map_err(db)?;
                }
            }
            Ok(())
        })
    }

    fn tenant_budgets(&self) -> BudgetFuture<Vec<(String, Budget)>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(db)?;
            let rows = client
                .query(
                    "SELECT tenant_id, monthly_limit_micros, soft_percent, on_exceeded, downgrade_model
                     FROM cost_budgets WHERE scope = 'tenant' ORDER BY tenant_id",
                    &[],
                )
                .await
                .map_err(db)?;
            Ok(rows.iter().map(|r| (r.get(0), budget_from(r, 1))).collect())
        })
    }
}

/// A per-node copy of settings read from a store, trusted for [`BUDGET_CACHE`]: budgets and
/// routing policies are read on every turn and change rarely.
pub struct ReadThrough<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Default for ReadThrough<K, V> {
    fn default() -> Self {
        Self { entries: Mutex::default() }
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> ReadThrough<K, V> {
    /// The copy of `key`, if read less than [`BUDGET_CACHE`] ago.
    pub fn fresh(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(key).filter(|(at, _)| at.elapsed() < BUDGET_CACHE).map(|(_, v)| v.clone())
    }

    pub fn remember(&self, key: K, value: V) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (Instant::now(), value));
    }
}

/// A budget store read through a per-node cache of [`BUDGET_CACHE`].
pub struct CachedBudgets {
    inner: Arc<dyn BudgetStore>,
    cache: ReadThrough<(String, Scope), Option<Budget>>,
}

impl CachedBudgets {
    pub fn new(inner: Arc<dyn BudgetStore>) -> CachedBudgets {
        CachedBudgets { inner, cache: ReadThrough::default() }
    }

    pub fn store(&self) -> &Arc<dyn BudgetStore> {
        &self.inner
    }

    pub async fn get(&self, tenant_id: &str, scope: &Scope) -> Result<Option<Budget>, LedgerError> {
        let key = (tenant_id.to_owned(), scope.clone());
        if let Some(budget) = self.cache.fresh(&key) {
            return Ok(budget);
        }
        let budget = self.inner.get(tenant_id, scope).await?;
        self.cache.remember(key, budget.clone());
        Ok(budget)
    }

    pub async fn put(
        &self,
        tenant_id: &str,
        scope: &Scope,
        budget: Option<Budget>,
    ) -> Result<(), LedgerError> {
        self.inner.put(tenant_id, scope, budget.clone()).await?;
        self.cache.remember((tenant_id.to_owned(), scope.clone()), budget);
        Ok(())
    }
}

/// Month-to-date spend per (tenant, scope), shared through Redis when the node has it.
pub struct SpendCounters {
    ledger: SharedLedger,
    local: Mutex<HashMap<String, u64>>,
    /// Keys this node has seeded from the ledger (per month).
    seeded: Mutex<HashSet<String>>,
    shared: OnceLock<Counters>,
}

/// Long enough to outlive the month it counts.
const COUNTER_TTL: Duration = Duration::from_secs(40 * 86_400);

impl SpendCounters {
    pub fn new(ledger: SharedLedger) -> SpendCounters {
        SpendCounters {
            ledger,
            local: Mutex::default(),
            seeded: Mutex::default(),
            shared: OnceLock::new(),
        }
    }

    /// From now on, count in Redis (called once the node has joined its cluster).
    pub fn share(&self, counters: Counters) {
        let _ = self.shared.set(counters);
    }

    fn key(tenant_id: &str, scope: &Scope, month: Month) -> String {
        format!("{}:{}:{}", month.label(), tenant_id, scope.key())
    }

    /// Month-to-date spend.
    pub async fn get(
        &self,
        tenant_id: &str,
        scope: &Scope,
        month: Month,
    ) -> Result<u64, LedgerError> {
        self.add(tenant_id, scope, month, 0).await
    }

    /// Adds `micros` and returns the new month-to-date spend.
    pub async fn add(
        &self,
        tenant_id: &str,
        scope: &Scope,
        month: Month,
        micros: u64,
    ) -> Result<u64, LedgerError> {
        let key = Self::key(tenant_id, scope, month);
        let seed = self.seed(tenant_id, scope, month, &key).await;
        if let Some(counters) = self.shared.get() {
            let redis_key = counters.tenant_key(
                "spend",
                tenant_id,
                &format!("{}:{}", month.label(), scope.key()),
            );
            if let Some(seed) = seed {
                // Seeding: only if no node has created the counter yet.
                let _ = counters.set_if_absent(&redis_key, seed, COUNTER_TTL).await;
            }
            let by = i64::try_from(micros).unwrap_or(i64::MAX);
            match counters.incr_with_ttl(&redis_key, by, COUNTER_TTL).await {
                Ok((n, _)) => return Ok(u64::try_from(n).unwrap_or(0)),
                Err(error) => {
                    // Redis down: fall back to this node's own count (it still sees its
                    // own spend) rather than refusing every turn.
                    tracing::warn!(%error, "shared spend counter unavailable; counting locally");
                }
            }
        }
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let value = local.entry(key).or_insert(seed.unwrap_or(0));
        *value = value.saturating_add(micros);
        Ok(*value)
    }

    /// The ledger's month-to-date figure the first time this node touches `key`.
    async fn seed(&self, tenant_id: &str, scope: &Scope, month: Month, key: &str) -> Option<u64> {
        if self.seeded.lock().unwrap_or_else(PoisonError::into_inner).contains(key) {
            return None;
        }
        let user = match scope {
            Scope::Tenant => None,
            Scope::User(u) => Some(u.as_str()),
        };
        match self.ledger.spend_since(tenant_id, user, month.start_ms()).await {
            Ok(spent) => {
                self.seeded.lock().unwrap_or_else(PoisonError::into_inner).insert(key.to_owned());
                Some(spent)
            }
            Err(error) => {
                tracing::warn!(%error, "could not seed month-to-date spend from the ledger");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip() {
        assert_eq!(Scope::parse("tenant"), Some(Scope::Tenant));
        assert_eq!(Scope::parse("user:u1"), Some(Scope::User("u1".into())));
        assert_eq!(Scope::parse("user:"), None);
        assert_eq!(Scope::parse("key:x"), None);
        assert_eq!(Scope::User("u1".into()).key(), "user:u1");
    }

    #[test]
    fn soft_limit_is_a_percentage() {
        let b = Budget {
            monthly_limit_micros: 1_000_000,
            soft_percent: 80,
            on_exceeded: OnExceeded::Refuse,
            downgrade_model: None,
        };
        assert_eq!(b.soft_limit_micros(), 800_000);
        assert!(b.validate().is_ok());
        assert!(Budget { soft_percent: 0, ..b.clone() }.validate().is_err());
        assert!(Budget { monthly_limit_micros: u64::MAX, ..b }.validate().is_err());
    }
}
