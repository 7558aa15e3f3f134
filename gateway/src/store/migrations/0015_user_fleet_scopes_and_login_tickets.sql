-- dashboard users scoped to fleets, and the single-use tickets of the public URLs' login
-- mode. A user with no row in dashboard_user_fleets sees every fleet; a user with rows
-- sees only those fleets' devices (dashboard pages, and login-mode public URLs).
CREATE TABLE dashboard_user_fleets (
    user_name TEXT NOT NULL,
    fleet TEXT NOT NULL,
    PRIMARY KEY (user_name, fleet)
);
-- A login-mode ticket (`?gw_ticket=`, HMAC-signed, valid for a minute) is used once: its
-- nonce is written here when a device host redeems it, and a second write is refused.
-- Rows are dropped once expired.
CREATE TABLE login_tickets (
    nonce TEXT PRIMARY KEY NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX login_tickets_expiry ON login_tickets (expires_at);
