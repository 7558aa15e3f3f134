-- a release counter per fleet: the next release's seq is taken by raising it in the
-- transaction that inserts the release (a row lock on PostgreSQL), instead of
-- MAX(seq)+1, which two writers could both read; and (fleet, seq) is unique.
ALTER TABLE fleets ADD COLUMN release_seq BIGINT NOT NULL DEFAULT 0;
UPDATE fleets SET release_seq = (SELECT COALESCE(MAX(r.seq), 0) FROM releases r WHERE r.fleet = fleets.name);
DROP INDEX releases_fleet;
CREATE UNIQUE INDEX releases_fleet_seq ON releases (fleet, seq);
