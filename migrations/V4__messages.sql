-- Messages, in the shape of `actors::ports::store::StoredMessage`: enough to regenerate
-- every event seq for seq without a row per token. Streaming replies are appended to
-- (`text = text || $x`, `delta_ends = delta_ends || $y`).
CREATE TABLE messages (
    tenant_id        text NOT NULL,
    conversation_id  text NOT NULL,
    id               text NOT NULL,
    role             text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    status           text NOT NULL
        CHECK (status IN ('complete', 'streaming', 'interrupted', 'cancelled', 'failed')),
    client_id        text,
    user_id          text,
    reply_to         text,
    text             text NOT NULL DEFAULT '',
    delta_ends       int4[] NOT NULL DEFAULT '{}',
    switches         jsonb NOT NULL DEFAULT '[]',
    foreign_seqs     int8[] NOT NULL DEFAULT '{}',
    model            text,
    input_tokens     int8,
    output_tokens    int8,
    finish_reason    text,
    error_code       text,
    error_message    text,
    cost_micros      int8,
    cache            text NOT NULL DEFAULT 'miss' CHECK (cache IN ('miss', 'exact', 'semantic')),
    first_seq        int8 NOT NULL,
    last_seq         int8 NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Touched by every checkpoint: the crash sweep treats an old `streaming` row as dead.
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, conversation_id, id),
    FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversations (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX messages_by_seq ON messages (tenant_id, conversation_id, first_seq);
CREATE INDEX messages_by_last_seq ON messages (tenant_id, conversation_id, last_seq);
CREATE INDEX messages_streaming ON messages (updated_at) WHERE status = 'streaming';
