//! `/api/v1/api-keys`: create (the key is in the response once, as `key`), list, revoke —
//! always within the caller's tenant (`keys:manage`). Keys authenticate like tokens
//! (`Authorization: Bearer sy_…`), limited to their scopes.

use actix_web::{HttpResponse, delete, get, post, web};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::{AccountError, ApiKey, now_ms};
use crate::auth::{Authorized, Permission, perm};
use crate::error::ApiError;
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create).service(list).service(revoke);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    scopes: Vec<Permission>,
    requests_per_minute: Option<u64>,
}

fn view(key: &ApiKey) -> serde_json::Value {
    json!({
        "id": key.id,
        "name": key.name,
        "scopes": key.scopes,
        "prefix": format!("sy_{}_", key.id),
        "requests_per_minute": key.requests_per_minute,
        "created_at_ms": key.created_at_ms,
        "last_used_at_ms": key.last_used_at_ms,
        "revoked_at_ms": key.revoked_at_ms,
    })
}

#[post("/api/v1/api-keys")]
async fn create(
    state: web::Data<AppState>,
    who: Authorized<perm::KeysManage>,
    body: web::Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let (record, key) = state
        .auth
        .create_api_key(&who.auth, &body.name, body.scopes, body.requests_per_minute)
        .await?;
    let mut out = view(&record);
    out["key"] = json!(key);
    Ok(HttpResponse::Created().insert_header(("cache-control", "no-store")).json(out))
}

#[get("/api/v1/api-keys")]
async fn list(
    state: web::Data<AppState>,
    who: Authorized<perm::KeysManage>,
) -> Result<HttpResponse, ApiError> {
    let keys = state
        .auth
        .accounts
        .list_api_keys(&who.principal.tenant_id)
        .await
        .map_err(|_| ApiError::unavailable("the account store is unavailable"))?;
    Ok(HttpResponse::Ok().json(json!({ "items": keys.iter().map(view).collect::<Vec<_>>() })))
}

#[delete("/api/v1/api-keys/{id}")]
async fn revoke(
    state: web::Data<AppState>,
    who: Authorized<perm::KeysManage>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.auth.accounts.revoke_api_key(&who.principal.tenant_id, &id, now_ms()).await.map_err(
        |e| match e {
            AccountError::NotFound => ApiError::not_found("no such API key"),
            _ => ApiError::unavailable("the account store is unavailable"),
        },
    )?;
    tracing::info!(key_id = %*id, "API key revoked");
    Ok(HttpResponse::NoContent().finish())
}
