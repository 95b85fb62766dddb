-- Per tunnel, a custom error page (HTML, at most 64 KiB) the Gateways serve in place of their
-- own 404/502/503/429/403/401/408 pages; NULL = the global page (setting `error_page`), if any.
ALTER TABLE tunnels ADD COLUMN error_page TEXT;
