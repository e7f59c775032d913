//! Token verification cost per request: what every authenticated REST call and WebSocket
//! upgrade pays before its handler runs (`KeyRing::verify`: base64 decode, Ed25519 signature
//! check of every block, datalog authorization against the permission table).
//!
//! `cargo bench -p engine --bench token_verify`

// A benchmark that cannot set up has nothing to measure: failing loudly is right.
#![allow(clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use engine::auth::permissions::{Permission, Role};
use engine::auth::tokens::{Attenuation, KeyRing, NewToken, Request, SigningKey, attenuate};

fn bench(c: &mut Criterion) {
    let ring = KeyRing::new(vec![SigningKey::generate(1, 0)]).unwrap_or_else(|e| panic!("{e}"));
    let expires_at = SystemTime::now() + Duration::from_secs(3600);
    let token = ring
        .mint(&NewToken {
            tenant_id: "0193b7e2-7f3a-7c4e-9a51-2f4c1d6e8a90",
            user_id: "0193b7e2-8a11-7d2b-b5c3-9e0f1a2b3c4d",
            role: Role::Member,
            session_id: "Zk3p9QxV2mLr8TnYc4HwBf7s",
            superadmin: false,
            expires_at,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let request = Request {
        permission: Permission::ConversationsWrite,
        conversation_id: Some("0193b7e2-9c22-7e3f-8d41-0a1b2c3d4e5f"),
        now: SystemTime::now(),
    };
    let mut group = c.benchmark_group("token_verify");
    group.bench_function("access_token", |b| {
        b.iter(|| black_box(ring.verify(black_box(&token), request)).is_ok())
    });
    let narrowed = attenuate(
        &token,
        &Attenuation {
            read_only: false,
            conversation_id: Some("0193b7e2-9c22-7e3f-8d41-0a1b2c3d4e5f".into()),
            expires_at: Some(expires_at),
        },
        &ring,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    group.bench_function("attenuated_token_two_blocks", |b| {
        b.iter(|| black_box(ring.verify(black_box(&narrowed), request)).is_ok())
    });
    let key = engine::auth::api_keys::generate();
    group.bench_function("api_key_hash_compare", |b| {
        b.iter(|| engine::auth::api_keys::matches(black_box(&key.key), black_box(&key.hash)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
