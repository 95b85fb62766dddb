-- Which Control replica holds a session with which node, so that every replica shows a node
-- online (and routes to a replicated tunnel's Agents) wherever its session is. Written by each
-- replica for itself; a replica not seen for a while (seen_ms, Unix milliseconds) no longer
-- counts. Used on PostgreSQL; SQLite's one Control keeps presence in memory (same schema on
-- both engines at each version).
CREATE TABLE control_replicas (
    replica TEXT PRIMARY KEY,
    seen_ms INTEGER NOT NULL
);
CREATE TABLE node_presence (
    replica TEXT NOT NULL,
    kind    TEXT NOT NULL,   -- 'agent' | 'gateway'
    node_id INTEGER NOT NULL,
    PRIMARY KEY (replica, kind, node_id)
);
