//! Request bodies at the edge: a deadline for each body, the drain that keeps keep-alive
//! connections usable after an early refusal, and the JSON extractor's errors.
//!
//! - **Deadline.** A body must have arrived whole `limits.request_body_timeout_ms` after its
//!   head; reading it later fails with a timed-out payload error (408 `request_timeout` on
//!   REST), so a client that drips its body cannot hold a connection and a handler forever.
//!   (actix bounds the head itself: `limits.client_request_timeout_ms`.)
//! - **Drain.** When a handler answers without reading the body — bad credentials, a body
//!   declared too large, a refused connection — actix would close the connection, and a
//!   keep-alive client that sends its next request on it sees a reset. So before such an
//!   answer goes out, [`guard`] reads and discards the rest of the body, up to
//!   [`DRAIN_LIMIT`] bytes within [`DRAIN_TIMEOUT`]; past either bound the answer says
//!   `Connection: close` so the client knows not to reuse the connection.
//! - **JSON errors.** [`json_config`]: a body over `limits.max_body_bytes` is 413
//!   `request_too_large`, a timed-out one 408, anything else unparseable 400 `invalid_json`.
//!
//! WebSocket handshakes are left alone: their "body" is the socket.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PayloadError};
use actix_web::http::header::{CONTENT_LENGTH, HeaderMap, TRANSFER_ENCODING, UPGRADE};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::{HttpMessage, HttpRequest};
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::server::AppState;

/// Most bytes of an unread body discarded to keep its connection open.
pub const DRAIN_LIMIT: usize = 64 * 1024;
/// Longest wait for those bytes.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The `web::Json` configuration: `limit` bytes, and the errors described above.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _: &HttpRequest| json_error(err).into())
}

fn json_error(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => too_large(limit),
        JsonPayloadError::Payload(PayloadError::Io(e))
            if e.kind() == std::io::ErrorKind::TimedOut =>
        {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", e.to_string())
        }
        err => ApiError::bad_request("invalid_json", format!("invalid JSON body: {err}")),
    }
}

/// 413 for a body over `limit` bytes.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!("the request body is limited to {limit} bytes"),
    )
}

/// The body length the request declares: `Some(n)` for `Content-Length: n`, `None` when it
/// is chunked (unknown). Requests that declare neither have no body.
fn declared_body(headers: &HeaderMap) -> Option<Option<u64>> {
    if headers.contains_key(TRANSFER_ENCODING) {
        return Some(None);
    }
    let length = headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    (length > 0).then_some(Some(length))
}

/// The request's body, shared between the handler (through [`Tracked`]) and [`guard`].
struct Body {
    payload: Payload,
    /// Bytes handed out so far.
    read: u64,
    finished: bool,
    timed_out: bool,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl Body {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, PayloadError>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if self.timed_out {
            return Poll::Ready(Some(Err(timed_out(self.timeout))));
        }
        match self.payload.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.read += chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.timed_out = true;
                    Poll::Ready(Some(Err(timed_out(self.timeout))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

fn timed_out(timeout: Duration) -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the request body did not arrive within {} ms", timeout.as_millis()),
    ))
}

/// What the handler reads instead of the raw payload.
struct Tracked(Rc<RefCell<Body>>);

impl Stream for Tracked {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.borrow_mut().poll_chunk(cx)
    }
}

/// Wrap the app with `actix_web::middleware::from_fn(engine::http::body::guard)`: puts a
/// deadline on the body and drains what the handler left unread (see the module docs).
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let declared = declared_body(req.headers());
    let (Some(declared), false) = (declared, req.headers().contains_key(UPGRADE)) else {
        return next.call(req).await;
    };
    let timeout = req
        .app_data::<web::Data<AppState>>()
        .map_or(30_000, |state| state.config.limits.request_body_timeout_ms);
    let timeout = Duration::from_millis(timeout);
    let body = Rc::new(RefCell::new(Body {
        payload: req.take_payload(),
        read: 0,
        finished: false,
        timed_out: false,
        deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
        timeout,
    }));
    req.set_payload(Payload::Stream { payload: Box::pin(Tracked(body.clone())) });

    let result = next.call(req).await;
    let reusable = drain(&body, declared).await;
    let mut response = result?;
    if !reusable {
        response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}

/// Reads the rest of the body within the drain bounds; whether it ended (so the connection
/// can carry another request).
async fn drain(body: &Rc<RefCell<Body>>, declared: Option<u64>) -> bool {
    {
        let body = body.borrow();
        if body.finished {
            return true;
        }
        if body.timed_out {
            return false;
        }
        if declared.is_some_and(|length| length.saturating_sub(body.read) > DRAIN_LIMIT as u64) {
            return false;
        }
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut drained = 0usize;
    loop {
        let next = poll_fn(|cx| body.borrow_mut().poll_chunk(cx));
        match tokio::time::timeout_at(deadline, next).await {
            Ok(Some(Ok(chunk))) => {
                drained += chunk.len();
                if drained > DRAIN_LIMIT {
                    return false;
                }
            }
            Ok(None) => return true,
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn bodies_are_declared_by_length_or_chunking() {
        let mut headers = HeaderMap::new();
        assert_eq!(declared_body(&headers), None);
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert_eq!(declared_body(&headers), None);
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(declared_body(&headers), Some(Some(12)));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert_eq!(declared_body(&headers), Some(None));
    }

    #[test]
    fn json_errors_map_to_413_408_and_400() {
        let e = json_error(JsonPayloadError::OverflowKnownLength { length: 10, limit: 5 });
        assert_eq!((e.status(), e.code()), (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"));
        let e = json_error(JsonPayloadError::Overflow { limit: 5 });
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let e = json_error(JsonPayloadError::Payload(timed_out(Duration::from_millis(7))));
        assert_eq!((e.status(), e.code()), (StatusCode::REQUEST_TIMEOUT, "request_timeout"));
        let e = json_error(JsonPayloadError::ContentType);
        assert_eq!((e.status(), e.code()), (StatusCode::BAD_REQUEST, "invalid_json"));
    }
}
