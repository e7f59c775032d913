//! [`PgConversationStore`]: the conversation store on PostgreSQL (tables from
//! `migrations/` V3–V4).
//!
//! * Every query filters by `tenant_id` (the first column of every key), so another
//!   tenant's id is simply `NotFound`.
//! * Statements are prepared once per pooled connection (`prepare_cached`).
//! * Every call is bounded twice: the server's `statement_timeout` (set per connection) and a
//!   client-side deadline around the whole call (pool wait, connect, query), because a
//!   partitioned network never answers at all. Both become `StoreError::Unavailable`, and
//!   the pool reconnects by itself when the database is back.
//! * Writes are single statements (data-modifying CTEs), so each is atomic without an
//!   explicit transaction, and the reply writes are idempotent: a checkpoint or finish whose
//!   commit was applied but whose answer was lost (timeout, cut connection) is retried by the
//!   actor; the retry sees `last_seq` already reached (or the reply already closed) and
//!   changes nothing, so text is never appended twice.
//! * [`PgConversationStore::sweep_interrupted`] closes replies left `streaming` by a node
//!   that died, for conversations nobody opens again (opened ones are recovered by their
//!   actor): a live reply writes at least every `checkpoint_heartbeat`, so one untouched for
//!   `stale_after` is dead.

use std::sync::Arc;
use std::time::Duration;

use actors::events::CacheStatus;
use actors::ports::llm::{FinishReason, Role, Usage};
use actors::ports::store::{
    AssistantOutcome, AssistantProgress, Conversation, ConversationPage, ConversationSettings,
    ConversationStore, EventsPage, ListQuery, LoadedConversation, MESSAGES_PER_PAGE, MessageStatus,
    NewUserMessage, StoreError, StoreFuture, StoredError, StoredMessage, StreamSwitch,
    page_of_events,
};
use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::FutureExt;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{NoTls, Row};

use super::checkpoints::{Checkpoint, CheckpointQueue};
use crate::config::DatabaseConfig;

/// The conversation store on PostgreSQL. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgConversationStore {
    pool: Pool,
    /// Client-side bound on one whole call.
    deadline: Duration,
    /// Every conversation's mid-stream checkpoints, written together.
    checkpoints: Arc<CheckpointQueue>,
}

impl std::fmt::Debug for PgConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("PgConversationStore").finish_non_exhaustive()
    }
}

/// A database failure as the port reports it. Server messages are ours (SQL errors), never
/// the connection string.
pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("database: {e}"))
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// An enum's snake_case wire name (the form the CHECK constraints list).
fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn parse_name<T: DeserializeOwned>(name: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| StoreError::Unavailable(format!("database: unexpected value `{name}`")))
}

const CONVERSATION_COLUMNS: &str = "id, owner_id, settings, last_seq, seq_reserved, \
     (extract(epoch FROM created_at) * 1000)::int8, (extract(epoch FROM updated_at) * 1000)::int8";

const MESSAGE_COLUMNS: &str = "id, role, status, client_id, user_id, reply_to, text, \
     delta_ends, switches, foreign_seqs, model, input_tokens, output_tokens, finish_reason, \
     error_code, error_message, cost_micros, cache, first_seq, GREATEST(last_seq, streamed_seq), \
     (extract(epoch FROM created_at) * 1000)::int8";

fn conversation_from(tenant_id: &str, row: &Row) -> Result<Conversation, StoreError> {
    let settings: Json<ConversationSettings> = row.try_get(2).map_err(unavailable)?;
    Ok(Conversation {
        id: row.try_get(0).map_err(unavailable)?,
        tenant_id: tenant_id.to_owned(),
        owner_id: row.try_get(1).map_err(unavailable)?,
        settings: settings.0,
        last_seq: to_u64(row.try_get(3).map_err(unavailable)?),
        seq_reserved: to_u64(row.try_get(4).map_err(unavailable)?),
        created_at_ms: to_u64(row.try_get(5).map_err(unavailable)?),
        updated_at_ms: to_u64(row.try_get(6).map_err(unavailable)?),
    })
}

fn message_from(row: &Row) -> Result<StoredMessage, StoreError> {
    let get_str = |i: usize| -> Result<String, StoreError> { row.try_get(i).map_err(unavailable) };
    let opt_str =
        |i: usize| -> Result<Option<String>, StoreError> { row.try_get(i).map_err(unavailable) };
    let opt_i64 =
        |i: usize| -> Result<Option<i64>, StoreError> { row.try_get(i).map_err(unavailable) };
    let delta_ends: Vec<i32> = row.try_get(7).map_err(unavailable)?;
    let switches: Json<Vec<StreamSwitch>> = row.try_get(8).map_err(unavailable)?;
    let foreign_seqs: Vec<i64> = row.try_get(9).map_err(unavailable)?;
    let usage = match (opt_i64(11)?, opt_i64(12)?) {
        (Some(input), Some(output)) => {
            Some(Usage { input_tokens: to_u64(input), output_tokens: to_u64(output) })
        }
        _ => None,
    };
    let finish_reason: Option<FinishReason> = opt_str(13)?.map(|s| parse_name(&s)).transpose()?;
    let error = match (opt_str(14)?, opt_str(15)?) {
        (Some(code), message) => Some(StoredError { code, message: message.unwrap_or_default() }),
        _ => None,
    };
    Ok(StoredMessage {
        id: get_str(0)?,
        role: parse_name::<Role>(&get_str(1)?)?,
        status: parse_name::<MessageStatus>(&get_str(2)?)?,
        client_id: opt_str(3)?,
        user_id: opt_str(4)?,
        reply_to: opt_str(5)?,
        text: get_str(6)?,
        delta_ends: delta_ends.into_iter().map(|e| u32::try_from(e).unwrap_or(0)).collect(),
        switches: switches.0,
        foreign_seqs: foreign_seqs.into_iter().map(to_u64).collect(),
        model: opt_str(10)?,
        usage,
        finish_reason,
        error,
        cost_micros: opt_i64(16)?.map(to_u64),
        cache: parse_name::<CacheStatus>(&get_str(17)?)?,
        first_seq: to_u64(row.try_get(18).map_err(unavailable)?),
        last_seq: to_u64(row.try_get(19).map_err(unavailable)?),
        created_at_ms: to_u64(row.try_get(20).map_err(unavailable)?),
    })
}

/// How every reply write appends to a reply already stored. Idempotent: a retried chunk (the
/// row already at or past its last seq) changes nothing, and nothing is appended to a
/// closed reply. An empty chunk at the stored last seq (the record written again) passes.
///
/// The progress goes to `streamed_seq`, not `last_seq`: no index covers it (nor `text`,
/// `updated_at` and the arrays), so with the page's free room PostgreSQL writes the new row
/// version alone, without index entries (a HOT update; `V14__hot_checkpoints.sql`). The
/// reply's last seq is `GREATEST(last_seq, streamed_seq)` wherever it is read.
macro_rules! append_to_streaming_reply {
    () => {
        "ON CONFLICT (tenant_id, conversation_id, id) DO UPDATE SET
        text = messages.text || EXCLUDED.text,
        delta_ends = messages.delta_ends || EXCLUDED.delta_ends,
        switches = messages.switches || EXCLUDED.switches,
        foreign_seqs = messages.foreign_seqs || EXCLUDED.foreign_seqs,
        streamed_seq = GREATEST(messages.last_seq, messages.streamed_seq, EXCLUDED.last_seq),
        updated_at = now()
    WHERE messages.status = 'streaming'
      AND (GREATEST(messages.last_seq, messages.streamed_seq) < EXCLUDED.last_seq
           OR (EXCLUDED.text = '' AND EXCLUDED.delta_ends = '{}' AND EXCLUDED.switches = '[]'
               AND EXCLUDED.foreign_seqs = '{}'))"
    };
}
pub(super) use append_to_streaming_reply;

/// The two common table expressions of [`OPEN_REPLY`]: `c`, the conversation (its
/// `last_seq` and reservation raised), and `reply`, the reply's record.
macro_rules! open_reply_ctes {
    () => {
        concat!(
            "WITH c AS (
    UPDATE conversations SET last_seq = GREATEST(last_seq, $6),
        seq_reserved = GREATEST(seq_reserved, COALESCE($12::int8, 0)), updated_at = now()
    WHERE tenant_id = $1 AND id = $2 RETURNING seq_reserved
), reply AS (
    INSERT INTO messages (tenant_id, conversation_id, id, role, status, reply_to, model, text,
                          delta_ends, switches, foreign_seqs, first_seq, last_seq)
    SELECT $1, $2, $3, 'assistant', 'streaming', $4, $5, $7, $8, $9, $10, $11, $6 FROM c
    ",
            append_to_streaming_reply!(),
            "
    RETURNING 1
)"
        )
    };
}

/// A reply's record before its first event (or any part of it, appended), with the seq
/// reservation raised to `$12` when that is not NULL — one statement, because the turn's
/// first event waits for it. The conversation's `last_seq` follows. Answers the stored
/// reservation; no row when the conversation is not this tenant's, or deleted.
pub(super) const OPEN_REPLY: &str = concat!(open_reply_ctes!(), "\nSELECT seq_reserved FROM c");

/// [`OPEN_REPLY`] with the user message that starts the turn (`$13`–`$17`: id, client id,
/// user id, text, seq): a message posted to an idle conversation and its reply's record are
/// one write, so the turn's first event waits for one commit instead of two. The reply's
/// `$6` is the message's seq, so the conversation's `last_seq` covers both.
const APPEND_USER_MESSAGE_OPENING_REPLY: &str = concat!(
    open_reply_ctes!(),
    ", user_message AS (
    INSERT INTO messages (tenant_id, conversation_id, id, role, status, client_id, user_id,
                          text, first_seq, last_seq)
    SELECT $1, $2, $13, 'user', 'complete', $14, $15, $16, $17, $17 FROM c
    RETURNING 1
)
SELECT seq_reserved FROM c"
);

/// Appends a reply's last part and closes it, in one statement. Only a reply still
/// `streaming` is touched, so a retried finish changes nothing; a part already stored (its
/// `last_seq` reached, as after a checkpoint whose answer was lost) is not appended again.
/// Answers how many conversations matched (0: not this tenant's, or deleted).
const FINISH_REPLY: &str = "\
WITH c AS (
    UPDATE conversations SET last_seq = GREATEST(last_seq, $6), updated_at = now()
    WHERE tenant_id = $1 AND id = $2 RETURNING id
), reply AS (
    INSERT INTO messages (tenant_id, conversation_id, id, role, status, reply_to, model, text,
                          delta_ends, switches, foreign_seqs, first_seq, last_seq,
                          input_tokens, output_tokens, finish_reason, error_code, error_message,
                          cost_micros, cache)
    SELECT $1, $2, $3, 'assistant', $12, $4, COALESCE($13, $5), $7, $8, $9, $10, $11, $6,
           $14, $15, $16, $17, $18, $19, $20 FROM c
    ON CONFLICT (tenant_id, conversation_id, id) DO UPDATE SET
        text = CASE WHEN GREATEST(messages.last_seq, messages.streamed_seq) < EXCLUDED.last_seq
                    THEN messages.text || EXCLUDED.text ELSE messages.text END,
        delta_ends = CASE WHEN GREATEST(messages.last_seq, messages.streamed_seq) < EXCLUDED.last_seq
                          THEN messages.delta_ends || EXCLUDED.delta_ends
                          ELSE messages.delta_ends END,
        switches = CASE WHEN GREATEST(messages.last_seq, messages.streamed_seq) < EXCLUDED.last_seq
                        THEN messages.switches || EXCLUDED.switches ELSE messages.switches END,
        foreign_seqs = CASE WHEN GREATEST(messages.last_seq, messages.streamed_seq) < EXCLUDED.last_seq
                            THEN messages.foreign_seqs || EXCLUDED.foreign_seqs
                            ELSE messages.foreign_seqs END,
        status = EXCLUDED.status, model = COALESCE($13, messages.model),
        input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
        finish_reason = EXCLUDED.finish_reason, error_code = EXCLUDED.error_code,
        error_message = EXCLUDED.error_message, cost_micros = EXCLUDED.cost_micros,
        cache = EXCLUDED.cache,
        last_seq = GREATEST(messages.last_seq, messages.streamed_seq, EXCLUDED.last_seq),
        streamed_seq = NULL, updated_at = now()
    WHERE messages.status = 'streaming'
    RETURNING 1
)
SELECT count(*) FROM c";

/// The parameters every reply write starts with: `$1`–`$11` of [`OPEN_REPLY`] and
/// [`FINISH_REPLY`] (the converted ones computed once, the rest borrowed).
pub(super) struct ReplyParams<'a> {
    tenant: &'a str,
    conversation: &'a str,
    progress: &'a AssistantProgress,
    switches: Json<&'a Vec<StreamSwitch>>,
    delta_ends: Vec<i32>,
    foreign_seqs: Vec<i64>,
    last_seq: i64,
    first_seq: i64,
}

impl<'a> ReplyParams<'a> {
    pub(super) fn of(
        tenant: &'a str,
        conversation: &'a str,
        progress: &'a AssistantProgress,
    ) -> Self {
        let chunk = &progress.chunk;
        ReplyParams {
            tenant,
            conversation,
            progress,
            switches: Json(&chunk.switches),
            delta_ends: chunk
                .delta_ends
                .iter()
                .map(|e| i32::try_from(*e).unwrap_or(i32::MAX))
                .collect(),
            foreign_seqs: chunk.foreign_seqs.iter().copied().map(to_i64).collect(),
            last_seq: to_i64(progress.last_seq),
            first_seq: to_i64(progress.first_seq),
        }
    }

    /// `$1`–`$11`, then the statement's own parameters.
    pub(super) fn then<'p>(
        &'p self,
        rest: &[&'p (dyn ToSql + Sync)],
    ) -> Vec<&'p (dyn ToSql + Sync)> {
        let progress = self.progress;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.tenant,
            &self.conversation,
            &progress.message_id,
            &progress.reply_to,
            &progress.requested_model,
            &self.last_seq,
            &progress.chunk.text,
            &self.delta_ends,
            &self.switches,
            &self.foreign_seqs,
            &self.first_seq,
        ];
        params.extend_from_slice(rest);
        params
    }
}

/// A pool of `max_size` lazily opened connections to `config.url`, each with the configured
/// `statement_timeout`, named `application` in `pg_stat_activity`. Every wait (for a free
/// connection, a new one, a recycle check) is bounded by the connect timeout.
pub(crate) fn pool(
    config: &DatabaseConfig,
    application: &str,
    max_size: usize,
) -> anyhow::Result<Pool> {
    let mut pg: tokio_postgres::Config =
        config.url.expose_secret().parse().context("database.url is not a valid PostgreSQL URL")?;
    pg.options(format!("-c statement_timeout={}", config.statement_timeout_ms));
    pg.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    pg.application_name(application);
    let manager =
        Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let wait = Duration::from_millis(config.connect_timeout_ms);
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .build()
        .with_context(|| format!("failed to build the {application} database pool"))
}

/// How long one store call may take in all: a connection, then a statement.
pub(crate) fn call_deadline(config: &DatabaseConfig) -> Duration {
    Duration::from_millis(config.statement_timeout_ms + config.connect_timeout_ms + 1000)
}

impl PgConversationStore {
    /// Builds the pool (connections open lazily, on first use).
    pub fn connect(config: &DatabaseConfig) -> anyhow::Result<PgConversationStore> {
        let pool = pool(config, "switchyard", config.pool_size.max(1))?;
        Ok(PgConversationStore {
            pool,
            deadline: call_deadline(config),
            checkpoints: Arc::default(),
        })
    }

    /// The connection pool, shared with the cost ledger (`crate::costs`).
    pub fn pool(&self) -> deadpool_postgres::Pool {
        self.pool.clone()
    }

    /// Applies pending migrations (see [`super::migrate`]).
    pub async fn migrate(&self) -> anyhow::Result<super::migrate::MigrationReport> {
        let mut client = self.pool.get().await.context("failed to connect to the database")?;
        let client: &mut tokio_postgres::Client = &mut client;
        super::migrate::run(client).await
    }

    /// A round trip to the database (for readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        bounded(Duration::from_secs(2), async move {
            let client = pool.get().await.map_err(unavailable)?;
            client.simple_query("SELECT 1").await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    /// Closes every reply left `streaming` whose last write is older than `stale_after`:
    /// each gets its `interrupted` event after the conversation's seq reservation, exactly as
    /// an actor rebuilt after a crash would do. Returns how many were closed.
    pub async fn sweep_interrupted(&self, stale_after: Duration) -> Result<u64, StoreError> {
        let pool = self.pool.clone();
        let secs = stale_after.as_secs_f64();
        bounded(self.deadline * 4, async move {
            let mut client = pool.get().await.map_err(unavailable)?;
            let candidates = client
                .query(
                    "SELECT tenant_id, conversation_id, id FROM messages
                     WHERE status = 'streaming' AND updated_at < now() - make_interval(secs => $1)
                     ORDER BY updated_at LIMIT 500",
                    &[&secs],
                )
                .await
                .map_err(unavailable)?;
            let mut closed = 0;
            for row in candidates {
                let (tenant, conversation, message): (String, String, String) =
                    (row.get(0), row.get(1), row.get(2));
                let tx = client.transaction().await.map_err(unavailable)?;
                // Lock the conversation so the seq we pick cannot race another writer.
                let seqs = tx
                    .query_opt(
                        "SELECT GREATEST(last_seq, seq_reserved) FROM conversations
                         WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                        &[&tenant, &conversation],
                    )
                    .await
                    .map_err(unavailable)?;
                let Some(seqs) = seqs else { continue };
                let seq: i64 = seqs.get::<_, i64>(0) + 1;
                let updated = tx
                    .execute(
                        "UPDATE messages SET status = 'interrupted', last_seq = $4,
                             streamed_seq = NULL, updated_at = now()
                         WHERE tenant_id = $1 AND conversation_id = $2 AND id = $3
                           AND status = 'streaming'
                           AND updated_at < now() - make_interval(secs => $5)",
                        &[&tenant, &conversation, &message, &seq, &secs],
                    )
                    .await
                    .map_err(unavailable)?;
                if updated == 1 {
                    tx.execute(
                        "UPDATE conversations SET last_seq = $3,
                             seq_reserved = GREATEST(seq_reserved, $3), updated_at = now()
                         WHERE tenant_id = $1 AND id = $2",
                        &[&tenant, &conversation, &seq],
                    )
                    .await
                    .map_err(unavailable)?;
                    closed += 1;
                    tracing::info!(
                        tenant_id = %tenant, conversation_id = %conversation, message_id = %message, seq,
                        "sweep: closed a reply cut by a crash as interrupted"
                    );
                }
                tx.commit().await.map_err(unavailable)?;
            }
            Ok(closed)
        })
        .await
    }

    /// Runs one call on a pooled connection under the client-side deadline, as a task of
    /// its own. Why a task: the conversation actor holds its mailbox (`ctx.wait`) while a
    /// user message is written, and actix polls none of the actor's other futures meanwhile.
    /// A reply write polled only by the actor would then sit on its pooled connection (or
    /// in the middle of a transaction holding the conversation's row lock) until the user
    /// write — which needs that connection or lock — gave up: a deadlock under load. As a
    /// task the call finishes and frees its connection whether or not anyone is polling.
    fn call<T, F, Fut>(&self, f: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let pool = self.pool.clone();
        let deadline = self.deadline;
        let work = bounded(deadline, async move {
            let client = pool.get().await.map_err(unavailable)?;
            f(client).await
        });
        // Spawned on first poll, so creating the future needs no runtime.
        async move {
            tokio::spawn(work)
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("database: call aborted".into())))
        }
        .boxed()
    }
}

pub(super) async fn bounded<T>(
    deadline: Duration,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable("database: timed out".into())))
}

impl ConversationStore for PgConversationStore {
    fn create_conversation(
        &self,
        tenant_id: &str,
        owner_id: &str,
        settings: ConversationSettings,
    ) -> StoreFuture<Conversation> {
        let (tenant, owner) = (tenant_id.to_owned(), owner_id.to_owned());
        self.call(move |client| async move {
            let id = uuid::Uuid::now_v7().to_string();
            let sql = format!(
                "INSERT INTO conversations (tenant_id, id, owner_id, settings)
                 VALUES ($1, $2, $3, $4) RETURNING {CONVERSATION_COLUMNS}"
            );
            let statement = client.prepare_cached(&sql).await.map_err(unavailable)?;
            let row = client
                .query_one(&statement, &[&tenant, &id, &owner, &Json(&settings)])
                .await
                .map_err(unavailable)?;
            conversation_from(&tenant, &row)
        })
    }

    fn get_conversation(
        &self,
        tenant_id: &str,
        conversation_id: &str,
    ) -> StoreFuture<Conversation> {
        let (tenant, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.call(move |client| async move {
            let sql = format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND id = $2"
            );
            let statement = client.prepare_cached(&sql).await.map_err(unavailable)?;
            let row = client.query_opt(&statement, &[&tenant, &id]).await.map_err(unavailable)?;
            conversation_from(&tenant, &row.ok_or(StoreError::NotFound)?)
        })
    }

    fn list_conversations(
        &self,
        tenant_id: &str,
        query: ListQuery,
    ) -> StoreFuture<ConversationPage> {
        let tenant = tenant_id.to_owned();
        self.call(move |client| async move {
            let limit = query.limit.clamp(1, 100);
            let sql = format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations
                 WHERE tenant_id = $1 AND ($2::text IS NULL OR owner_id = $2)
                   AND ($3::text IS NULL OR id < $3)
                 ORDER BY id DESC LIMIT $4"
            );
            let statement = client.prepare_cached(&sql).await.map_err(unavailable)?;
            let rows = client
                .query(&statement, &[&tenant, &query.owner_id, &query.cursor, &(limit as i64 + 1)])
                .await
                .map_err(unavailable)?;
            let mut items = rows
                .iter()
                .map(|r| conversation_from(&tenant, r))
                .collect::<Result<Vec<_>, _>>()?;
            let next_cursor = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|c| c.id.clone())
            } else {
                None
            };
            Ok(ConversationPage { items, next_cursor })
        })
    }

    fn delete_conversation(&self, tenant_id: &str, conversation_id: &str) -> StoreFuture<()> {
        let (tenant, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.call(move |client| async move {
            let statement = client
                .prepare_cached("DELETE FROM conversations WHERE tenant_id = $1 AND id = $2")
                .await
                .map_err(unavailable)?;
            match client.execute(&statement, &[&tenant, &id]).await.map_err(unavailable)? {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
    }

    fn load(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        max_messages: usize,
    ) -> StoreFuture<LoadedConversation> {
        let (tenant, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.call(move |mut client| async move {
            // One snapshot, so `last_seq` and the messages agree.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(unavailable)?;
            let sql = format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND id = $2"
            );
            let statement = tx.prepare_cached(&sql).await.map_err(unavailable)?;
            let row = tx.query_opt(&statement, &[&tenant, &id]).await.map_err(unavailable)?;
            let conversation = conversation_from(&tenant, &row.ok_or(StoreError::NotFound)?)?;
            // The newest `max_messages`, then in the port's order: by `first_seq`, a reply
            // before a user message acked at the same seq (posted while it streamed).
            let sql = format!(
                "SELECT * FROM (
                     SELECT {MESSAGE_COLUMNS}, (role = 'user') AS user_first FROM messages
                     WHERE tenant_id = $1 AND conversation_id = $2
                     ORDER BY first_seq DESC, (role = 'user') DESC LIMIT $3
                 ) recent ORDER BY first_seq, user_first"
            );
            let statement = tx.prepare_cached(&sql).await.map_err(unavailable)?;
            let limit = i64::try_from(max_messages).unwrap_or(i64::MAX);
            let rows = tx.query(&statement, &[&tenant, &id, &limit]).await.map_err(unavailable)?;
            let messages = rows.iter().map(message_from).collect::<Result<Vec<_>, _>>()?;
            tx.commit().await.map_err(unavailable)?;
            Ok(LoadedConversation { conversation, messages })
        })
    }

    fn append_user_message(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        message: NewUserMessage,
    ) -> StoreFuture<()> {
        let (tenant, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.call(move |client| async move {
            let statement = client
                .prepare_cached(
                    "WITH c AS (
                         UPDATE conversations SET last_seq = GREATEST(last_seq, $4),
                             updated_at = now()
                         WHERE tenant_id = $1 AND id = $2 RETURNING id
                     )
                     INSERT INTO messages (tenant_id, conversation_id, id, role, status,
                                           client_id, user_id, text, first_seq, last_seq)
                     SELECT $1, $2, $3, 'user', 'complete', $5, $6, $7, $4, $4 FROM c",
                )
                .await
                .map_err(unavailable)?;
            let seq = to_i64(message.seq);
            let inserted = client
                .execute(
                    &statement,
                    &[
                        &tenant,
                        &id,
                        &message.id,
                        &seq,
                        &message.client_id,
                        &message.user_id,
                        &message.content,
                    ],
                )
                .await
                .map_err(unavailable)?;
            if inserted == 0 { Err(StoreError::NotFound) } else { Ok(()) }
        })
    }

    fn open_reply(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        progress: AssistantProgress,
        reserve_to: Option<u64>,
    ) -> StoreFuture<Option<u64>> {
        let (tenant, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.call(move |client| async move {
            let statement = client.prepare_cached(OPEN_REPLY).await.map_err(unavailable)?;
            let reserve = reserve_to.map(to_i64);
            let params = ReplyParams::of(&tenant, &id, &progress);
            let row = client
                .query_opt(&statement, &params.then(&[&reserve]))
                .await
                .map_err(unavailable)?;
            let reserved = to_u64(row.ok_or(StoreError::NotFound)?.get(0));
            Ok(reserve_to.map(|_| reserved))
        })
    }

    fn append_user_message_opening_reply(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        message: NewUserMessage,
        reply: AssistantProgress,
        reserve_to: Option<u64>,
    ) -> StoreFuture<Option<u64>> {
        let (tenant, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.call(move |client| async move {
            let statement = client
                .prepare_cached(APPEND_USER_MESSAGE_OPENING_REPLY)
                .await
                .map_err(unavailable)?;
            let reserve = reserve_to.map(to_i64);
            let seq = to_i64(message.seq);
            let params = ReplyParams::of(&tenant, &id, &reply);
            let row = client
                .query_opt(
                    &statement,
                    &params.then(&[
                        &reserve,
                        &message.id,
                        &message.client_id,
                        &message.user_id,
                        &message.content,
                        &seq,
                    ]),
                )
                .await
                .map_err(unavailable)?;
            let reserved = to_u64(row.ok_or(StoreError::NotFound)?.get(0));
            Ok(reserve_to.map(|_| reserved))
        })
    }

    fn checkpoint_assistant(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        progress: AssistantProgress,
    ) -> StoreFuture<()> {
        self.checkpoints.write(
            self.pool.clone(),
            self.deadline,
            Checkpoint::new(tenant_id, conversation_id, progress),
        )
    }

    fn finish_assistant(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        progress: AssistantProgress,
        outcome: AssistantOutcome,
    ) -> StoreFuture<()> {
        let (tenant, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.call(move |client| async move {
            let statement = client.prepare_cached(FINISH_REPLY).await.map_err(unavailable)?;
            let usage = outcome.usage;
            let (code, message) = match &outcome.error {
                Some(e) => (Some(e.code.as_str()), Some(e.message.as_str())),
                None => (None, None),
            };
            let params = ReplyParams::of(&tenant, &id, &progress);
            let row = client
                .query_one(
                    &statement,
                    &params.then(&[
                        &name_of(&outcome.status),
                        &outcome.model,
                        &usage.map(|u| to_i64(u.input_tokens)),
                        &usage.map(|u| to_i64(u.output_tokens)),
                        &outcome.finish_reason.map(|f| name_of(&f)),
                        &code,
                        &message,
                        &outcome.cost_micros.map(to_i64),
                        &name_of(&outcome.cache),
                    ]),
                )
                .await
                .map_err(unavailable)?;
            match row.try_get::<_, i64>(0).map_err(unavailable)? {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
    }

    fn mark_interrupted(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        message_id: &str,
        seq: u64,
    ) -> StoreFuture<()> {
        let (tenant, id, message) =
            (tenant_id.to_owned(), conversation_id.to_owned(), message_id.to_owned());
        self.call(move |client| async move {
            let statement = client
                .prepare_cached(
                    "WITH m AS (
                         UPDATE messages SET status = 'interrupted', last_seq = $4,
                             streamed_seq = NULL, updated_at = now()
                         WHERE tenant_id = $1 AND conversation_id = $2 AND id = $3
                         RETURNING id
                     )
                     UPDATE conversations SET last_seq = GREATEST(last_seq, $4),
                         seq_reserved = GREATEST(seq_reserved, $4), updated_at = now()
                     WHERE tenant_id = $1 AND id = $2 AND EXISTS (SELECT 1 FROM m)",
                )
                .await
                .map_err(unavailable)?;
            let seq = to_i64(seq);
            match client.execute(&statement, &[&tenant, &id, &message, &seq]).await {
                Ok(0) => Err(StoreError::NotFound),
                Ok(_) => Ok(()),
                Err(e) => Err(unavailable(e)),
            }
        })
    }

    fn reserve_seqs(&self, tenant_id: &str, conversation_id: &str, up_to: u64) -> StoreFuture<u64> {
        let (tenant, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.call(move |client| async move {
            let statement = client
                .prepare_cached(
                    "UPDATE conversations SET seq_reserved = GREATEST(seq_reserved, $3)
                     WHERE tenant_id = $1 AND id = $2 RETURNING seq_reserved",
                )
                .await
                .map_err(unavailable)?;
            let row = client
                .query_opt(&statement, &[&tenant, &id, &to_i64(up_to)])
                .await
                .map_err(unavailable)?;
            Ok(to_u64(row.ok_or(StoreError::NotFound)?.get(0)))
        })
    }

    fn events_after(
        &self,
        tenant_id: &str,
        conversation_id: &str,
        after_seq: u64,
        max_events: usize,
    ) -> StoreFuture<EventsPage> {
        let (tenant, id) = (tenant_id.to_owned(), conversation_id.to_owned());
        self.call(move |client| async move {
            // The messages with an event after `after_seq`, in the order `page_of_events`
            // needs, one more than a page to bound it.
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                 WHERE tenant_id = $1 AND conversation_id = $2
                   AND (last_seq > $3 OR (status = 'streaming' AND streamed_seq > $3))
                 ORDER BY first_seq LIMIT $4"
            );
            let statement = client.prepare_cached(&sql).await.map_err(unavailable)?;
            let limit = (MESSAGES_PER_PAGE + 1) as i64;
            let rows = client
                .query(&statement, &[&tenant, &id, &to_i64(after_seq), &limit])
                .await
                .map_err(unavailable)?;
            if rows.is_empty() {
                // Distinguish "nothing newer" from "no such conversation (for this tenant)".
                let exists = client
                    .query_opt(
                        "SELECT 1 FROM conversations WHERE tenant_id = $1 AND id = $2",
                        &[&tenant, &id],
                    )
                    .await
                    .map_err(unavailable)?;
                exists.ok_or(StoreError::NotFound)?;
                return Ok(EventsPage { events: Vec::new(), complete: true });
            }
            let messages = rows.iter().map(message_from).collect::<Result<Vec<_>, _>>()?;
            Ok(page_of_events(messages.iter().collect(), after_seq, max_events))
        })
    }
}
