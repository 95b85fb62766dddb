-- The per-user API rate limit's buckets when several Control replicas share the database, so
-- that spreading requests over replicas buys no more of them. `tokens` left at `last_ms` (Unix
-- milliseconds); `granted` says whether the last request took one. A bucket idle for a minute
-- is full again, so old rows are deleted without changing anything. SQLite's one Control keeps
-- the buckets in memory (same schema on both engines at each version).
CREATE TABLE api_rate (
    user_id BIGINT PRIMARY KEY,
    tokens  DOUBLE PRECISION NOT NULL,
    last_ms BIGINT NOT NULL,
    granted BIGINT NOT NULL
);
