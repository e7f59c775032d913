CREATE TABLE conversations (
    tenant_id text NOT NULL, id text NOT NULL, owner_id text NOT NULL, settings jsonb NOT NULL,
    last_seq int8 NOT NULL DEFAULT 0, seq_reserved int8 NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id));
CREATE INDEX conversations_owner ON conversations (tenant_id, owner_id, id DESC);
CREATE TABLE messages (
    tenant_id text NOT NULL, conversation_id text NOT NULL, id text NOT NULL,
    role text NOT NULL, status text NOT NULL, client_id text, user_id text, reply_to text,
    text text NOT NULL DEFAULT '', delta_ends int4[] NOT NULL DEFAULT '{}',
    switches jsonb NOT NULL DEFAULT '[]', foreign_seqs int8[] NOT NULL DEFAULT '{}',
    model text, input_tokens int8, output_tokens int8, finish_reason text, error_code text,
    error_message text, cost_micros int8, cache text NOT NULL DEFAULT 'miss',
    first_seq int8 NOT NULL, last_seq int8 NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, conversation_id, id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id) ON DELETE CASCADE);
CREATE INDEX messages_by_seq ON messages (tenant_id, conversation_id, first_seq);
