-- Accounts for authentication (issue 6): what `engine::accounts::postgres::PgAccountStore`
-- needs beyond V1 (tenants, users, memberships), V2 (API keys), V6 (refresh sessions) and
-- V7 (signing keys).

-- Per-tenant limits; NULL = the configured default.
ALTER TABLE tenants
    ADD COLUMN requests_per_minute int8 CHECK (requests_per_minute >= 0),
    ADD COLUMN tokens_per_minute int8 CHECK (tokens_per_minute >= 0);

-- Login: an argon2id PHC string, the platform flag, and TOTP. `mfa_secret` is sealed
-- (ChaCha20-Poly1305, `mfa_secret_sealed`) when the engine has `auth.secrets_key`;
-- recovery codes are SHA-256 hashes, one element per unused code.
ALTER TABLE users
    ADD COLUMN password_hash text NOT NULL DEFAULT '',
    ADD COLUMN superadmin boolean NOT NULL DEFAULT false,
    ADD COLUMN mfa_secret bytea,
    ADD COLUMN mfa_secret_sealed boolean NOT NULL DEFAULT false,
    ADD COLUMN mfa_confirmed boolean NOT NULL DEFAULT false,
    ADD COLUMN mfa_recovery_hashes bytea[] NOT NULL DEFAULT '{}';

-- The fourth tenant role.
ALTER TABLE tenant_memberships DROP CONSTRAINT tenant_memberships_role_check;
ALTER TABLE tenant_memberships ADD CONSTRAINT tenant_memberships_role_check
    CHECK (role IN ('owner', 'admin', 'member', 'viewer'));

-- A key acts as the user who created it, so it cannot outlive them; and it may carry its
-- own request limit.
ALTER TABLE api_keys ADD COLUMN requests_per_minute int8 CHECK (requests_per_minute >= 0);
ALTER TABLE api_keys DROP CONSTRAINT api_keys_user_id_fkey;
DELETE FROM api_keys WHERE user_id IS NULL;
ALTER TABLE api_keys
    ALTER COLUMN user_id SET NOT NULL,
    ADD CONSTRAINT api_keys_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;

-- A refresh token is spent once (`used_at`); presenting a spent one is reuse.
ALTER TABLE refresh_sessions ADD COLUMN used_at timestamptz;
CREATE INDEX refresh_sessions_expiry ON refresh_sessions (expires_at);

-- Revoked login sessions (token families): logout, refresh reuse. Access tokens name their
-- family, so every node refuses them once it has read this table; a row stays while any
-- refresh token of the family exists, and long enough for its access tokens to expire.
CREATE TABLE revoked_sessions (
    family_id   text PRIMARY KEY,
    tenant_id   text,
    revoked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revoked_sessions_time ON revoked_sessions (revoked_at);

-- Signing keys' private halves are sealed like TOTP secrets when `auth.secrets_key` is set.
ALTER TABLE signing_keys ADD COLUMN private_key_sealed boolean NOT NULL DEFAULT false;
