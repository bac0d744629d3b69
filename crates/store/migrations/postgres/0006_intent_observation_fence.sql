-- Intent and observation get one writer each. API calls write the intent half (`desired`, the latest lifecycle
-- request, `environment`, `archived_at`) under `intent_generation`; the reconciler writes the observation half
-- (`status`, `status_reason`, `last_error`, `pod_id`, `pod_pack_ids`, `snapshot_id`, `last_snapshot_error`,
-- `adopted_seq`) under `generation` and the lease fence. A request (`request_seq` > `adopted_seq`) is pending until
-- the reconciler takes it on; the public status is the pending request's, else the observed one.
ALTER TABLE workspaces ADD COLUMN intent_generation BIGINT NOT NULL DEFAULT 1;
ALTER TABLE workspaces ADD COLUMN request_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN request_status TEXT CHECK (request_status IN ('provisioning', 'stopping'));
ALTER TABLE workspaces ADD COLUMN request_reason TEXT CHECK (request_reason IN ('created', 'resume_requested',
    'restart_requested', 'stop_requested', 'stop_all', 'role_stop_workspaces'));
ALTER TABLE workspaces ADD COLUMN adopted_seq BIGINT NOT NULL DEFAULT 0;
-- The lease's fencing token: bumped whenever a new holder takes the lease (never by a renewal), and checked by every
-- observation write, so a reconciler that lost its lease cannot write.
ALTER TABLE workspaces ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
