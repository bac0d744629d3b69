-- The idle timeout: a workspace whose role has `idle_timeout_seconds` stops itself with the reason `idle_timeout`
-- (as the pending request's reason, then as the observed one).
ALTER TABLE workspaces DROP CONSTRAINT workspaces_status_reason_check;
ALTER TABLE workspaces ADD CONSTRAINT workspaces_status_reason_check CHECK (status_reason IN ('created',
    'resume_requested', 'restart_requested', 'stop_requested', 'stop_all', 'role_stop_workspaces', 'idle_timeout',
    'ready', 'restored', 'reattached', 'restore_failed', 'pod_start_failed', 'pod_exited', 'pod_vanished',
    'snapshot_failed'));
ALTER TABLE workspaces DROP CONSTRAINT workspaces_request_reason_check;
ALTER TABLE workspaces ADD CONSTRAINT workspaces_request_reason_check CHECK (request_reason IN ('created',
    'resume_requested', 'restart_requested', 'stop_requested', 'stop_all', 'role_stop_workspaces', 'idle_timeout'));
