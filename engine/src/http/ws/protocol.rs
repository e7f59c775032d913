//! The WebSocket wire protocol: one JSON object per text frame, tagged by `type`.
//!
//! Client → server frames are parsed here, strictly: unknown types and unknown fields are
//! refused with a clear `error` frame rather than ignored, so a client bug shows up at once.
//! Server → client events are `actors::conversation` events serialised as they are, plus the
//! few frames that belong to the session itself (`pong`, session-level `error`).
//! See `docs/websocket.md` for the whole protocol with an example session.

use serde::{Deserialize, Serialize};

/// A frame a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// First frame, unless the token came in `Sec-WebSocket-Protocol`.
    Auth {
        token: String,
    },
    /// A new user message. `client_id` is echoed in the `ack` so the client can match it.
    UserMessage {
        #[serde(default)]
        client_id: Option<String>,
        content: String,
        /// `false` opts this message out of the response cache (neither read nor stored).
        #[serde(default = "cache_default")]
        cache: bool,
    },
    /// Stop the reply being generated.
    Cancel(NoFields),
    /// Replay every event after `after_seq`, then continue live.
    Resume {
        after_seq: u64,
    },
    Ping(NoFields),
}

fn cache_default() -> bool {
    true
}

/// The body of a frame that carries nothing but its `type`. A struct of its own because
/// serde's `deny_unknown_fields` does not reach unit or empty variants of a tagged enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    TooLarge { limit: usize },
    Invalid(String),
}

impl FrameError {
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "frame_too_large",
            FrameError::Invalid(_) => "invalid_frame",
        }
    }

    pub fn message(&self) -> String {
        match self {
            FrameError::TooLarge { limit } => format!("frames are limited to {limit} bytes"),
            FrameError::Invalid(why) => why.clone(),
        }
    }
}

/// Longest `client_id` echoed back; longer ones are refused rather than truncated.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// Parses one text frame, enforcing the frame-size limit before touching the JSON.
pub fn parse_client_frame(text: &str, max_frame_bytes: usize) -> Result<ClientFrame, FrameError> {
    if text.len() > max_frame_bytes {
        return Err(FrameError::TooLarge { limit: max_frame_bytes });
    }
    let frame: ClientFrame = serde_json::from_str(text).map_err(|e| {
        // serde_json's messages name the field and position but never echo the payload.
        FrameError::Invalid(format!("not a valid frame: {e}"))
    })?;
    if let ClientFrame::UserMessage { client_id: Some(id), .. } = &frame
        && id.len() > MAX_CLIENT_ID_BYTES
    {
        return Err(FrameError::Invalid(format!(
            "client_id is limited to {MAX_CLIENT_ID_BYTES} bytes"
        )));
    }
    Ok(frame)
}

/// Frames the session itself sends (conversation events are serialised by their own type).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionFrame<'a> {
    Pong,
    Error { code: &'a str, message: &'a str },
}

impl SessionFrame<'_> {
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail; fall back to a fixed frame regardless.
        serde_json::to_string(self).unwrap_or_else(|_| {
            String::from(r#"{"type":"error","code":"internal","message":"internal error"}"#)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_frame() {
        let parse = |s: &str| parse_client_frame(s, 1024).unwrap();
        assert_eq!(
            parse(r#"{"type":"auth","token":"t"}"#),
            ClientFrame::Auth { token: "t".into() }
        );
        assert_eq!(
            parse(r#"{"type":"user_message","client_id":"c1","content":"Hello"}"#),
            ClientFrame::UserMessage {
                client_id: Some("c1".into()),
                content: "Hello".into(),
                cache: true
            }
        );
        assert_eq!(
            parse(r#"{"type":"user_message","content":"Hi"}"#),
            ClientFrame::UserMessage { client_id: None, content: "Hi".into(), cache: true }
        );
        assert_eq!(parse(r#"{"type":"cancel"}"#), ClientFrame::Cancel(NoFields {}));
        assert_eq!(
            parse(r#"{"type":"resume","after_seq":41}"#),
            ClientFrame::Resume { after_seq: 41 }
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), ClientFrame::Ping(NoFields {}));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "not json",
            r#"{"type":"shout"}"#,
            r#"{"content":"no type"}"#,
            r#"{"type":"user_message"}"#,
            r#"{"type":"resume","after_seq":-1}"#,
            r#"{"type":"ping","extra":1}"#,
            r#"[1,2,3]"#,
        ] {
            let err = parse_client_frame(bad, 1024).unwrap_err();
            assert_eq!(err.code(), "invalid_frame", "{bad}");
        }
    }

    #[test]
    fn size_is_checked_before_parsing() {
        let big = format!(r#"{{"type":"user_message","content":"{}"}}"#, "x".repeat(2000));
        assert_eq!(
            parse_client_frame(&big, 1024).unwrap_err(),
            FrameError::TooLarge { limit: 1024 }
        );
    }

    #[test]
    fn long_client_ids_are_refused() {
        let frame =
            format!(r#"{{"type":"user_message","client_id":"{}","content":"x"}}"#, "c".repeat(200));
        assert_eq!(parse_client_frame(&frame, 4096).unwrap_err().code(), "invalid_frame");
    }

    #[test]
    fn session_frames_serialise_with_their_type() {
        assert_eq!(SessionFrame::Pong.to_json(), r#"{"type":"pong"}"#);
        assert_eq!(
            SessionFrame::Error { code: "rate_limited", message: "slow down" }.to_json(),
            r#"{"type":"error","code":"rate_limited","message":"slow down"}"#
        );
    }
}
