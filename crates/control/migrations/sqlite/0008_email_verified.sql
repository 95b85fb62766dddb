-- Whether an account is known to belong to the owner of its e-mail address. Allow-lists of
-- protected tunnels name e-mail addresses, so they admit only verified accounts. Accounts made by
-- open registration start unverified (anyone can type any address); the first admin, accounts an
-- admin creates and invited accounts (the link went to that address) are verified; an admin can
-- mark any account verified. Accounts that exist before this migration keep working: verified.
ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT TRUE;
