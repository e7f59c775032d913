//! Hostile clients against the real engine: slowloris heads and dripped bodies, WebSocket
//! clients that never read, floods of connections from one address, and malformed or
//! oversized input on every edge. Each test asserts a clear error or close, that the engine
//! keeps serving everyone else, and — where memory is the risk — a bounded footprint.
//!
//! Other clients are told apart by their source address: the whole of 127.0.0.0/8 reaches
//! the engine's loopback listener, so a socket bound to 127.0.0.2 is "another machine".

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use loadtest::fake_llm::{FakeLlmServer, Scenario};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::app::{
    Ws, client_with, recv, recv_turn, send, spawn_app, spawn_app_with, spawn_process_node,
    ws_request,
};

/// A TCP connection to `addr` from the loopback address `source`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A WebSocket from `source`, or the handshake's failure.
async fn ws_from(
    source: &str,
    request: tungstenite::handshake::client::Request,
    addr: SocketAddr,
) -> Result<Ws, tungstenite::Error> {
    let stream = MaybeTlsStream::Plain(connect_from(source, addr).await);
    tokio_tungstenite::client_async(request, stream).await.map(|(ws, _)| ws)
}

/// The status of a refused WebSocket handshake.
fn refused_status(result: Result<Ws, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected the handshake to be refused"),
    }
}

/// One response read off a raw HTTP/1.1 connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("a JSON body ({e}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A plain HTTP/1.1 client on one connection, to see exactly what happens to it.
struct Raw {
    read: OwnedReadHalf,
    write: Option<OwnedWriteHalf>,
    buffer: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw::from(TcpStream::connect(addr).await.unwrap())
    }

    fn from(stream: TcpStream) -> Raw {
        let (read, write) = stream.into_split();
        Raw { read, write: Some(write), buffer: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.write.as_mut().expect("the writer").write_all(bytes).await.unwrap();
    }

    /// The writing half, for a task that writes while the test reads.
    fn take_writer(&mut self) -> OwnedWriteHalf {
        self.write.take().expect("the writer")
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), self.read.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .expect("the connection is not reset");
        self.buffer.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next response (head and a `Content-Length` body).
    async fn response(&mut self) -> RawResponse {
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(self.fill().await > 0, "the connection closed before a response");
        };
        let head = String::from_utf8(self.buffer[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        while self.buffer.len() < head_end + length {
            assert!(self.fill().await > 0, "the connection closed mid-body");
        }
        let body = self.buffer[head_end..head_end + length].to_vec();
        self.buffer.drain(..head_end + length);
        RawResponse { status, headers, body }
    }

    /// Whether the engine closes the connection (end of stream or reset) within `within`.
    async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.read.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// An HTTP/1.1 POST with a JSON body, as bytes.
fn post(path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nhost: switchyard\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str) -> &'static [u8] {
    match path {
        "/healthz" => b"GET /healthz HTTP/1.1\r\nhost: switchyard\r\n\r\n",
        _ => unreachable!("only /healthz"),
    }
}

/// The close code the engine ends `ws` with (panics on anything but a close frame).
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a close within 10 s")
            .expect("a close frame before the end of the stream")
            .expect("a close frame, not a transport error");
        if let Message::Close(frame) = message {
            return frame.expect("a close code").code.into();
        }
    }
}

/// A value from `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .map(|kib| kib.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The process's resident set now, in KiB, after restarting its peak (`VmHWM`) from here:
/// the peak is otherwise the whole lifetime's, and start-up can outgrow what is measured
/// after it (loading the embedding model, when `SWITCHYARD_EMBEDDING_MODEL_DIR` is set as in
/// CI, peaks ~50 MiB above where it settles).
fn rss_kib_with_peak_reset(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .expect("the peak RSS of our own child can be reset (Linux 4.0+)");
    proc_status_kib(pid, "VmRSS")
}

#[tokio::test]
async fn slowloris_heads_are_cut_at_the_request_timeout_while_others_are_served() {
    let app = spawn_app_with("", Scenario::default(), "[limits]\nclient_request_timeout_ms = 1000");
    let started = Instant::now();
    // One client drips a request head a byte every 200 ms (it would never finish: the header
    // goes on forever); another opens a connection and says nothing at all.
    let (mut slow_read, mut slow_write) = TcpStream::connect(app.addr).await.unwrap().into_split();
    let mut silent = Raw::connect(app.addr).await;
    let dripper = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nhost: switchyard\r\nx-padding: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if slow_write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // Everyone else is served meanwhile.
    for _ in 0..5 {
        let response = app.anon.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow_read.read_to_end(&mut answer))
        .await
        .expect("the dripping client is cut off");
    let cut_after = started.elapsed();
    // 408 then the close — or, since it was still writing, possibly a reset.
    if read.is_ok() {
        assert!(answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
    }
    assert!(cut_after < Duration::from_secs(5), "cut at the 1 s timeout, not later: {cut_after:?}");
    dripper.abort();
    assert!(silent.closed_within(Duration::from_secs(5)).await, "the silent client is cut too");
    assert_eq!(app.anon.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_dripped_body_is_refused_at_the_body_deadline() {
    let app = spawn_app_with("", Scenario::default(), "[limits]\nrequest_body_timeout_ms = 1000");
    let token = app.owner.access_token.clone();
    for path in ["/api/v1/conversations", "/v1/chat/completions"] {
        let started = Instant::now();
        let mut raw = Raw::connect(app.addr).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: switchyard\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
        );
        raw.send(head.as_bytes()).await;
        let mut write = raw.take_writer();
        let dripper = tokio::spawn(async move {
            while write.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let response = raw.response().await;
        dripper.abort();
        assert_eq!(response.status, 408, "{path}: {response:?}");
        assert_eq!(response.json()["error"]["code"], "request_timeout", "{path}");
        assert!(response.closes(), "{path}: the connection is closed after a timed-out body");
        assert!(started.elapsed() < Duration::from_secs(5), "{path}: refused at the deadline");
    }
    // The engine carries on.
    let id = app.create_conversation(json!({})).await;
    assert!(!id.is_empty());
}

#[tokio::test]
async fn a_refused_request_leaves_the_keep_alive_connection_usable() {
    let app = spawn_app();
    let token = app.owner.access_token.clone();
    let mut raw = Raw::connect(app.addr).await;
    let body = json!({"title": "t".repeat(150)}).to_string();

    // No credentials: refused before the body is read. The body is drained, so the same
    // connection takes the next request instead of being reset.
    raw.send(&post("/api/v1/conversations", None, &body)).await;
    let refused = raw.response().await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"]["code"], "unauthorized");
    assert!(!refused.closes(), "{refused:?}");

    // The body arriving after the refusal was decided is drained too.
    let request = post("/api/v1/conversations", Some("not-a-token"), &body);
    let split = request.len() - body.len();
    raw.send(&request[..split]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    raw.send(&request[split..]).await;
    assert_eq!(raw.response().await.status, 401);

    // The compatible APIs, refused in their own shape.
    let chat = json!({"model": "primary", "messages": [{"role": "user", "content": "hi"}]});
    raw.send(&post("/v1/chat/completions", Some("sk-wrong"), &chat.to_string())).await;
    let refused = raw.response().await;
    assert_eq!(refused.status, 401);
    assert!(!refused.closes());

    // A body just past the limit: 413 after reading up to it, and the small rest is drained.
    let past = json!({"title": "x".repeat(256 * 1024 + 1000)}).to_string();
    let mut request = post("/api/v1/conversations", Some(&token), &past);
    // Declare no length (chunked), so it is refused by counting, not up front.
    request = chunked(&request, &past);
    raw.send(&request).await;
    let too_large = raw.response().await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.json()["error"]["code"], "request_too_large");
    assert!(!too_large.closes(), "{too_large:?}");

    // After all that, the connection serves a good request.
    raw.send(&post("/api/v1/conversations", Some(&token), "{}")).await;
    assert_eq!(raw.response().await.status, 201);

    // A pooled keep-alive client (how SDKs talk) sees answers, never a reset connection.
    let pooled = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    for round in 0..20 {
        let refused =
            pooled.post(app.url("/api/v1/conversations")).json(&json!({})).send().await.unwrap();
        assert_eq!(refused.status(), 401, "round {round}");
        let served = pooled
            .post(app.url("/api/v1/conversations"))
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), 201, "round {round}");
    }
}

/// `request` (head + `body`) re-sent with `transfer-encoding: chunked` instead of a length.
fn chunked(request: &[u8], body: &str) -> Vec<u8> {
    let head = String::from_utf8(request[..request.len() - body.len()].to_vec()).unwrap();
    let head =
        head.lines().filter(|l| !l.starts_with("content-length")).collect::<Vec<_>>().join("\r\n");
    let head = head.trim_end().to_owned() + "\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut out = head.into_bytes();
    for piece in body.as_bytes().chunks(16 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn an_oversized_body_gets_its_413_not_a_reset_and_the_connection_closes() {
    let app = spawn_app();
    let token = app.owner.access_token.clone();
    let big = "x".repeat(1024 * 1024);
    let chat = json!({"model": "primary", "messages": [{"role": "user", "content": big}]});
    let messages = json!({"model": "primary", "max_tokens": 8,
        "messages": [{"role": "user", "content": big}]});
    let cases = [
        ("/api/v1/conversations", json!({"title": big})),
        ("/v1/chat/completions", chat),
        ("/v1/messages", messages),
    ];
    for (path, body) in &cases {
        // Declared too large: refused before it is read, and read (discarded) afterwards, so
        // the client gets the answer before the connection closes.
        let mut raw = Raw::connect(app.addr).await;
        raw.send(&post(path, Some(&token), &body.to_string())).await;
        let response = raw.response().await;
        assert_eq!(response.status, 413, "{path}: {response:?}");
        assert!(response.closes(), "{path}");
        let json = response.json();
        let code = json["error"]["code"].as_str().or(json["error"]["type"].as_str());
        assert_eq!(code, Some("request_too_large"), "{path}: {json}");
        assert!(raw.closed_within(Duration::from_secs(5)).await, "{path}: then it closes");

        // An SDK-like client sending the same gets the 413 too.
        let response = app.http.post(app.url(path)).json(body).send().await.unwrap();
        assert_eq!(response.status(), 413, "{path}");
    }
}

#[tokio::test]
async fn hostile_bodies_get_json_errors_on_rest_and_the_compatible_apis() {
    let app = spawn_app();
    let id = app.create_conversation(json!({})).await;
    let nested = "[".repeat(100_000);
    let huge_string = "s".repeat(200_000);
    let long_prompt = "p".repeat(40 * 1024);
    let openai = |content: &str, extra: Value| {
        let mut body =
            json!({"model": "primary", "messages": [{"role": "user", "content": content}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    let anthropic = |content: &str, max_tokens: Value| {
        json!({"model": "primary", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}]})
        .to_string()
    };
    let messages = format!("/api/v1/conversations/{id}/messages");
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("nested JSON", "/api/v1/conversations", nested.clone(), 400, "invalid_json"),
        ("nested JSON", "/v1/chat/completions", nested.clone(), 400, "invalid_json"),
        ("nested JSON", "/v1/messages", nested.clone(), 400, "invalid_request_error"),
        (
            "huge string",
            "/api/v1/conversations",
            json!({"title": huge_string}).to_string(),
            400,
            "title_too_large",
        ),
        (
            "prompt past the limit",
            &messages,
            json!({"content": long_prompt}).to_string(),
            400,
            "message_too_large",
        ),
        (
            "prompt past the limit",
            "/v1/chat/completions",
            openai(&long_prompt, json!({})),
            400,
            "string_above_max_length",
        ),
        (
            "prompt past the limit",
            "/v1/messages",
            anthropic(&long_prompt, json!(16)),
            400,
            "invalid_request_error",
        ),
        (
            "huge max_tokens",
            "/v1/chat/completions",
            openai("hi", json!({"max_tokens": 1e20})),
            400,
            "invalid_request",
        ),
        (
            "huge max_tokens",
            "/v1/messages",
            anthropic("hi", json!(1u64 << 40)),
            400,
            "invalid_request_error",
        ),
    ];
    for (what, path, body, status, code) in &cases {
        let response = app
            .http
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), *status, "{what} on {path}");
        let json: Value = response.json().await.unwrap();
        let got = json["error"]["code"].as_str().or(json["error"]["type"].as_str());
        assert_eq!(got, Some(*code), "{what} on {path}: {json}");
    }

    // The largest max_tokens the APIs accept sizes nothing: the turn is served as usual.
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .json(
            &serde_json::from_str::<Value>(&openai("hi", json!({"max_tokens": u32::MAX}))).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .http
        .post(app.url(&messages))
        .json(&json!({"content": "still serving?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn hostile_websocket_frames_get_an_error_or_a_close_and_the_engine_keeps_serving() {
    let app = spawn_app();
    let id = app.create_conversation(json!({})).await;
    let mut ws = app.ws_connect(&id).await;

    ws.send(Message::Binary(vec![0u8, 1, 2, 3].into())).await.unwrap();
    assert_eq!(recv(&mut ws).await["code"], "invalid_frame", "binary frame");
    ws.send(Message::Text("[".repeat(60_000).into())).await.unwrap();
    assert_eq!(recv(&mut ws).await["code"], "invalid_frame", "deeply nested JSON");
    send(&mut ws, json!({"type": "user_message", "content": "x".repeat(60_000)})).await;
    assert_eq!(recv(&mut ws).await["code"], "message_too_large", "a huge string");
    send(&mut ws, json!({"type": "user_message", "content": "x".repeat(100 * 1024)})).await;
    assert_eq!(recv(&mut ws).await["code"], "frame_too_large");
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong", "the socket carries on");

    // Past four times the frame limit the frame is not read to the end: the socket closes.
    let _ = ws.send(Message::Text("y".repeat(300 * 1024).into())).await;
    assert_eq!(close_code(&mut ws).await, 1009, "message too big");

    // Text that is not UTF-8: the socket closes with 1007 (invalid payload data).
    let mut ws = app.ws_connect(&id).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1007, "invalid UTF-8");

    // Everyone else — and a new socket of the same client — is served.
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "user_message", "content": "Still there?"})).await;
    let frames = recv_turn(&mut ws).await;
    assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
}

/// A WebSocket handshake request as a client writes it, with the token in the subprotocol.
fn upgrade_request(path: &str, token: Option<&str>) -> Vec<u8> {
    let protocol = token.map(|t| format!("sec-websocket-protocol: switchyard.v1, bearer.{t}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nhost: switchyard\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{}\r\n",
        protocol.unwrap_or_default()
    )
    .into_bytes()
}

/// A masked text frame, as a client must send it.
fn masked_text(text: &str) -> Vec<u8> {
    use actix_codec::Encoder;
    let mut frame = bytes::BytesMut::new();
    let message = actix_http::ws::Message::Text(text.to_owned().into());
    actix_http::ws::Codec::new().client_mode().encode(message, &mut frame).unwrap();
    frame.to_vec()
}

#[tokio::test]
async fn upgrades_go_through_the_app_and_a_frame_sent_with_the_handshake_is_read() {
    let app = spawn_app();
    let id = app.create_conversation(json!({})).await;

    // An upgrade to a route that is not a WebSocket is answered as the route answers, then
    // the connection is closed.
    let mut raw = Raw::connect(app.addr).await;
    raw.send(&upgrade_request("/healthz", None)).await;
    let response = raw.response().await;
    assert_eq!(response.status, 200);
    assert!(response.closes(), "{:?}", response.headers);
    assert!(raw.closed_within(Duration::from_secs(5)).await);

    // A handshake with a bad token gets the JSON error, and the close.
    let mut raw = Raw::connect(app.addr).await;
    raw.send(&upgrade_request(&format!("/ws/{id}"), Some("not-a-token"))).await;
    let response = raw.response().await;
    assert_eq!(response.status, 401);
    assert!(response.json()["error"]["code"].is_string());
    assert!(raw.closed_within(Duration::from_secs(5)).await);

    // A handshake actix-http does not hand over (here: it has a chunked body) is refused,
    // not answered with a 101 that no session would follow.
    let mut raw = Raw::connect(app.addr).await;
    let request = upgrade_request(&format!("/ws/{id}"), Some(&app.owner.access_token));
    raw.send(&chunked(&request, "")).await;
    let response = raw.response().await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["code"], "not_websocket");

    // A client that writes its first frame together with the handshake is answered: the
    // bytes read past the handshake reach the session.
    let mut raw = Raw::connect(app.addr).await;
    let mut bytes = upgrade_request(&format!("/ws/{id}"), Some(&app.owner.access_token));
    bytes.extend(masked_text(r#"{"type":"ping"}"#));
    raw.send(&bytes).await;
    let response = raw.response().await;
    assert_eq!(response.status, 101);
    assert_eq!(response.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert_eq!(response.header("sec-websocket-protocol"), Some("switchyard.v1"));
    while raw.buffer.len() < 2 || raw.buffer.len() < 2 + usize::from(raw.buffer[1]) {
        assert!(raw.fill().await > 0, "the connection closed before the pong");
    }
    assert_eq!(raw.buffer[0], 0x81, "an unmasked, final text frame");
    let pong: Value =
        serde_json::from_slice(&raw.buffer[2..2 + usize::from(raw.buffer[1])]).unwrap();
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn a_connection_flood_from_one_address_is_capped_and_others_are_served() {
    let app = spawn_app_with("", Scenario::default(), "[limits]\nmax_connections_per_ip = 8");
    let id = app.create_conversation(json!({})).await;
    let flooder = "127.0.0.2";

    // The flooder's first eight connections are admitted (held here as WebSockets)…
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(ws_from(flooder, app.ws_request(&id), app.addr).await.expect("admitted"));
    }
    // … the ninth gets 429 with the JSON error, and is closed.
    let mut raw = Raw::from(connect_from(flooder, app.addr).await);
    raw.send(get("/healthz")).await;
    let refused = raw.response().await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["code"], "too_many_connections");
    assert!(refused.closes());
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    // A WebSocket handshake is refused the same way, before the upgrade.
    assert_eq!(refused_status(ws_from(flooder, app.ws_request(&id), app.addr).await), 429);

    // Everyone else is served meanwhile: HTTP, and a chat over WebSocket.
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    let mut ws = app.ws_connect(&id).await;
    send(&mut ws, json!({"type": "user_message", "content": "Hello during a flood"})).await;
    assert_eq!(recv_turn(&mut ws).await.last().unwrap()["type"], "done");

    // Refused connections are bounded too: past twice the cap they are shut as they are
    // accepted, before sending a byte.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut waiting = Vec::new();
    for _ in 0..8 {
        waiting.push(Raw::from(connect_from(flooder, app.addr).await));
    }
    let mut turned_away = Raw::from(connect_from(flooder, app.addr).await);
    assert!(turned_away.closed_within(Duration::from_secs(2)).await, "turned away at accept");
    waiting[0].send(get("/healthz")).await;
    assert_eq!(waiting[0].response().await.status, 429, "a waiting one is answered 429");

    // When the flooder lets go, its address is admitted again.
    drop(held);
    drop(waiting);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut raw = Raw::from(connect_from(flooder, app.addr).await);
        raw.send(get("/healthz")).await;
        let status = raw.response().await.status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "the address is admitted again once its sockets close");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_is_capped_not_the_proxy() {
    let limits = "[limits]\nmax_connections_per_ip = 2\ntrusted_proxies = [\"127.0.0.3\"]";
    let app = spawn_app_with("", Scenario::default(), limits);
    let id = app.create_conversation(json!({})).await;
    let proxy = "127.0.0.3";
    let forwarded = |client: &str| {
        let mut request = app.ws_request(&id);
        request.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
        request
    };

    // Two WebSockets for one client through the proxy fit; the third is refused.
    let first = ws_from(proxy, forwarded("198.51.100.7"), app.addr).await.expect("admitted");
    let _second = ws_from(proxy, forwarded("198.51.100.7"), app.addr).await.expect("admitted");
    assert_eq!(refused_status(ws_from(proxy, forwarded("198.51.100.7"), app.addr).await), 429);
    // Another client through the same proxy is unaffected, and the proxy itself holds more
    // connections than the cap.
    let _other = ws_from(proxy, forwarded("198.51.100.8"), app.addr).await.expect("admitted");
    // A refusal through the proxy keeps the proxy's (shared) connection open.
    let mut raw = Raw::from(connect_from(proxy, app.addr).await);
    for (client, status) in [("198.51.100.8", 200), ("198.51.100.7", 429), ("198.51.100.8", 200)] {
        let request =
            format!("GET /healthz HTTP/1.1\r\nhost: s\r\nx-forwarded-for: {client}\r\n\r\n");
        raw.send(request.as_bytes()).await;
        let response = raw.response().await;
        assert_eq!(response.status, status, "{client}: {response:?}");
        assert!(!response.closes(), "{client}: the proxy's connection stays open");
    }

    // A client that is not a trusted proxy cannot pose as others: it is counted as itself.
    let direct = "127.0.0.4";
    let spoofed = |n: u8| {
        let mut request = app.ws_request(&id);
        request.headers_mut().insert("x-forwarded-for", format!("203.0.113.{n}").parse().unwrap());
        request
    };
    let _a = ws_from(direct, spoofed(1), app.addr).await.expect("admitted");
    let _b = ws_from(direct, spoofed(2), app.addr).await.expect("admitted");
    assert_eq!(refused_status(ws_from(direct, spoofed(3), app.addr).await), 429);

    // When one of the forwarded client's sockets closes, it may open another.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ws_from(proxy, forwarded("198.51.100.7"), app.addr).await.is_err() {
        assert!(Instant::now() < deadline, "a closed socket frees the forwarded client's slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// WebSocket clients that subscribe to a busy conversation and never read.
const STALLED: usize = 100;
/// Tokens in the reply they are sent: ~1 MiB of `delta` frames each.
const FLOOD_TOKENS: u32 = 25_000;

/// Posts a message on `conversation` and reads the whole reply: the bytes of its frames, and
/// the last seq. A reader slower than the engine is dropped (1013) like any other; it then
/// does what a client should: reconnects and resumes after the last seq it saw. (One token
/// for all of it: a login runs argon2, whose 19 MiB would show in the measurement.)
async fn flood(addr: SocketAddr, token: &str, conversation: &str) -> (usize, u64) {
    let connect = || async {
        let request = ws_request(addr, conversation, token);
        tokio_tungstenite::connect_async(request).await.expect("the reader connects").0
    };
    let mut reader = connect().await;
    let ask = json!({"type": "user_message", "content": "Say a great deal", "cache": false});
    send(&mut reader, ask).await;
    let (mut bytes, mut last_seq) = (0usize, 0u64);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .expect("the reader keeps receiving");
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                reader = connect().await;
                send(&mut reader, json!({"type": "resume", "after_seq": last_seq})).await;
                continue;
            }
            Some(Ok(_)) => continue,
        };
        bytes += text.len();
        let frame: Value = serde_json::from_str(&text).unwrap();
        last_seq = frame["seq"].as_u64().unwrap_or(last_seq);
        if frame["type"] == "done" {
            assert_eq!(frame["usage"]["output_tokens"], FLOOD_TOKENS);
            return (bytes, last_seq);
        }
        assert_ne!(frame["type"], "error", "{frame}");
    }
}

/// A node whose conversation was flooded while `STALLED` clients watched it without reading.
struct StalledFlood {
    node: crate::app::ProcessNode,
    token: String,
    stalled: Vec<Ws>,
    /// Peak RSS over the same turn with nobody stalled, in MiB.
    growth_mib: f64,
    /// What the stalled clients were sent and never read, in MiB.
    owed_mib: f64,
}

/// The same turn twice on one conversation (so on one actor thread and allocator arena):
/// first with nobody stalled, as the baseline; then with `STALLED` sockets that subscribed —
/// by `resume` after the first turn, or from the start — and never read.
async fn stalled_flood(from_the_start: bool) -> StalledFlood {
    let fake = FakeLlmServer::start(Scenario { tokens: FLOOD_TOKENS, ..Scenario::default() })
        .expect("fake-llm starts");
    let toml = format!(
        "[[models]]\nname = \"primary\"\nprovider = \"openai_compatible\"\n\
         upstream_model = \"gpt-4o\"\nbase_url = \"{}/v1\"\n",
        fake.base_url()
    );
    // Default limits: what is measured is what ships.
    let node = spawn_process_node("hostile-never-reads", &toml);
    let token = node.token().await;
    let created: Value = client_with(&token)
        .post(node.url("/api/v1/conversations"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, calm_seq) = flood(node.addr, &token, &id).await;
    let baseline_kib = rss_kib_with_peak_reset(node.pid());

    let after_seq = if from_the_start { 0 } else { calm_seq };
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        // A tiny receive window, and never a read after subscribing.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = MaybeTlsStream::Plain(socket.connect(node.addr).await.unwrap());
        let (mut ws, _) =
            tokio_tungstenite::client_async(ws_request(node.addr, &id, &token), stream)
                .await
                .unwrap();
        send(&mut ws, json!({"type": "resume", "after_seq": after_seq})).await;
        stalled.push(ws);
    }
    let (bytes, _) = flood(node.addr, &token, &id).await;
    assert!(bytes > 1024 * 1024, "each stalled client is owed over a MiB: {bytes} bytes");
    let peak_kib = proc_status_kib(node.pid(), "VmHWM");
    let growth_mib = peak_kib.saturating_sub(baseline_kib) as f64 / 1024.0;
    let owed_mib = (bytes * STALLED) as f64 / (1024.0 * 1024.0);
    eprintln!(
        "never-reading clients: {STALLED} stalled (resumed from seq {after_seq}), {:.1} MiB to \
         the reader, {owed_mib:.0} MiB owed to the stalled ones; RSS {baseline_kib} KiB \
         before, peak {peak_kib} KiB (+{growth_mib:.1} MiB)",
        bytes as f64 / (1024.0 * 1024.0)
    );
    StalledFlood { node, token, stalled, growth_mib, owed_mib }
}

#[tokio::test]
async fn never_reading_websocket_clients_are_dropped_and_the_engine_stays_small() {
    let StalledFlood { node, token, mut stalled, growth_mib, owed_mib } =
        stalled_flood(false).await;
    assert!(
        growth_mib < 24.0,
        "memory stays bounded: +{growth_mib:.1} MiB at peak while {owed_mib:.0} MiB were owed \
         to clients that never read"
    );

    // The stalled sessions are gone; nobody else is connected.
    let http = client_with(&token);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tree: Value =
            http.get(node.url("/admin/actors")).send().await.unwrap().json().await.unwrap();
        let sessions = tree["websocket_sessions"].as_u64().unwrap();
        if sessions == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "stalled sessions dropped: {sessions} left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A stalled client that reads at last finds its stream ended — a close (1013: fell
    // behind, reconnect and resume) or a dropped connection — not an endless backlog.
    let mut ws = stalled.pop().unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the stalled stream ends");
    assert!(matches!(ended, None | Some(1013)), "{ended:?}");
    drop(stalled);
    assert_eq!(http.get(node.url("/healthz")).send().await.unwrap().status(), 200);
}

/// The same with sockets that `resume` from seq 0, as a new watcher may: the replay is fed a
/// store page at a time as the socket drains, so each holds a page, not the whole history
/// (before it was paged, 100 of them on a 25k-event conversation cost ~500 MiB).
#[tokio::test]
async fn never_reading_clients_resuming_from_the_start_stay_small() {
    let flood = stalled_flood(true).await;
    assert!(
        flood.growth_mib < 24.0,
        "memory stays bounded: +{:.1} MiB at peak while {:.0} MiB were owed to clients that \
         never read",
        flood.growth_mib,
        flood.owed_mib
    );
}

#[tokio::test]
async fn a_burst_of_logins_is_queued_and_memory_stays_bounded() {
    let fake = FakeLlmServer::start(Scenario::default()).expect("fake-llm starts");
    let toml = format!(
        "[[models]]\nname = \"primary\"\nprovider = \"openai_compatible\"\n\
         upstream_model = \"gpt-4o\"\nbase_url = \"{}/v1\"\n",
        fake.base_url()
    );
    let node = spawn_process_node("hostile-logins", &toml);
    node.token().await;
    let baseline_kib = rss_kib_with_peak_reset(node.pid());
    // As the engine sizes its gate: each login's argon2id holds 19 MiB.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let permits = (2 * cores).clamp(2, 32);
    let burst = 64;
    let logins = (0..burst).map(|_| {
        let url = node.url("/api/v1/auth/login");
        async move {
            // A client of its own per login: one connection each, all at once.
            let body =
                json!({"email": crate::app::OWNER_EMAIL, "password": crate::app::OWNER_PASSWORD});
            let response = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            let json: Value = response.json().await.unwrap();
            (status, json)
        }
    });
    let answers = futures_util::future::join_all(logins).await;
    let peak_kib = proc_status_kib(node.pid(), "VmHWM");
    let growth_mib = peak_kib.saturating_sub(baseline_kib) as f64 / 1024.0;
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    eprintln!(
        "login burst: {burst} at once, {permits} checked at a time, {served} served; \
         peak RSS +{growth_mib:.1} MiB"
    );
    for (status, json) in &answers {
        assert!(
            *status == 200 || (*status == 503 && json["error"]["code"] == "overloaded"),
            "{status} {json}"
        );
    }
    assert!(served >= permits, "logins are queued, not refused outright: {served} served");
    // What may stay resident: argon2's working memory for the logins checked at once (the
    // engine pools those blocks), plus slack for the rest of a login. Unbounded, the burst
    // alone would be 19 MiB × 64 at once; left to malloc, each arena that ran a login kept a
    // block (+380 MiB here).
    let bound = 20.0 * permits as f64 + 48.0;
    let unbounded = 19.0 * burst as f64;
    if unbounded > 2.0 * bound {
        assert!(
            growth_mib < bound,
            "argon2 memory is bounded by the gate: +{growth_mib:.1} MiB for {burst} logins at \
             once (unbounded ~{unbounded:.0} MiB)"
        );
    } else {
        eprintln!(
            "{cores} cores: a gate this wide cannot be told from no gate with {burst} logins"
        );
    }
}
