//! `GET /admin/log-level` and `PUT /admin/log-level`: read and change the log filter of the
//! running process without a restart, e.g. `{"filter":"info,engine::providers=debug"}` while
//! chasing an upstream problem, then back to `info`. Per node: a fleet-wide change goes to
//! every pod (or through `[telemetry] log_level` and a rollout). Needs `admin:actors`.

use actix_web::{HttpResponse, get, put, web};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Authorized, perm};
use crate::error::ApiError;
use crate::telemetry::logging::{self, FilterError};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get_level).service(put_level);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelBody {
    /// `tracing` filter directives: `warn`, `info,engine=debug`, …
    filter: String,
}

#[get("/admin/log-level")]
async fn get_level(_who: Authorized<perm::AdminActors>) -> Result<HttpResponse, ApiError> {
    let filter = logging::current_filter().ok_or_else(not_installed)?;
    Ok(HttpResponse::Ok().json(json!({ "filter": filter })))
}

#[put("/admin/log-level")]
async fn put_level(
    _who: Authorized<perm::AdminActors>,
    body: web::Json<LevelBody>,
) -> Result<HttpResponse, ApiError> {
    match logging::set_filter(&body.filter) {
        Ok(()) => Ok(HttpResponse::Ok().json(json!({ "filter": body.filter }))),
        Err(FilterError::Invalid(_)) => Err(ApiError::bad_request(
            "invalid_filter",
            format!(
                "`{}` is not a valid log filter (try `info` or `warn,engine=debug`)",
                body.filter
            ),
        )),
        Err(FilterError::NotInstalled) => Err(not_installed()),
    }
}

fn not_installed() -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::CONFLICT,
        "logging_not_reloadable",
        "this process did not install its own logger",
    )
}
