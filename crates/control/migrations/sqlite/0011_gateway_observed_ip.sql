-- The address a Gateway's session with Control comes from (through trusted proxies), as Control
-- sees it: the default for its DNS records when its public_endpoint is a name, not an address.
ALTER TABLE gateways ADD COLUMN observed_ip TEXT;
