-- How long a UDP flow of a `udp` tunnel stays without a datagram before its entry is freed, in
-- seconds (issue #16); NULL = the default (60 s).
ALTER TABLE tunnels ADD COLUMN udp_idle_timeout INTEGER;
