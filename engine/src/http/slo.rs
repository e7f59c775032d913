//! `GET /admin/slo`: the engine's own view of its service level objectives — availability and
//! time-to-first-token SLIs over 5 m, 30 m, 1 h, 6 h and since start, the error budget burn
//! rate of each, and whether a page-level multi-window burn-rate condition holds (the same
//! conditions the Prometheus alert rules in `deploy/prometheus/` evaluate).
//!
//! Computed from the process's own counters ([`crate::telemetry::slo`]), so it answers even
//! when Prometheus is down — but it sees this node only; the fleet-wide truth is Prometheus.
//! Needs `admin:actors` (a platform permission), as the other operator routes do.

use actix_web::{HttpResponse, get, web};

use crate::auth::{Authorized, perm};
use crate::server::AppState;
use crate::telemetry::{metrics, slo};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(slo_report);
}

#[get("/admin/slo")]
async fn slo_report(
    state: web::Data<AppState>,
    _who: Authorized<perm::AdminActors>,
) -> HttpResponse {
    let config = &state.config.telemetry.slo;
    let handle = metrics::install(&state.config.telemetry);
    let now = slo::Counts::from_page(&metrics::render(handle), config.ttft_threshold_seconds);
    HttpResponse::Ok().json(slo::tracker().report(now, config))
}
