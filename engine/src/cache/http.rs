//! `GET /api/v1/cache` (the caller's tenant's cache counters) and `DELETE /api/v1/cache`
//! (purge the caller's tenant's cache — with a database, its rows in PostgreSQL and every
//! node's copy). Both act on the caller's tenant only: there is no way to name another
//! tenant here.
//!
//! Reading the counters needs `conversations:read`; the purge is an administrative act and
//! needs `cache:manage` (a tenant's owner or admin).

use actix_web::{HttpResponse, delete, get, web};
use serde_json::json;

use crate::auth::{Authorized, perm};
use crate::error::ApiError;
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(stats).service(purge);
}

#[get("/api/v1/cache")]
async fn stats(
    state: web::Data<AppState>,
    who: Authorized<perm::ConversationsRead>,
) -> Result<HttpResponse, ApiError> {
    let principal = who.principal;
    let cache = state.tree.cache.as_ref().ok_or_else(|| ApiError::not_found("the cache is off"))?;
    let policy = cache.policy(&principal.tenant_id);
    Ok(HttpResponse::Ok().json(json!({
        "exact": policy.exact,
        "semantic": policy.semantic && cache.semantic_available(),
        "stats": cache.stats(&principal.tenant_id),
    })))
}

#[delete("/api/v1/cache")]
async fn purge(
    state: web::Data<AppState>,
    who: Authorized<perm::CacheManage>,
) -> Result<HttpResponse, ApiError> {
    let principal = who.principal;
    let cache = state.tree.cache.as_ref().ok_or_else(|| ApiError::not_found("the cache is off"))?;
    // With a database the rows go too, and every node drops its copy on its next sync.
    let purged = cache.purge(&principal.tenant_id).await.map_err(|error| {
        tracing::warn!(tenant = %principal.tenant_id, %error, "cache purge failed");
        ApiError::unavailable("the cache could not be purged in the database; retry")
    })?;
    tracing::info!(tenant = %principal.tenant_id, purged, "cache purged");
    Ok(HttpResponse::Ok().json(json!({ "purged": purged })))
}
