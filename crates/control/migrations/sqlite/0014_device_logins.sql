-- Command-line sign-ins waiting for a signed-in user to approve them (`kakuremichi login`, a
-- device-code flow as in RFC 8628; issue #17). The CLI holds the device code (stored hashed),
-- the user types or opens the short user code. Rows live minutes; expired ones are deleted by
-- the next sign-in started.
CREATE TABLE device_logins (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    device_hash  TEXT    NOT NULL UNIQUE,
    user_code    TEXT    NOT NULL UNIQUE,
    -- The name the personal API token will get (e.g. "kakuremichi CLI on laptop").
    name         TEXT    NOT NULL,
    client_ip    TEXT,
    created_at   TEXT    NOT NULL,
    expires_at   TEXT    NOT NULL,
    -- Set by the approving user; `denied` by one who refused.
    approved_by  INTEGER REFERENCES users (id) ON DELETE CASCADE,
    denied       INTEGER NOT NULL DEFAULT 0,
    last_poll_at TEXT
);
CREATE INDEX device_logins_client_ip ON device_logins (client_ip);
