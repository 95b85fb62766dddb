-- Per-tunnel access control: who may use a tunnel, Control's token signing keys, and which login
-- sessions hold access tokens (so that their end can reach the Gateways as a revocation).
-- The access tables keep Unix seconds (INTEGER): they are compared with the tokens' iat/exp.

-- 'public' (anyone), 'login' (any signed-in user) or 'users' (the e-mails in access_allow).
ALTER TABLE tunnels ADD COLUMN access_mode TEXT NOT NULL DEFAULT 'public';
-- JSON array of lower-case e-mail addresses, used when access_mode = 'users'.
ALTER TABLE tunnels ADD COLUMN access_allow TEXT NOT NULL DEFAULT '[]';

-- Ed25519 keys that sign access tokens. A key signs from sign_from until the next key's
-- sign_from, and is published to Gateways until its last token has expired.
CREATE TABLE access_keys (
    kid        TEXT    PRIMARY KEY,
    seed       TEXT    NOT NULL,   -- base64url private seed; never leaves Control
    public_key TEXT    NOT NULL,   -- base64url, pushed to Gateways
    sign_from  INTEGER NOT NULL,
    created_at TEXT    NOT NULL
);

-- One row per login session that received access tokens: sid is the token's session id,
-- session_hash the sessions.id_hash it came from (no foreign key: the grant must outlive the
-- session to be reported as revoked), expires_at the latest exp of its tokens.
CREATE TABLE access_grants (
    sid          TEXT    PRIMARY KEY,
    session_hash TEXT    NOT NULL,
    user_id      INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX access_grants_expires_at ON access_grants (expires_at);
