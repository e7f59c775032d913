-- Conversations. `last_seq` is the highest event seq persisted; `seq_reserved` the highest
-- seq a conversation actor may have emitted (reserved in blocks before use), so an actor
-- rebuilt after a crash continues after it and never reuses the seq of a lost event.
CREATE TABLE conversations (
    tenant_id     text NOT NULL,
    id            text NOT NULL,
    owner_id      text NOT NULL,
    settings      jsonb NOT NULL,
    last_seq      int8 NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    seq_reserved  int8 NOT NULL DEFAULT 0 CHECK (seq_reserved >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
-- Listing pages newest first (ids are UUIDv7: id order is creation order).
CREATE INDEX conversations_owner ON conversations (tenant_id, owner_id, id DESC);
