-- dashboard users and sessions, one-time login links, and the indexes the dashboard
-- pages and counts along.
CREATE TABLE dashboard_users (
    name TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_login BIGINT
);
-- A signed-in browser: only the SHA-256 of the cookie's random id is stored. Exactly one
-- of user_name and token_id is set; the role is read from that user or token at each
-- request, so removing the user or revoking the token ends its sessions.
CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    user_name TEXT,
    token_id TEXT,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
-- One-time login links (`/login/once?t=...`): hashed, single use, short-lived.
CREATE TABLE dashboard_login_links (
    hash TEXT PRIMARY KEY NOT NULL,
    user_name TEXT,
    token_id TEXT,
    expires_at BIGINT NOT NULL
);
CREATE INDEX devices_listing ON devices (created_at, uuid);
-- Per-fleet device and online counts (fleets page, the devices page's fleet list).
CREATE INDEX devices_fleet ON devices (fleet);
CREATE INDEX audit_log_target ON audit_log (target, seq);
