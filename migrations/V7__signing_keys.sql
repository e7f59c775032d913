-- Token signing keys. Retired keys keep verifying until their tokens expire; the public
-- keys are published.
CREATE TABLE signing_keys (
    id           text PRIMARY KEY,
    algorithm    text NOT NULL,
    public_key   bytea NOT NULL,
    private_key  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);
