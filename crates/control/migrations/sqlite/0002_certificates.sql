-- Automatic HTTPS: per-tunnel TLS mode and redirect switch, certificates by hostname, the ACME
-- account. Private keys stay in this database (and in the snapshots pushed to Gateways).

-- 'acme' (a public CA through ACME), 'internal' (Control's own CA) or 'off' (plain HTTP only).
ALTER TABLE tunnels ADD COLUMN tls TEXT NOT NULL DEFAULT 'acme';
-- Plain-HTTP requests get a 308 to https once the Gateway holds a certificate.
ALTER TABLE tunnels ADD COLUMN https_redirect BOOLEAN NOT NULL DEFAULT TRUE;

-- One row per hostname: the certificate served for it (if any) and the state of getting one.
CREATE TABLE certificates (
    hostname        TEXT    PRIMARY KEY,
    source          TEXT    NOT NULL,            -- 'acme' | 'internal': who issued (or is issuing) it
    status          TEXT    NOT NULL,            -- 'pending' | 'issued' | 'failed'
    cert_pem        TEXT,                        -- chain, leaf first
    key_pem         TEXT,
    not_after       TEXT,
    issuer          TEXT,
    renew_at        TEXT,                        -- ARI window or two thirds of the lifetime
    last_error      TEXT,                        -- a sentence a person can act on
    failures        INTEGER NOT NULL DEFAULT 0,  -- consecutive failures, for the backoff
    next_attempt_at TEXT,                        -- no new attempt before this (backoff, Retry-After)
    updated_at      TEXT    NOT NULL
);

-- The ACME account per directory URL; credentials hold the account key (JSON from instant-acme).
CREATE TABLE acme_accounts (
    directory   TEXT PRIMARY KEY,
    credentials TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
