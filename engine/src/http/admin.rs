//! Admin: live actor inspection and fault injection for drills.
//!
//! `GET /admin/actors` serves the Registry snapshot (every live actor with kind, id, parent,
//! state, mailbox depth, in-flight work, restarts, last error and circuit state);
//! `GET /admin/actors/{id}` one of them; `POST /admin/providers/{model}/fail` makes a provider
//! actor fail as if it had panicked, and `/restart` restarts it.
//!
//! Every route needs `admin:actors`, a platform permission (superadmin, or an API key a
//! superadmin scoped with it): the registry shows every tenant's actors.

use actix_web::{HttpResponse, get, post, web};
use serde_json::json;

use crate::auth::{Authorized, perm};
use crate::error::ApiError;
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(list_actors).service(get_actor).service(fail_provider).service(restart_provider);
}

#[get("/admin/actors")]
async fn list_actors(
    state: web::Data<AppState>,
    _who: Authorized<perm::AdminActors>,
) -> HttpResponse {
    let actors = state.registry.snapshot();
    HttpResponse::Ok().json(json!({
        "count": actors.len(),
        "websocket_sessions": state.websocket_sessions(),
        "actors": actors,
    }))
}

#[get("/admin/actors/{id}")]
async fn get_actor(
    state: web::Data<AppState>,
    _who: Authorized<perm::AdminActors>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let entry = state.registry.get(&id).ok_or_else(|| ApiError::not_found("no such actor"))?;
    Ok(HttpResponse::Ok().json(entry.snapshot()))
}

#[post("/admin/providers/{model}/fail")]
async fn fail_provider(
    state: web::Data<AppState>,
    _who: Authorized<perm::AdminActors>,
    model: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.tree.fail_provider(&model).await.map_err(|_| ApiError::not_found("no such provider"))?;
    Ok(HttpResponse::Accepted().json(json!({ "provider": *model, "action": "fail" })))
}

#[post("/admin/providers/{model}/restart")]
async fn restart_provider(
    state: web::Data<AppState>,
    _who: Authorized<perm::AdminActors>,
    model: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .tree
        .restart_provider(&model)
        .await
        .map_err(|_| ApiError::not_found("no such provider"))?;
    Ok(HttpResponse::Accepted().json(json!({ "provider": *model, "action": "restart" })))
}
