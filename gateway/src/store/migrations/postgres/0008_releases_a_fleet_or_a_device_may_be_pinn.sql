-- releases; a fleet or a device may be pinned to one.
-- PostgreSQL: as in SQLite, but seq is BIGINT (PostgreSQL's INTEGER is 32 bits and
-- decodes as i32; SQLite's holds 64).
CREATE TABLE releases (
    id TEXT PRIMARY KEY NOT NULL,
    fleet TEXT NOT NULL REFERENCES fleets(name),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    compose TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX releases_fleet ON releases (fleet, seq);
ALTER TABLE fleets ADD COLUMN pinned_release TEXT;
ALTER TABLE devices ADD COLUMN pinned_release TEXT;
