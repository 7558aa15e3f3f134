-- public URL access modes, per device and as a fleet default: who may visit a device's
-- public URL. scope is 'device' (owner: the uuid) or 'fleet' (owner: the fleet name); a
-- device's own row wins, else its fleet's, else the URL is public. mode is 'public',
-- 'basic' (basic_user and the argon2 PHC string basic_hash) or 'link' (signed share
-- links, keyed with gateway_meta's 'share_secret'); a later 'login' needs no new column.
-- allow is a comma-separated IP/CIDR allow-list checked before any mode ('' = anyone).
CREATE TABLE public_access (
    scope TEXT NOT NULL,
    owner TEXT NOT NULL,
    mode TEXT NOT NULL,
    basic_user TEXT,
    basic_hash TEXT,
    allow TEXT NOT NULL DEFAULT '',
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope, owner)
);
