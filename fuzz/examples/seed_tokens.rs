//! Writes the seed corpora of the `token` and `token_block` targets: real tokens minted and
//! attenuated by the engine's own token code with the fuzz key ring's fixed key, so they
//! verify inside the targets. Run from the repository root:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_tokens
//! ```
//!
//! Each file is named for what it holds; its first byte is the target's selector (see each
//! target's docs).

use std::path::Path;
use std::time::Duration;

use biscuit_auth::format::schema;
use biscuit_auth::{Biscuit, BlockBuilder};
use data_encoding::BASE64URL_NOPAD;
use engine::auth::Role;
use engine::auth::tokens::{Attenuation, NewToken, SigningKey, attenuate};
use prost::Message;
use switchyard_fuzz::{
    CONVERSATIONS, FUZZ_KEY_ID, FUZZ_PRIVATE_KEY, base_tokens, key_ring, now, request,
};

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let token_dir = corpus.join("token");
    let block_dir = corpus.join("token_block");
    std::fs::create_dir_all(&token_dir)?;
    std::fs::create_dir_all(&block_dir)?;
    let write = |dir: &Path, name: &str, prefix: &[u8], body: &[u8]| {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(body);
        std::fs::write(dir.join(name), bytes)
    };

    let ring = key_ring();
    let bases = base_tokens(&ring);
    let roles = ["owner", "admin", "member", "viewer", "superadmin"];
    // Request selectors (see `switchyard_fuzz::request`): conversations:read on a
    // conversation, conversations:write on none, keys:manage on none, admin:actors on none.
    const READ_CONVERSATION: u8 = 18;
    const WRITE: u8 = 1;
    const KEYS: u8 = 2;
    const ADMIN: u8 = 6;
    // `token`'s first byte: the request selector, then the text (0) / raw (1) bit.
    for (token, role) in bases.iter().zip(roles) {
        for (what, selector) in [("read", READ_CONVERSATION), ("write", WRITE), ("admin", ADMIN)] {
            write(&token_dir, &format!("{role}-text-{what}"), &[selector << 1], token.as_bytes())?;
        }
        let raw = BASE64URL_NOPAD.decode(token.as_bytes()).expect("minted tokens decode");
        write(&token_dir, &format!("{role}-raw-read"), &[(READ_CONVERSATION << 1) | 1], &raw)?;
    }
    // `token_block`'s first byte: the base token (2 = member), then the text (0) / raw (1)
    // bit; its second byte: the request selector.
    const MEMBER_TEXT: u8 = 2 << 1;
    const MEMBER_RAW: u8 = (2 << 1) | 1;

    let attenuations = [
        ("read-only", Attenuation { read_only: true, ..Default::default() }),
        (
            "conversation",
            Attenuation {
                conversation_id: Some(CONVERSATIONS[0].to_owned()),
                ..Default::default()
            },
        ),
        (
            "expiry",
            Attenuation {
                expires_at: Some(now() + Duration::from_secs(3600)),
                ..Default::default()
            },
        ),
    ];
    for (name, attenuation) in &attenuations {
        let member = &bases[2];
        let child = attenuate(member, attenuation, &ring).expect("attenuating a valid token");
        let prefix = [READ_CONVERSATION << 1];
        write(&token_dir, &format!("member-{name}"), &prefix, child.as_bytes())?;
        // The appended block alone, for `token_block`'s raw mode on the member's token.
        let bytes = BASE64URL_NOPAD.decode(child.as_bytes()).expect("tokens decode");
        let decoded = schema::Biscuit::decode(bytes.as_slice()).expect("tokens are protobuf");
        let block = &decoded.blocks[0].block;
        write(&block_dir, &format!("raw-{name}"), &[MEMBER_RAW, READ_CONVERSATION], block)?;
    }

    let expired = ring
        .mint(&NewToken {
            tenant_id: "t-2",
            user_id: "u-member",
            role: Role::Member,
            session_id: "s-fuzz",
            superadmin: false,
            expires_at: now() - Duration::from_secs(60),
        })
        .expect("minting works");
    write(&token_dir, "member-expired", &[READ_CONVERSATION << 1], expired.as_bytes())?;
    let stranger = engine::auth::tokens::KeyRing::new(vec![
        SigningKey::from_private_bytes(99, &[0x17; 32], 0).expect("a valid key"),
    ])
    .expect("a key ring");
    let foreign = base_tokens(&stranger).swap_remove(2);
    write(&token_dir, "member-unknown-key", &[READ_CONVERSATION << 1], foreign.as_bytes())?;

    // Datalog text seeds for `token_block`: the attenuations the engine itself appends, and
    // the escalations a hostile holder would try (claims and rights in its own block).
    let texts = [
        ("check-read-only", r#"check if operation($p), $p.ends_with(":read");"#),
        ("check-conversation", r#"check if conversation("c-0193a1b2");"#),
        (
            "check-expiry",
            "expires(2031-01-01T00:00:00Z); check if time($t), $t <= 2031-01-01T00:00:00Z;",
        ),
        ("claim-owner", r#"role("owner");"#),
        ("claim-superadmin", "superadmin(true);"),
        ("claim-tenant", r#"tenant("t-other"); user("u-evil"); session("s-evil");"#),
        (
            "grant-permission",
            r#"role_permission("viewer", "keys:manage"); platform_permission("conversations:read");"#,
        ),
        ("extend-expiry", "expires(2999-01-01T00:00:00Z);"),
        ("rule-trusting-previous", r#"role("owner") <- role($r) trusting previous;"#),
        (
            "check-all-reject",
            r#"check all operation($p), $p.starts_with("conversations"); reject if superadmin(true);"#,
        ),
    ];
    for (name, text) in texts {
        for (what, selector) in [("read", READ_CONVERSATION), ("keys", KEYS)] {
            let prefix = [MEMBER_TEXT, selector];
            write(&block_dir, &format!("text-{name}-{what}"), &prefix, text.as_bytes())?;
        }
    }

    // What the seeds decide, so a reader (and whoever regenerates them) can see they reach
    // the interesting paths: valid tokens allowed and refused by role, and hostile blocks
    // that change nothing.
    let outcome = |token: &str, selector: u8| match ring.verify(token, request(selector)) {
        Ok(claims) => format!("allowed ({} in {})", claims.role, claims.tenant_id),
        Err(e) => format!("refused: {e}"),
    };
    for (token, role) in bases.iter().zip(roles) {
        for (what, selector) in [("read", READ_CONVERSATION), ("keys", KEYS), ("admin", ADMIN)] {
            println!("{role:>10} {what:>5}: {}", outcome(token, selector));
        }
    }
    let base = Biscuit::from(BASE64URL_NOPAD.decode(bases[2].as_bytes()).expect("decodes"), {
        let root = SigningKey::from_private_bytes(FUZZ_KEY_ID, &FUZZ_PRIVATE_KEY, 0);
        root.expect("the fixed key").keypair.public()
    })
    .expect("verifies");
    for (name, text) in texts {
        let block = BlockBuilder::new().code(text).expect("seed datalog parses");
        let child = base.append(block).expect("appends").to_vec().expect("serialises");
        let child = BASE64URL_NOPAD.encode(&child);
        println!(
            "member + {name:>22}: read {} | keys {}",
            outcome(&child, READ_CONVERSATION),
            outcome(&child, KEYS)
        );
    }
    println!("seeds written under {}", corpus.display());
    Ok(())
}
