-- Per tunnel, whether its Gateways keep its recent requests in memory for the tunnel page
-- (issue #22's request log; off by default, nothing is written to disk).
ALTER TABLE tunnels ADD COLUMN log_requests BOOLEAN NOT NULL DEFAULT FALSE;
