-- Alerts (issue #22). `alerts`: every alert Control fired, open while `resolved_at` is NULL; at
-- most one open alert per `key` (e.g. gateway_offline:3), so a condition fires once and resolves
-- once. `alert_channels`: where alerts go; `target` (a webhook URL, which often holds a token, or
-- an e-mail address) is sealed with <data_dir>/secrets.key and bound to the channel's name,
-- `hint` is what the API shows of it.
CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL,
    rule        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    summary     TEXT NOT NULL,
    fired_at    TEXT NOT NULL,
    resolved_at TEXT
);
CREATE UNIQUE INDEX alerts_open ON alerts (key) WHERE resolved_at IS NULL;

CREATE TABLE alert_channels (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    format     TEXT NOT NULL,
    target     BLOB NOT NULL,
    hint       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_sent_at TEXT,
    last_error TEXT
);
