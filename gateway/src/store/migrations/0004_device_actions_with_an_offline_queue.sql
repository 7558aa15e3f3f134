-- device actions with an offline queue.
CREATE TABLE actions (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    actor TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    delivered_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX actions_device_status ON actions (device, status);
