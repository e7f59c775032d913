//! The HTTP middleware every request passes through: one `http.request` span (a child of the
//! caller's trace when it sent `traceparent`), the request counter and duration histogram by
//! route pattern — never the raw path, whose ids would make the label unbounded — and the ids
//! an operator needs to find the request again: `x-request-id` (the caller's, if it sent a
//! sane one) always, `x-trace-id` and `traceparent` when tracing is on.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

use super::metrics::{HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS};
use super::tracing_otel;

/// Wrap the app with `actix_web::middleware::from_fn(engine::telemetry::http::observe)`.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!(
        "http.request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    tracing_otel::adopt_remote_parent(&span, req.headers());
    let trace_id = tracing_otel::trace_id(&span);
    if let Some(id) = &trace_id {
        span.record("trace_id", id.as_str());
    }
    let traceparent = tracing_otel::traceparent(&span);

    let in_flight = metrics::gauge!(HTTP_IN_FLIGHT);
    in_flight.increment(1.0);
    let result = next.call(req).instrument(span.clone()).await;
    in_flight.decrement(1.0);

    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => error.as_response_error().status_code(),
    };
    span.record("http.response.status_code", status.as_u16());
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status.as_str().to_owned())
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route).record(elapsed);

    let mut response = result?;
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-request-id", &request_id);
    if let Some(id) = &trace_id {
        set("x-trace-id", id);
    }
    if let Some(parent) = &traceparent {
        set("traceparent", parent);
    }
    Ok(response)
}

/// A caller's request id is echoed only if it is short and plain (no header injection, no
/// log pollution).
fn is_sane_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
