//! Where an upgraded connection leaves actix-http and becomes a session's own [`Socket`].
//!
//! actix-http hands every `Upgrade: websocket` request, with the connection, to this service
//! instead of the app. The request still goes through the app — the same middleware, route and
//! handler as any other, so limits, telemetry and authentication apply unchanged — and only
//! what happens after the response differs:
//! - the WebSocket route answers a good handshake with a 101 that carries a
//!   [`PendingSession`]: the 101 is written, and the session runs on the bare TCP stream;
//! - any other answer (a refused handshake, a wrong path) is written like a normal response,
//!   and the connection is closed.
//!
//! Why take the connection over: see [`super::socket`].

use std::future::poll_fn;
use std::rc::Rc;
use std::time::Duration;

use actix_codec::{Encoder, Framed};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::{ConnectionType, HttpMessage, Request, Response, StatusCode, h1};
use actix_rt::net::TcpStream;
use actix_service::boxed::{self, BoxServiceFactory};
use actix_service::{Service, ServiceFactory, fn_factory, fn_service};
use actix_web::dev::{AppConfig, ServiceResponse};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::session::{self, SessionStart};
use super::socket::Socket;

/// Put in a handshake response's extensions: the session to run once the 101 is written.
pub struct PendingSession(pub Box<SessionStart>);

/// Put in the request's extensions by this service: the connection can be taken over. A
/// request actix-http did not hand over (a chunked body, an `Upgrade` header it does not read
/// as `websocket`) has none, and the route refuses it instead of answering a 101 that no
/// session would follow.
pub struct TakeOver;

/// The connection an upgrade service receives.
pub type Upgraded = (Request, Framed<TcpStream, h1::Codec>);

/// The upgrade service for one worker. `app` is an instance of the engine's app of its own,
/// which handshakes go through.
pub fn service<F, B>(
    app: F,
    write_timeout: Duration,
) -> BoxServiceFactory<(), Upgraded, (), actix_web::Error, ()>
where
    F: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    F::Future: 'static,
    F::Service: 'static,
    B: MessageBody + 'static,
{
    // Boxed: actix-http keeps the service's future inside every connection's dispatcher,
    // upgraded or not, so it is a pointer there.
    boxed::factory(fn_factory(move || {
        let app = app.new_service(AppConfig::default());
        async move {
            let app = Rc::new(app.await?);
            Ok::<_, ()>(fn_service(move |(req, framed): Upgraded| {
                take_over(app.clone(), req, framed, write_timeout)
            }))
        }
    }))
}

async fn take_over<S, B>(
    app: Rc<S>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    write_timeout: Duration,
) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    req.extensions_mut().insert(TakeOver);
    let mut response: Response<BoxBody> = match app.call(req).await {
        Ok(response) => response.map_into_boxed_body().into(),
        Err(error) => error.into(),
    };
    let pending = response.extensions_mut().remove::<PendingSession>();
    let parts = framed.into_parts();
    let (io, mut codec, leftover) = (parts.io, parts.codec, parts.read_buf);
    // actix-http's 8 KiB write buffer: the session writes without it.
    drop(parts.write_buf);
    let (head, body) = response.into_parts();
    match pending {
        Some(PendingSession(start)) if head.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let mut handshake = BytesMut::new();
            codec.encode(h1::Message::Item((head, BodySize::None)), &mut handshake)?;
            // Not kept across the session below.
            drop(codec);
            let hard_cap = start.limits.ws_max_frame_bytes.saturating_mul(super::HARD_FRAME_FACTOR);
            let session_timeout = Duration::from_millis(start.limits.ws_write_timeout_ms);
            let mut socket = Socket::new(io, leftover, hard_cap, session_timeout);
            if socket.write(handshake).await.is_err() {
                // Gone before the handshake completed: the session never starts.
                return Ok(());
            }
            Box::pin(session::run(socket, start)).await;
            // The response body lives as long as the socket, as a streamed body would: a
            // middleware may hang what the connection holds on it (a proxied client's
            // connection slot, for one).
            drop(body);
        }
        _ => answer(io, codec, head, body, write_timeout).await,
    }
    Ok(())
}

/// Writes a response that is not a session's 101, then closes the connection.
async fn answer(
    mut io: TcpStream,
    mut codec: h1::Codec,
    mut head: Response<()>,
    body: BoxBody,
    write_timeout: Duration,
) {
    head.head_mut().set_connection_type(ConnectionType::Close);
    let mut out = BytesMut::new();
    if codec.encode(h1::Message::Item((head, body.size())), &mut out).is_err() {
        return;
    }
    let mut body = std::pin::pin!(body);
    loop {
        let chunk = poll_fn(|cx| body.as_mut().poll_next(cx)).await;
        let last = match chunk {
            Some(Ok(bytes)) => codec.encode(h1::Message::Chunk(Some(bytes)), &mut out).is_err(),
            // A body that fails mid-way: the client sees the connection close early.
            Some(Err(_)) => return,
            None => {
                let _ = codec.encode(h1::Message::Chunk(None), &mut out);
                true
            }
        };
        match tokio::time::timeout(write_timeout, io.write_all(&out)).await {
            Ok(Ok(())) => out.clear(),
            _ => return,
        }
        if last {
            break;
        }
    }
    let _ = tokio::time::timeout(write_timeout, io.shutdown()).await;
}
