//! The cost ledger: one row per turn leg, in integer micro-dollars, behind the [`Ledger`]
//! port — in memory for the embedded default, the `usage_ledger` table in PostgreSQL
//! (migrations V5 and V11) in production.
//!
//! Rows are written after a turn ends (off the turn's path, see `super::meter`); reports
//! ([`super::reports`]) and budget seeding read them back. Every read is scoped by tenant,
//! except the platform-wide chargeback a superadmin asks for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use actors::events::CacheStatus;
use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use serde::Serialize;

use super::reports::{GroupBy, Report, ReportRow};

/// One leg of one turn, priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerEntry {
    pub tenant_id: String,
    pub user_id: Option<String>,
    pub api_key_id: Option<String>,
    pub conversation_id: Option<String>,
    /// The assistant message (conversation turns).
    pub message_id: Option<String>,
    /// What the client asked for (`auto`, an alias, a model).
    pub requested_model: String,
    /// The model that ran this leg.
    pub model: String,
    pub provider: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: u64,
    /// What a cache hit did not spend (the replayed answer's usage at today's price).
    pub saved_micros: u64,
    pub cache: CacheStatus,
    /// 0 for the first model tried; a failover adds a leg.
    pub leg: u16,
    /// Whether this leg ended the turn (the others failed over).
    pub completed: bool,
    /// The scorer's tier when the engine chose the model.
    pub route_tier: Option<String>,
    /// The tier the scorer gives the turn, chosen or not (for savings recommendations).
    pub scored_tier: Option<String>,
    pub route_reason: Option<String>,
    /// The price table version that priced the row; `None` when the model has no price.
    pub price_version: Option<u64>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cost ledger is unavailable: {0}")]
pub struct LedgerError(pub String);

pub type LedgerFuture<T> = BoxFuture<'static, Result<T, LedgerError>>;

/// Which rows a report covers: `[from_ms, to_ms)`, one tenant or (superadmin) all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    pub tenant_id: Option<String>,
    pub from_ms: u64,
    pub to_ms: u64,
    pub group_by: GroupBy,
}

/// Where priced legs are kept.
pub trait Ledger: Send + Sync + 'static {
    fn record(&self, entries: Vec<LedgerEntry>) -> LedgerFuture<()>;
    /// Totals per group over the query's range.
    fn report(&self, query: ReportQuery) -> LedgerFuture<Report>;
    /// The rows themselves (newest last), for recommendations and audits; at most `limit`.
    fn entries(
        &self,
        tenant_id: &str,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> LedgerFuture<Vec<LedgerEntry>>;
    /// Spend of a tenant (or one of its users) since `from_ms`: seeds budget counters.
    fn spend_since(
        &self,
        tenant_id: &str,
        user_id: Option<&str>,
        from_ms: u64,
    ) -> LedgerFuture<u64>;
}

/// The embedded default: rows in memory, bounded (the oldest go first past the cap).
pub struct MemoryLedger {
    rows: Mutex<std::collections::VecDeque<LedgerEntry>>,
    cap: usize,
}

impl MemoryLedger {
    pub fn new(cap: usize) -> MemoryLedger {
        MemoryLedger { rows: Mutex::default(), cap: cap.max(1) }
    }

    fn select(&self, keep: impl Fn(&LedgerEntry) -> bool) -> Vec<LedgerEntry> {
        let rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        rows.iter().filter(|e| keep(e)).cloned().collect()
    }
}

impl Ledger for MemoryLedger {
    fn record(&self, entries: Vec<LedgerEntry>) -> LedgerFuture<()> {
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in entries {
            if rows.len() == self.cap {
                rows.pop_front();
            }
            rows.push_back(entry);
        }
        Box::pin(async { Ok(()) })
    }

    fn report(&self, query: ReportQuery) -> LedgerFuture<Report> {
        let rows = self.select(|e| {
            query.tenant_id.as_ref().is_none_or(|t| *t == e.tenant_id)
                && e.at_ms >= query.from_ms
                && e.at_ms < query.to_ms
        });
        let mut groups: BTreeMap<String, ReportRow> = BTreeMap::new();
        for e in &rows {
            let key = query.group_by.key_of(e);
            groups.entry(key.clone()).or_insert_with(|| ReportRow::named(key)).add(e);
        }
        let report = Report::new(query, groups.into_values().collect());
        Box::pin(async move { Ok(report) })
    }

    fn entries(
        &self,
        tenant_id: &str,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> LedgerFuture<Vec<LedgerEntry>> {
        let mut rows =
            self.select(|e| e.tenant_id == tenant_id && e.at_ms >= from_ms && e.at_ms < to_ms);
        let skip = rows.len().saturating_sub(limit);
        rows.drain(..skip);
        Box::pin(async move { Ok(rows) })
    }

    fn spend_since(
        &self,
        tenant_id: &str,
        user_id: Option<&str>,
        from_ms: u64,
    ) -> LedgerFuture<u64> {
        let total = self
            .select(|e| {
                e.tenant_id == tenant_id
                    && e.at_ms >= from_ms
                    && user_id.is_none_or(|u| e.user_id.as_deref() == Some(u))
            })
            .iter()
            .map(|e| e.cost_micros)
            .sum();
        Box::pin(async move { Ok(total) })
    }
}

/// The ledger in PostgreSQL, sharing the conversation store's pool.
#[derive(Clone)]
pub struct PgLedger {
    pool: Pool,
}

/// A database failure as the cost stores report it (never the connection string).
pub(super) fn db(e: impl std::fmt::Display) -> LedgerError {
    LedgerError(format!("database: {e}"))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn cache_name(cache: CacheStatus) -> &'static str {
    match cache {
        CacheStatus::Miss => "miss",
        CacheStatus::Exact => "exact",
        CacheStatus::Semantic => "semantic",
    }
}

fn cache_from(name: &str) -> CacheStatus {
    match name {
        "exact" => CacheStatus::Exact,
        "semantic" => CacheStatus::Semantic,
        _ => CacheStatus::Miss,
    }
}

const INSERT: &str = "INSERT INTO usage_ledger (tenant_id, user_id, api_key_id, conversation_id,
    message_id, requested_model, model, provider, input_tokens, output_tokens, cost_micros,
    saved_micros, cache, leg, completed, route_tier, route_reason, price_version, scored_tier,
    created_at)
    SELECT a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r2, t, to_timestamp(s)
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::text[],
    $14::int2[], $15::bool[], $16::text[], $17::text[], $18::int8[],
    $19::float8[], $20::text[]) AS r(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r2, s, t)";

impl PgLedger {
    pub fn new(pool: Pool) -> PgLedger {
        PgLedger { pool }
    }
}

/// SQL for a group key; every arm is a fixed expression (never user text).
fn group_expr(group_by: GroupBy) -> &'static str {
    match group_by {
        GroupBy::Model => "model",
        GroupBy::User => "COALESCE(user_id, '')",
        GroupBy::Day => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        GroupBy::Tenant => "tenant_id",
        GroupBy::Tier => "COALESCE(route_tier, '')",
    }
}

fn ms_to_ts(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl Ledger for PgLedger {
    fn record(&self, entries: Vec<LedgerEntry>) -> LedgerFuture<()> {
        let pool = self.pool.clone();
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(());
            }
            let col = |f: &dyn Fn(&LedgerEntry) -> Option<String>| -> Vec<Option<String>> {
                entries.iter().map(f).collect()
            };
            let tenant = col(&|e| Some(e.tenant_id.clone()));
            let user = col(&|e| e.user_id.clone());
            let key = col(&|e| e.api_key_id.clone());
            let conversation = col(&|e| e.conversation_id.clone());
            let message = col(&|e| e.message_id.clone());
            let requested = col(&|e| Some(e.requested_model.clone()));
            let model = col(&|e| Some(e.model.clone()));
            let provider = col(&|e| Some(e.provider.clone()));
            let input: Vec<i64> = entries.iter().map(|e| to_i64(e.input_tokens)).collect();
            let output: Vec<i64> = entries.iter().map(|e| to_i64(e.output_tokens)).collect();
            let cost: Vec<i64> = entries.iter().map(|e| to_i64(e.cost_micros)).collect();
            let saved: Vec<i64> = entries.iter().map(|e| to_i64(e.saved_micros)).collect();
            let cache = col(&|e| Some(cache_name(e.cache).to_owned()));
            let leg: Vec<i16> = entries.iter().map(|e| e.leg as i16).collect();
            let completed: Vec<bool> = entries.iter().map(|e| e.completed).collect();
            let tier = col(&|e| e.route_tier.clone());
            let reason = col(&|e| e.route_reason.clone());
            let version: Vec<Option<i64>> =
                entries.iter().map(|e| e.price_version.map(to_i64)).collect();
            let at: Vec<f64> = entries.iter().map(|e| ms_to_ts(e.at_ms)).collect();
            let scored = col(&|e| e.scored_tier.clone());
            let client = pool.get().await.map_err(db)?;
            let statement = client.prepare_cached(INSERT).await.map_err(db)?;
            client
                .execute(
                    &statement,
                    &[
                        &tenant,
                        &user,
                        &key,
                        &conversation,
                        &message,
                        &requested,
                        &model,
                        &provider,
                        &input,
                        &output,
                        &cost,
                        &saved,
                        &cache,
                        &leg,
                        &completed,
                        &tier,
                        &reason,
                        &version,
                        &at,
                        &scored,
                    ],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
    }

    fn report(&self, query: ReportQuery) -> LedgerFuture<Report> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let key = group_expr(query.group_by);
            let sql = format!(
                "SELECT {key} AS key, COALESCE(SUM(cost_micros), 0)::int8, \
                 COALESCE(SUM(saved_micros), 0)::int8, COALESCE(SUM(input_tokens), 0)::int8, \
                 COALESCE(SUM(output_tokens), 0)::int8, COUNT(*) FILTER (WHERE leg = 0), \
                 COUNT(*) FILTER (WHERE leg = 0 AND cache <> 'miss') \
                 FROM usage_ledger WHERE ($1::text IS NULL OR tenant_id = $1) \
                 AND created_at >= to_timestamp($2) AND created_at < to_timestamp($3) \
                 GROUP BY 1 ORDER BY 1"
            );
            let client = pool.get().await.map_err(db)?;
            let statement = client.prepare_cached(&sql).await.map_err(db)?;
            let rows = client
                .query(
                    &statement,
                    &[&query.tenant_id, &ms_to_ts(query.from_ms), &ms_to_ts(query.to_ms)],
                )
                .await
                .map_err(db)?;
            let groups = rows
                .iter()
                .map(|r| ReportRow {
                    key: r.get(0),
                    cost_micros: to_u64(r.get(1)),
                    saved_micros: to_u64(r.get(2)),
                    input_tokens: to_u64(r.get(3)),
                    output_tokens: to_u64(r.get(4)),
                    turns: to_u64(r.get(5)),
                    cache_hits: to_u64(r.get(6)),
                })
                .collect();
            Ok(Report::new(query, groups))
        })
    }

    fn entries(
        &self,
        tenant_id: &str,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> LedgerFuture<Vec<LedgerEntry>> {
        let pool = self.pool.clone();
        let tenant_id = tenant_id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(db)?;
            let statement = client
                .prepare_cached(
                    "SELECT * FROM (SELECT tenant_id, user_id, api_key_id, conversation_id, message_id,
                     COALESCE(requested_model, model), model, provider, input_tokens, output_tokens,
                     cost_micros, saved_micros, cache, leg, completed, route_tier, route_reason,
                     price_version, (extract(epoch FROM created_at) * 1000)::int8 AS at_ms, scored_tier, id
                     FROM usage_ledger WHERE tenant_id = $1 AND created_at >= to_timestamp($2)
                     AND created_at < to_timestamp($3) ORDER BY id DESC LIMIT $4) t ORDER BY id",
                )
                .await
                .map_err(db)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = client
                .query(&statement, &[&tenant_id, &ms_to_ts(from_ms), &ms_to_ts(to_ms), &limit])
                .await
                .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| LedgerEntry {
                    tenant_id: r.get(0),
                    user_id: r.get(1),
                    api_key_id: r.get(2),
                    conversation_id: r.get(3),
                    message_id: r.get(4),
                    requested_model: r.get(5),
                    model: r.get(6),
                    provider: r.get(7),
                    input_tokens: to_u64(r.get(8)),
                    output_tokens: to_u64(r.get(9)),
                    cost_micros: to_u64(r.get(10)),
                    saved_micros: to_u64(r.get(11)),
                    cache: cache_from(r.get(12)),
                    leg: u16::try_from(r.get::<_, i16>(13)).unwrap_or(0),
                    completed: r.get(14),
                    route_tier: r.get(15),
                    route_reason: r.get(16),
                    price_version: r.get::<_, Option<i64>>(17).map(to_u64),
                    at_ms: to_u64(r.get(18)),
                    scored_tier: r.get(19),
                })
                .collect())
        })
    }

    fn spend_since(
        &self,
        tenant_id: &str,
        user_id: Option<&str>,
        from_ms: u64,
    ) -> LedgerFuture<u64> {
        let pool = self.pool.clone();
        let tenant_id = tenant_id.to_owned();
        let user_id = user_id.map(str::to_owned);
        Box::pin(async move {
            let client = pool.get().await.map_err(db)?;
            let statement = client
                .prepare_cached(
                    "SELECT COALESCE(SUM(cost_micros), 0)::int8 FROM usage_ledger
                     WHERE tenant_id = $1 AND ($2::text IS NULL OR user_id = $2)
                     AND created_at >= to_timestamp($3)",
                )
                .await
                .map_err(db)?;
            let row = client
                .query_one(&statement, &[&tenant_id, &user_id, &ms_to_ts(from_ms)])
                .await
                .map_err(db)?;
            Ok(to_u64(row.get(0)))
        })
    }
}

/// Shared handle.
pub type SharedLedger = Arc<dyn Ledger>;
