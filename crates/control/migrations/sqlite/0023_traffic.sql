-- Each tunnel's traffic history (issue #22), from the counters Gateways report every 10 s:
-- one row per tunnel, Gateway and minute (`resolution` 60, kept 48 hours) or hour (3600, kept
-- 30 days); `start_s` is the bucket's start in Unix seconds. r1..r5: HTTP responses by status
-- class; connections: stream tunnels'; l0..l12: responses by time to first byte, per latency
-- bucket (not cumulative; l12 beyond the last bound). No foreign keys: a deleted tunnel's rows
-- age out with the rest.
CREATE TABLE traffic (
    tunnel_id   BIGINT NOT NULL,
    gateway_id  BIGINT NOT NULL,
    resolution  INTEGER NOT NULL,
    start_s     BIGINT NOT NULL,
    r1 BIGINT NOT NULL DEFAULT 0,
    r2 BIGINT NOT NULL DEFAULT 0,
    r3 BIGINT NOT NULL DEFAULT 0,
    r4 BIGINT NOT NULL DEFAULT 0,
    r5 BIGINT NOT NULL DEFAULT 0,
    connections BIGINT NOT NULL DEFAULT 0,
    bytes_in    BIGINT NOT NULL DEFAULT 0,
    bytes_out   BIGINT NOT NULL DEFAULT 0,
    l0 BIGINT NOT NULL DEFAULT 0,
    l1 BIGINT NOT NULL DEFAULT 0,
    l2 BIGINT NOT NULL DEFAULT 0,
    l3 BIGINT NOT NULL DEFAULT 0,
    l4 BIGINT NOT NULL DEFAULT 0,
    l5 BIGINT NOT NULL DEFAULT 0,
    l6 BIGINT NOT NULL DEFAULT 0,
    l7 BIGINT NOT NULL DEFAULT 0,
    l8 BIGINT NOT NULL DEFAULT 0,
    l9 BIGINT NOT NULL DEFAULT 0,
    l10 BIGINT NOT NULL DEFAULT 0,
    l11 BIGINT NOT NULL DEFAULT 0,
    l12 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tunnel_id, gateway_id, resolution, start_s)
);
CREATE INDEX traffic_by_time ON traffic (resolution, start_s);
