-- The dashboard and GET /api/v1/backups read the newest audit entry of a few actions
-- (backup.created, backup.failed, backup.command_failed) on every view: an index per action,
-- newest last, keeps that a lookup however long the log grows.
CREATE INDEX audit_log_action ON audit_log (action, id);
