//! Token verification cost per request: what every authenticated REST call and WebSocket
//! upgrade pays before its handler runs (`KeyRing::verify`).
//!
//! * `cold`: no cache — base64 decode, Ed25519 signature checks, datalog authorization
//!   against the permission table (what every request paid before the cache);
//! * `first_sight`: a token the cache has not seen (the full path plus remembering it);
//! * `warm`: a token seen before — SHA-256 of the token, a cache lookup, the expiry and key
//!   checks;
//! * `attenuated_token_two_blocks`: always the full path (never cached);
//! * the API key's hash compare, for comparison.
//!
//! Criterion reports means; after it, in `--bench` mode, the per-call latency distribution
//! (p50/p99/p99.9) of cold and warm verification is printed, timed call by call.
//!
//! `cargo bench -p engine --bench token_verify`

// A benchmark that cannot set up has nothing to measure: failing loudly is right.
#![allow(clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, Criterion, criterion_group};
use engine::auth::permissions::{Permission, Role};
use engine::auth::tokens::{Attenuation, KeyRing, NewToken, Request, SigningKey, attenuate};

const CONVERSATION: &str = "0193b7e2-9c22-7e3f-8d41-0a1b2c3d4e5f";

fn ring(cache_entries: usize) -> KeyRing {
    let key = SigningKey::from_private_bytes(1, &[7; 32], 0).unwrap_or_else(|| panic!("a key"));
    KeyRing::with_cache_capacity(vec![key], cache_entries).unwrap_or_else(|e| panic!("{e}"))
}

fn mint(ring: &KeyRing, session: &str) -> String {
    ring.mint(&NewToken {
        tenant_id: "0193b7e2-7f3a-7c4e-9a51-2f4c1d6e8a90",
        user_id: "0193b7e2-8a11-7d2b-b5c3-9e0f1a2b3c4d",
        role: Role::Member,
        session_id: session,
        superadmin: false,
        expires_at: SystemTime::now() + Duration::from_secs(3600),
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn request() -> Request<'static> {
    Request {
        permission: Permission::ConversationsWrite,
        conversation_id: Some(CONVERSATION),
        now: SystemTime::now(),
    }
}

fn bench(c: &mut Criterion) {
    let uncached = ring(0);
    let cached = ring(engine::auth::tokens::DEFAULT_CACHE_ENTRIES);
    let token = mint(&cached, "Zk3p9QxV2mLr8TnYc4HwBf7s");
    let request = request();
    assert!(cached.verify(&token, request).is_ok());

    let mut group = c.benchmark_group("token_verify");
    group.bench_function("cold", |b| {
        b.iter(|| black_box(uncached.verify(black_box(&token), request)).is_ok())
    });
    let mut n = 0u64;
    group.bench_function("first_sight", |b| {
        b.iter_batched(
            || {
                n += 1;
                mint(&cached, &format!("session-{n}"))
            },
            |fresh| black_box(cached.verify(black_box(&fresh), request)).is_ok(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("warm", |b| {
        b.iter(|| black_box(cached.verify(black_box(&token), request)).is_ok())
    });
    let narrowed = attenuate(
        &token,
        &Attenuation {
            read_only: false,
            conversation_id: Some(CONVERSATION.into()),
            expires_at: Some(SystemTime::now() + Duration::from_secs(1800)),
        },
        &cached,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    group.bench_function("attenuated_token_two_blocks", |b| {
        b.iter(|| black_box(cached.verify(black_box(&narrowed), request)).is_ok())
    });
    let key = engine::auth::api_keys::generate();
    group.bench_function("api_key_hash_compare", |b| {
        b.iter(|| engine::auth::api_keys::matches(black_box(&key.key), black_box(&key.hash)))
    });
    group.finish();
}

/// Times `calls` verifications one by one and prints the percentiles.
fn distribution(name: &str, calls: usize, mut verify: impl FnMut() -> bool) {
    for _ in 0..calls / 10 {
        assert!(verify());
    }
    let mut samples: Vec<Duration> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            let ok = verify();
            let took = start.elapsed();
            assert!(ok);
            took
        })
        .collect();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "token_verify/{name}: {calls} calls, p50 {:.1?}, p99 {:.1?}, p99.9 {:.1?}, max {:.1?}",
        at(0.50),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );
}

fn percentiles() {
    let uncached = ring(0);
    let cached = ring(engine::auth::tokens::DEFAULT_CACHE_ENTRIES);
    let token = mint(&cached, "Zk3p9QxV2mLr8TnYc4HwBf7s");
    let request = request();
    distribution("cold", 20_000, || uncached.verify(&token, request).is_ok());
    distribution("warm", 200_000, || cached.verify(&token, request).is_ok());
    // Many live sessions: 50 000 distinct tokens, each seen before, in turn.
    let tokens: Vec<String> = (0..50_000).map(|i| mint(&cached, &format!("s{i}"))).collect();
    for t in &tokens {
        assert!(cached.verify(t, request).is_ok());
    }
    let mut next = 0;
    distribution("warm_50k_sessions", 200_000, || {
        next = (next + 1) % tokens.len();
        cached.verify(&tokens[next], request).is_ok()
    });
}

criterion_group!(benches, bench);

fn main() {
    benches();
    if std::env::args().any(|a| a == "--bench") {
        percentiles();
    }
    Criterion::default().configure_from_args().final_summary();
}
