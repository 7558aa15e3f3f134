-- provisioning keys; devices registered ahead of provisioning.
CREATE TABLE provisioning_keys (
    id TEXT PRIMARY KEY NOT NULL,
    fleet TEXT NOT NULL REFERENCES fleets(name),
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    max_uses BIGINT,
    uses BIGINT NOT NULL DEFAULT 0,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
ALTER TABLE devices ADD COLUMN provisioned BOOLEAN NOT NULL DEFAULT TRUE;
