-- A tenant's routing policy (issue 9): explicit models, complexity-based `auto`, or the
-- cheapest model of a tier; `min_tier` is a quality floor.
CREATE TABLE tenant_routing (
    tenant_id   text PRIMARY KEY,
    policy      text NOT NULL DEFAULT 'explicit' CHECK (policy IN ('explicit', 'auto', 'cheapest')),
    min_tier    text NOT NULL DEFAULT 'economy' CHECK (min_tier IN ('economy', 'standard', 'premium')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
