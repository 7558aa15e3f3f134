-- device logs, and per device the highest sequence number stored for its spool epoch.
CREATE TABLE logs (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    service TEXT,
    service_id BIGINT,
    is_stderr BOOLEAN NOT NULL,
    is_system BOOLEAN NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_device_id ON logs (device, id);
CREATE INDEX logs_ts ON logs (ts);
CREATE TABLE log_cursors (
    device TEXT PRIMARY KEY NOT NULL,
    epoch TEXT NOT NULL,
    last_seq BIGINT NOT NULL
);
