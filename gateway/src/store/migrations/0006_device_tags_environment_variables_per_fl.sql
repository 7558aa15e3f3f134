-- device tags; environment variables per fleet or device, optionally per service.
CREATE TABLE device_tags (
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device, name)
);
CREATE TABLE env_vars (
    scope TEXT NOT NULL,
    owner TEXT NOT NULL,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (scope, owner, service, name)
);
