//! Spend anomalies: each tenant's spend per interval against its own recent baseline.
//!
//! The baseline is an exponentially weighted mean and variance of the tenant's spend per
//! active interval (EWMA, weight `alpha`; intervals without spend are skipped). When an interval closes, its spend is an anomaly if the
//! baseline has seen `warmup_intervals` intervals, the spend is at least `min_spend_micros`,
//! and it exceeds both `mean + deviations × σ` and `min_ratio × mean` — the band keeps
//! ordinary noise quiet, the ratio and the floor keep tiny or flat baselines from alerting on
//! a few cents. The baseline then learns the interval's spend clipped to the band, so one
//! spike does not teach it that spikes are normal.
//!
//! An anomaly is logged as an alert (`target: switchyard::alerts`), counted in
//! `switchyard_anomaly_events_total{tenant,kind}`, and kept for admins: in PostgreSQL
//! (`cost_anomalies`, one per tenant and interval even with several nodes) when configured,
//! and in a bounded in-memory list on every node.
//!
//! Each node watches the spend it priced itself: behind a balancing load balancer every node
//! sees the same shape of traffic, so a tenant's spike shows on each of them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};

use super::ledger::{LedgerError, db};

/// `[costs.anomaly]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    pub enabled: bool,
    /// Length of one interval.
    pub interval_secs: u64,
    /// EWMA weight of the newest interval.
    pub alpha: f64,
    /// Width of the normal band, in standard deviations.
    pub deviations: f64,
    /// Spend must also be at least this multiple of the baseline mean.
    pub min_ratio: f64,
    /// Intervals below this spend never alert.
    pub min_spend_micros: u64,
    /// Intervals the baseline must see before it may alert.
    pub warmup_intervals: u32,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 300,
            alpha: 0.2,
            deviations: 4.0,
            min_ratio: 3.0,
            min_spend_micros: 100_000,
            warmup_intervals: 6,
        }
    }
}

impl AnomalyConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_secs == 0 {
            return Err("costs.anomaly.interval_secs must be positive".into());
        }
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err("costs.anomaly.alpha must be in (0, 1]".into());
        }
        if !(self.deviations.is_finite() && self.deviations > 0.0 && self.min_ratio.is_finite()) {
            return Err("costs.anomaly.deviations and min_ratio must be positive numbers".into());
        }
        Ok(())
    }
}

/// One detected anomaly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    pub at_ms: u64,
    pub tenant_id: String,
    pub kind: &'static str,
    pub interval_start_ms: u64,
    pub spend_micros: u64,
    pub baseline_micros: u64,
    pub message: String,
}

/// The EWMA baseline of one tenant.
#[derive(Debug, Clone, Default)]
struct Baseline {
    mean: f64,
    var: f64,
    seen: u32,
}

impl Baseline {
    /// Learns `x`; returns the baseline mean if `x` was anomalous.
    fn observe(&mut self, x: f64, c: &AnomalyConfig) -> Option<f64> {
        if self.seen == 0 {
            self.mean = x;
            self.var = (x / 2.0).powi(2);
            self.seen = 1;
            return None;
        }
        let band = self.mean + c.deviations * self.var.sqrt();
        let anomalous = self.seen >= c.warmup_intervals
            && x >= c.min_spend_micros as f64
            && x > band
            && x > c.min_ratio * self.mean;
        let mean = self.mean;
        let learned = if anomalous { band.max(c.min_ratio * mean).min(x) } else { x };
        let delta = learned - self.mean;
        self.mean += c.alpha * delta;
        self.var = (1.0 - c.alpha) * (self.var + c.alpha * delta * delta);
        self.seen = self.seen.saturating_add(1);
        anomalous.then_some(mean)
    }
}

struct TenantState {
    baseline: Baseline,
    /// Index of the open interval (`ms / interval_ms`).
    bucket: u64,
    spend: u64,
}

const KEPT: usize = 1000;

pub struct AnomalyDetector {
    config: AnomalyConfig,
    tenants: Mutex<HashMap<String, TenantState>>,
    recent: Mutex<VecDeque<Anomaly>>,
    pool: Option<Pool>,
}

impl AnomalyDetector {
    pub fn new(config: AnomalyConfig, pool: Option<Pool>) -> AnomalyDetector {
        AnomalyDetector { config, tenants: Mutex::default(), recent: Mutex::default(), pool }
    }

    pub fn config(&self) -> &AnomalyConfig {
        &self.config
    }

    fn interval_ms(&self) -> u64 {
        self.config.interval_secs.saturating_mul(1000).max(1)
    }

    /// Adds spend at `now_ms`, closing the tenant's earlier intervals first.
    pub fn record(&self, tenant_id: &str, micros: u64, now_ms: u64) -> Vec<Anomaly> {
        if !self.config.enabled {
            return Vec::new();
        }
        let bucket = now_ms / self.interval_ms();
        let mut found = Vec::new();
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let state = tenants.entry(tenant_id.to_owned()).or_insert(TenantState {
            baseline: Baseline::default(),
            bucket,
            spend: 0,
        });
        self.close(tenant_id, state, bucket, now_ms, &mut found);
        state.spend = state.spend.saturating_add(micros);
        drop(tenants);
        self.raise(&found);
        found
    }

    /// Closes every interval that has ended by `now_ms`, for every tenant.
    pub fn tick(&self, now_ms: u64) -> Vec<Anomaly> {
        if !self.config.enabled {
            return Vec::new();
        }
        let bucket = now_ms / self.interval_ms();
        let mut found = Vec::new();
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        for (tenant_id, state) in tenants.iter_mut() {
            self.close(tenant_id, state, bucket, now_ms, &mut found);
        }
        drop(tenants);
        self.raise(&found);
        found
    }

    fn close(
        &self,
        tenant_id: &str,
        state: &mut TenantState,
        now_bucket: u64,
        now_ms: u64,
        found: &mut Vec<Anomaly>,
    ) {
        if state.bucket >= now_bucket {
            return;
        }
        let interval = self.interval_ms();
        let spend = std::mem::take(&mut state.spend);
        if spend == 0 {
            // Idle intervals teach nothing: the baseline is the spend of an active interval,
            // so a tenant busy only in office hours does not alert every morning.
            state.bucket = now_bucket;
            return;
        }
        if let Some(mean) = state.baseline.observe(spend as f64, &self.config) {
            found.push(Anomaly {
                at_ms: now_ms,
                tenant_id: tenant_id.to_owned(),
                kind: "spend_spike",
                interval_start_ms: state.bucket * interval,
                spend_micros: spend,
                baseline_micros: mean.round() as u64,
                message: format!(
                    "spent ${} in {} s against a usual ${}",
                    super::reports::usd(spend),
                    self.config.interval_secs,
                    super::reports::usd(mean.round() as u64)
                ),
            });
        }
        state.bucket = now_bucket;
    }

    fn raise(&self, found: &[Anomaly]) {
        for a in found {
            tracing::warn!(
                target: "switchyard::alerts",
                tenant = %a.tenant_id,
                kind = a.kind,
                spend_micros = a.spend_micros,
                baseline_micros = a.baseline_micros,
                "spend anomaly: {}", a.message
            );
            metrics::counter!(
                crate::telemetry::metrics::ANOMALY_EVENTS,
                "tenant" => a.tenant_id.clone(),
                "kind" => a.kind
            )
            .increment(1);
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() == KEPT {
                recent.pop_front();
            }
            recent.push_back(a.clone());
            if let Some(pool) = &self.pool {
                let (pool, a) = (pool.clone(), a.clone());
                tokio::spawn(async move {
                    if let Err(error) = persist(&pool, &a).await {
                        tracing::warn!(%error, "could not store a spend anomaly");
                    }
                });
            }
        }
    }

    /// Anomalies, newest first: one tenant's or (superadmin) all.
    pub async fn list(
        &self,
        tenant_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Anomaly>, LedgerError> {
        if let Some(pool) = &self.pool {
            return load(pool, tenant_id, limit).await;
        }
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(recent
            .iter()
            .rev()
            .filter(|a| tenant_id.is_none_or(|t| t == a.tenant_id))
            .take(limit)
            .cloned()
            .collect())
    }
}

async fn persist(pool: &Pool, a: &Anomaly) -> Result<(), LedgerError> {
    let client = pool.get().await.map_err(db)?;
    client
        .execute(
            "INSERT INTO cost_anomalies (tenant_id, interval_start, kind, spend_micros,
             baseline_micros, message, created_at)
             VALUES ($1, to_timestamp($2), $3, $4, $5, $6, to_timestamp($7))
             ON CONFLICT DO NOTHING",
            &[
                &a.tenant_id,
                &(a.interval_start_ms as f64 / 1000.0),
                &a.kind,
                &i64::try_from(a.spend_micros).unwrap_or(i64::MAX),
                &i64::try_from(a.baseline_micros).unwrap_or(i64::MAX),
                &a.message,
                &(a.at_ms as f64 / 1000.0),
            ],
        )
        .await
        .map_err(db)?;
    Ok(())
}

async fn load(
    pool: &Pool,
    tenant_id: Option<&str>,
    limit: usize,
) -> Result<Vec<Anomaly>, LedgerError> {
    let client = pool.get().await.map_err(db)?;
    let rows = client
        .query(
            "SELECT tenant_id, kind, (extract(epoch FROM interval_start) * 1000)::int8,
             spend_micros, baseline_micros, message, (extract(epoch FROM created_at) * 1000)::int8
             FROM cost_anomalies WHERE ($1::text IS NULL OR tenant_id = $1)
             ORDER BY created_at DESC LIMIT $2",
            &[&tenant_id, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .await
        .map_err(db)?;
    Ok(rows
        .iter()
        .map(|r| Anomaly {
            tenant_id: r.get(0),
            kind: "spend_spike",
            interval_start_ms: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            spend_micros: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            baseline_micros: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
            message: r.get(5),
            at_ms: u64::try_from(r.get::<_, i64>(6)).unwrap_or(0),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the noise test is repeatable.
    struct Noise(u64);

    impl Noise {
        fn next_unit(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn detector() -> AnomalyDetector {
        AnomalyDetector::new(AnomalyConfig { interval_secs: 60, ..AnomalyConfig::default() }, None)
    }

    /// Feeds one interval's spend and closes it; returns what was raised.
    fn feed(d: &AnomalyDetector, tenant: &str, interval: u64, spend: u64) -> Vec<Anomaly> {
        let mut raised = d.record(tenant, spend, interval * 60_000 + 1);
        raised.extend(d.tick((interval + 1) * 60_000));
        raised
    }

    #[test]
    fn normal_noise_raises_nothing() {
        let d = detector();
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        // $1 per interval ± 60 %, for a week of 5-minute intervals' worth of samples.
        for i in 0..2000 {
            let spend = (1_000_000.0 * (0.4 + 1.2 * noise.next_unit())) as u64;
            assert!(feed(&d, "t1", i, spend).is_empty(), "interval {i} ({spend} µ$) alerted");
        }
    }

    #[test]
    fn a_spike_raises_one_anomaly_for_its_tenant_only() {
        let d = detector();
        let mut noise = Noise(42);
        for i in 0..50 {
            let spend = (1_000_000.0 * (0.7 + 0.6 * noise.next_unit())) as u64;
            assert!(feed(&d, "t1", i, spend).is_empty());
            assert!(feed(&d, "t2", i, spend).is_empty());
        }
        let raised = feed(&d, "t1", 50, 12_000_000);
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].tenant_id, "t1");
        assert_eq!(raised[0].spend_micros, 12_000_000);
        assert!((700_000..1_300_000).contains(&raised[0].baseline_micros));
        assert!(feed(&d, "t2", 50, 1_000_000).is_empty());
        // Back to normal: quiet again, and the baseline was not dragged up by the spike.
        assert!(feed(&d, "t1", 51, 1_000_000).is_empty());
        assert_eq!(feed(&d, "t1", 52, 12_000_000).len(), 1, "a second spike still alerts");
    }

    #[test]
    fn nothing_alerts_during_warmup_or_below_the_floor() {
        let d = detector();
        assert!(feed(&d, "t", 0, 1_000).is_empty());
        assert!(feed(&d, "t", 1, 1_000_000).is_empty(), "warm-up");
        let d = detector();
        for i in 0..20 {
            feed(&d, "t", i, 100);
        }
        assert!(feed(&d, "t", 20, 50_000).is_empty(), "500x a tiny baseline, but under the floor");
    }

    #[test]
    fn idle_intervals_do_not_lower_the_baseline() {
        let d = detector();
        for i in 0..20 {
            feed(&d, "t", i, 1_000_000);
        }
        // Ten quiet intervals, then the usual spend: not a spike.
        assert!(feed(&d, "t", 30, 1_000_000).is_empty());
    }
}
