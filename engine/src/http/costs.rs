//! Cost management over HTTP (see `crate::costs` and docs/costs.md):
//!
//! - `GET /api/v1/costs?group_by=model|user|day|tenant|tier&from=&to=` — totals from the
//!   ledger as JSON (`total_cost_micros`, `groups`) or CSV (`Accept: text/csv`). `from`/`to`
//!   are `YYYY-MM-DD` (UTC; `to` inclusive) or ms since the epoch; the default is this month
//!   so far. `group_by=tenant` covers every tenant and needs a superadmin.
//! - `GET /api/v1/costs/chargeback?month=YYYY-MM` — the month's chargeback as CSV, one row per
//!   (tenant, user); a superadmin gets every tenant.
//! - `GET /api/v1/costs/recommendations?from=&to=` — savings recommendations.
//! - `GET /api/v1/costs/spend` — month-to-date spend against budget, per tenant visible to
//!   the caller (the admin console's spend panel).
//! - `GET /api/v1/costs/anomalies` — the tenant's spend anomalies; `GET /admin/anomalies`
//!   every tenant's (superadmin).
//! - `GET|PUT|DELETE /api/v1/tenants/{id}/budget` and `/api/v1/tenants/{id}/users/{user}/budget`
//!   — monthly budgets (`costs:manage` in that tenant, or superadmin).
//! - `GET|PUT|DELETE /api/v1/tenants/{id}/routing` — the tenant's routing policy
//!   (`explicit`, `auto`, `cheapest`) and minimum tier (`costs::policy`);
//! - `GET /api/v1/prices` — the price table; `PUT /admin/prices/{model}` — a new version with
//!   that model's price (`prices:manage`, superadmin).

use actix_web::http::StatusCode;
use actix_web::http::header::{ACCEPT, CONTENT_DISPOSITION, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, delete, get, put, web};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Authorized, Required, perm};
use crate::costs::budgets::{Budget, Scope};
use crate::costs::ledger::{LedgerError, ReportQuery};
use crate::costs::policy::TenantRouting;
use crate::costs::prices::PriceInDollars;
use crate::costs::reports::{self, GroupBy, Month};
use crate::error::ApiError;
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(costs_report)
        .service(chargeback_csv)
        .service(savings)
        .service(spend_overview)
        .service(tenant_anomalies)
        .service(all_anomalies)
        .service(get_budget)
        .service(put_budget)
        .service(delete_budget)
        .service(get_user_budget)
        .service(put_user_budget)
        .service(delete_user_budget)
        .service(price_table)
        .service(set_price)
        .service(get_routing)
        .service(put_routing)
        .service(delete_routing);
}

fn ledger_down(error: LedgerError) -> ApiError {
    tracing::warn!(%error, "cost ledger unavailable");
    ApiError::unavailable("the cost ledger is unavailable; try again shortly")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// A bound as ms since the epoch: `YYYY-MM-DD` (start of that day, or — for an inclusive
/// `to` — of the next) or a plain integer.
fn parse_bound(value: &str, end_of_day: bool) -> Result<u64, ApiError> {
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || {
        ApiError::bad_request(
            "invalid_range",
            "from/to must be a date like 2026-11-01 or milliseconds since the epoch",
        )
    };
    let mut parts = value.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let (y, m, d): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let days = reports::days_from_civil(y, m) + i64::from(d - 1) + i64::from(end_of_day);
    Ok((days * 86_400_000) as u64)
}

fn range(query: &RangeQuery) -> Result<(u64, u64), ApiError> {
    let now = crate::accounts::now_ms();
    let from = match &query.from {
        Some(v) => parse_bound(v, false)?,
        None => Month::of(now).start_ms(),
    };
    let to = match &query.to {
        Some(v) => parse_bound(v, true)?,
        None => now + 1,
    };
    if from >= to {
        return Err(ApiError::bad_request("invalid_range", "from must be before to"));
    }
    Ok((from, to))
}

fn wants_csv(req: &HttpRequest) -> bool {
    req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/csv"))
}

fn csv(body: String, filename: &str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/csv; charset=utf-8"))
        .insert_header((CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")))
        .body(body)
}

#[get("/api/v1/costs")]
async fn costs_report(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsRead>,
    req: HttpRequest,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let group_by = match query.group_by.as_deref() {
        None => GroupBy::Model,
        Some(g) => GroupBy::parse(g).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_group_by",
                "group_by must be model, user, day, tenant or tier",
            )
        })?,
    };
    let tenant_id = if group_by == GroupBy::Tenant {
        if !who.auth.is_superadmin() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "group_by=tenant spans every tenant and needs a platform administrator",
            ));
        }
        None
    } else {
        Some(who.auth.tenant_id.clone())
    };
    let (from_ms, to_ms) = range(&query)?;
    let report = state
        .tree
        .costs
        .ledger()
        .report(ReportQuery { tenant_id, from_ms, to_ms, group_by })
        .await
        .map_err(ledger_down)?;
    if wants_csv(&req) {
        return Ok(csv(report.to_csv(), "costs.csv"));
    }
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MonthQuery {
    month: Option<String>,
}

#[get("/api/v1/costs/chargeback")]
async fn chargeback_csv(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsRead>,
    query: web::Query<MonthQuery>,
) -> Result<HttpResponse, ApiError> {
    let month = match &query.month {
        Some(m) => Month::parse(m).ok_or_else(|| {
            ApiError::bad_request("invalid_month", "month must look like 2026-11")
        })?,
        None => Month::of(crate::accounts::now_ms()),
    };
    let tenants = visible_tenants(&state, &who).await?;
    let mut sections = Vec::with_capacity(tenants.len());
    for (id, name) in tenants {
        let query = ReportQuery {
            tenant_id: Some(id.clone()),
            from_ms: month.start_ms(),
            to_ms: month.end_ms(),
            group_by: GroupBy::User,
        };
        let report = state.tree.costs.ledger().report(query).await.map_err(ledger_down)?;
        sections.push((id, name, report));
    }
    let body = reports::chargeback_csv(month, &sections);
    Ok(csv(body, &format!("chargeback-{}.csv", month.label())))
}

#[get("/api/v1/costs/recommendations")]
async fn savings(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsRead>,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let (from_ms, to_ms) = range(&query)?;
    let r = state
        .tree
        .costs
        .recommendations(&who.auth.tenant_id, from_ms, to_ms)
        .await
        .map_err(ledger_down)?;
    Ok(HttpResponse::Ok().json(r))
}

/// (id, name) of the tenants the caller may see costs of: every tenant for a superadmin,
/// else its own.
async fn visible_tenants<P: Required>(
    state: &AppState,
    who: &Authorized<P>,
) -> Result<Vec<(String, String)>, ApiError> {
    let accounts = &state.auth.accounts;
    let unavailable = |_| ApiError::unavailable("the account store is unavailable");
    if who.auth.is_superadmin() {
        let all = accounts.list_tenants().await.map_err(unavailable)?;
        return Ok(all.into_iter().map(|t| (t.id, t.name)).collect());
    }
    let own = accounts.get_tenant(&who.auth.tenant_id).await.map_err(unavailable)?;
    Ok(vec![(own.id, own.name)])
}

#[get("/api/v1/costs/spend")]
async fn spend_overview(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsRead>,
) -> Result<HttpResponse, ApiError> {
    let tenants = visible_tenants(&state, &who).await?;
    let spend = state.tree.costs.spend_overview(&tenants).await.map_err(ledger_down)?;
    Ok(HttpResponse::Ok().json(json!({ "tenants": spend })))
}

const ANOMALIES_LISTED: usize = 200;

#[get("/api/v1/costs/anomalies")]
async fn tenant_anomalies(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsRead>,
) -> Result<HttpResponse, ApiError> {
    let list = state
        .tree
        .costs
        .anomalies()
        .list(Some(&who.auth.tenant_id), ANOMALIES_LISTED)
        .await
        .map_err(ledger_down)?;
    Ok(HttpResponse::Ok().json(json!({ "anomalies": list })))
}

#[get("/admin/anomalies")]
async fn all_anomalies(
    state: web::Data<AppState>,
    _who: Authorized<perm::AdminActors>,
) -> Result<HttpResponse, ApiError> {
    let list =
        state.tree.costs.anomalies().list(None, ANOMALIES_LISTED).await.map_err(ledger_down)?;
    Ok(HttpResponse::Ok().json(json!({ "anomalies": list })))
}

/// Whether the caller may see or set budgets of `tenant_id`; another tenant's id is 404, so
/// ids cannot be probed.
fn may_budget<P: Required>(who: &Authorized<P>, tenant_id: &str) -> Result<(), ApiError> {
    if who.auth.is_superadmin() || who.auth.tenant_id == tenant_id {
        Ok(())
    } else {
        Err(ApiError::not_found("no such tenant"))
    }
}

async fn budget_response(
    state: &AppState,
    tenant_id: &str,
    scope: Scope,
) -> Result<HttpResponse, ApiError> {
    let costs = &state.tree.costs;
    let budget = costs.budgets().get(tenant_id, &scope).await.map_err(ledger_down)?;
    let spent = costs.month_spend(tenant_id, &scope).await.map_err(ledger_down)?;
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant_id,
        "scope": scope.key(),
        "month": Month::of(crate::accounts::now_ms()).label(),
        "spend_micros": spent,
        "budget": budget,
    })))
}

async fn store_budget(
    state: &AppState,
    tenant_id: &str,
    scope: Scope,
    budget: Option<Budget>,
) -> Result<HttpResponse, ApiError> {
    if let Some(b) = &budget {
        b.validate().map_err(|m| ApiError::bad_request("invalid_budget", m))?;
        if let Some(model) = &b.downgrade_model
            && !state.config.models.iter().any(|m| &m.name == model)
        {
            return Err(ApiError::bad_request(
                "invalid_budget",
                "downgrade_model is not a configured model",
            ));
        }
    }
    state.tree.costs.set_budget(tenant_id, &scope, budget).await.map_err(ledger_down)?;
    tracing::info!(tenant = tenant_id, scope = %scope.key(), "budget changed");
    budget_response(state, tenant_id, scope).await
}

#[get("/api/v1/tenants/{id}/budget")]
async fn get_budget(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsRead>,
    tenant_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    may_budget(&who, &tenant_id)?;
    budget_response(&state, &tenant_id, Scope::Tenant).await
}

#[put("/api/v1/tenants/{id}/budget")]
async fn put_budget(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsManage>,
    tenant_id: web::Path<String>,
    body: web::Json<Budget>,
) -> Result<HttpResponse, ApiError> {
    may_budget(&who, &tenant_id)?;
    store_budget(&state, &tenant_id, Scope::Tenant, Some(body.into_inner())).await
}

#[delete("/api/v1/tenants/{id}/budget")]
async fn delete_budget(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsManage>,
    tenant_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    may_budget(&who, &tenant_id)?;
    store_budget(&state, &tenant_id, Scope::Tenant, None).await
}

#[get("/api/v1/tenants/{id}/users/{user}/budget")]
async fn get_user_budget(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsRead>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, user) = path.into_inner();
    may_budget(&who, &tenant_id)?;
    budget_response(&state, &tenant_id, Scope::User(user)).await
}

#[put("/api/v1/tenants/{id}/users/{user}/budget")]
async fn put_user_budget(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsManage>,
    path: web::Path<(String, String)>,
    body: web::Json<Budget>,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, user) = path.into_inner();
    may_budget(&who, &tenant_id)?;
    store_budget(&state, &tenant_id, Scope::User(user), Some(body.into_inner())).await
}

#[delete("/api/v1/tenants/{id}/users/{user}/budget")]
async fn delete_user_budget(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsManage>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, user) = path.into_inner();
    may_budget(&who, &tenant_id)?;
    store_budget(&state, &tenant_id, Scope::User(user), None).await
}

#[get("/api/v1/prices")]
async fn price_table(
    state: web::Data<AppState>,
    _who: Authorized<perm::ConversationsRead>,
) -> HttpResponse {
    let table = state.tree.costs.prices();
    let tiers: serde_json::Map<String, serde_json::Value> = state
        .config
        .models
        .iter()
        .filter_map(|m| state.tree.costs.tier_of(&m.name).map(|t| (m.name.clone(), json!(t))))
        .collect();
    HttpResponse::Ok().json(json!({
        "version": table.version,
        "created_at_ms": table.created_at_ms,
        "currency": "USD",
        "unit": "micro-dollars per million tokens",
        "models": table.models,
        "tiers": tiers,
    }))
}

#[put("/admin/prices/{model}")]
async fn set_price(
    state: web::Data<AppState>,
    who: Authorized<perm::PricesManage>,
    model: web::Path<String>,
    body: web::Json<PriceInDollars>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.models.iter().any(|m| m.name == *model) {
        return Err(ApiError::not_found("no such model"));
    }
    let price =
        body.into_inner().to_price().map_err(|m| ApiError::bad_request("invalid_price", m))?;
    let table =
        state.tree.costs.set_price(&model, price, &who.auth.user_id).await.map_err(ledger_down)?;
    Ok(HttpResponse::Ok().json(json!({ "version": table.version, "models": table.models })))
}

#[get("/api/v1/tenants/{id}/routing")]
async fn get_routing(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsRead>,
    tenant_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    may_budget(&who, &tenant_id)?;
    Ok(HttpResponse::Ok().json(state.tree.costs.tenant_routing(&tenant_id).await))
}

#[put("/api/v1/tenants/{id}/routing")]
async fn put_routing(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsManage>,
    tenant_id: web::Path<String>,
    body: web::Json<TenantRouting>,
) -> Result<HttpResponse, ApiError> {
    may_budget(&who, &tenant_id)?;
    let routing = body.into_inner();
    state.tree.costs.set_tenant_routing(&tenant_id, Some(routing)).await.map_err(ledger_down)?;
    tracing::info!(tenant = %tenant_id, ?routing, "routing policy changed");
    Ok(HttpResponse::Ok().json(routing))
}

#[delete("/api/v1/tenants/{id}/routing")]
async fn delete_routing(
    state: web::Data<AppState>,
    who: Authorized<perm::CostsManage>,
    tenant_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    may_budget(&who, &tenant_id)?;
    state.tree.costs.set_tenant_routing(&tenant_id, None).await.map_err(ledger_down)?;
    Ok(HttpResponse::Ok().json(TenantRouting::default()))
}
