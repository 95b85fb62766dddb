-- Per-user quotas count the tunnels and agents a member owns on every create: index the owner.
-- (The quota values themselves are rows of `settings`; absent rows mean the defaults.)
CREATE INDEX IF NOT EXISTS tunnels_owner_id ON tunnels (owner_id);
CREATE INDEX IF NOT EXISTS agents_owner_id ON agents (owner_id);
