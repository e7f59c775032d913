-- Mid-stream checkpoints as HOT updates (docs/benchmarks.md, "Fifth round").
--
-- A checkpoint rewrites a streaming reply's row a few times a second. It used to change two
-- indexed columns (`last_seq`, in `messages_by_last_seq`, and `updated_at`, in
-- `messages_streaming`), so PostgreSQL wrote a new tuple *and four index entries* each time.
-- Now a checkpoint moves `streamed_seq`, which no index covers, and the streaming index is
-- keyed on columns that never change: with free room on the page (fillfactor), the update
-- is heap-only. `last_seq` keeps the value the reply was opened with until the reply is
-- closed; a reply's true last seq is `GREATEST(last_seq, streamed_seq)` (NULLs ignored).
ALTER TABLE messages ADD COLUMN streamed_seq int8;
ALTER TABLE messages SET (fillfactor = 70);
-- The crash sweep (old `streaming` rows) and resumes into a reply still streaming.
-- Building it reads the whole table under a lock that holds writes back: on a large
-- database, build it first with `CREATE INDEX CONCURRENTLY` (the same statement) and this
-- one does nothing.
CREATE INDEX IF NOT EXISTS messages_streaming_by_conversation
    ON messages (tenant_id, conversation_id) WHERE status = 'streaming';
DROP INDEX IF EXISTS messages_streaming;
