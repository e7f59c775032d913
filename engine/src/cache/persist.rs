//! The response cache in PostgreSQL (`semantic_cache`, V8 + V12; purge markers in
//! `cache_purges`): answers survive a restart and are shared by every node on the database.
//!
//! Memory stays the serving copy — a lookup never waits for the database. This module keeps
//! the table and the node's maps in step:
//!
//! - **Writes** never sit on a turn's path. [`Cache::store`](super::Cache::store) and every
//!   hit hand a [`Write`] to a bounded channel with `try_send`: when it is full the write is
//!   dropped and counted (`switchyard_cache_persist_dropped_total`) — the entry stays in this
//!   node's memory, only its copy in the table is lost. One writer task drains the channel in
//!   batches (whatever is queued, up to [`MAX_BATCH`], gathered for at most [`BATCH_WINDOW`])
//!   under a deadline: inserts (the same question answered again replaces the row and gives it
//!   a new id, so other nodes see it), then hit counts and `last_used_at`, then each written
//!   tenant's cap — rows beyond the tenant's `max_entries`, least recently used first, are
//!   deleted. Every [`MAINTENANCE_EVERY`] it deletes expired rows and old purge markers.
//! - **Reads**: at start a reader task rebuilds the node's exact maps and vector indexes from
//!   the non-expired rows, page by page, in the background (the node serves meanwhile; the
//!   rows arrive as misses turn into hits). Then every [`SYNC_EVERY`] it loads the rows other
//!   nodes wrote since (ids above the last it saw; and, because sequence ids commit out of
//!   order, the ids of rows created in the last [`SYNC_OVERLAP`] are listed and those it has
//!   not loaded fetched) and the purge markers.
//!   Expiry comes from the row (`expires_at - now()` on the database's clock), so a row's TTL
//!   is the one its writer's tenant policy set, and nodes with skewed clocks agree.
//! - **Purge** (`DELETE /api/v1/cache`) goes through the writer's queue, so writes queued
//!   before it land first and are purged too: one transaction deletes the tenant's rows and
//!   leaves a marker; every node drops that tenant's entries when its sync reads the marker,
//!   and reloads what was written after. A purge also bumps the cache's generation, and a
//!   page read before the bump is discarded rather than loaded, so rows read just before the
//!   delete never come back.
//!
//! Tenant-facing statements (insert, hits, cap, purge, a tenant's reload) filter by
//! `tenant_id`; the rebuild, the sync and the expiry sweep read every tenant's rows by design
//! and file each row under its own tenant.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actors::ports::llm::{FinishReason, Usage};
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::key::{Digest256, Scope};
use super::{Cache, CachedAnswer};

/// Writes queued for the writer task; beyond this they are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Most writes applied in one batch.
pub const MAX_BATCH: usize = 256;
/// How long the writer gathers writes after the first of a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Bound on one batch, one page, one maintenance round (the connections' `statement_timeout`
/// bounds each statement; this bounds the pool wait and a partitioned network).
pub const DEADLINE: Duration = Duration::from_secs(15);
/// How often a node loads rows other nodes wrote and the purge markers.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);
/// Rows created this recently are read again by every sync (see the module doc).
pub const SYNC_OVERLAP: Duration = Duration::from_secs(10);
/// Expired rows and old purge markers are deleted this often.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);
/// Rows read per page when rebuilding.
pub const PAGE: i64 = 2000;
/// Most expired rows deleted per maintenance round (the rest go next round).
const EXPIRED_PER_ROUND: i64 = 10_000;
/// A node whose sync failed for longer than this may have missed a marker (they are kept a
/// week): it drops everything and rebuilds.
const MARKERS_KEPT_FOR_SYNC: Duration = Duration::from_secs(24 * 3600);

/// One write for the table.
pub enum Write {
    Insert(Box<NewRow>),
    /// A hit: count it and mark the row used now (the cap deletes least recently used rows).
    Hit {
        tenant: String,
        family: String,
        key_hash: String,
    },
    /// Delete the tenant's rows and leave a marker; answers how many rows there were.
    Purge {
        tenant: String,
        done: oneshot::Sender<Result<u64, String>>,
    },
}

/// An entry as it is inserted.
pub struct NewRow {
    pub tenant: String,
    pub family: String,
    pub exact: Digest256,
    pub scope: Scope,
    pub prompt: String,
    pub embedding: Option<Vec<f32>>,
    pub space: Option<String>,
    pub answer: CachedAnswer,
    pub ttl: Duration,
    /// The tenant's cap, applied to the table after the insert.
    pub max_entries: usize,
}

/// An entry as the table returns it.
pub struct LoadedRow {
    pub id: i64,
    pub tenant: String,
    pub family: String,
    pub exact: Digest256,
    pub scope: Scope,
    pub prompt: String,
    pub embedding: Option<Vec<f32>>,
    pub space: Option<String>,
    pub answer: CachedAnswer,
    /// Time left before `expires_at`, on the database's clock.
    pub remaining: Duration,
    pub hits: u64,
}

/// The `response` column.
#[derive(Debug, Serialize, Deserialize)]
struct StoredAnswer {
    text: String,
    model: String,
    finish_reason: FinishReason,
    usage: Usage,
}

/// The sending end the cache holds.
pub struct Persistence {
    writes: mpsc::Sender<Write>,
}

impl Persistence {
    /// Starts the writer and the reader (rebuild, then sync) for `cache` on `pool`. Both
    /// tasks hold the cache weakly and end when it is dropped.
    pub fn start(cache: &Arc<Cache>, pool: Pool) -> Persistence {
        let (writes, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(pool.clone(), queue, Arc::downgrade(cache)));
        tokio::spawn(read_loop(pool, Arc::downgrade(cache)));
        Persistence { writes }
    }

    /// Queues `write` unless the queue is full (then it is dropped and counted).
    pub fn send(&self, write: Write) {
        if let Err(error) = self.writes.try_send(write) {
            metrics::counter!("switchyard_cache_persist_dropped_total").increment(1);
            if matches!(error, mpsc::error::TrySendError::Closed(_)) {
                tracing::warn!("cache persistence: the writer is gone; entry kept in memory only");
            }
        }
    }

    /// Purges `tenant`'s rows after every write queued before; the number of rows deleted.
    pub async fn purge(&self, tenant: &str) -> Result<u64, String> {
        let (done, answer) = oneshot::channel();
        let write = Write::Purge { tenant: tenant.to_owned(), done };
        tokio::time::timeout(DEADLINE, self.writes.send(write))
            .await
            .map_err(|_| "the cache writer is overloaded".to_owned())?
            .map_err(|_| "the cache writer is gone".to_owned())?;
        tokio::time::timeout(DEADLINE * 2, answer)
            .await
            .map_err(|_| "the purge timed out".to_owned())?
            .map_err(|_| "the cache writer is gone".to_owned())?
    }
}

pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn digest(hex: &str) -> Option<Digest256> {
    data_encoding::HEXLOWER.decode(hex.as_bytes()).ok()?.try_into().ok()
}

// ---------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------

const INSERT: &str = "\
INSERT INTO semantic_cache (tenant_id, model_family, key_hash, scope_hash, prompt, embedding,
    space, response, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))
ON CONFLICT (tenant_id, model_family, key_hash) DO UPDATE SET
    id = nextval(pg_get_serial_sequence('semantic_cache', 'id')),
    scope_hash = EXCLUDED.scope_hash, prompt = EXCLUDED.prompt, embedding = EXCLUDED.embedding,
    space = EXCLUDED.space, response = EXCLUDED.response, expires_at = EXCLUDED.expires_at,
    created_at = now(), last_used_at = now(), hits = 0";

const HITS: &str = "\
UPDATE semantic_cache AS c SET hits = c.hits + h.n, last_used_at = now()
FROM unnest($2::text[], $3::text[], $4::int8[]) AS h(family, key_hash, n)
WHERE c.tenant_id = $1 AND c.model_family = h.family AND c.key_hash = h.key_hash";

/// Rows of one tenant beyond its cap, least recently used first.
const CAP: &str = "\
DELETE FROM semantic_cache WHERE tenant_id = $1 AND id IN (
    SELECT id FROM semantic_cache WHERE tenant_id = $1
    ORDER BY last_used_at DESC, id DESC OFFSET $2)";

async fn write_loop(pool: Pool, mut queue: mpsc::Receiver<Write>, cache: Weak<Cache>) {
    let mut maintenance = tokio::time::interval(MAINTENANCE_EVERY);
    maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            first = queue.recv() => {
                let Some(first) = first else { break };
                let mut batch = vec![first];
                let window = tokio::time::sleep(BATCH_WINDOW);
                tokio::pin!(window);
                // A purge is awaited by an admin: apply it without gathering more.
                while batch.len() < MAX_BATCH && !matches!(batch.last(), Some(Write::Purge { .. })) {
                    tokio::select! {
                        next = queue.recv() => match next {
                            Some(next) => batch.push(next),
                            None => break,
                        },
                        () = &mut window => break,
                    }
                }
                apply(&pool, batch).await;
            }
            _ = maintenance.tick() => {
                if cache.strong_count() == 0 {
                    break;
                }
                if let Err(error) = tokio::time::timeout(DEADLINE, maintain(&pool)).await.unwrap_or_else(|_| Err("timed out".into())) {
                    tracing::warn!(%error, "cache persistence: expiry sweep failed; retrying next round");
                }
            }
        }
    }
}

/// Inserts and hits gathered between purges.
#[derive(Default)]
struct Pending {
    inserts: Vec<NewRow>,
    /// tenant → (family, key) → hits
    hits: BTreeMap<String, HashMap<(String, String), i64>>,
}

async fn apply(pool: &Pool, batch: Vec<Write>) {
    let mut pending = Pending::default();
    for write in batch {
        match write {
            Write::Insert(row) => pending.inserts.push(*row),
            Write::Hit { tenant, family, key_hash } => {
                *pending.hits.entry(tenant).or_default().entry((family, key_hash)).or_default() +=
                    1;
            }
            Write::Purge { tenant, done } => {
                flush(pool, std::mem::take(&mut pending)).await;
                let result = tokio::time::timeout(DEADLINE, purge(pool, &tenant))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
                if let Err(error) = &result {
                    tracing::warn!(tenant, %error, "cache persistence: purge failed");
                }
                let _ = done.send(result);
            }
        }
    }
    flush(pool, pending).await;
}

async fn flush(pool: &Pool, pending: Pending) {
    if pending.inserts.is_empty() && pending.hits.is_empty() {
        return;
    }
    let rows = pending.inserts.len();
    let result = tokio::time::timeout(DEADLINE, write(pool, pending))
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    if let Err(error) = result {
        metrics::counter!("switchyard_cache_persist_errors_total").increment(1);
        tracing::warn!(%error, rows, "cache persistence: a batch was not written; the entries stay in memory");
    }
}

async fn write(pool: &Pool, pending: Pending) -> Result<(), String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    // Each written tenant's cap, applied last so this batch's hits count as uses.
    let mut caps: BTreeMap<&str, usize> = BTreeMap::new();
    if !pending.inserts.is_empty() {
        let insert = tx.prepare_cached(INSERT).await.map_err(|e| e.to_string())?;
        // Pipelined: one round trip's wait for the whole batch.
        let statements = pending.inserts.iter().map(|row| {
            caps.insert(&row.tenant, row.max_entries);
            let answer = StoredAnswer {
                text: row.answer.text.clone(),
                model: row.answer.model.clone(),
                finish_reason: row.answer.finish_reason,
                usage: row.answer.usage,
            };
            let (tx, insert) = (&tx, &insert);
            async move {
                tx.execute(
                    insert,
                    &[
                        &row.tenant,
                        &row.family,
                        &hex(&row.exact),
                        &hex(&row.scope.0),
                        &row.prompt,
                        &row.embedding,
                        &row.space,
                        &Json(&answer),
                        &row.ttl.as_secs_f64(),
                    ],
                )
                .await
            }
        });
        futures_util::future::try_join_all(statements).await.map_err(|e| e.to_string())?;
    }
    if !pending.hits.is_empty() {
        let hits = tx.prepare_cached(HITS).await.map_err(|e| e.to_string())?;
        for (tenant, counts) in &pending.hits {
            let mut families = Vec::with_capacity(counts.len());
            let mut keys = Vec::with_capacity(counts.len());
            let mut ns = Vec::with_capacity(counts.len());
            for ((family, key), n) in counts {
                families.push(family.as_str());
                keys.push(key.as_str());
                ns.push(*n);
            }
            tx.execute(&hits, &[tenant, &families, &keys, &ns]).await.map_err(|e| e.to_string())?;
        }
    }
    if !caps.is_empty() {
        let cap = tx.prepare_cached(CAP).await.map_err(|e| e.to_string())?;
        for (tenant, max_entries) in caps {
            let max_entries = i64::try_from(max_entries).unwrap_or(i64::MAX);
            tx.execute(&cap, &[&tenant, &max_entries]).await.map_err(|e| e.to_string())?;
        }
    }
    tx.commit().await.map_err(|e| e.to_string())
}

async fn purge(pool: &Pool, tenant: &str) -> Result<u64, String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    let deleted = tx
        .execute("DELETE FROM semantic_cache WHERE tenant_id = $1", &[&tenant])
        .await
        .map_err(|e| e.to_string())?;
    tx.execute("INSERT INTO cache_purges (tenant_id) VALUES ($1)", &[&tenant])
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(deleted)
}

async fn maintain(pool: &Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let expired = client
        .execute(
            "DELETE FROM semantic_cache WHERE id IN (
                 SELECT id FROM semantic_cache WHERE expires_at <= now() LIMIT $1)",
            &[&EXPIRED_PER_ROUND],
        )
        .await
        .map_err(|e| e.to_string())?;
    client
        .execute("DELETE FROM cache_purges WHERE purged_at < now() - interval '7 days'", &[])
        .await
        .map_err(|e| e.to_string())?;
    if expired > 0 {
        tracing::debug!(expired, "cache persistence: expired rows deleted");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The reader
// ---------------------------------------------------------------------------------------

const COLUMNS: &str = "id, tenant_id, model_family, key_hash, scope_hash, prompt, embedding, \
    space, response, EXTRACT(EPOCH FROM expires_at - now())::float8, hits";

/// How far the reader got.
#[derive(Debug, Default)]
struct Cursor {
    /// Highest row id loaded.
    row: i64,
    /// Highest purge marker seen.
    purge: i64,
    /// Ids loaded in the last [`SYNC_OVERLAP`] and a bit: a late row is fetched only if not
    /// among them.
    recent: Recent,
}

#[derive(Debug, Default)]
struct Recent {
    ids: HashSet<i64>,
    order: VecDeque<(Instant, i64)>,
}

impl Recent {
    fn add(&mut self, id: i64) {
        if self.ids.insert(id) {
            self.order.push_back((Instant::now(), id));
        }
    }

    fn forget_older_than(&mut self, age: Duration) {
        while let Some((at, id)) = self.order.front().copied() {
            if at.elapsed() <= age {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&id);
        }
    }
}

async fn read_loop(pool: Pool, cache: Weak<Cache>) {
    let mut cursor = loop {
        let started = Instant::now();
        match rebuild(&pool, &cache).await {
            Ok((cursor, loaded)) => {
                tracing::info!(
                    loaded,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "response cache rebuilt from PostgreSQL"
                );
                break cursor;
            }
            Err(error) => {
                if cache.strong_count() == 0 {
                    return;
                }
                tracing::warn!(%error, "response cache rebuild failed; retrying");
                tokio::time::sleep(SYNC_EVERY).await;
            }
        }
    };
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if cache.strong_count() == 0 {
            return;
        }
        if last_ok.elapsed() > MARKERS_KEPT_FOR_SYNC {
            // Markers this node never read may be gone: start over.
            if let Some(cache) = cache.upgrade() {
                cache.clear_all();
            }
            match rebuild(&pool, &cache).await {
                Ok((fresh, _)) => {
                    cursor = fresh;
                    last_ok = Instant::now();
                }
                Err(error) => tracing::warn!(%error, "response cache rebuild failed; retrying"),
            }
            continue;
        }
        match sync(&pool, &cache, &mut cursor).await {
            Ok(()) => last_ok = Instant::now(),
            Err(error) => tracing::warn!(%error, "response cache sync failed; retrying"),
        }
    }
}

/// Loads every non-expired row; the cursor to sync from and how many rows were loaded.
async fn rebuild(pool: &Pool, cache: &Weak<Cache>) -> Result<(Cursor, usize), String> {
    let purge = tokio::time::timeout(DEADLINE, async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        let row = client
            .query_one("SELECT COALESCE(max(id), 0) FROM cache_purges", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok::<i64, String>(row.get(0))
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()))?;
    let mut cursor = Cursor { row: 0, purge, recent: Recent::default() };
    let loaded = load_pages(pool, cache, None, &mut cursor.row, &mut cursor.recent).await?;
    Ok((cursor, loaded))
}

/// Loads rows with ids above `after` (of `tenant`, or of all), page by page; moves `after`.
async fn load_pages(
    pool: &Pool,
    cache: &Weak<Cache>,
    tenant: Option<&str>,
    after: &mut i64,
    recent: &mut Recent,
) -> Result<usize, String> {
    let sql = match tenant {
        Some(_) => format!(
            "SELECT {COLUMNS} FROM semantic_cache
             WHERE tenant_id = $3 AND id > $1 AND expires_at > now() ORDER BY id LIMIT $2"
        ),
        None => format!(
            "SELECT {COLUMNS} FROM semantic_cache
             WHERE id > $1 AND expires_at > now() ORDER BY id LIMIT $2"
        ),
    };
    let mut loaded = 0;
    loop {
        let Some(generation) = cache.upgrade().map(|c| c.generation()) else { return Ok(loaded) };
        let rows = tokio::time::timeout(DEADLINE, async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            let statement = client.prepare_cached(&sql).await.map_err(|e| e.to_string())?;
            match tenant {
                Some(t) => client.query(&statement, &[&*after, &PAGE, &t]).await,
                None => client.query(&statement, &[&*after, &PAGE]).await,
            }
            .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()))?;
        let full = rows.len() as i64 == PAGE;
        let Some(last) = rows.last().map(|r| r.get::<_, i64>(0)) else { return Ok(loaded) };
        let ids: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
        let n = rows.len();
        if !install(cache, rows, generation).await? {
            // A purge ran meanwhile: this page may hold purged rows; read it again.
            continue;
        }
        *after = last;
        ids.into_iter().for_each(|id| recent.add(id));
        loaded += n;
        if !full {
            return Ok(loaded);
        }
    }
}

/// Decodes `rows` and loads them into the cache, off the async threads (a page is a few
/// milliseconds of CPU). False when a purge bumped the generation since `generation`.
async fn install(cache: &Weak<Cache>, rows: Vec<Row>, generation: u64) -> Result<bool, String> {
    let Some(cache) = cache.upgrade() else { return Ok(true) };
    tokio::task::spawn_blocking(move || {
        let decoded: Vec<LoadedRow> = rows.iter().filter_map(decode).collect();
        cache.load(decoded, generation)
    })
    .await
    .map_err(|e| e.to_string())
}

fn decode(row: &Row) -> Option<LoadedRow> {
    let decoded = (|| {
        let Json(answer): Json<StoredAnswer> = row.try_get(8)?;
        let remaining: f64 = row.try_get(9)?;
        Ok::<_, tokio_postgres::Error>(LoadedRow {
            id: row.try_get(0)?,
            tenant: row.try_get(1)?,
            family: row.try_get(2)?,
            exact: digest(row.try_get(3)?).unwrap_or_default(),
            scope: Scope(digest(row.try_get(4)?).unwrap_or_default()),
            prompt: row.try_get(5)?,
            embedding: row.try_get(6)?,
            space: row.try_get(7)?,
            answer: CachedAnswer {
                text: answer.text,
                model: answer.model,
                finish_reason: answer.finish_reason,
                usage: answer.usage,
            },
            remaining: Duration::try_from_secs_f64(remaining).unwrap_or_default(),
            hits: u64::try_from(row.try_get::<_, i64>(10)?).unwrap_or_default(),
        })
    })();
    match decoded {
        // An all-zero digest means the hex did not decode: never file a row under it.
        Ok(row) if row.exact != Digest256::default() && row.scope.0 != Digest256::default() => {
            Some(row)
        }
        Ok(row) => {
            tracing::warn!(id = row.id, "cache persistence: a row with a malformed key skipped");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "cache persistence: an undecodable row skipped");
            None
        }
    }
}

/// Purge markers, then rows written since the cursor.
async fn sync(pool: &Pool, cache: &Weak<Cache>, cursor: &mut Cursor) -> Result<(), String> {
    let markers = tokio::time::timeout(DEADLINE, async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .query(
                "SELECT id, tenant_id FROM cache_purges WHERE id > $1 ORDER BY id",
                &[&cursor.purge],
            )
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()))?;
    let mut purged: Vec<String> = Vec::new();
    for marker in &markers {
        let tenant: String = marker.get(1);
        if !purged.contains(&tenant) {
            purged.push(tenant);
        }
    }
    for tenant in &purged {
        let Some(strong) = cache.upgrade() else { return Ok(()) };
        strong.purge_local(tenant);
        drop(strong);
        // What was written after the purge.
        let mut after = 0;
        load_pages(pool, cache, Some(tenant), &mut after, &mut cursor.recent).await?;
    }
    if let Some(last) = markers.last() {
        cursor.purge = last.get(0);
    }
    // Rows that committed late under ids below the cursor: their ids first (cheap), then
    // the rows this node has not loaded.
    cursor.recent.forget_older_than(SYNC_OVERLAP + 2 * SYNC_EVERY);
    let (overlap, below) = (SYNC_OVERLAP.as_secs_f64(), cursor.row);
    let late = query(pool, |client| async move {
        let statement = client
            .prepare_cached(
                "SELECT id FROM semantic_cache
                 WHERE created_at > now() - make_interval(secs => $1) AND id <= $2
                   AND expires_at > now()",
            )
            .await?;
        client.query(&statement, &[&overlap, &below]).await
    })
    .await?;
    let missing: Vec<i64> = late
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .filter(|id| !cursor.recent.ids.contains(id))
        .collect();
    if !missing.is_empty() {
        // Taken before the query runs.
        let Some(generation) = cache.upgrade().map(|c| c.generation()) else { return Ok(()) };
        let wanted = missing.clone();
        let rows = query(pool, |client| async move {
            let sql = format!(
                "SELECT {COLUMNS} FROM semantic_cache WHERE id = ANY($1) AND expires_at > now()"
            );
            let statement = client.prepare_cached(&sql).await?;
            client.query(&statement, &[&wanted]).await
        })
        .await?;
        // Discarded on a concurrent purge: then the next sync fetches them again.
        if install(cache, rows, generation).await? {
            missing.into_iter().for_each(|id| cursor.recent.add(id));
        }
    }
    load_pages(pool, cache, None, &mut cursor.row, &mut cursor.recent).await?;
    Ok(())
}

/// Runs `f` on a pooled connection under [`DEADLINE`].
async fn query<F, Fut>(pool: &Pool, f: F) -> Result<Vec<Row>, String>
where
    F: FnOnce(deadpool_postgres::Object) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Row>, tokio_postgres::Error>>,
{
    tokio::time::timeout(DEADLINE, async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        f(client).await.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()))
}
