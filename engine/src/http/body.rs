//! Request bodies at the edge: a size check and a deadline for each body, the drain that
//! keeps keep-alive connections usable after an early refusal, and the JSON extractor's errors.
//!
//! - **Size.** A body that declares (`Content-Length`) more than `limits.max_body_bytes` is
//!   refused before any of it is read: the handler's first read fails with
//!   `PayloadError::Overflow`, which REST and the compatible APIs answer with 413.
//! - **Deadline.** A body must have arrived whole `limits.request_body_timeout_ms` after its
//!   head; reading it later fails with a timed-out payload error (408 `request_timeout`), so a
//!   client that drips its body cannot hold a connection and a handler forever. (actix bounds
//!   the head itself: `limits.client_request_timeout_ms`.)
//! - **Drain.** When a handler answers without reading the whole body — bad credentials, a
//!   body too large, a refused connection — actix closes the connection, and a keep-alive
//!   client that sends its next request on it sees a reset. So before such an answer goes
//!   out, [`guard`] reads and discards the rest of the body, up to [`DRAIN_LIMIT`] bytes
//!   within [`DRAIN_TIMEOUT`], and the connection stays usable. Past either bound the answer
//!   says `Connection: close`, and after its last byte the engine goes on discarding the body
//!   (up to [`LINGER_LIMIT`] bytes within [`LINGER_TIMEOUT`]) before closing: closing a socket
//!   with unread input makes the kernel send a reset, which can destroy the answer before the
//!   client reads it.
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

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
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
/// Most bytes discarded after the answer to a connection that will close…
pub const LINGER_LIMIT: usize = 4 * 1024 * 1024;
/// … and the longest time spent on it.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// The `web::Json` configuration: `limit` bytes, and the errors described above.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |err, _: &HttpRequest| json_error(err, limit).into())
}

fn json_error(err: JsonPayloadError, limit: usize) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { .. }
        | JsonPayloadError::Overflow { .. }
        | JsonPayloadError::Payload(PayloadError::Overflow) => too_large(limit),
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
    /// Bytes read so far.
    read: u64,
    finished: bool,
    /// Declared over the limit: the handler is told so without reading.
    overflow: bool,
    timed_out: bool,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl Body {
    /// The next chunk as the handler sees it: refused when too large or too late.
    fn poll_for_handler(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, PayloadError>>> {
        if self.overflow {
            return Poll::Ready(Some(Err(PayloadError::Overflow)));
        }
        if self.timed_out {
            return Poll::Ready(Some(Err(timed_out(self.timeout))));
        }
        match self.poll_raw(cx) {
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.timed_out = true;
                    Poll::Ready(Some(Err(timed_out(self.timeout))))
                }
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }

    /// The next chunk of the payload itself, counted.
    fn poll_raw(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, PayloadError>>> {
        if self.finished {
            return Poll::Ready(None);
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
            other => other,
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
        self.0.borrow_mut().poll_for_handler(cx)
    }
}

/// Wrap the app with `actix_web::middleware::from_fn(engine::http::body::guard)`: checks the
/// body's size, puts a deadline on it and drains what the handler left unread (see the module
/// docs).
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static, BoxBody>>, actix_web::Error> {
    let declared = declared_body(req.headers());
    let (Some(declared), false) = (declared, req.headers().contains_key(UPGRADE)) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let (timeout, limit) = match req.app_data::<web::Data<AppState>>() {
        Some(state) => {
            let limits = &state.config.limits;
            (limits.request_body_timeout_ms, limits.max_body_bytes as u64)
        }
        None => (30_000, u64::MAX),
    };
    let timeout = Duration::from_millis(timeout);
    let body = Rc::new(RefCell::new(Body {
        payload: req.take_payload(),
        read: 0,
        finished: false,
        overflow: declared.is_some_and(|length| length > limit),
        timed_out: false,
        deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
        timeout,
    }));
    req.set_payload(Payload::Stream { payload: Box::pin(Tracked(body.clone())) });

    let result = next.call(req).await;
    let reusable = drain(&body, declared).await;
    let mut response = result?;
    if reusable {
        return Ok(response.map_into_left_body());
    }
    response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
    Ok(response
        .map_body(|_, answer| {
            BoxBody::new(Lingering { answer: BoxBody::new(answer), request: body, linger: None })
        })
        .map_into_right_body())
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
        let next = poll_fn(|cx| body.borrow_mut().poll_raw(cx));
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

/// An answer on a connection that will close: once its last byte is out, the unread request
/// body is discarded (within the linger bounds) before the body ends and actix closes.
struct Lingering {
    answer: BoxBody,
    request: Rc<RefCell<Body>>,
    linger: Option<Linger>,
}

struct Linger {
    deadline: Pin<Box<Sleep>>,
    discarded: usize,
}

impl MessageBody for Lingering {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.answer.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let linger = match &mut this.linger {
            Some(linger) => linger,
            None => match Pin::new(&mut this.answer).poll_next(cx) {
                Poll::Ready(None) => this.linger.insert(Linger {
                    deadline: Box::pin(tokio::time::sleep(LINGER_TIMEOUT)),
                    discarded: 0,
                }),
                other => return other,
            },
        };
        let mut request = this.request.borrow_mut();
        loop {
            match request.poll_raw(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    linger.discarded += chunk.len();
                    if linger.discarded > LINGER_LIMIT {
                        return Poll::Ready(None);
                    }
                }
                Poll::Ready(_) => return Poll::Ready(None),
                Poll::Pending => {
                    return match linger.deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn body_of(chunks: Vec<&'static [u8]>) -> Rc<RefCell<Body>> {
        let stream = futures_util::stream::iter(
            chunks.into_iter().map(|c| Ok::<_, PayloadError>(Bytes::from_static(c))),
        );
        Rc::new(RefCell::new(Body {
            payload: Payload::Stream { payload: Box::pin(stream) },
            read: 0,
            finished: false,
            overflow: false,
            timed_out: false,
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(60))),
            timeout: Duration::from_secs(60),
        }))
    }

    #[actix_rt::test]
    async fn a_closing_answer_is_sent_whole_then_the_unread_body_is_discarded() {
        let request = body_of(vec![b"abc", b"defg", b"hi"]);
        let answer = BoxBody::new("refused");
        let lingering = Lingering { answer, request: request.clone(), linger: None };
        let sent = actix_web::body::to_bytes(lingering).await.unwrap();
        assert_eq!(&sent[..], b"refused");
        let request = request.borrow();
        assert!(request.finished, "the request body was read to its end");
        assert_eq!(request.read, 9);
    }

    #[actix_rt::test]
    async fn a_declared_overflow_is_refused_before_reading() {
        let body = body_of(vec![b"abc"]);
        body.borrow_mut().overflow = true;
        let mut tracked = Tracked(body.clone());
        assert!(matches!(tracked.next().await, Some(Err(PayloadError::Overflow))));
        assert_eq!(body.borrow().read, 0);
        // The drain still sees the bytes (small, so the connection stays usable).
        assert!(drain(&body, Some(3)).await);
    }

    #[actix_rt::test]
    async fn only_small_rests_are_drained() {
        let body = body_of(vec![b"abc"]);
        assert!(!drain(&body, Some(DRAIN_LIMIT as u64 + 1)).await, "declared too long to drain");
        let body = body_of(vec![b"abc"]);
        assert!(drain(&body, Some(3)).await);
        assert!(drain(&body, None).await, "an ended body needs nothing");
    }

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
        let e = json_error(JsonPayloadError::OverflowKnownLength { length: 10, limit: 5 }, 5);
        assert_eq!((e.status(), e.code()), (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"));
        assert!(e.message().contains("5 bytes"), "{}", e.message());
        let e = json_error(JsonPayloadError::Overflow { limit: 5 }, 5);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let e = json_error(JsonPayloadError::Payload(PayloadError::Overflow), 5);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let e = json_error(JsonPayloadError::Payload(timed_out(Duration::from_millis(7))), 5);
        assert_eq!((e.status(), e.code()), (StatusCode::REQUEST_TIMEOUT, "request_timeout"));
        let e = json_error(JsonPayloadError::ContentType, 5);
        assert_eq!((e.status(), e.code()), (StatusCode::BAD_REQUEST, "invalid_json"));
    }
}
