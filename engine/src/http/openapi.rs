//! The OpenAPI document for the REST API, generated from the handlers' annotations and
//! served at `GET /api/v1/openapi.json`.

use actix_web::{HttpResponse, get, web};
use utoipa::{OpenApi, ToSchema};

/// `{"error": {"code", "message"}}`, the shape of every error response.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: errors are rendered by `ApiError`
pub struct ErrorSchema {
    error: ErrorDetailSchema,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ErrorDetailSchema {
    /// Stable snake_case code, e.g. `not_found`, `unknown_model`, `rate_limited`.
    code: String,
    /// A human-readable explanation.
    message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchyard", description = "Multi-tenant real-time AI chat engine. Real-time chat is over WebSocket at /ws/{conversation_id}; see docs/websocket.md."),
    paths(
        super::conversations::create,
        super::conversations::list,
        super::conversations::read,
        super::conversations::remove,
        super::conversations::post_message,
    ),
    components(schemas(ErrorSchema)),
    tags((name = "conversations", description = "Conversations and their messages"))
)]
pub struct ApiDoc;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(openapi_json);
}

#[get("/api/v1/openapi.json")]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
