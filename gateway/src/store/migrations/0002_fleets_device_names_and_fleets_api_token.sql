-- fleets, device names and fleets, API tokens, audit log.
CREATE TABLE fleets (
    name TEXT PRIMARY KEY NOT NULL,
    public_url_default BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);
ALTER TABLE devices ADD COLUMN name TEXT;
ALTER TABLE devices ADD COLUMN fleet TEXT REFERENCES fleets(name);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used BIGINT
);
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
