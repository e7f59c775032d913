-- Semantic-cache entries, tenant-scoped; each node rebuilds its in-process vector index
-- from here.
CREATE TABLE semantic_cache (
    id            bigserial PRIMARY KEY,
    tenant_id     text NOT NULL,
    model_family  text NOT NULL,
    key_hash      text NOT NULL,
    embedding     real[] NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    hits          int8 NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, model_family, key_hash)
);
CREATE INDEX semantic_cache_expiry ON semantic_cache (expires_at);
