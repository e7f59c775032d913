-- API keys: only a hash of the secret is stored; `prefix` (the visible start of the key)
-- finds the row, the hash verifies it.
CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id       text REFERENCES users (id) ON DELETE SET NULL,
    name          text NOT NULL DEFAULT '',
    prefix        text NOT NULL UNIQUE,
    key_hash      text NOT NULL,
    scopes        text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    expires_at    timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
