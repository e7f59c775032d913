//! Provider-compatible APIs: `POST /v1/chat/completions` (OpenAI), `POST /v1/messages`
//! (Anthropic) and `GET /v1/models` (both shapes), so unmodified OpenAI and Anthropic SDKs
//! can point their `base_url` at the engine and get its routing, failover and limits.
//!
//! How the pieces connect:
//!
//! - [`openai`] and [`anthropic`] parse and validate a request in their provider's exact
//!   shape (unsupported parameters are refused, naming the parameter), and render the answer
//!   and errors in that shape, whole or as the provider's SSE stream;
//! - [`turn`] runs the turn through the actor tree and hands both renderers one event
//!   stream ([`turn::Piece`]): statelessly through the router (`TurnRunner`), or — with the
//!   `x-switchyard-conversation` header — through the conversation actor, which appends to
//!   the stored conversation;
//! - this module holds what both share: authentication, request ids, the body limit,
//!   [`CompatError`] (rendered per [`Flavor`]), the response headers that say what the engine
//!   did, and [`record_turn`], the hook where finished turns are recorded.
//!
//! `docs/openai-compatible.md` is the user-facing description.

pub mod anthropic;
pub mod openai;
pub mod turn;

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use actors::events::CacheStatus;
use actors::ports::llm::Usage;
use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::conversations::Principal;
use crate::error::ApiError;
use crate::server::AppState;

/// Names a stored conversation to append to instead of a stateless turn.
pub const CONVERSATION_HEADER: &str = "x-switchyard-conversation";
pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const MODEL_HEADER: &str = "x-switchyard-model";
pub const PROVIDER_HEADER: &str = "x-switchyard-provider";
pub const CACHE_HEADER: &str = "x-switchyard-cache";
pub const FAILOVERS_HEADER: &str = "x-switchyard-failovers";
pub const COST_HEADER: &str = "x-switchyard-cost-micros";
/// Set when the engine chose the model: `complexity; tier=economy; reason=short question`.
pub const ROUTE_HEADER: &str = "x-switchyard-route";

/// Most messages one request may carry (the body limit usually bites first).
pub const MAX_MESSAGES: usize = 1000;
/// Longest stop sequence list (OpenAI documents up to 4; Anthropic allows more).
pub const MAX_STOP_SEQUENCES: usize = 16;
/// Longest `user` / `metadata.user_id` string.
pub const MAX_USER_BYTES: usize = 256;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/chat/completions").route(web::post().to(openai::chat_completions)),
    )
    .service(web::resource("/v1/messages").route(web::post().to(anthropic::messages)))
    .service(web::resource("/v1/models").route(web::get().to(list_models)))
    .service(web::resource("/v1/models/{id}").route(web::get().to(get_model)));
}

/// Which provider's wire shapes a request and its answer use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Anthropic,
}

/// Who is calling: a tenant API key (`sy_…`) or an access token, sent the way each SDK sends
/// its key — `x-api-key` (Anthropic) or `Authorization: Bearer` (OpenAI). A missing, unknown,
/// revoked or expired credential is a 401 in the caller's error shape.
pub async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Principal, CompatError> {
    let header = req
        .headers()
        .get("x-api-key")
        .or_else(|| req.headers().get(actix_web::http::header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty());
    let Some(value) = header else {
        return Err(crate::auth::unauthorized().into());
    };
    let credential = crate::auth::Credential::parse(value);
    let authenticated = state
        .auth
        .authorize(
            &credential,
            crate::auth::Permission::ConversationsWrite,
            None,
            std::time::SystemTime::now(),
        )
        .await?;
    Ok(authenticated.principal())
}

/// The id of one request, used in the response ids (`chatcmpl-…`, `msg_…`) and logs: the
/// caller's `x-request-id` when it sent a short, plain one (the telemetry middleware echoes
/// that same value in the response header), else a fresh one.
pub fn request_id(req: &HttpRequest) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A client-facing failure of a compatible endpoint, rendered in the caller's [`Flavor`]:
/// the provider's own error shape, plus the parameter at fault when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// The request parameter at fault (`messages[2].content[0].type`), OpenAI's `param`.
    pub param: Option<String>,
}

impl CompatError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self { status, code: code.into(), message: message.into(), param: None }
    }

    /// A 400 about one parameter.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: Cow::Borrowed("invalid_request"),
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// A 400 for a parameter the gateway deliberately does not support.
    pub fn unsupported(param: impl Into<String>) -> Self {
        let param = param.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            code: Cow::Borrowed("unsupported_parameter"),
            message: format!("`{param}` is not supported by this gateway"),
            param: Some(param),
        }
    }

    /// A parameter that exists in neither API.
    pub fn unrecognized(param: impl Into<String>) -> Self {
        let param = param.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            code: Cow::Borrowed("unrecognized_parameter"),
            message: format!("Unrecognized request argument supplied: {param}"),
            param: Some(param),
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: Cow::Borrowed("model_not_found"),
            message: format!(
                "The model `{model}` does not exist or you do not have access to it; GET /v1/models lists them"
            ),
            param: Some("model".into()),
        }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Cow::Borrowed(code);
        self
    }

    /// OpenAI: `{"error": {"message", "type", "param", "code"}}`.
    pub fn openai_body(&self) -> Value {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// Anthropic: `{"type": "error", "error": {"type", "message"}, "request_id"}`.
    pub fn anthropic_body(&self, request_id: &str) -> Value {
        json!({
            "type": "error",
            "error": {"type": self.anthropic_type(), "message": self.anthropic_message()},
            "request_id": request_id,
        })
    }

    /// Anthropic's error `type` for this status (its documented taxonomy).
    pub fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// Anthropic has no `param` field; it names the parameter in the message
    /// (`"model: …"`), so do the same.
    fn anthropic_message(&self) -> String {
        match &self.param {
            Some(param) if !self.message.starts_with(param.as_str()) => {
                format!("{param}: {}", self.message)
            }
            _ => self.message.clone(),
        }
    }

    /// The whole error response in the caller's flavour, with `x-request-id`.
    pub fn response(&self, flavor: Flavor, request_id: &str) -> HttpResponse {
        let body = match flavor {
            Flavor::OpenAi => self.openai_body(),
            Flavor::Anthropic => self.anthropic_body(request_id),
        };
        let mut response = HttpResponse::build(self.status);
        response.insert_header((REQUEST_ID_HEADER, request_id.to_owned()));
        if flavor == Flavor::Anthropic {
            response.insert_header(("request-id", request_id.to_owned()));
        }
        response.json(body)
    }
}

impl From<ApiError> for CompatError {
    fn from(e: ApiError) -> Self {
        let param = (e.code() == "unknown_model").then(|| String::from("model"));
        CompatError {
            status: e.status(),
            code: Cow::Borrowed(e.code()),
            message: e.message().to_owned(),
            param,
        }
    }
}

/// Reads the body, refusing it (413) beyond `limits.max_body_bytes` without reading on.
/// `crate::http::body` reports a body declared too large (`Overflow`) before reading it, and
/// one that arrives too slowly (`TimedOut`).
pub async fn read_body(
    mut payload: web::Payload,
    limit: usize,
) -> Result<bytes::Bytes, CompatError> {
    let too_large = || {
        CompatError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the request body is limited to {limit} bytes"),
        )
    };
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => too_large(),
            actix_web::error::PayloadError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                CompatError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", e.to_string())
            }
            e => CompatError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("{e}")),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a JSON object body; anything else is a 400.
pub fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, CompatError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CompatError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object",
        )),
        Err(e) => Err(CompatError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )),
    }
}

/// Whether `model` names a configured model, a route alias or `auto`.
pub fn model_known(state: &AppState, model: &str) -> bool {
    state.config.routes_to(model)
}

/// The provider kind of a configured model (for `x-switchyard-provider`).
pub fn provider_of(state: &AppState, model: &str) -> Option<&'static str> {
    state.config.models.iter().find(|m| m.name == model).map(|m| m.endpoint.provider.as_str())
}

/// The `x-switchyard-conversation` header, if the request names a conversation.
pub fn conversation_id(req: &HttpRequest) -> Result<Option<String>, CompatError> {
    let Some(value) = req.headers().get(CONVERSATION_HEADER) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(id) if !id.trim().is_empty() && id.len() <= 128 => Ok(Some(id.trim().to_owned())),
        _ => Err(CompatError::invalid(
            CONVERSATION_HEADER,
            "x-switchyard-conversation must be a conversation id",
        )),
    }
}

/// Headers sent before a stream starts. The model, provider, failovers, cost and cache
/// status are only known when the turn ends, after the headers have gone.
pub fn stream_headers(response: &mut HttpResponseBuilder, request_id: &str) {
    response
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .insert_header((REQUEST_ID_HEADER, request_id.to_owned()));
}

/// Headers of a whole answer: everything the engine did.
pub fn outcome_headers(
    response: &mut HttpResponseBuilder,
    request_id: &str,
    finish: &turn::Finish,
) {
    response
        .insert_header((REQUEST_ID_HEADER, request_id.to_owned()))
        .insert_header((CACHE_HEADER, cache_label(finish.cache)))
        .insert_header((FAILOVERS_HEADER, finish.failovers.to_string()))
        .insert_header((COST_HEADER, finish.cost_micros.unwrap_or(0).to_string()));
    let route = finish.route.as_ref().map(|r| match &r.tier {
        Some(tier) => format!("{}; tier={tier}; reason={}", r.policy, r.reason),
        None => format!("{}; reason={}", r.policy, r.reason),
    });
    let named = [(MODEL_HEADER, Some(&finish.model)), (PROVIDER_HEADER, Some(&finish.provider))];
    for (name, value) in named.into_iter().chain([(ROUTE_HEADER, route.as_ref())]) {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            response.insert_header((HeaderName::from_static(name), value));
        }
    }
}

/// `x-switchyard-cache`: `miss`, `exact` or `semantic`.
pub fn cache_label(cache: CacheStatus) -> &'static str {
    match cache {
        CacheStatus::Miss => "miss",
        CacheStatus::Exact => "exact",
        CacheStatus::Semantic => "semantic",
    }
}

/// One finished (or failed) compatible-API turn, as recorded.
#[derive(Debug)]
pub struct TurnRecord<'a> {
    pub principal: &'a Principal,
    pub request_id: &'a str,
    pub flavor: Flavor,
    pub requested_model: &'a str,
    pub conversation_id: Option<&'a str>,
    pub outcome: Result<&'a turn::Finish, &'a CompatError>,
}

/// Records a turn served by a compatible endpoint. Today that is a structured log line
/// (the router already counts the turn in flight in the registry, and conversation turns
/// are stored by their actor); the cost ledger (issue 9) plugs in here: it gets the
/// tenant, the model that answered and the usage of a finished turn.
pub fn record_turn(record: &TurnRecord<'_>) {
    let api = match record.flavor {
        Flavor::OpenAi => "openai",
        Flavor::Anthropic => "anthropic",
    };
    match record.outcome {
        Ok(finish) => tracing::info!(
            api,
            tenant = %record.principal.tenant_id,
            request_id = record.request_id,
            requested_model = record.requested_model,
            conversation = record.conversation_id,
            model = %finish.model,
            provider = %finish.provider,
            input_tokens = finish.usage.input_tokens,
            output_tokens = finish.usage.output_tokens,
            failovers = finish.failovers,
            "compatible API turn finished"
        ),
        Err(error) => tracing::info!(
            api,
            tenant = %record.principal.tenant_id,
            request_id = record.request_id,
            requested_model = record.requested_model,
            conversation = record.conversation_id,
            status = error.status.as_u16(),
            code = %error.code,
            "compatible API turn failed"
        ),
    }
}

/// Carries what [`record_turn`] needs to the end of a turn (streams end long after the
/// handler returned).
pub struct Recorder {
    pub flavor: Flavor,
    pub principal: Principal,
    pub request_id: String,
    pub model: String,
    pub conversation: Option<String>,
}

impl Recorder {
    pub fn record(&self, outcome: Result<&turn::Finish, &CompatError>) {
        record_turn(&TurnRecord {
            principal: &self.principal,
            request_id: &self.request_id,
            flavor: self.flavor,
            requested_model: &self.model,
            conversation_id: self.conversation.as_deref(),
            outcome,
        });
    }
}

/// `usage` in OpenAI's shape.
pub fn openai_usage(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    })
}

/// One model the caller may name.
struct ModelEntry<'a> {
    id: &'a str,
    owned_by: &'static str,
}

fn models_for<'a>(state: &'a AppState, principal: &Principal) -> Vec<ModelEntry<'a>> {
    // Every tenant may use every configured model and alias today; per-tenant model lists
    // arrive with tenant administration and filter here.
    let mut out: Vec<ModelEntry<'_>> = state
        .config
        .models
        .iter()
        .map(|m| ModelEntry { id: &m.name, owned_by: m.endpoint.provider.as_str() })
        .collect();
    out.extend(
        state.config.routing.aliases.keys().map(|a| ModelEntry { id: a, owned_by: "switchyard" }),
    );
    // `auto` (complexity-based routing) unless an alias of that name replaces it.
    if state.tree.costs.is_auto(&principal.tenant_id, crate::costs::AUTO_MODEL) {
        out.push(ModelEntry { id: crate::costs::AUTO_MODEL, owned_by: "switchyard" });
    }
    out
}

/// When the engine started, as the models' `created` time.
fn started_at() -> u64 {
    static STARTED: OnceLock<u64> = OnceLock::new();
    *STARTED.get_or_init(unix_now)
}

fn flavor_of(req: &HttpRequest) -> Flavor {
    if req.headers().contains_key("anthropic-version") { Flavor::Anthropic } else { Flavor::OpenAi }
}

fn openai_model(entry: &ModelEntry<'_>, created: u64) -> Value {
    json!({"id": entry.id, "object": "model", "created": created, "owned_by": entry.owned_by})
}

fn anthropic_model(entry: &ModelEntry<'_>, created: u64) -> Value {
    json!({
        "type": "model",
        "id": entry.id,
        "display_name": entry.id,
        "created_at": rfc3339(created),
    })
}

/// `GET /v1/models`: OpenAI's list shape, or Anthropic's when `anthropic-version` is sent.
async fn list_models(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let request_id = request_id(&req);
    let flavor = flavor_of(&req);
    let principal = match authenticate(&req, &state).await {
        Ok(p) => p,
        Err(e) => return e.response(flavor, &request_id),
    };
    let created = started_at();
    let models = models_for(&state, &principal);
    let body = match flavor {
        Flavor::OpenAi => json!({
            "object": "list",
            "data": models.iter().map(|m| openai_model(m, created)).collect::<Vec<_>>(),
        }),
        Flavor::Anthropic => json!({
            "data": models.iter().map(|m| anthropic_model(m, created)).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": models.first().map(|m| m.id),
            "last_id": models.last().map(|m| m.id),
        }),
    };
    HttpResponse::Ok().insert_header((REQUEST_ID_HEADER, request_id)).json(body)
}

/// `GET /v1/models/{id}`: one model, in the caller's shape.
async fn get_model(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> HttpResponse {
    let request_id = request_id(&req);
    let flavor = flavor_of(&req);
    let principal = match authenticate(&req, &state).await {
        Ok(p) => p,
        Err(e) => return e.response(flavor, &request_id),
    };
    let created = started_at();
    let models = models_for(&state, &principal);
    let Some(entry) = models.iter().find(|m| m.id == id.as_str()) else {
        return CompatError::model_not_found(&id).response(flavor, &request_id);
    };
    let body = match flavor {
        Flavor::OpenAi => openai_model(entry, created),
        Flavor::Anthropic => anthropic_model(entry, created),
    };
    HttpResponse::Ok().insert_header((REQUEST_ID_HEADER, request_id)).json(body)
}

/// `2025-01-31T12:00:00Z` from Unix seconds (civil-from-days, proleptic Gregorian).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn errors_render_in_both_shapes() {
        let e = CompatError::unsupported("tools");
        let openai = e.openai_body();
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        assert_eq!(openai["error"]["param"], "tools");
        assert_eq!(openai["error"]["code"], "unsupported_parameter");
        let anthropic = e.anthropic_body("r1");
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "invalid_request_error");
        assert!(anthropic["error"]["message"].as_str().unwrap().starts_with("tools: "));
        assert_eq!(anthropic["request_id"], "r1");
        let missing = CompatError::model_not_found("gpt-9");
        assert_eq!(missing.anthropic_type(), "not_found_error");
    }
}
