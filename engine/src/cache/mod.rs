//! The tenant-scoped response cache: answer a repeated question without calling a model,
//! and never answer a different question with it.
//!
//! - [`key`]: what a hit must agree on — tenant (separate maps), model family, effective
//!   system prompt, every prior turn, output limits — and the normalised question;
//! - exact tier: the normalised question's hash within that scope;
//! - semantic tier: the question's embedding ([`embed`]: local MiniLM via [`minilm`] and
//!   [`tokenizer`], or an OpenAI-compatible `/v1/embeddings`), the nearest cached questions
//!   of the same scope ([`index`]), then [`verify`], which rejects near-misses (negation,
//!   swapped entities or units, changed numbers, dates, scope) that cosine cannot see;
//! - [`runner`]: [`CachingRunner`], the `TurnRunner` decorator that serves hits as a live
//!   reply would stream and stores answers of turns that finished normally;
//! - [`http`]: `GET`/`DELETE /api/v1/cache` (stats, purge) for the caller's tenant;
//! - [`persist`]: with `[database]`, the entries in PostgreSQL — written off the turn's path,
//!   rebuilt into memory at start, synced between nodes, purged everywhere.
//!
//! Entries are served from memory per tenant with a TTL and a size bound (least recently
//! used evicted first). Every hit records the usage it saved through a [`SavingsRecorder`],
//! the hook the cost ledger plugs into.

pub mod embed;
pub mod http;
pub mod index;
pub mod key;
pub mod minilm;
pub mod persist;
pub mod runner;
pub mod tokenizer;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use actors::events::CacheStatus;
use actors::ports::llm::{FinishReason, GenerationRequest, Usage};
use actors::turn::CacheMode;
use serde::Serialize;
use std::time::Instant;

pub use embed::{Embedder, LocalEmbedder, OpenAiEmbedder};
pub use index::VectorIndex;
pub use key::{CacheKey, Scope};
pub use runner::CachingRunner;
pub use verify::{Verdict, VerifyPolicy};

use crate::config::{CacheConfig, TenantCacheConfig};

/// Nearest neighbours handed to verification; the first that passes is served.
const CANDIDATES: usize = 4;

/// The effective settings of one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicy {
    pub exact: bool,
    pub semantic: bool,
    pub similarity_threshold: f32,
    pub verify: VerifyPolicy,
    /// Turns sampled hotter than this are neither served nor stored (`None` counts as 1.0,
    /// the providers' default).
    pub max_temperature: f32,
    pub ttl: Duration,
    pub max_entries: usize,
}

impl TenantPolicy {
    fn from_config(config: &CacheConfig, tenant: Option<&TenantCacheConfig>) -> TenantPolicy {
        let t = tenant.cloned().unwrap_or_default();
        TenantPolicy {
            exact: t.exact.unwrap_or(config.exact),
            semantic: t.semantic.unwrap_or(config.semantic),
            similarity_threshold: t.similarity_threshold.unwrap_or(config.similarity_threshold),
            verify: VerifyPolicy {
                max_unmatched_terms: t.max_unmatched_terms.unwrap_or(config.max_unmatched_terms),
                strict_order: config.strict_order,
            },
            max_temperature: t.max_temperature.unwrap_or(config.max_temperature),
            ttl: Duration::from_secs(t.ttl_secs.unwrap_or(config.ttl_secs)),
            max_entries: t.max_entries.unwrap_or(config.max_entries_per_tenant),
        }
    }
}

/// Where the usage a hit saved goes (the cost ledger implements this).
pub trait SavingsRecorder: Send + Sync + 'static {
    /// A hit for `tenant` answered what `model` once answered for `would_be` usage.
    fn record(&self, tenant: &str, model: &str, would_be: Usage, kind: CacheStatus);
}

/// Counters of one tenant, as `GET /api/v1/cache` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub entries: usize,
    pub exact_hits: u64,
    pub semantic_hits: u64,
    pub misses: u64,
    /// Near neighbours the verification stage refused to serve.
    pub rejected_by_verification: u64,
    /// Tokens the hits did not spend upstream.
    pub saved_input_tokens: u64,
    pub saved_output_tokens: u64,
}

/// A cached answer.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    pub text: String,
    /// The model that produced it.
    pub model: String,
    pub finish_reason: FinishReason,
    /// What it cost when it was produced: what a hit saves.
    pub usage: Usage,
}

/// The result of a lookup.
pub enum Lookup {
    Hit {
        answer: CachedAnswer,
        kind: CacheStatus,
    },
    /// Not cached; store the answer under `key` (and `vector`) if the turn ends well.
    Miss {
        key: CacheKey,
        vector: Option<Vec<f32>>,
    },
    /// The cache does not apply to this turn (opted out, too hot, switched off, prefill).
    Skip,
}

struct Entry {
    scope: Scope,
    exact: key::Digest256,
    family: String,
    prompt: String,
    /// The vector space of the embedding in the index, if any.
    space: Option<String>,
    answer: CachedAnswer,
    expires: Instant,
    /// Position in the LRU order.
    tick: u64,
    hits: u64,
}

#[derive(Default)]
struct TenantCache {
    entries: HashMap<u64, Entry>,
    exact: HashMap<key::Digest256, u64>,
    indexes: HashMap<Scope, VectorIndex>,
    lru: BTreeMap<u64, u64>,
    stats: CacheStats,
}

impl TenantCache {
    fn remove(&mut self, id: u64) {
        if let Some(entry) = self.entries.remove(&id) {
            self.lru.remove(&entry.tick);
            if self.exact.get(&entry.exact) == Some(&id) {
                self.exact.remove(&entry.exact);
            }
            if let Some(index) = self.indexes.get_mut(&entry.scope) {
                index.remove(id);
                if index.is_empty() {
                    self.indexes.remove(&entry.scope);
                }
            }
        }
    }

    fn sweep_expired(&mut self, now: Instant) {
        let expired: Vec<u64> =
            self.entries.iter().filter(|(_, e)| e.expires <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.remove(id);
        }
    }

    /// Drops every entry; the counters stay.
    fn clear(&mut self) -> usize {
        let n = self.entries.len();
        self.entries.clear();
        self.exact.clear();
        self.indexes.clear();
        self.lru.clear();
        n
    }
}

/// Why a purge did not reach the database (the memory of this node is purged regardless).
#[derive(Debug, thiserror::Error)]
#[error("the cache could not be purged in the database: {0}")]
pub struct PurgeError(String);

/// The cache of every tenant on this node.
pub struct Cache {
    config: CacheConfig,
    embedder: Option<Arc<dyn Embedder>>,
    tenants: Mutex<HashMap<String, TenantCache>>,
    overrides: Mutex<HashMap<String, TenantCacheConfig>>,
    savings: Option<Arc<dyn SavingsRecorder>>,
    next_id: AtomicU64,
    /// The time source for TTLs (a test moves it forward).
    clock: Arc<dyn Fn() -> Instant + Send + Sync>,
    /// The table behind the memory, with `[database]`.
    persistence: OnceLock<persist::Persistence>,
    /// Bumped (under the `tenants` lock) by every purge, so a page of rows read from the
    /// table before a purge is not loaded after it.
    generation: AtomicU64,
}

impl Cache {
    pub fn new(config: CacheConfig, embedder: Option<Arc<dyn Embedder>>) -> Cache {
        Cache {
            config,
            embedder,
            tenants: Mutex::new(HashMap::new()),
            overrides: Mutex::new(HashMap::new()),
            savings: None,
            next_id: AtomicU64::new(1),
            clock: Arc::new(Instant::now),
            persistence: OnceLock::new(),
            generation: AtomicU64::new(0),
        }
    }

    /// Persists entries in PostgreSQL (`pool`, migrated) and rebuilds this node's maps from
    /// the table in the background, then keeps them in step with other nodes' writes and
    /// purges (see [`persist`]). Must run inside a Tokio runtime; a second call does nothing.
    pub fn persist(self: &Arc<Self>, pool: deadpool_postgres::Pool) {
        if self.persistence.get().is_none() {
            let _ = self.persistence.set(persist::Persistence::start(self, pool));
        }
    }

    /// Uses `clock` instead of the system's monotonic clock for TTLs.
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> Instant + Send + Sync>) -> Cache {
        self.clock = clock;
        self
    }

    /// Builds the cache from `[cache]`: loads the local model or connects the embeddings
    /// endpoint; with neither the semantic tier is off (said once, here).
    pub fn from_config(config: &CacheConfig, http: &reqwest::Client) -> anyhow::Result<Cache> {
        let embedder: Option<Arc<dyn Embedder>> = if let Some(dir) = &config.model_dir {
            let embedder = LocalEmbedder::load(dir)
                .map_err(|e| anyhow::anyhow!("cache.model_dir ({}): {e:#}", dir.display()))?;
            tracing::info!(
                model = embedder.space(),
                precision = embedder.model().precision(),
                "semantic cache: local embedding model loaded"
            );
            Some(Arc::new(embedder))
        } else if let Some(endpoint) = &config.embeddings {
            let embedder = OpenAiEmbedder::new(
                http.clone(),
                &endpoint.base_url,
                &endpoint.model,
                endpoint.api_key.clone(),
            );
            tracing::info!(
                model = embedder.space(),
                "semantic cache: embeddings endpoint configured"
            );
            Some(Arc::new(embedder))
        } else {
            if config.semantic {
                tracing::info!(
                    "semantic cache off: no embedding model (set cache.model_dir, \
                     SWITCHYARD_EMBEDDING_MODEL_DIR or cache.embeddings); the exact tier is on"
                );
            }
            None
        };
        Ok(Cache::new(config.clone(), embedder))
    }

    /// Sends every hit's saved usage to `recorder` too.
    pub fn with_savings(mut self, recorder: Arc<dyn SavingsRecorder>) -> Cache {
        self.savings = Some(recorder);
        self
    }

    /// Whether the semantic tier can run at all (an embedder is configured).
    pub fn semantic_available(&self) -> bool {
        self.embedder.is_some()
    }

    /// The settings in force for `tenant`.
    pub fn policy(&self, tenant: &str) -> TenantPolicy {
        let overrides = lock(&self.overrides);
        let configured = overrides.get(tenant).or_else(|| self.config.tenants.get(tenant));
        TenantPolicy::from_config(&self.config, configured)
    }

    /// Replaces `tenant`'s settings at run time (the per-tenant switch).
    pub fn set_tenant(&self, tenant: &str, settings: TenantCacheConfig) {
        lock(&self.overrides).insert(tenant.to_owned(), settings);
    }

    /// Looks `request` up for `tenant`.
    pub async fn lookup(
        &self,
        tenant: &str,
        model: &str,
        request: &GenerationRequest,
        mode: CacheMode,
    ) -> Lookup {
        let policy = self.policy(tenant);
        let semantic = policy.semantic && self.embedder.is_some();
        if mode == CacheMode::Bypass || !(policy.exact || semantic) {
            return Lookup::Skip;
        }
        if request.temperature.unwrap_or(1.0) > policy.max_temperature {
            return Lookup::Skip;
        }
        let Some(key) = key::key_for(model, request) else { return Lookup::Skip };
        let now = (self.clock)();
        if policy.exact {
            if let Some(answer) = self.exact_hit(tenant, &key, now) {
                metrics::counter!("switchyard_cache_lookups_total", "kind" => "exact", "result" => "hit")
                    .increment(1);
                return answer;
            }
            metrics::counter!("switchyard_cache_lookups_total", "kind" => "exact", "result" => "miss")
                .increment(1);
        }
        let vector = match (&self.embedder, semantic) {
            (Some(embedder), true) => match embedder.embed(key.prompt.clone()).await {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "semantic cache: embedding failed; treating as a miss");
                    None
                }
            },
            _ => None,
        };
        if let (Some(v), Some(embedder)) = (&vector, &self.embedder)
            && let Some(hit) = self.semantic_hit(tenant, &key, v, embedder.space(), &policy, now)
        {
            metrics::counter!("switchyard_cache_lookups_total", "kind" => "semantic", "result" => "hit")
                .increment(1);
            return hit;
        }
        if vector.is_some() {
            metrics::counter!("switchyard_cache_lookups_total", "kind" => "semantic", "result" => "miss")
                .increment(1);
        }
        let mut tenants = lock(&self.tenants);
        tenants.entry(tenant.to_owned()).or_default().stats.misses += 1;
        Lookup::Miss { key, vector }
    }

    fn exact_hit(&self, tenant: &str, key: &CacheKey, now: Instant) -> Option<Lookup> {
        let mut tenants = lock(&self.tenants);
        let t = tenants.get_mut(tenant)?;
        let id = *t.exact.get(&key.exact)?;
        if t.entries.get(&id).is_some_and(|e| e.expires <= now) {
            t.remove(id);
            return None;
        }
        let answer = self.touch(tenant, t, id)?;
        t.stats.exact_hits += 1;
        self.saved(t, tenant, &answer, CacheStatus::Exact);
        Some(Lookup::Hit { answer, kind: CacheStatus::Exact })
    }

    fn semantic_hit(
        &self,
        tenant: &str,
        key: &CacheKey,
        vector: &[f32],
        space: &str,
        policy: &TenantPolicy,
        now: Instant,
    ) -> Option<Lookup> {
        let mut tenants = lock(&self.tenants);
        let t = tenants.get_mut(tenant)?;
        let neighbours = t.indexes.get(&key.scope)?.search(vector, CANDIDATES);
        for (id, similarity) in neighbours {
            if similarity < policy.similarity_threshold {
                break;
            }
            let Some(entry) = t.entries.get(&id) else { continue };
            if entry.expires <= now {
                t.remove(id);
                continue;
            }
            if entry.space.as_deref() != Some(space) {
                continue;
            }
            match verify::verify(&entry.prompt, &key.prompt, &policy.verify) {
                Verdict::Same => {
                    let answer = self.touch(tenant, t, id)?;
                    t.stats.semantic_hits += 1;
                    self.saved(t, tenant, &answer, CacheStatus::Semantic);
                    return Some(Lookup::Hit { answer, kind: CacheStatus::Semantic });
                }
                Verdict::Different(reason) => {
                    t.stats.rejected_by_verification += 1;
                    tracing::debug!(
                        tenant,
                        similarity,
                        reason,
                        "semantic cache: near miss refused"
                    );
                }
            }
        }
        None
    }

    /// Marks entry `id` used now (here and, queued, in the table) and returns its answer.
    fn touch(&self, tenant: &str, t: &mut TenantCache, id: u64) -> Option<CachedAnswer> {
        let tick = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = t.entries.get_mut(&id)?;
        t.lru.remove(&entry.tick);
        entry.tick = tick;
        entry.hits += 1;
        t.lru.insert(tick, id);
        if let Some(persistence) = self.persistence.get() {
            persistence.send(persist::Write::Hit {
                tenant: tenant.to_owned(),
                family: entry.family.clone(),
                key_hash: persist::hex(&entry.exact),
            });
        }
        Some(entry.answer.clone())
    }

    fn saved(&self, t: &mut TenantCache, tenant: &str, answer: &CachedAnswer, kind: CacheStatus) {
        t.stats.saved_input_tokens += answer.usage.input_tokens;
        t.stats.saved_output_tokens += answer.usage.output_tokens;
        if let Some(recorder) = &self.savings {
            recorder.record(tenant, &answer.model, answer.usage, kind);
        }
    }

    /// Stores the answer of a turn that missed (and queues it for the table).
    pub fn store(
        &self,
        tenant: &str,
        key: CacheKey,
        vector: Option<Vec<f32>>,
        answer: CachedAnswer,
    ) {
        if answer.text.trim().is_empty() {
            return;
        }
        let policy = self.policy(tenant);
        if policy.max_entries == 0 {
            return;
        }
        let now = (self.clock)();
        let space = match (&vector, &self.embedder) {
            (Some(_), Some(e)) => Some(e.space().to_owned()),
            _ => None,
        };
        let row = self.persistence.get().map(|_| persist::NewRow {
            tenant: tenant.to_owned(),
            family: key.family.clone(),
            exact: key.exact,
            scope: key.scope,
            prompt: key.prompt.clone(),
            embedding: None,
            space: space.clone(),
            answer: answer.clone(),
            ttl: policy.ttl,
            max_entries: policy.max_entries,
        });
        let entry = Entry {
            scope: key.scope,
            exact: key.exact,
            family: key.family,
            prompt: key.prompt,
            space,
            answer,
            expires: now + policy.ttl,
            tick: 0,
            hits: 0,
        };
        let mut tenants = lock(&self.tenants);
        let t = tenants.entry(tenant.to_owned()).or_default();
        // The same question answered again replaces the older answer.
        if let Some(old) = t.exact.get(&key.exact).copied() {
            t.remove(old);
        }
        self.insert(t, &policy, now, entry, vector.as_deref());
        drop(tenants);
        if let (Some(persistence), Some(mut row)) = (self.persistence.get(), row) {
            row.embedding = vector;
            persistence.send(persist::Write::Insert(Box::new(row)));
        }
    }

    /// Files `entry` (and its vector) in `t`, evicting expired, then least recently used
    /// entries beyond the tenant's cap.
    fn insert(
        &self,
        t: &mut TenantCache,
        policy: &TenantPolicy,
        now: Instant,
        mut entry: Entry,
        vector: Option<&[f32]>,
    ) {
        if t.entries.len() >= policy.max_entries {
            t.sweep_expired(now);
        }
        while t.entries.len() >= policy.max_entries {
            let Some((_, oldest)) = t.lru.pop_first() else { break };
            t.remove(oldest);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(v) = vector {
            t.indexes.entry(entry.scope).or_insert_with(|| VectorIndex::new(v.len())).insert(id, v);
        }
        entry.tick = id;
        t.exact.insert(entry.exact, id);
        t.lru.insert(id, id);
        t.entries.insert(id, entry);
    }

    /// Loads rows read from the table (the rebuild, another node's writes). A key this node
    /// already holds keeps its entry; a vector of another space than this node's embedder
    /// is not indexed (its entry still serves the exact tier). Nothing is loaded, and false
    /// returned, when a purge ran since `generation` was read.
    pub fn load(&self, rows: Vec<persist::LoadedRow>, generation: u64) -> bool {
        let now = (self.clock)();
        let space = self.embedder.as_ref().map(|e| e.space().to_owned());
        let mut policies: HashMap<String, TenantPolicy> = HashMap::new();
        let mut tenants = lock(&self.tenants);
        if self.generation.load(Ordering::Acquire) != generation {
            return false;
        }
        for row in rows {
            if row.remaining.is_zero() {
                continue;
            }
            let policy =
                policies.entry(row.tenant.clone()).or_insert_with(|| self.policy(&row.tenant));
            if policy.max_entries == 0 {
                continue;
            }
            let t = tenants.entry(row.tenant).or_default();
            if let Some(id) = t.exact.get(&row.exact).copied() {
                if t.entries.get(&id).is_some_and(|e| e.expires > now) {
                    continue;
                }
                t.remove(id);
            }
            let vector = row.embedding.filter(|_| row.space.is_some() && row.space == space);
            let entry = Entry {
                scope: row.scope,
                exact: row.exact,
                family: row.family,
                prompt: row.prompt,
                space: if vector.is_some() { row.space } else { None },
                answer: row.answer,
                expires: now + row.remaining,
                tick: 0,
                hits: row.hits,
            };
            self.insert(t, policy, now, entry, vector.as_deref());
        }
        true
    }

    /// The purge generation (see [`Cache::load`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Drops every entry of `tenant` on this node; returns how many there were.
    pub fn purge_local(&self, tenant: &str) -> usize {
        let mut tenants = lock(&self.tenants);
        self.generation.fetch_add(1, Ordering::AcqRel);
        tenants.get_mut(tenant).map_or(0, TenantCache::clear)
    }

    /// Drops every entry of every tenant on this node (before a full rebuild).
    pub fn clear_all(&self) {
        let mut tenants = lock(&self.tenants);
        self.generation.fetch_add(1, Ordering::AcqRel);
        tenants.values_mut().for_each(|t| {
            t.clear();
        });
    }

    /// Purges `tenant`'s cache: this node's memory, and with a database the table (after
    /// every write queued before) and, through a marker, every other node's memory. Returns
    /// how many entries were purged (with a database: the rows deleted).
    pub async fn purge(&self, tenant: &str) -> Result<usize, PurgeError> {
        let local = self.purge_local(tenant);
        let Some(persistence) = self.persistence.get() else { return Ok(local) };
        let rows = persistence.purge(tenant).await.map_err(PurgeError)?;
        // Rows read from the table between the first purge and the delete are dropped too.
        self.purge_local(tenant);
        Ok(usize::try_from(rows).unwrap_or(usize::MAX).max(local))
    }

    pub fn stats(&self, tenant: &str) -> CacheStats {
        let tenants = lock(&self.tenants);
        match tenants.get(tenant) {
            Some(t) => CacheStats { entries: t.entries.len(), ..t.stats.clone() },
            None => CacheStats::default(),
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain maps; the cache
/// stays usable (the worst case is one odd entry), so take the data rather than fail turns.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
