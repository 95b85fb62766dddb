-- Initial schema: accounts, login sessions, personal API tokens, nodes (agents, gateways), tunnels.
-- Timestamps are RFC 3339 UTC strings with second precision (so they also compare as text).
-- AUTOINCREMENT: ids are never reused, so a stale session or cached id can never point at a new row.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    email         TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    is_admin      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    TEXT    NOT NULL
);

CREATE TABLE sessions (
    id_hash    TEXT    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TEXT    NOT NULL,
    expires_at TEXT    NOT NULL
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    token_hash   TEXT    NOT NULL UNIQUE,
    created_at   TEXT    NOT NULL,
    last_used_at TEXT
);
CREATE INDEX api_tokens_user_id ON api_tokens (user_id);

CREATE TABLE agents (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    api_key_hash TEXT NOT NULL UNIQUE,
    wg_address   TEXT NOT NULL UNIQUE,
    public_key   TEXT,
    last_seen    TEXT,
    created_at   TEXT NOT NULL
);

CREATE TABLE gateways (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL,
    public_endpoint TEXT    NOT NULL,
    token_hash      TEXT    NOT NULL UNIQUE,
    wg_address      TEXT    NOT NULL UNIQUE,
    public_key      TEXT,
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    last_seen       TEXT,
    created_at      TEXT    NOT NULL
);

CREATE TABLE tunnels (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname   TEXT    NOT NULL UNIQUE,
    agent_id   INTEGER NOT NULL REFERENCES agents (id),
    target     TEXT    NOT NULL,
    port       INTEGER NOT NULL,
    enabled    BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL,
    UNIQUE (agent_id, port)
);
