-- Per-tunnel limits enforced by every Gateway (see kakuremichi_proto::limits): IP allow / deny
-- lists, a per-client request rate with burst, and a cap on concurrent requests.

-- JSON arrays of canonical CIDRs ("192.0.2.0/24", "2001:db8::1/128"); '[]' = no list.
ALTER TABLE tunnels ADD COLUMN ip_allow TEXT NOT NULL DEFAULT '[]';
ALTER TABLE tunnels ADD COLUMN ip_deny TEXT NOT NULL DEFAULT '[]';
-- Requests per second per client IP (an IPv6 /64); NULL = no rate limit.
ALTER TABLE tunnels ADD COLUMN rate_limit_per_second INTEGER;
-- Requests a quiet client may send at once; NULL = the same as rate_limit_per_second.
ALTER TABLE tunnels ADD COLUMN rate_limit_burst INTEGER;
-- Requests in flight at once per Gateway; NULL = unlimited.
ALTER TABLE tunnels ADD COLUMN max_concurrent_requests INTEGER;
