-- What every turn leg cost, in integer micro-dollars (never floats). One row per leg: a
-- turn that failed over mid-stream has a row for each model that produced tokens.
CREATE TABLE usage_ledger (
    id               bigserial PRIMARY KEY,
    tenant_id        text NOT NULL,
    user_id          text,
    conversation_id  text,
    message_id       text,
    model            text NOT NULL,
    provider         text NOT NULL,
    input_tokens     int8 NOT NULL DEFAULT 0,
    output_tokens    int8 NOT NULL DEFAULT 0,
    cost_micros      int8 NOT NULL DEFAULT 0,
    cache            text NOT NULL DEFAULT 'miss' CHECK (cache IN ('miss', 'exact', 'semantic')),
    leg              int2 NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_ledger_tenant_time ON usage_ledger (tenant_id, created_at);
CREATE INDEX usage_ledger_message ON usage_ledger (tenant_id, message_id);
