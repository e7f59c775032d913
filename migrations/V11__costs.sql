-- Cost management (issue 9): richer ledger rows, budgets, price table versions, anomalies.

ALTER TABLE usage_ledger
    ADD COLUMN api_key_id      text,
    ADD COLUMN requested_model text,
    ADD COLUMN saved_micros    int8 NOT NULL DEFAULT 0,
    ADD COLUMN completed       boolean NOT NULL DEFAULT true,
    ADD COLUMN route_tier      text,
    ADD COLUMN route_reason    text,
    ADD COLUMN price_version   int8,
    ADD COLUMN scored_tier     text;
CREATE INDEX usage_ledger_time ON usage_ledger (created_at);

-- A monthly limit for a tenant (scope 'tenant') or one of its users (scope 'user:<id>').
CREATE TABLE cost_budgets (
    tenant_id             text NOT NULL,
    scope                 text NOT NULL,
    monthly_limit_micros  int8 NOT NULL CHECK (monthly_limit_micros >= 0),
    soft_percent          int2 NOT NULL DEFAULT 80 CHECK (soft_percent BETWEEN 1 AND 100),
    on_exceeded           text NOT NULL DEFAULT 'refuse' CHECK (on_exceeded IN ('refuse', 'downgrade')),
    downgrade_model       text,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, scope)
);

-- Every version of the price table an admin made (version 1 comes from the configuration).
CREATE TABLE price_versions (
    version     int8 PRIMARY KEY,
    prices      jsonb NOT NULL,
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Spend anomalies, one per tenant and interval at most.
CREATE TABLE cost_anomalies (
    tenant_id       text NOT NULL,
    interval_start  timestamptz NOT NULL,
    kind            text NOT NULL,
    spend_micros    int8 NOT NULL,
    baseline_micros int8 NOT NULL,
    message         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, interval_start, kind)
);
