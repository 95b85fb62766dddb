-- Accounts for the web UI: owners of agents and tunnels (roles), session idle expiry and CSRF
-- tokens, the audit log, admin settings and invitations.

-- NULL owner = owned by the admins (rows created before roles existed, or by nobody in particular).
ALTER TABLE agents ADD COLUMN owner_id INTEGER REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE tunnels ADD COLUMN owner_id INTEGER REFERENCES users (id) ON DELETE SET NULL;

-- Idle expiry: a session unused for the idle limit ends even before its absolute expires_at.
ALTER TABLE sessions ADD COLUMN last_seen_at TEXT NOT NULL DEFAULT '1970-01-01T00:00:00Z';
-- Sent back by forms and by cookie-authenticated API calls (X-CSRF-Token). Not a credential alone.
ALTER TABLE sessions ADD COLUMN csrf_token TEXT NOT NULL DEFAULT '';
-- Existing sessions have no CSRF token and would look idle: end them.
DELETE FROM sessions;

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT    NOT NULL,
    user_id    INTEGER,            -- no foreign key: the entry outlives the account
    user_email TEXT,
    action     TEXT    NOT NULL,   -- e.g. 'tunnel.create'
    target     TEXT    NOT NULL,   -- e.g. 'tunnel:3 app.example.com'
    detail     TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_user_id ON audit_log (user_id, id);

-- Admin settings as key/value text (e.g. open_registration = 'true').
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One-time registration links made by an admin; stored hashed like every other secret.
CREATE TABLE invitations (
    token_hash TEXT    PRIMARY KEY,
    email      TEXT    NOT NULL,
    is_admin   BOOLEAN NOT NULL DEFAULT FALSE,
    created_by INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at TEXT    NOT NULL,
    expires_at TEXT    NOT NULL
);
