-- Login throttle counts shared by every Control replica, so that a throttle cannot be dodged by
-- switching replica (SQLite's one Control keeps them in memory). Times are Unix milliseconds.
CREATE TABLE login_throttle (
    key      TEXT   PRIMARY KEY,   -- 'account:<email>' or 'ip:<address>'
    failures BIGINT NOT NULL,
    until_ms BIGINT NOT NULL,
    last_ms  BIGINT NOT NULL
);
CREATE INDEX login_throttle_last_ms ON login_throttle (last_ms);
