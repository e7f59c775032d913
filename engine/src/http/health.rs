//! `/healthz` (the process is up) and `/readyz` (it can serve: stores reachable, at least one
//! model endpoint healthy). Load balancers and Kubernetes probes use these. Redis being down
//! does not make a node unready — it serves from its own state — but `/readyz` says
//! `"status": "degraded", "redis": "down"`.

use actix_web::{HttpResponse, get, web};
use actors::registry::{ActorKind, ActorState, CircuitState};
use serde_json::json;

use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(healthz).service(readyz);
}

#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

#[get("/readyz")]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let providers: Vec<_> =
        state.registry.snapshot().into_iter().filter(|a| a.kind == ActorKind::Provider).collect();
    let healthy = providers
        .iter()
        .filter(|p| p.state == ActorState::Running && p.circuit != Some(CircuitState::Open))
        .count();
    let backend = &state.tree.backend;
    let store_reachable = backend.reachable().await;
    let ready = healthy > 0 && store_reachable && !state.shutting_down();
    // Without Redis a node still serves (on its own state): ready, but degraded.
    let redis = match state.tree.conversations.cluster() {
        None => "not_configured",
        Some(cluster) if cluster.redis_up() => "up",
        Some(_) => "down",
    };
    let status = match (ready, redis) {
        (false, _) => "not_ready",
        (true, "down") => "degraded",
        (true, _) => "ready",
    };
    let body = json!({
        "status": status,
        "redis": redis,
        "providers": { "healthy": healthy, "total": providers.len() },
        "store": backend.kind(),
        "store_reachable": store_reachable,
        "shutting_down": state.shutting_down(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
