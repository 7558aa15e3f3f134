-- devices.
CREATE TABLE devices (
    uuid TEXT PRIMARY KEY NOT NULL,
    public_url BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    last_seen BIGINT,
    online BOOLEAN NOT NULL DEFAULT FALSE,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
)
