-- Login throttle counts shared by every Control replica. Used on PostgreSQL, where a throttle
-- must not be dodged by switching replica; SQLite's one Control keeps them in memory and leaves
-- this table empty (it exists so both engines have the same schema at each version).
-- Times are Unix milliseconds.
CREATE TABLE login_throttle (
    key      TEXT    PRIMARY KEY,   -- 'account:<email>' or 'ip:<address>'
    failures INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    last_ms  INTEGER NOT NULL
);
CREATE INDEX login_throttle_last_ms ON login_throttle (last_ms);
