-- Temporary tunnels (`kakuremichi share`, issue #17): an Agent and a tunnel made together for one
-- command line. The command line deletes them when it stops; Control deletes them once the Agent
-- has been offline for KAKUREMICHI_TEMPORARY_TTL, or at `expires_at` (`--expires`). Deleting the
-- tunnel or the Agent by hand deletes the row.
CREATE TABLE temporary_tunnels (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id    INTEGER NOT NULL UNIQUE REFERENCES agents (id) ON DELETE CASCADE,
    tunnel_id   INTEGER NOT NULL UNIQUE REFERENCES tunnels (id) ON DELETE CASCADE,
    created_at  TEXT    NOT NULL,
    expires_at  TEXT
);
CREATE INDEX temporary_tunnels_owner_id ON temporary_tunnels (owner_id);
