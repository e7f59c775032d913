//! The HTTP and WebSocket edges, grouped by resource. Handlers stay thin: parse, authorize,
//! hand to an actor or service, map the result.

pub mod admin;
pub mod api_keys;
pub mod auth;
pub mod body;
pub mod compat;
pub mod connections;
pub mod conversations;
pub mod costs;
pub mod health;
pub mod log_level;
pub mod metrics;
pub mod openapi;
pub mod slo;
pub mod tenants;
pub mod ui;
pub mod ws;

use actix_web::web;

/// Every route of the engine.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(health::routes)
        .configure(crate::cache::http::routes)
        .configure(metrics::routes)
        .configure(slo::routes)
        .configure(log_level::routes)
        .configure(admin::routes)
        .configure(auth::routes)
        .configure(tenants::routes)
        .configure(api_keys::routes)
        .configure(conversations::routes)
        .configure(costs::routes)
        .configure(openapi::routes)
        .configure(ws::routes)
        .configure(compat::routes)
        .configure(ui::routes);
}
