-- TCP, UDP and TLS-passthrough tunnels (issue #16). Existing tunnels stay `http`.

-- `http`, `tcp`, `udp` or `tls`.
ALTER TABLE tunnels ADD COLUMN protocol TEXT NOT NULL DEFAULT 'http';
-- The port every Gateway binds for a `tcp` or `udp` tunnel; NULL for the other protocols.
ALTER TABLE tunnels ADD COLUMN public_port INTEGER;
-- PROXY protocol header toward the target: `off`, `v1` or `v2`.
ALTER TABLE tunnels ADD COLUMN proxy_protocol TEXT NOT NULL DEFAULT 'off';
-- Connections (UDP: flows) at once per Gateway; NULL = unlimited.
ALTER TABLE tunnels ADD COLUMN max_connections INTEGER;

-- A public port serves one tunnel per protocol (TCP 5432 and UDP 5432 are different sockets).
CREATE UNIQUE INDEX tunnels_public_port ON tunnels (protocol, public_port)
    WHERE public_port IS NOT NULL;
