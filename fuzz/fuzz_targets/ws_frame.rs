//! WebSocket client frames: one text frame's bytes → `parse_client_frame`, as the session
//! calls it. Binary frames and invalid UTF-8 never reach the parser (the socket is closed
//! on invalid UTF-8, binary frames get an `invalid_frame` error), so only valid UTF-8
//! is fed.
//!
//! Beyond "never panics", it checks what the protocol promises: the size limit is enforced
//! before the JSON is looked at, an accepted `client_id` fits the echo limit, and the error
//! frame the session would send back is valid JSON carrying the same code and message.

#![no_main]

use engine::config::LimitsConfig;
use engine::http::ws::protocol::{
    ClientFrame, FrameError, MAX_CLIENT_ID_BYTES, SessionFrame, parse_client_frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limit = LimitsConfig::default().ws_max_frame_bytes;

    let parsed = parse_client_frame(text, limit);
    match &parsed {
        Ok(ClientFrame::UserMessage { client_id: Some(id), .. }) => {
            assert!(id.len() <= MAX_CLIENT_ID_BYTES, "client_id of {} bytes accepted", id.len());
        }
        Ok(_) => {}
        Err(error) => {
            assert!(matches!(error.code(), "frame_too_large" | "invalid_frame"));
            let message = error.message();
            let json = SessionFrame::Error { code: error.code(), message: &message }.to_json();
            let value: serde_json::Value =
                serde_json::from_str(&json).expect("the error frame is valid JSON");
            assert_eq!(value["type"], "error");
            assert_eq!(value["code"], error.code());
            assert_eq!(value["message"].as_str(), Some(message.as_str()));
        }
    }
    // Same input, same answer.
    assert_eq!(parse_client_frame(text, limit), parsed);

    // One byte over a smaller limit is refused for its size, whatever it contains.
    if !text.is_empty() {
        assert_eq!(
            parse_client_frame(text, text.len() - 1),
            Err(FrameError::TooLarge { limit: text.len() - 1 })
        );
    }
});
