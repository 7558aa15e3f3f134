-- gateway nodes and which node holds each device's tunnel: a node's lease (renewed
-- against the database's clock; a node past it is dead), and per device the node that
-- holds its tunnel with an epoch raised on every connect, so that a late disconnect from
-- an older session never clears a newer one (node is NULL while no node holds it).
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    peer_addr TEXT,
    started_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);
CREATE TABLE device_routes (
    device TEXT PRIMARY KEY REFERENCES devices (uuid) ON DELETE CASCADE,
    node TEXT,
    epoch BIGINT NOT NULL,
    since BIGINT NOT NULL
);
CREATE INDEX device_routes_node ON device_routes (node);
