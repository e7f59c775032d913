//! Appended token blocks: the attack a token holder can mount without any key. Biscuit lets
//! anyone append a block to a token they hold, signed with a key pair of their own, so the
//! engine must treat every appended block's content as hostile. This target takes a valid
//! token from the fuzz key ring, appends the fuzzer's block — properly signed, so it gets past
//! the signature checks into block decoding and datalog — and verifies the result.
//!
//! Input: byte 0 — bit 0: the block is datalog source compiled with biscuit's `BlockBuilder`
//! (0; structure-aware, readable seeds) or raw protobuf block bytes (1); the other bits pick
//! the base token (one per role, plus a superadmin). Byte 1 picks the request. Then the block.
//!
//! Checked: blocks only narrow. A token with an appended block is never allowed a request
//! its base token is refused, speaks for the same tenant, user, role and superadmin flag as
//! its base, and never outlives it.

#![no_main]

use std::sync::LazyLock;

use biscuit_auth::{Algorithm, Biscuit, BlockBuilder, KeyPair, PrivateKey};
use data_encoding::BASE64URL_NOPAD;
use engine::auth::tokens::{Claims, KeyRing, SigningKey};
use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::{FUZZ_KEY_ID, FUZZ_PRIVATE_KEY, base_tokens, key_ring, now, request};

struct Fixture {
    ring: KeyRing,
    /// The holder's key for the appended block: fixed, so runs are deterministic.
    holder: KeyPair,
    bases: Vec<(String, Biscuit)>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let ring = key_ring();
    let root = SigningKey::from_private_bytes(FUZZ_KEY_ID, &FUZZ_PRIVATE_KEY, 0)
        .expect("the fixed fuzz key is valid")
        .keypair
        .public();
    let holder = KeyPair::from(
        &PrivateKey::from_bytes(&[0x42; 32], Algorithm::Ed25519).expect("a valid private key"),
    );
    let bases = base_tokens(&ring)
        .into_iter()
        .map(|token| {
            let bytes = BASE64URL_NOPAD.decode(token.as_bytes()).expect("minted tokens decode");
            let biscuit = Biscuit::from(&bytes, root).expect("minted tokens verify");
            (token, biscuit)
        })
        .collect();
    Fixture { ring, holder, bases }
});

/// Deeper nesting only exercises biscuit's datalog text parser, which the engine never runs
/// on untrusted text (tokens carry compiled blocks; the raw mode covers those).
const MAX_TEXT_NESTING: usize = 64;

fn same_holder(child: &Claims, base: &Claims) -> bool {
    child.tenant_id == base.tenant_id
        && child.user_id == base.user_id
        && child.role == base.role
        && child.session_id == base.session_id
        && child.superadmin == base.superadmin
        && child.expires_at <= base.expires_at
}

fuzz_target!(|data: &[u8]| {
    let [mode, selector, block @ ..] = data else { return };
    let fixture = &*FIXTURE;
    let (base_token, base) = &fixture.bases[usize::from(mode >> 1) % fixture.bases.len()];

    let appended = if mode & 1 == 0 {
        let Ok(source) = std::str::from_utf8(block) else { return };
        if source.chars().filter(|c| matches!(c, '(' | '[' | '{')).count() > MAX_TEXT_NESTING {
            return;
        }
        let Ok(builder) = BlockBuilder::new().code(source) else { return };
        let Ok(child) = base.append_with_keypair(&fixture.holder, builder) else { return };
        child.to_vec().ok()
    } else {
        let Ok(container) =
            base.container().append_serialized(&fixture.holder, block.to_vec(), None)
        else {
            return;
        };
        container.to_vec().ok()
    };
    let Some(bytes) = appended else { return };
    let child = BASE64URL_NOPAD.encode(&bytes);

    let request = request(*selector);
    let ring = &fixture.ring;
    let base_verified = ring.verify(base_token, request);
    if let Ok(child_claims) = ring.verify(&child, request) {
        let base_claims = base_verified.expect("an appended block widened a refused token");
        assert!(same_holder(&child_claims, &base_claims), "{child_claims:?} vs {base_claims:?}");
    }
    if let Ok(child_claims) = ring.claims(&child, now()) {
        let base_claims = ring.claims(base_token, now()).expect("base tokens are valid");
        assert!(same_holder(&child_claims, &base_claims), "{child_claims:?} vs {base_claims:?}");
    }
});
