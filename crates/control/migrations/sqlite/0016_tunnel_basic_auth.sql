-- HTTP Basic authentication in front of a tunnel (issue #17, `share --basic-auth user:pass`): the
-- user name (shown) and the Gateways' check, JSON {"salt","sha256"} of a salted SHA-256 of
-- user:password (the password itself is never stored). NULL = off.
ALTER TABLE tunnels ADD COLUMN basic_auth_user TEXT;
ALTER TABLE tunnels ADD COLUMN basic_auth TEXT;
