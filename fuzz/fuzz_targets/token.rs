//! Access tokens: arbitrary input where a token goes (`Authorization: Bearer …`, the
//! WebSocket `auth` frame or subprotocol) → `KeyRing::verify`, `KeyRing::claims` and
//! `attenuate`. The ring holds one fixed key, so the seed tokens (minted by
//! `examples/seed_tokens.rs`) are valid and mutations of them reach the datalog checks.
//!
//! Input: one selector byte — bit 0: the rest is the token text (0) or raw biscuit bytes that
//! are base64url-encoded first (1); the other bits pick the request (permission and
//! conversation) — then the token.
//!
//! Checked, besides "never panics": a token that verifies has claims that agree with
//! `claims()` and has not expired; and attenuation only narrows — a token attenuated to
//! read-only, one conversation or an earlier expiry is never allowed a request its parent is
//! refused, nor a write, nor another conversation.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use data_encoding::BASE64URL_NOPAD;
use engine::auth::tokens::{Attenuation, KeyRing, Request, attenuate};
use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::{CONVERSATIONS, key_ring, now, request};

static RING: LazyLock<KeyRing> = LazyLock::new(key_ring);

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let token = if selector & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        BASE64URL_NOPAD.encode(rest)
    };
    let ring = &*RING;
    let request = request(selector >> 1);

    let verified = ring.verify(&token, request);
    let claims = ring.claims(&token, now());
    if let Ok(verified) = &verified {
        assert!(verified.expires_at >= now(), "an expired token was accepted");
        assert_eq!(claims.as_ref().ok(), Some(verified), "verify and claims disagree");
    }
    if claims.is_err() {
        assert!(verified.is_err(), "claims refused a token that verify accepted");
    }

    let narrowed = [
        Attenuation { read_only: true, ..Default::default() },
        Attenuation { conversation_id: Some(CONVERSATIONS[0].to_owned()), ..Default::default() },
        Attenuation { expires_at: Some(now() - Duration::from_secs(1)), ..Default::default() },
    ];
    for attenuation in narrowed {
        let Ok(child) = attenuate(&token, &attenuation, ring) else {
            continue;
        };
        let child_verified = ring.verify(&child, request);
        if verified.is_err() {
            assert!(child_verified.is_err(), "attenuation widened a refused token");
        }
        if attenuation.read_only && !request.permission.as_str().ends_with(":read") {
            assert!(child_verified.is_err(), "a read-only token was allowed a write");
        }
        if attenuation.conversation_id.is_some() {
            let other = Request { conversation_id: Some(CONVERSATIONS[1]), ..request };
            assert!(ring.verify(&child, other).is_err(), "escaped its conversation");
            let none = Request { conversation_id: None, ..request };
            assert!(ring.verify(&child, none).is_err(), "escaped its conversation");
        }
        if attenuation.expires_at.is_some() {
            assert!(child_verified.is_err(), "an attenuated expiry was ignored");
        }
    }
});
