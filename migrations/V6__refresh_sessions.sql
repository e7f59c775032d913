-- Refresh-token sessions. Tokens rotate within a family; reuse of a rotated token revokes
-- the whole family. Only hashes are stored.
CREATE TABLE refresh_sessions (
    id           text PRIMARY KEY,
    tenant_id    text NOT NULL,
    user_id      text NOT NULL,
    family_id    text NOT NULL,
    token_hash   text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    replaced_by  text
);
CREATE INDEX refresh_sessions_family ON refresh_sessions (family_id);
CREATE INDEX refresh_sessions_user ON refresh_sessions (tenant_id, user_id);
