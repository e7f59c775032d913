-- Who did what to which tenant resource (admin actions, key changes, logins).
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    tenant_id   text,
    actor_id    text,
    action      text NOT NULL,
    target      text,
    details     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant_time ON audit_log (tenant_id, created_at);
