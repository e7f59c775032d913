//! Cost reports from the ledger: totals per group (JSON or CSV), the monthly chargeback, and
//! savings recommendations.

use std::fmt::Write as _;

use serde::Serialize;

use super::ledger::{LedgerEntry, ReportQuery};
use crate::routing::complexity::Tier;

/// What a report groups by (`?group_by=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Model,
    User,
    Day,
    /// Across tenants: superadmin only.
    Tenant,
    /// The routing tier the scorer chose (empty for turns that named their model).
    Tier,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "model" => GroupBy::Model,
            "user" => GroupBy::User,
            "day" => GroupBy::Day,
            "tenant" => GroupBy::Tenant,
            "tier" => GroupBy::Tier,
            _ => return None,
        })
    }

    /// The group a row falls in (the memory ledger's version of the SQL `GROUP BY`).
    pub fn key_of(self, e: &LedgerEntry) -> String {
        match self {
            GroupBy::Model => e.model.clone(),
            GroupBy::User => e.user_id.clone().unwrap_or_default(),
            GroupBy::Day => day_of(e.at_ms),
            GroupBy::Tenant => e.tenant_id.clone(),
            GroupBy::Tier => e.route_tier.clone().unwrap_or_default(),
        }
    }
}

/// `YYYY-MM-DD` (UTC) of a time in ms since the epoch.
pub fn day_of(ms: u64) -> String {
    let (y, m, d) = civil_from_days((ms / 86_400_000) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month) → days since 1970-01-01 of its first day.
pub fn days_from_civil(y: i64, m: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A calendar month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    pub year: i64,
    pub month: u32,
}

impl Month {
    pub fn of(ms: u64) -> Month {
        let (year, month, _) = civil_from_days((ms / 86_400_000) as i64);
        Month { year, month }
    }

    /// `2026-11`.
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        let (year, month) = (y.parse().ok()?, m.parse().ok()?);
        ((1970..=9999).contains(&year) && (1..=12).contains(&month))
            .then_some(Month { year, month })
    }

    pub fn start_ms(self) -> u64 {
        (days_from_civil(self.year, self.month) * 86_400_000) as u64
    }

    pub fn end_ms(self) -> u64 {
        let next = if self.month == 12 {
            Month { year: self.year + 1, month: 1 }
        } else {
            Month { year: self.year, month: self.month + 1 }
        };
        next.start_ms()
    }

    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }
}

/// Totals of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    pub key: String,
    pub cost_micros: u64,
    pub saved_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Turns (first legs); failover legs add cost, not turns.
    pub turns: u64,
    pub cache_hits: u64,
}

impl ReportRow {
    pub fn named(key: String) -> ReportRow {
        ReportRow { key, ..ReportRow::default() }
    }

    pub fn add(&mut self, e: &LedgerEntry) {
        self.cost_micros += e.cost_micros;
        self.saved_micros += e.saved_micros;
        self.input_tokens += e.input_tokens;
        self.output_tokens += e.output_tokens;
        if e.leg == 0 {
            self.turns += 1;
            if e.cache != actors::events::CacheStatus::Miss {
                self.cache_hits += 1;
            }
        }
    }
}

/// `GET /api/v1/costs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub tenant_id: Option<String>,
    pub from_ms: u64,
    pub to_ms: u64,
    pub group_by: GroupBy,
    pub currency: &'static str,
    pub total_cost_micros: u64,
    pub total_saved_micros: u64,
    pub turns: u64,
    pub groups: Vec<ReportRow>,
}

impl Report {
    pub fn new(query: ReportQuery, groups: Vec<ReportRow>) -> Report {
        Report {
            total_cost_micros: groups.iter().map(|g| g.cost_micros).sum(),
            total_saved_micros: groups.iter().map(|g| g.saved_micros).sum(),
            turns: groups.iter().map(|g| g.turns).sum(),
            tenant_id: query.tenant_id,
            from_ms: query.from_ms,
            to_ms: query.to_ms,
            group_by: query.group_by,
            currency: "USD",
            groups,
        }
    }

    /// The groups as CSV (RFC 4180), with a header row and a total row.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "group,cost_micros,cost_usd,saved_micros,input_tokens,output_tokens,turns,cache_hits\n",
        );
        let mut line = |key: &str, r: &ReportRow| {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                csv_field(key),
                r.cost_micros,
                usd(r.cost_micros),
                r.saved_micros,
                r.input_tokens,
                r.output_tokens,
                r.turns,
                r.cache_hits
            );
        };
        let mut total = ReportRow::named("total".into());
        for g in &self.groups {
            line(&g.key, g);
            total.cost_micros += g.cost_micros;
            total.saved_micros += g.saved_micros;
            total.input_tokens += g.input_tokens;
            total.output_tokens += g.output_tokens;
            total.turns += g.turns;
            total.cache_hits += g.cache_hits;
        }
        line("total", &total);
        out
    }
}

/// Micro-dollars as a dollar figure with six decimals (exact: integer arithmetic).
pub fn usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// Quotes a CSV field when needed, and defuses spreadsheet formulas (a cell starting with
/// `=`, `+`, `-`, `@` is prefixed with `'`), since ids and names come from users.
pub fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

/// The monthly chargeback: one row per (tenant, user) from each tenant's by-user report,
/// then a total row per tenant.
pub fn chargeback_csv(month: Month, tenants: &[(String, String, Report)]) -> String {
    let mut out = String::from(
        "month,tenant_id,tenant_name,user_id,turns,input_tokens,output_tokens,cost_micros,cost_usd,saved_micros\n",
    );
    for (tenant_id, name, report) in tenants {
        let mut total = ReportRow::named("(total)".into());
        for r in &report.groups {
            total.cost_micros += r.cost_micros;
            total.saved_micros += r.saved_micros;
            total.input_tokens += r.input_tokens;
            total.output_tokens += r.output_tokens;
            total.turns += r.turns;
        }
        for r in report.groups.iter().chain(std::iter::once(&total)) {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{}",
                month.label(),
                csv_field(tenant_id),
                csv_field(name),
                csv_field(&r.key),
                r.turns,
                r.input_tokens,
                r.output_tokens,
                r.cost_micros,
                usd(r.cost_micros),
                r.saved_micros
            );
        }
    }
    out
}

/// One savings recommendation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub kind: &'static str,
    pub message: String,
    /// What following it would have saved over the period, in micro-dollars.
    pub potential_savings_micros: u64,
}

/// What the ledger says about spending less, over the rows given.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendations {
    pub turns_analysed: u64,
    pub premium_turns: u64,
    /// Premium-tier turns the scorer rates as needing less.
    pub premium_turns_rated_simpler: u64,
    pub routing_savings_micros: u64,
    pub cache_savings_micros: u64,
    pub recommendations: Vec<Recommendation>,
}

/// A ledger row with the scorer's opinion of its prompt and what the turn would have cost on
/// the cheapest model of that tier. Computed by the caller (it knows prices and tiers).
pub struct Rated<'a> {
    pub entry: &'a LedgerEntry,
    pub model_tier: Option<Tier>,
    /// The tier the scorer gives the turn (`None` when its prompt is not available).
    pub needed_tier: Option<Tier>,
    /// The turn's cost on the cheapest model of `needed_tier`.
    pub cost_if_routed: Option<u64>,
}

pub fn recommend(rated: &[Rated<'_>]) -> Recommendations {
    let mut r = Recommendations {
        turns_analysed: 0,
        premium_turns: 0,
        premium_turns_rated_simpler: 0,
        routing_savings_micros: 0,
        cache_savings_micros: 0,
        recommendations: Vec::new(),
    };
    for x in rated {
        r.cache_savings_micros += x.entry.saved_micros;
        if x.entry.leg != 0 {
            continue;
        }
        r.turns_analysed += 1;
        if x.model_tier == Some(Tier::Premium) {
            r.premium_turns += 1;
            if let (Some(needed), Some(cost)) = (x.needed_tier, x.cost_if_routed)
                && needed < Tier::Premium
            {
                r.premium_turns_rated_simpler += 1;
                r.routing_savings_micros += x.entry.cost_micros.saturating_sub(cost);
            }
        }
    }
    if r.premium_turns_rated_simpler > 0 {
        let share = 100 * r.premium_turns_rated_simpler / r.premium_turns.max(1);
        r.recommendations.push(Recommendation {
            kind: "route_auto",
            message: format!(
                "{share}% of premium-model turns ({} of {}) look simple to the complexity scorer; \
                 sending them with model \"auto\" would have saved ${}",
                r.premium_turns_rated_simpler,
                r.premium_turns,
                usd(r.routing_savings_micros)
            ),
            potential_savings_micros: r.routing_savings_micros,
        });
    }
    if r.cache_savings_micros > 0 {
        r.recommendations.push(Recommendation {
            kind: "cache",
            message: format!(
                "the response cache saved ${} so far in this period",
                usd(r.cache_savings_micros)
            ),
            potential_savings_micros: 0,
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_arithmetic() {
        assert_eq!(day_of(0), "1970-01-01");
        // 2026-11-26T13:00:00Z
        assert_eq!(day_of(1_795_698_000_000), "2026-11-26");
        let nov = Month::parse("2026-11").unwrap();
        assert_eq!(day_of(nov.start_ms()), "2026-11-01");
        assert_eq!(day_of(nov.end_ms()), "2026-12-01");
        let dec = Month::parse("2026-12").unwrap();
        assert_eq!(day_of(dec.end_ms()), "2027-01-01");
        let feb = Month::parse("2028-02").unwrap();
        assert_eq!((feb.end_ms() - feb.start_ms()) / 86_400_000, 29, "leap year");
        assert_eq!(Month::of(nov.start_ms()), nov);
        assert_eq!(Month::of(nov.end_ms() - 1), nov);
        assert!(Month::parse("2026-13").is_none());
        assert!(Month::parse("x").is_none());
    }

    #[test]
    fn usd_is_exact() {
        assert_eq!(usd(0), "0.000000");
        assert_eq!(usd(1), "0.000001");
        assert_eq!(usd(12_345_678), "12.345678");
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+1"), "'+1");
    }
}
