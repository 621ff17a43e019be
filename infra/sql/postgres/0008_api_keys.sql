-- Gateway API keys (`tickflow keys create|list|revoke`). Only a salted scrypt hash of each key's
-- secret is stored; key_id, the key's public prefix, finds the row without scanning hashes.
-- A revoked key keeps its row (revoked_at set) so its name stays reserved and audits can read it.
CREATE TABLE IF NOT EXISTS api_keys (
    name text PRIMARY KEY,
    key_id text NOT NULL UNIQUE,
    salt bytea NOT NULL,
    hash bytea NOT NULL,
    scopes text[] NOT NULL,
    rate_limit double precision,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
