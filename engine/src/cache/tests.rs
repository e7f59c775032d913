//! Unit tests of the cache's decisions, with a bag-of-words fake embedder.

use std::sync::Arc;
use std::time::Duration;

use actors::events::CacheStatus;
use actors::ports::llm::{ChatMessage, FinishReason, GenerationRequest, Usage};
use actors::turn::CacheMode;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::*;
use crate::config::CacheConfig;

/// Unit vectors from hashed lower-case words: equal word sets embed identically.
struct BagOfWords;

impl Embedder for BagOfWords {
    fn space(&self) -> &str {
        "test:bow"
    }

    fn embed(&self, text: String) -> BoxFuture<'static, Result<Vec<f32>, embed::EmbedError>> {
        let mut v = vec![0f32; 64];
        for w in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            let h = w.to_lowercase().bytes().fold(1469598103934665603u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(1099511628211)
            });
            v[(h % 64) as usize] += 1.0;
        }
        embed::normalize(&mut v);
        async move { Ok(v) }.boxed()
    }
}

fn cache_with(config: CacheConfig) -> Cache {
    Cache::new(config, Some(Arc::new(BagOfWords)))
}

fn ask(history: &[&str], question: &str) -> GenerationRequest {
    let mut messages: Vec<ChatMessage> = history
        .iter()
        .enumerate()
        .map(|(i, m)| if i % 2 == 0 { ChatMessage::user(*m) } else { ChatMessage::assistant(*m) })
        .collect();
    messages.push(ChatMessage::user(question));
    GenerationRequest { messages, temperature: Some(0.0), ..Default::default() }
}

fn answer(text: &str) -> CachedAnswer {
    CachedAnswer {
        text: text.into(),
        model: "gpt-4o".into(),
        finish_reason: FinishReason::Stop,
        usage: Usage { input_tokens: 10, output_tokens: 20 },
    }
}

async fn miss_then_store(cache: &Cache, tenant: &str, request: &GenerationRequest, text: &str) {
    match cache.lookup(tenant, "gpt-4o", request, CacheMode::Use).await {
        Lookup::Miss { key, vector } => cache.store(tenant, key, vector, answer(text)),
        _ => panic!("expected a miss"),
    }
}

async fn hit(cache: &Cache, tenant: &str, request: &GenerationRequest) -> Option<CacheStatus> {
    match cache.lookup(tenant, "gpt-4o", request, CacheMode::Use).await {
        Lookup::Hit { kind, .. } => Some(kind),
        _ => None,
    }
}

#[tokio::test]
async fn tenants_never_share_entries() {
    let cache = cache_with(CacheConfig::default());
    miss_then_store(&cache, "a", &ask(&[], "What is Rust?"), "A language.").await;
    assert_eq!(hit(&cache, "a", &ask(&[], "what is rust")).await, Some(CacheStatus::Exact));
    assert_eq!(hit(&cache, "b", &ask(&[], "What is Rust?")).await, None);
    assert_eq!(cache.stats("a").exact_hits, 1);
    assert_eq!(cache.stats("a").saved_output_tokens, 20);
}

#[tokio::test]
async fn context_system_prompt_and_family_are_walls() {
    let cache = cache_with(CacheConfig::default());
    let q = ask(&["Tell me about Paris", "Paris is…"], "How big is it?");
    miss_then_store(&cache, "a", &q, "105 km².").await;
    assert!(hit(&cache, "a", &q).await.is_some());
    assert_eq!(
        hit(&cache, "a", &ask(&["Tell me about Rome", "Rome is…"], "How big is it?")).await,
        None
    );
    assert_eq!(hit(&cache, "a", &ask(&[], "How big is it?")).await, None);
    let mut other_system = q.clone();
    other_system.system = Some("You are a pirate".into());
    assert_eq!(hit(&cache, "a", &other_system).await, None);
    assert!(matches!(
        cache.lookup("a", "claude-sonnet", &q, CacheMode::Use).await,
        Lookup::Miss { .. }
    ));
}

#[tokio::test]
async fn semantic_hits_are_verified() {
    let cache = cache_with(CacheConfig { similarity_threshold: 0.5, ..CacheConfig::default() });
    miss_then_store(&cache, "a", &ask(&[], "Please convert 30 miles to km"), "48.28 km").await;
    assert_eq!(
        hit(&cache, "a", &ask(&[], "convert 30 miles to km quickly")).await,
        Some(CacheStatus::Semantic)
    );
    // Same words, other direction: the neighbour is found and refused.
    assert_eq!(hit(&cache, "a", &ask(&[], "convert 30 km to miles")).await, None);
    assert!(cache.stats("a").rejected_by_verification >= 1);
}

#[tokio::test]
async fn opt_out_heat_and_switches_skip_the_cache() {
    let cache = cache_with(CacheConfig { max_temperature: 0.5, ..CacheConfig::default() });
    let q = ask(&[], "What is Rust?");
    miss_then_store(&cache, "a", &q, "A language.").await;
    assert!(matches!(cache.lookup("a", "gpt-4o", &q, CacheMode::Bypass).await, Lookup::Skip));
    let mut hot = q.clone();
    hot.temperature = Some(0.9);
    assert!(matches!(cache.lookup("a", "gpt-4o", &hot, CacheMode::Use).await, Lookup::Skip));
    cache.set_tenant(
        "a",
        TenantCacheConfig { exact: Some(false), semantic: Some(false), ..Default::default() },
    );
    assert!(matches!(cache.lookup("a", "gpt-4o", &q, CacheMode::Use).await, Lookup::Skip));
}

#[tokio::test]
async fn entries_expire() {
    let start = std::time::Instant::now();
    let elapsed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let offset = elapsed.clone();
    let clock = Arc::new(move || {
        start + Duration::from_secs(offset.load(std::sync::atomic::Ordering::Relaxed))
    });
    let cache =
        cache_with(CacheConfig { ttl_secs: 60, ..CacheConfig::default() }).with_clock(clock);
    let q = ask(&[], "What is Rust?");
    miss_then_store(&cache, "a", &q, "A language.").await;
    elapsed.store(59, std::sync::atomic::Ordering::Relaxed);
    assert!(hit(&cache, "a", &q).await.is_some());
    elapsed.store(61, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(hit(&cache, "a", &q).await, None);
    assert_eq!(cache.stats("a").entries, 0);
}

#[tokio::test]
async fn purge_and_size_bound() {
    let cache = cache_with(CacheConfig { max_entries_per_tenant: 2, ..CacheConfig::default() });
    for q in ["alpha question", "beta question", "gamma question"] {
        miss_then_store(&cache, "a", &ask(&[], q), "x").await;
    }
    assert_eq!(cache.stats("a").entries, 2);
    // The least recently used went first.
    assert_eq!(hit(&cache, "a", &ask(&[], "alpha question")).await, None);
    assert!(hit(&cache, "a", &ask(&[], "gamma question")).await.is_some());
    miss_then_store(&cache, "b", &ask(&[], "alpha question"), "x").await;
    assert_eq!(cache.purge("a").await.unwrap(), 2);
    assert_eq!(hit(&cache, "a", &ask(&[], "gamma question")).await, None);
    assert!(hit(&cache, "b", &ask(&[], "alpha question")).await.is_some());
}

/// A row as the table would return it for `question` asked in `tenant`.
async fn row(tenant: &str, question: &str, text: &str, space: &str) -> persist::LoadedRow {
    let key = key::key_for("gpt-4o", &ask(&[], question)).unwrap();
    let vector = BagOfWords.embed(question.to_owned()).await.unwrap();
    persist::LoadedRow {
        id: 1,
        tenant: tenant.into(),
        family: key.family,
        exact: key.exact,
        scope: key.scope,
        prompt: key.prompt,
        embedding: Some(vector),
        space: Some(space.into()),
        answer: answer(text),
        remaining: Duration::from_secs(60),
        hits: 0,
    }
}

#[tokio::test]
async fn loaded_rows_serve_both_tiers_under_their_own_tenant() {
    let cache = cache_with(CacheConfig { similarity_threshold: 0.5, ..CacheConfig::default() });
    let rows = vec![
        row("a", "Please convert 30 miles to km", "48.28 km", "test:bow").await,
        // Another model's vector: the entry serves the exact tier only.
        row("a", "What is the speed of light", "c", "other:model").await,
    ];
    assert!(cache.load(rows, cache.generation()));
    assert_eq!(cache.stats("a").entries, 2);
    assert_eq!(hit(&cache, "b", &ask(&[], "Please convert 30 miles to km")).await, None);
    assert_eq!(
        hit(&cache, "a", &ask(&[], "convert 30 miles to km quickly")).await,
        Some(CacheStatus::Semantic)
    );
    assert_eq!(
        hit(&cache, "a", &ask(&[], "what is the speed of light")).await,
        Some(CacheStatus::Exact)
    );
    assert_eq!(hit(&cache, "a", &ask(&[], "what is the speed of light please")).await, None);
    // A key this node holds keeps its own answer.
    let again = vec![row("a", "What is the speed of light", "other answer", "test:bow").await];
    assert!(cache.load(again, cache.generation()));
    match cache.lookup("a", "gpt-4o", &ask(&[], "What is the speed of light"), CacheMode::Use).await
    {
        Lookup::Hit { answer, .. } => assert_eq!(answer.text, "c"),
        _ => panic!("expected a hit"),
    }
}

#[tokio::test]
async fn a_page_read_before_a_purge_is_not_loaded_after_it() {
    let cache = cache_with(CacheConfig::default());
    let generation = cache.generation();
    // The page was read, then the tenant purged, then the page arrives.
    assert_eq!(cache.purge("a").await.unwrap(), 0);
    let stale = vec![row("a", "What is Rust?", "A language.", "test:bow").await];
    assert!(!cache.load(stale, generation));
    assert_eq!(cache.stats("a").entries, 0);
    assert_eq!(hit(&cache, "a", &ask(&[], "What is Rust?")).await, None);
}

#[tokio::test]
async fn expired_rows_are_not_loaded() {
    let cache = cache_with(CacheConfig::default());
    let mut expired = row("a", "What is Rust?", "A language.", "test:bow").await;
    expired.remaining = Duration::ZERO;
    assert!(cache.load(vec![expired], cache.generation()));
    assert_eq!(cache.stats("a").entries, 0);
}
