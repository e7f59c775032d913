//! Mid-stream checkpoints of streaming replies, gathered from every conversation into one
//! statement.
//!
//! Why: every streaming reply is checkpointed each `database.checkpoint_interval_ms`, so
//! 1,000 open replies made 4,000 single-row statements a second, and PostgreSQL spent as
//! much CPU on them (a round trip, a backend wake-up and a commit each) as the engine did on
//! everything (docs/benchmarks.md, "10k connections"). One statement over many rows pays
//! those once.
//!
//! How: a caller queues its checkpoint and waits for its answer. Whoever finds no writer
//! running starts one: a task that takes what is queued (at most one entry per conversation,
//! at most [`MAX_BATCH`]), writes it as one statement, answers each caller and goes on until
//! the queue is empty. An idle store runs no task, a lone checkpoint is written at once, and
//! under load a batch grows by itself with the time one write takes: no timer, no added
//! latency. Only checkpoints go this way: a reply's record before its first event and its
//! finish are waited on by the turn, so they keep their own single statements.
//!
//! The statement appends exactly as a single checkpoint does (the same `ON CONFLICT` clause,
//! idempotent on retry), and answers which conversations it found: the others are
//! `NotFound`. A batch refused for a row's data is written again one checkpoint at a time,
//! so a row the server cannot take fails only its own caller; a batch that could not be
//! written (timeout, lost connection) fails each of its callers, who retry as after any
//! failed write. One conversation never has two checkpoints in one statement (PostgreSQL
//! refuses to upsert a row twice in a statement): a second one waits for the next batch.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actors::ports::store::{AssistantProgress, StoreError, StoreFuture};
use deadpool_postgres::Pool;
use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::postgres::{
    OPEN_REPLY, ReplyParams, append_to_streaming_reply, bounded, to_i64, unavailable,
};

/// Rows per statement, at most: enough that 1,000 open replies take a handful of writes per
/// tick, small enough that one write stays a few milliseconds.
pub const MAX_BATCH: usize = 256;

/// The batch as parallel arrays (`unnest`). `delta_ends` and `foreign_seqs` differ in length
/// from row to row, so they travel as array literals (`{1,2}`) and `switches` as JSON text,
/// cast back per row.
const CHECKPOINT_REPLIES: &str = concat!(
    "WITH v AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::int8[])
        AS v(tenant_id, conversation_id, id, reply_to, model, last_seq, text, delta_ends,
             switches, foreign_seqs, first_seq)
), c AS (
    UPDATE conversations SET last_seq = GREATEST(conversations.last_seq, v.last_seq),
        updated_at = now()
    FROM v WHERE conversations.tenant_id = v.tenant_id AND conversations.id = v.conversation_id
    RETURNING conversations.tenant_id, conversations.id
), reply AS (
    INSERT INTO messages (tenant_id, conversation_id, id, role, status, reply_to, model, text,
                          delta_ends, switches, foreign_seqs, first_seq, last_seq)
    SELECT v.tenant_id, v.conversation_id, v.id, 'assistant', 'streaming', v.reply_to,
           v.model, v.text, v.delta_ends::int4[], v.switches::jsonb, v.foreign_seqs::int8[],
           v.first_seq, v.last_seq
    FROM v JOIN c ON c.tenant_id = v.tenant_id AND c.id = v.conversation_id
    ",
    append_to_streaming_reply!(),
    "
    RETURNING 1
)
SELECT tenant_id, id FROM c"
);

/// One reply's checkpoint, as queued.
pub struct Checkpoint {
    tenant_id: String,
    conversation_id: String,
    progress: AssistantProgress,
}

impl Checkpoint {
    pub fn new(tenant_id: &str, conversation_id: &str, progress: AssistantProgress) -> Self {
        Checkpoint {
            tenant_id: tenant_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            progress,
        }
    }

    fn key(&self) -> (String, String) {
        (self.tenant_id.clone(), self.conversation_id.clone())
    }
}

struct Queued {
    checkpoint: Checkpoint,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

impl Queued {
    /// Answers the caller from its batch's outcome: the conversations the batch found.
    fn answer(self, found: &Result<HashSet<(String, String)>, StoreError>) {
        let result = match found {
            Ok(found) if found.contains(&self.checkpoint.key()) => Ok(()),
            Ok(_) => Err(StoreError::NotFound),
            Err(error) => Err(error.clone()),
        };
        let _ = self.answer.send(result);
    }
}

/// Why a batch was not written.
struct BatchFailed {
    error: StoreError,
    /// The server refused a row's data (SQLSTATE class 22 or 23: a data exception or a
    /// constraint), as opposed to a timeout, a lost connection or a conflict that retrying
    /// the whole batch settles: writing the rows one by one isolates it.
    row_refused: bool,
}

impl BatchFailed {
    fn unavailable(error: impl std::fmt::Display) -> BatchFailed {
        BatchFailed { error: unavailable(error), row_refused: false }
    }
}

#[derive(Default)]
struct QueueState {
    queued: VecDeque<Queued>,
    /// A writer task is running (it empties the queue before it stops).
    writing: bool,
}

/// The queue shared by every conversation of one store.
#[derive(Default)]
pub struct CheckpointQueue {
    state: Mutex<QueueState>,
}

impl CheckpointQueue {
    /// Queues `checkpoint` and answers once the batch holding it is written. Bounded: a
    /// caller gives up (`Unavailable`) after twice the store's deadline — its own batch's
    /// write plus the one ahead of it.
    pub fn write(
        self: &Arc<Self>,
        pool: Pool,
        deadline: Duration,
        checkpoint: Checkpoint,
    ) -> StoreFuture<()> {
        let queue = self.clone();
        // Queued on first poll, like every other store call: creating it needs no runtime.
        async move {
            let (answer, answered) = oneshot::channel();
            let start_writer = {
                let mut state = queue.lock();
                state.queued.push_back(Queued { checkpoint, answer });
                !std::mem::replace(&mut state.writing, true)
            };
            if start_writer {
                tokio::spawn(queue.write_all(pool, deadline));
            }
            bounded(deadline * 2, async {
                answered.await.unwrap_or_else(|_| {
                    Err(StoreError::Unavailable("database: checkpoint writer stopped".into()))
                })
            })
            .await
        }
        .boxed()
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while holding it; a poisoned lock still holds a consistent queue.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The writer: batch after batch until the queue is empty.
    async fn write_all(self: Arc<Self>, pool: Pool, deadline: Duration) {
        let mut running = Running { queue: &self, stopped: false };
        while let Some(batch) = running.queue.take_batch() {
            match write_batch(&pool, deadline, &batch).await {
                Err(failed) if failed.row_refused && batch.len() > 1 => {
                    // A row the server will not take (say, text with a NUL byte) must not
                    // fail the others — other conversations, other tenants' — nor poison
                    // every batch its retries join: each checkpoint is written alone.
                    for queued in batch {
                        let alone = write_batch(&pool, deadline, std::slice::from_ref(&queued));
                        let found = alone.await.map_err(|failed| failed.error);
                        queued.answer(&found);
                    }
                }
                written => {
                    let found = written.map_err(|failed| failed.error);
                    for queued in batch {
                        queued.answer(&found);
                    }
                }
            }
        }
        running.stopped = true;
    }

    /// The next batch, oldest first; `None` (and the writer marked stopped, under the same
    /// lock, so a checkpoint queued after this starts a new one) when nothing is queued.
    fn take_batch(&self) -> Option<Vec<Queued>> {
        let mut state = self.lock();
        if state.queued.is_empty() {
            state.writing = false;
            return None;
        }
        let mut batch = Vec::new();
        let mut in_batch = HashSet::new();
        let mut next_time = VecDeque::new();
        while batch.len() < MAX_BATCH {
            let Some(queued) = state.queued.pop_front() else { break };
            if in_batch.insert(queued.checkpoint.key()) {
                batch.push(queued);
            } else {
                next_time.push_back(queued);
            }
        }
        while let Some(queued) = next_time.pop_back() {
            state.queued.push_front(queued);
        }
        Some(batch)
    }
}

/// Marks the writer stopped if its task is dropped mid-batch (its runtime shutting down):
/// the queued callers are answered `Unavailable` (by their dropped senders) and retry, and
/// the next checkpoint starts a new writer.
struct Running<'a> {
    queue: &'a CheckpointQueue,
    stopped: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.stopped {
            let mut state = self.queue.lock();
            state.writing = false;
            state.queued.clear();
        }
    }
}

/// Writes one batch within `deadline`; answers the (tenant, conversation) pairs that were
/// found.
async fn write_batch(
    pool: &Pool,
    deadline: Duration,
    batch: &[Queued],
) -> Result<HashSet<(String, String)>, BatchFailed> {
    tokio::time::timeout(deadline, write_batch_now(pool, batch))
        .await
        .unwrap_or_else(|_| Err(BatchFailed::unavailable("database: timed out")))
}

async fn write_batch_now(
    pool: &Pool,
    batch: &[Queued],
) -> Result<HashSet<(String, String)>, BatchFailed> {
    if let [alone] = batch {
        return write_one(pool, &alone.checkpoint).await;
    }
    let column = |f: &dyn Fn(&Checkpoint) -> String| -> Vec<String> {
        batch.iter().map(|q| f(&q.checkpoint)).collect()
    };
    let tenants = column(&|c| c.tenant_id.clone());
    let conversations = column(&|c| c.conversation_id.clone());
    let ids = column(&|c| c.progress.message_id.clone());
    let reply_tos = column(&|c| c.progress.reply_to.clone());
    let models = column(&|c| c.progress.requested_model.clone());
    let texts = column(&|c| c.progress.chunk.text.clone());
    let delta_ends = column(&|c| array_literal(&c.progress.chunk.delta_ends));
    let switches = column(&|c| {
        serde_json::to_string(&c.progress.chunk.switches).unwrap_or_else(|_| "[]".into())
    });
    let foreign_seqs = column(&|c| array_literal(&c.progress.chunk.foreign_seqs));
    let seqs = |f: &dyn Fn(&AssistantProgress) -> u64| -> Vec<i64> {
        batch.iter().map(|q| to_i64(f(&q.checkpoint.progress))).collect()
    };
    let last_seqs = seqs(&|p| p.last_seq);
    let first_seqs = seqs(&|p| p.first_seq);

    let client = pool.get().await.map_err(BatchFailed::unavailable)?;
    let statement =
        client.prepare_cached(CHECKPOINT_REPLIES).await.map_err(BatchFailed::unavailable)?;
    let rows = client
        .query(
            &statement,
            &[
                &tenants,
                &conversations,
                &ids,
                &reply_tos,
                &models,
                &last_seqs,
                &texts,
                &delta_ends,
                &switches,
                &foreign_seqs,
                &first_seqs,
            ],
        )
        .await
        .map_err(refused_or_unavailable)?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(BatchFailed::unavailable)
}

/// A batch of one, as most are until a few hundred replies stream at once (at 200 it held
/// 1.4 checkpoints on average): the reply's record statement without a reservation, which
/// appends the same way and costs PostgreSQL a third of the `unnest` statement for one row
/// (0.15 against 0.45 ms, `pg_stat_statements`), whose arrays and casts are paid per call.
async fn write_one(
    pool: &Pool,
    checkpoint: &Checkpoint,
) -> Result<HashSet<(String, String)>, BatchFailed> {
    let client = pool.get().await.map_err(BatchFailed::unavailable)?;
    let statement = client.prepare_cached(OPEN_REPLY).await.map_err(BatchFailed::unavailable)?;
    let params =
        ReplyParams::of(&checkpoint.tenant_id, &checkpoint.conversation_id, &checkpoint.progress);
    let no_reservation: Option<i64> = None;
    let row = client
        .query_opt(&statement, &params.then(&[&no_reservation]))
        .await
        .map_err(refused_or_unavailable)?;
    Ok(row.map(|_| checkpoint.key()).into_iter().collect())
}

fn refused_or_unavailable(error: tokio_postgres::Error) -> BatchFailed {
    BatchFailed {
        row_refused: error
            .as_db_error()
            .is_some_and(|e| matches!(e.code().code().get(..2), Some("22" | "23"))),
        error: unavailable(error),
    }
}

/// A PostgreSQL array literal of numbers: `{1,2,3}`.
fn array_literal<T: std::fmt::Display>(values: &[T]) -> String {
    use std::fmt::Write;
    let mut literal = String::with_capacity(2 + values.len() * 6);
    literal.push('{');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            literal.push(',');
        }
        let _ = write!(literal, "{value}");
    }
    literal.push('}');
    literal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(tenant: &str, conversation: &str, last_seq: u64) -> Queued {
        let progress = AssistantProgress {
            message_id: "a1".into(),
            reply_to: "u1".into(),
            requested_model: "mock".into(),
            first_seq: 1,
            last_seq,
            chunk: Default::default(),
        };
        Queued {
            checkpoint: Checkpoint::new(tenant, conversation, progress),
            answer: oneshot::channel().0,
        }
    }

    fn keys(batch: &[Queued]) -> Vec<(String, String, u64)> {
        batch
            .iter()
            .map(|q| {
                let c = &q.checkpoint;
                (c.tenant_id.clone(), c.conversation_id.clone(), c.progress.last_seq)
            })
            .collect()
    }

    #[test]
    fn a_batch_holds_one_checkpoint_per_conversation_and_keeps_the_rest_in_order() {
        let queue = CheckpointQueue::default();
        {
            let mut state = queue.lock();
            state.writing = true;
            for (t, c, seq) in
                [("t", "c1", 2), ("t", "c1", 3), ("u", "c1", 2), ("t", "c2", 5), ("t", "c1", 4)]
            {
                state.queued.push_back(queued(t, c, seq));
            }
        }
        let first = queue.take_batch().unwrap();
        let key = |t: &str, c: &str, s| (t.to_owned(), c.to_owned(), s);
        assert_eq!(keys(&first), [key("t", "c1", 2), key("u", "c1", 2), key("t", "c2", 5)]);
        assert_eq!(keys(&queue.take_batch().unwrap()), [key("t", "c1", 3)]);
        assert_eq!(keys(&queue.take_batch().unwrap()), [key("t", "c1", 4)]);
        assert!(queue.take_batch().is_none());
        assert!(!queue.lock().writing, "an empty queue stops the writer");
    }

    #[test]
    fn a_batch_is_capped() {
        let queue = CheckpointQueue::default();
        for i in 0..MAX_BATCH + 3 {
            queue.lock().queued.push_back(queued("t", &format!("c{i}"), 2));
        }
        assert_eq!(queue.take_batch().unwrap().len(), MAX_BATCH);
        assert_eq!(queue.take_batch().unwrap().len(), 3);
    }

    #[test]
    fn a_dropped_writer_fails_its_queue_and_lets_the_next_checkpoint_start_one() {
        let queue = CheckpointQueue::default();
        let (answer, mut answered) = oneshot::channel();
        {
            let mut state = queue.lock();
            state.writing = true;
            state.queued.push_back(Queued { answer, ..queued("t", "c1", 2) });
        }
        drop(Running { queue: &queue, stopped: false });
        assert!(!queue.lock().writing);
        assert!(answered.try_recv().is_err(), "the caller sees its write fail");
    }

    #[test]
    fn array_literals() {
        assert_eq!(array_literal::<u32>(&[]), "{}");
        assert_eq!(array_literal(&[3u32, 5, 12]), "{3,5,12}");
    }
}
