//! The WebSocket transport: after the handshake a session owns its TCP stream and reads and
//! writes frames on it directly.
//!
//! Why not actix-http's dispatcher (through actix-ws), as before: an idle socket is what
//! 10,000 connections mostly are, and the dispatcher keeps an 8 KiB read buffer and an 8 KiB
//! write buffer per connection for the life of the socket, plus actix-ws's outgoing channel
//! and frame buffer — about 10 KiB of resident memory per idle connection, half of all it
//! cost (docs/benchmarks.md, "What an idle connection holds"). Here the read buffer is
//! allocated while bytes are waiting to be decoded and freed as soon as they are, and a write
//! encodes into a buffer that lives only as long as the write. An idle socket holds the
//! stream, the codec's flags and two empty buffers.
//!
//! Backpressure is the kernel's: a write waits until the socket can take the bytes, and a
//! write that makes no progress for its timeout (`limits.ws_write_timeout_ms`) fails, so a
//! client that stops reading costs at most one write (a batch of frames, 16 KiB at most) and
//! its socket buffer until the session drops it.

use std::io;
use std::time::Duration;

use actix_codec::Decoder;
use actix_http::ws::{CloseReason, Codec, Frame, Item, OpCode, Parser, ProtocolError};
use actix_rt::net::TcpStream;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

/// How much a read asks the kernel for at once.
const READ_CHUNK: usize = 4096;

/// How long a close waits for the client to close its side.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// A complete message from the client (fragments reassembled).
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Bytes),
    Pong,
    Close,
}

/// Why the client's input cannot be read further.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// A frame or reassembled message over the size cap.
    Overflow,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// Anything else the protocol forbids (unmasked frames, stray continuations, …).
    Protocol,
    /// The connection failed.
    Io,
}

/// A write that did not complete in time or failed: the socket is unusable.
#[derive(Debug)]
pub struct WriteFailed;

/// One client's WebSocket, owned by its session.
pub struct Socket {
    io: TcpStream,
    codec: Codec,
    /// Bytes read and not yet decoded; unallocated while there are none.
    read_buf: BytesMut,
    /// A fragmented message being reassembled: whether it is text, and its bytes so far.
    partial: Option<(bool, BytesMut)>,
    max_message: usize,
    write_timeout: Duration,
    eof: bool,
    /// Frames queued by [`Socket::queue_text`] for the next [`Socket::flush`]; unallocated
    /// while there are none.
    queued: BytesMut,
}

impl Socket {
    /// Takes over `io` after the handshake. `leftover` is what was read past the handshake
    /// request (a client may send its first frame without waiting for the 101).
    pub fn new(
        io: TcpStream,
        leftover: BytesMut,
        max_message: usize,
        write_timeout: Duration,
    ) -> Self {
        let read_buf = if leftover.is_empty() { BytesMut::new() } else { leftover };
        Socket {
            io,
            codec: Codec::new().max_size(max_message),
            read_buf,
            partial: None,
            max_message,
            write_timeout,
            eof: false,
            queued: BytesMut::new(),
        }
    }

    /// The next message, or `None` once the client has closed the connection.
    ///
    /// Cancel-safe: what was read stays in the socket, so this can be one branch of a
    /// `select!` that another branch wins.
    pub async fn next(&mut self) -> Option<Result<Incoming, ReadError>> {
        loop {
            let decoded = self.decode();
            if self.read_buf.is_empty() {
                // Frees the buffer: an idle socket keeps none.
                self.read_buf = BytesMut::new();
            }
            match decoded {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) if self.eof => return None,
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.io.readable().await.is_err() {
                return Some(Err(ReadError::Io));
            }
            self.read_buf.reserve(READ_CHUNK);
            match self.io.try_read_buf(&mut self.read_buf) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Some(Err(ReadError::Io)),
            }
        }
    }

    /// Decodes one message from what has been read, if it is all there.
    fn decode(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let frame = match self.codec.decode(&mut self.read_buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(ProtocolError::Overflow) => return Err(ReadError::Overflow),
                Err(_) => return Err(ReadError::Protocol),
            };
            let message = match frame {
                Frame::Text(bytes) => text(bytes)?,
                Frame::Binary(_) => Incoming::Binary,
                Frame::Ping(bytes) => Incoming::Ping(bytes),
                Frame::Pong(_) => Incoming::Pong,
                Frame::Close(_) => Incoming::Close,
                Frame::Continuation(Item::FirstText(bytes)) => {
                    self.partial = Some((true, BytesMut::from(&bytes[..])));
                    continue;
                }
                Frame::Continuation(Item::FirstBinary(bytes)) => {
                    self.partial = Some((false, BytesMut::from(&bytes[..])));
                    continue;
                }
                Frame::Continuation(Item::Continue(bytes)) => {
                    self.append(&bytes)?;
                    continue;
                }
                Frame::Continuation(Item::Last(bytes)) => {
                    self.append(&bytes)?;
                    match self.partial.take() {
                        Some((true, message)) => text(message.freeze())?,
                        Some((false, _)) => Incoming::Binary,
                        None => return Err(ReadError::Protocol),
                    }
                }
            };
            return Ok(Some(message));
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        // The codec refuses a continuation without a first fragment, so `partial` is set.
        let Some((_, message)) = self.partial.as_mut() else { return Err(ReadError::Protocol) };
        if message.len() + bytes.len() > self.max_message {
            return Err(ReadError::Overflow);
        }
        message.extend_from_slice(bytes);
        Ok(())
    }

    pub async fn text(&mut self, text: String) -> Result<(), WriteFailed> {
        self.send(OpCode::Text, text.as_bytes()).await
    }

    /// Adds a text frame to the next [`Socket::flush`], so that frames that are ready
    /// together go out in one write.
    pub fn queue_text(&mut self, text: &str) {
        Parser::write_message(&mut self.queued, text, OpCode::Text, true, false);
    }

    /// Bytes queued for the next flush.
    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// Writes what [`Socket::queue_text`] queued, in one write.
    pub async fn flush(&mut self) -> Result<(), WriteFailed> {
        let queued = std::mem::take(&mut self.queued);
        if queued.is_empty() {
            return Ok(());
        }
        self.write(queued).await
    }

    pub async fn ping(&mut self) -> Result<(), WriteFailed> {
        self.send(OpCode::Ping, b"").await
    }

    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), WriteFailed> {
        self.send(OpCode::Pong, payload).await
    }

    /// Sends a close frame and ends the stream (FIN). The caller drops the socket after.
    pub async fn close(&mut self, reason: Option<CloseReason>) -> Result<(), WriteFailed> {
        let mut frame = BytesMut::new();
        Parser::write_close(&mut frame, reason, false);
        self.write(frame).await?;
        let _ = tokio::time::timeout(self.write_timeout, self.io.shutdown()).await;
        // The client answers with its own close frame and then closes. Read until it has:
        // dropping a socket with unread bytes resets the connection, and a reset can reach
        // the client before it has read the close frame sent above.
        let linger = self.write_timeout.min(CLOSE_LINGER);
        let _ = tokio::time::timeout(linger, self.discard_until_eof()).await;
        Ok(())
    }

    async fn discard_until_eof(&mut self) {
        let mut scratch = [0u8; 512];
        while self.io.readable().await.is_ok() {
            match self.io.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    async fn send(&mut self, op: OpCode, payload: &[u8]) -> Result<(), WriteFailed> {
        // Behind anything queued, in the same write.
        let mut frame = std::mem::take(&mut self.queued);
        frame.reserve(payload.len() + 10);
        Parser::write_message(&mut frame, payload, op, true, false);
        self.write(frame).await
    }

    /// Writes all of `bytes` (frames, or the handshake's 101), failing once the client has
    /// taken none of them for the write timeout: the deadline is on progress, so a client
    /// that reads slowly through a batch of frames is not mistaken for one that stopped
    /// reading.
    pub(super) async fn write(&mut self, bytes: BytesMut) -> Result<(), WriteFailed> {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match tokio::time::timeout(self.write_timeout, self.io.write(rest)).await {
                Ok(Ok(written)) if written > 0 => rest = &rest[written..],
                _ => return Err(WriteFailed),
            }
        }
        Ok(())
    }
}

fn text(bytes: Bytes) -> Result<Incoming, ReadError> {
    String::from_utf8(Vec::from(bytes)).map(Incoming::Text).map_err(|_| ReadError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_codec::Encoder;
    use actix_http::ws::{CloseCode, Message};
    use tokio::io::AsyncReadExt;

    /// A connected pair: the server's `Socket` and the raw client end.
    async fn pair(max_message: usize) -> (Socket, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Socket::new(server, BytesMut::new(), max_message, Duration::from_secs(2)), client)
    }

    /// Frames as a browser sends them: masked.
    fn client_frames(messages: Vec<Message>) -> BytesMut {
        let mut codec = Codec::new().client_mode();
        let mut out = BytesMut::new();
        for message in messages {
            codec.encode(message, &mut out).unwrap();
        }
        out
    }

    #[actix_rt::test]
    async fn reads_split_reads_and_reassembles_fragments() {
        let (mut socket, mut client) = pair(1024).await;
        let bytes = client_frames(vec![
            Message::Text("hello".into()),
            Message::Continuation(Item::FirstText(Bytes::from_static(b"fra"))),
            Message::Ping(Bytes::from_static(b"p")),
            Message::Continuation(Item::Last(Bytes::from_static(b"gment"))),
            Message::Binary(Bytes::from_static(b"\x00")),
        ]);
        // One byte at a time: every frame arrives in pieces.
        for byte in bytes.iter() {
            client.write_all(&[*byte]).await.unwrap();
        }
        client.shutdown().await.unwrap();
        let mut seen = Vec::new();
        while let Some(message) = socket.next().await {
            seen.push(message.unwrap());
        }
        assert_eq!(
            seen,
            vec![
                Incoming::Text("hello".into()),
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text("fragment".into()),
                Incoming::Binary,
            ]
        );
        assert_eq!(socket.read_buf.capacity(), 0, "a drained socket keeps no read buffer");
    }

    #[actix_rt::test]
    async fn a_leftover_from_the_handshake_is_read_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let leftover = client_frames(vec![Message::Text("early".into())]);
        let mut socket = Socket::new(server, leftover, 1024, Duration::from_secs(2));
        assert_eq!(socket.next().await, Some(Ok(Incoming::Text("early".into()))));
    }

    #[actix_rt::test]
    async fn oversized_frames_and_messages_are_refused() {
        let (mut socket, mut client) = pair(8).await;
        client.write_all(&client_frames(vec![Message::Text("123456789".into())])).await.unwrap();
        assert_eq!(socket.next().await, Some(Err(ReadError::Overflow)));

        let (mut socket, mut client) = pair(8).await;
        let fragments = client_frames(vec![
            Message::Continuation(Item::FirstText(Bytes::from_static(b"12345"))),
            Message::Continuation(Item::Last(Bytes::from_static(b"6789"))),
        ]);
        client.write_all(&fragments).await.unwrap();
        assert_eq!(socket.next().await, Some(Err(ReadError::Overflow)));
    }

    #[actix_rt::test]
    async fn invalid_utf8_and_unmasked_frames_are_errors() {
        let (mut socket, mut client) = pair(64).await;
        client.write_all(&client_frames(vec![Message::Binary(Bytes::new())])).await.unwrap();
        let mut bad = BytesMut::new();
        Parser::write_message(&mut bad, &b"\xff\xfe"[..], OpCode::Text, true, true);
        client.write_all(&bad).await.unwrap();
        assert_eq!(socket.next().await, Some(Ok(Incoming::Binary)));
        assert_eq!(socket.next().await, Some(Err(ReadError::InvalidUtf8)));

        let (mut socket, mut client) = pair(64).await;
        let mut unmasked = BytesMut::new();
        Parser::write_message(&mut unmasked, &b"hi"[..], OpCode::Text, true, false);
        client.write_all(&unmasked).await.unwrap();
        assert_eq!(socket.next().await, Some(Err(ReadError::Protocol)));
    }

    #[actix_rt::test]
    async fn writes_unmasked_frames_and_a_close() {
        let (mut socket, mut client) = pair(64).await;
        socket.queue_text("one");
        socket.queue_text("two");
        assert_eq!(socket.queued_len(), 10);
        socket.flush().await.unwrap();
        assert_eq!(socket.queued.capacity(), 0, "a flushed socket keeps no write buffer");
        socket.queue_text("three");
        socket.text("{\"type\":\"pong\"}".into()).await.unwrap();
        socket.ping().await.unwrap();
        let reason = CloseReason { code: CloseCode::Restart, description: Some("bye".into()) };
        socket.close(Some(reason.clone())).await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        let mut received = BytesMut::from(&received[..]);
        let mut codec = Codec::new().client_mode();
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut received).unwrap() {
            frames.push(frame);
        }
        assert_eq!(
            frames,
            vec![
                Frame::Text(Bytes::from_static(b"one")),
                Frame::Text(Bytes::from_static(b"two")),
                Frame::Text(Bytes::from_static(b"three")),
                Frame::Text(Bytes::from_static(b"{\"type\":\"pong\"}")),
                Frame::Ping(Bytes::new()),
                Frame::Close(Some(reason)),
            ]
        );
    }
}
