-- facts about the data dir itself, such as the fingerprint of the CA it was
-- created with (checked against ca.pem at every start).
CREATE TABLE gateway_meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
