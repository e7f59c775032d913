//! Helpers shared by the fuzz targets in `fuzz_targets/` (see `README.md` for the targets and
//! how to run them).
//!
//! - [`chunks`]: splits a byte stream into reads the way a socket might, from a seed byte the
//!   fuzzer controls, so the incremental parsers are checked against a one-shot parse;
//! - the token fixtures: a key ring with a fixed signing key, a fixed "now" and a fixed
//!   expiry, so a token minted once (by `examples/seed_tokens.rs`, committed to the corpus)
//!   keeps verifying and every run is deterministic.

use std::time::{Duration, SystemTime};

use engine::auth::tokens::{KeyRing, NewToken, Request, SigningKey};
use engine::auth::{Permission, Role};

/// Splits `bytes` into reads of 0 to 16 bytes chosen by `seed` (a tiny xorshift), so the
/// fuzzer steers where reads end: inside a `\r\n`, a UTF-8 sequence, a field name, a BOM.
/// Empty reads are included on purpose (a socket can deliver nothing).
pub fn chunks(seed: u8, bytes: &[u8]) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x9E37_7900;
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = ((state % 17) as usize).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// The fuzz key ring's signing key id, and its fixed Ed25519 private key. Not a secret: it
/// signs nothing but fuzz inputs.
pub const FUZZ_KEY_ID: u32 = 7;
pub const FUZZ_PRIVATE_KEY: [u8; 32] = [
    0x5a, 0x11, 0xc4, 0x0e, 0x92, 0x3b, 0x7d, 0x60, 0x18, 0xa7, 0xf2, 0x4c, 0x3e, 0x81, 0x9d, 0x05,
    0xbe, 0x27, 0x6a, 0xd3, 0x44, 0x0f, 0xe8, 0x71, 0x2c, 0x95, 0x5b, 0xc6, 0x0a, 0xf3, 0x38, 0x9e,
];

/// "Now" for every verification: 2030-01-01T00:00:00Z.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

/// Expiry of minted tokens: 2100-01-01T00:00:00Z, long after [`now`].
pub fn far_expiry() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800)
}

/// A key ring holding only the fixed fuzz key.
pub fn key_ring() -> KeyRing {
    let key = SigningKey::from_private_bytes(FUZZ_KEY_ID, &FUZZ_PRIVATE_KEY, 0)
        .expect("the fixed fuzz key is a valid Ed25519 key");
    KeyRing::new(vec![key]).expect("the authorizer policy builds")
}

/// The tokens minted for the corpus and as bases for appended blocks: one per role, and a
/// superadmin owner, each in its own tenant.
pub fn base_tokens(ring: &KeyRing) -> Vec<String> {
    let mut out = Vec::new();
    for (i, role) in Role::ALL.into_iter().enumerate() {
        out.push(mint(ring, &format!("t-{i}"), role, false));
    }
    out.push(mint(ring, "t-platform", Role::Owner, true));
    out
}

fn mint(ring: &KeyRing, tenant_id: &str, role: Role, superadmin: bool) -> String {
    ring.mint(&NewToken {
        tenant_id,
        user_id: &format!("u-{}", role.as_str()),
        role,
        session_id: "s-fuzz",
        superadmin,
        expires_at: far_expiry(),
    })
    .expect("minting with a known key works")
}

/// Conversation ids a request may name (the second is what attenuation seeds use).
pub const CONVERSATIONS: [&str; 2] = ["c-0193a1b2", "c-other"];

/// The request `selector` picks: a permission and maybe a conversation, at [`now`].
pub fn request(selector: u8) -> Request<'static> {
    let permission = Permission::ALL[usize::from(selector) % Permission::ALL.len()];
    let conversation_id = match (selector / 16) % 3 {
        0 => None,
        n => Some(CONVERSATIONS[usize::from(n) - 1]),
    };
    Request { permission, conversation_id, now: now() }
}
