//! Tenants and their users: `POST/GET /api/v1/tenants` (superadmin), and
//! `POST/GET /api/v1/tenants/{id}/users` — a superadmin for any tenant, a tenant's owner or
//! admin for their own (`users:manage`; an admin cannot create owners).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Authorized, Role, perm};
use crate::error::ApiError;
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create_tenant).service(list_tenants).service(create_user).service(list_users);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
}

#[post("/api/v1/tenants")]
async fn create_tenant(
    state: web::Data<AppState>,
    _who: Authorized<perm::TenantsManage>,
    body: web::Json<CreateTenant>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state
        .auth
        .create_tenant(&body.name, body.requests_per_minute, body.tokens_per_minute)
        .await?;
    Ok(HttpResponse::Created().json(tenant))
}

#[get("/api/v1/tenants")]
async fn list_tenants(
    state: web::Data<AppState>,
    _who: Authorized<perm::TenantsManage>,
) -> Result<HttpResponse, ApiError> {
    let tenants = state
        .auth
        .accounts
        .list_tenants()
        .await
        .map_err(|_| ApiError::unavailable("the account store is unavailable"))?;
    Ok(HttpResponse::Ok().json(json!({ "items": tenants })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    email: String,
    password: String,
    role: Role,
}

/// Whether the caller may manage users of `tenant_id`; another tenant's id is 404, not 403,
/// so tenant ids cannot be probed.
fn may_manage(who: &Authorized<perm::UsersManage>, tenant_id: &str) -> Result<(), ApiError> {
    if who.auth.is_superadmin() || who.auth.tenant_id == tenant_id {
        Ok(())
    } else {
        Err(ApiError::not_found("no such tenant"))
    }
}

#[post("/api/v1/tenants/{id}/users")]
async fn create_user(
    state: web::Data<AppState>,
    who: Authorized<perm::UsersManage>,
    tenant_id: web::Path<String>,
    body: web::Json<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    may_manage(&who, &tenant_id)?;
    if !who.auth.is_superadmin() && !who.auth.role().may_grant(body.role) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("you cannot grant `{}`", body.role),
        ));
    }
    let user =
        state.auth.create_user(&tenant_id, &body.email, &body.password, body.role, false).await?;
    Ok(HttpResponse::Created().json(json!({
        "id": user.id, "email": user.email, "tenant_id": *tenant_id, "role": body.role,
    })))
}

#[get("/api/v1/tenants/{id}/users")]
async fn list_users(
    state: web::Data<AppState>,
    who: Authorized<perm::UsersManage>,
    tenant_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    may_manage(&who, &tenant_id)?;
    let members = state
        .auth
        .accounts
        .members(&tenant_id)
        .await
        .map_err(|_| ApiError::unavailable("the account store is unavailable"))?;
    let mut items = Vec::with_capacity(members.len());
    for m in members {
        let email =
            state.auth.accounts.get_user(&m.user_id).await.map(|u| u.email).unwrap_or_default();
        items.push(json!({ "id": m.user_id, "email": email, "role": m.role }));
    }
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
