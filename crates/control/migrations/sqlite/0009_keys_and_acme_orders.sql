-- Abuse hardening (issue 14): one WireGuard public key per node, certificate state per source, and
-- a log of ACME orders for the hourly caps.

-- 1. A WireGuard public key belongs to one node (Agent or Gateway). A database written before this
-- check may hold duplicates: the node that registered the key first (oldest, then lowest id) keeps
-- it, every later holder loses it. That node's next hello presenting the same key is refused with
-- `public_key_in_use`; it has to generate a new key (delete its *-wireguard.key) to come back.
UPDATE agents SET public_key = NULL
WHERE public_key IS NOT NULL AND EXISTS (
    SELECT 1 FROM agents AS a2
    WHERE a2.public_key = agents.public_key
      AND (a2.created_at < agents.created_at OR (a2.created_at = agents.created_at AND a2.id < agents.id)));
UPDATE gateways SET public_key = NULL
WHERE public_key IS NOT NULL AND EXISTS (
    SELECT 1 FROM gateways AS g2
    WHERE g2.public_key = gateways.public_key
      AND (g2.created_at < gateways.created_at OR (g2.created_at = gateways.created_at AND g2.id < gateways.id)));
-- Across the two tables the later one loses it too (an Agent on a tie: Gateways serve everyone).
UPDATE agents SET public_key = NULL
WHERE public_key IS NOT NULL AND EXISTS (
    SELECT 1 FROM gateways AS g WHERE g.public_key = agents.public_key AND g.created_at <= agents.created_at);
UPDATE gateways SET public_key = NULL
WHERE public_key IS NOT NULL AND EXISTS (
    SELECT 1 FROM agents AS a WHERE a.public_key = gateways.public_key);

-- Unique within each table (NULLs, i.e. not yet connected, may repeat) ...
CREATE UNIQUE INDEX agents_public_key ON agents (public_key);
CREATE UNIQUE INDEX gateways_public_key ON gateways (public_key);
-- ... and across the two, which an index cannot say.
CREATE TRIGGER agents_public_key_not_a_gateways_insert BEFORE INSERT ON agents
WHEN NEW.public_key IS NOT NULL AND EXISTS (SELECT 1 FROM gateways WHERE public_key = NEW.public_key)
BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: public key held by a gateway'); END;
CREATE TRIGGER agents_public_key_not_a_gateways_update BEFORE UPDATE OF public_key ON agents
WHEN NEW.public_key IS NOT NULL AND EXISTS (SELECT 1 FROM gateways WHERE public_key = NEW.public_key)
BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: public key held by a gateway'); END;
CREATE TRIGGER gateways_public_key_not_an_agents_insert BEFORE INSERT ON gateways
WHEN NEW.public_key IS NOT NULL AND EXISTS (SELECT 1 FROM agents WHERE public_key = NEW.public_key)
BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: public key held by an agent'); END;
CREATE TRIGGER gateways_public_key_not_an_agents_update BEFORE UPDATE OF public_key ON gateways
WHEN NEW.public_key IS NOT NULL AND EXISTS (SELECT 1 FROM agents WHERE public_key = NEW.public_key)
BEGIN SELECT RAISE(ABORT, 'UNIQUE constraint failed: public key held by an agent'); END;

-- 2. Certificate state per (hostname, source): switching a tunnel's tls between acme and internal
-- no longer overwrites the other source's certificate, failure count and retry time, so a toggle
-- neither re-orders a certificate that is still good nor resets a failure's backoff.
CREATE TABLE certificates_by_source (
    hostname        TEXT    NOT NULL,
    source          TEXT    NOT NULL,            -- 'acme' | 'internal'
    status          TEXT    NOT NULL,            -- 'pending' | 'issued' | 'failed' | 'waiting'
    cert_pem        TEXT,
    key_pem         TEXT,
    not_after       TEXT,
    issuer          TEXT,
    renew_at        TEXT,
    last_error      TEXT,                        -- a sentence a person can act on
    failures        INTEGER NOT NULL DEFAULT 0,  -- consecutive failures, for the backoff
    next_attempt_at TEXT,                        -- no new attempt before this
    updated_at      TEXT    NOT NULL,
    PRIMARY KEY (hostname, source)
);
INSERT INTO certificates_by_source
SELECT hostname, source, status, cert_pem, key_pem, not_after, issuer, renew_at, last_error,
       failures, next_attempt_at, updated_at
FROM certificates;
DROP TABLE certificates;
ALTER TABLE certificates_by_source RENAME TO certificates;

-- 3. Every ACME order Control starts, for the caps per user and per registered domain per hour.
-- owner_id NULL = a tunnel of the admins. Rows older than a day are pruned as orders are logged.
CREATE TABLE acme_orders (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname   TEXT    NOT NULL,
    domain     TEXT    NOT NULL,   -- registered domain (eTLD+1) of hostname
    owner_id   INTEGER,            -- no foreign key: the count outlives the account
    ordered_at TEXT    NOT NULL
);
CREATE INDEX acme_orders_ordered_at ON acme_orders (ordered_at);
