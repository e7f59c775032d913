-- The response cache persisted (engine/src/cache/persist.rs): each row carries what a node
-- needs to rebuild its exact map and vector index and to verify a semantic neighbour.
-- Nothing wrote semantic_cache before this migration, so a row in it could not be served
-- (no scope, no question): drop such rows rather than invent values for them.
DELETE FROM semantic_cache;

ALTER TABLE semantic_cache
    -- Hex SHA-256 of model family, effective system prompt, prior turns and output limits
    -- (key_hash, the exact key, is this scope plus the normalised question).
    ADD COLUMN scope_hash   text NOT NULL,
    -- The question as asked: the verification stage compares it with a new prompt.
    ADD COLUMN prompt       text NOT NULL,
    -- The vector space (embedding model) of `embedding`; NULL when there is no embedding.
    ADD COLUMN space        text,
    -- Least recently used rows beyond a tenant's cap are deleted first.
    ADD COLUMN last_used_at timestamptz NOT NULL DEFAULT now(),
    -- The exact tier alone stores no vector.
    ALTER COLUMN embedding DROP NOT NULL;

-- The per-tenant cap (newest use first) and the purge of one tenant.
CREATE INDEX semantic_cache_tenant_lru ON semantic_cache (tenant_id, last_used_at, id);
-- Incremental sync re-reads rows created in the last seconds (ids commit out of order).
CREATE INDEX semantic_cache_created ON semantic_cache (created_at);

-- A tenant's cache was purged: every node drops its copy of that tenant's entries when its
-- sync reads the marker. Markers are deleted after a week.
CREATE TABLE cache_purges (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL,
    purged_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cache_purges_age ON cache_purges (purged_at);
