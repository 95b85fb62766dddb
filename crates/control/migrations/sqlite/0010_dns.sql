-- DNS managed by Control (issue 15): zones with their provider, the records Control wrote in them,
-- and the public addresses of Gateways those records point at.

-- A zone Control may write to. `config` holds the provider's settings without its secrets (what the
-- API shows); `secret` holds the write-only fields (key_secret, api_key, api_token), sealed with
-- <data_dir>/secrets.key and bound to the zone's name.
CREATE TABLE dns_zones (
    id INTEGER PRIMARY KEY,
    zone TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    config TEXT NOT NULL,
    secret BLOB NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Every RRset Control wrote, with what it wrote: an RRset is only ever replaced or deleted when it
-- is listed here and still holds what we wrote, so records users made by hand are never touched.
-- `purpose` says why it exists: 'gateways' (A/AAAA of a tunnel) or 'acme' (a DNS-01 TXT).
CREATE TABLE dns_records (
    zone_id INTEGER NOT NULL REFERENCES dns_zones (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    content TEXT NOT NULL,
    ttl INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (zone_id, name, kind)
);

-- Where a Gateway is reached from the internet, for its A and AAAA records. NULL: derived from
-- public_endpoint when that is an IP address.
ALTER TABLE gateways ADD COLUMN public_ipv4 TEXT;
ALTER TABLE gateways ADD COLUMN public_ipv6 TEXT;
