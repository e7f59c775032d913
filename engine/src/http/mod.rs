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

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, web};

use crate::server::AppState;

/// The engine's app: middleware, shared state and every route. Built once per worker, and
/// once more for the handshakes of upgraded connections (`ws::upgrade`).
pub fn app(
    state: web::Data<AppState>,
    max_body_bytes: usize,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .wrap(actix_web::middleware::from_fn(connections::admit))
        .wrap(actix_web::middleware::from_fn(body::guard))
        // Outermost: times, counts and traces everything below, errors included.
        .wrap(actix_web::middleware::from_fn(crate::telemetry::http::observe))
        .app_data(state)
        .app_data(body::json_config(max_body_bytes))
        .app_data(web::PayloadConfig::default().limit(max_body_bytes))
        .configure(routes)
}

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
