//! `GET /metrics`: the Prometheus text exposition of every metric in
//! [`crate::telemetry::metrics::CATALOGUE`], for Prometheus to scrape.
//!
//! Values held by the actor Registry (actor counts, mailbox depths, circuits, restarts) and
//! the open WebSocket sessions are copied in just before rendering, so they cost nothing
//! between scrapes. The page carries no secrets and no per-user data (see the label rules in
//! the telemetry module); a deployment that must hide it anyway keeps `/metrics` off its
//! public ingress — the manifests in `deploy/k8s` do.

use actix_web::{HttpResponse, get, web};

use crate::server::AppState;
use crate::telemetry::metrics;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(scrape);
}

#[get("/metrics")]
async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    let handle = metrics::install(&state.config.telemetry);
    metrics::collect(&state.registry, state.websocket_sessions());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics::render(handle))
}
