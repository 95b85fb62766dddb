-- Replicas: further Agents serving a tunnel besides tunnels.agent_id (like cloudflared's replicas).
-- Each has its own port on its own Agent's stack; Gateways spread requests over all of them.
CREATE TABLE tunnel_replicas (
    tunnel_id INTEGER NOT NULL REFERENCES tunnels (id) ON DELETE CASCADE,
    agent_id  INTEGER NOT NULL REFERENCES agents (id),
    port      INTEGER NOT NULL,
    PRIMARY KEY (tunnel_id, agent_id),
    UNIQUE (agent_id, port)
);
CREATE INDEX tunnel_replicas_agent_id ON tunnel_replicas (agent_id);
