-- The idle timeout: a workspace whose role has `idle_timeout_seconds` stops itself with the reason `idle_timeout`
-- (as the pending request's reason, then as the observed one). SQLite cannot alter a CHECK constraint, so the table
-- is rebuilt inside the migration's transaction. Foreign keys are on and cannot be turned off inside a transaction,
-- and renaming the table would rewrite the `REFERENCES workspaces` of `snapshots` and `tasks`; so the rows are
-- copied aside, the table dropped (its children's references are counted as deferred violations), made again under
-- its own name and refilled, which resolves every one of them before the commit checks.
PRAGMA defer_foreign_keys = ON;
CREATE TABLE workspaces_before_idle AS SELECT * FROM workspaces;
DROP TABLE workspaces;
CREATE TABLE workspaces (
    id                  TEXT PRIMARY KEY,
    org_id              TEXT NOT NULL REFERENCES orgs (id),
    role_id             TEXT NOT NULL REFERENCES agent_roles (id),
    environment         TEXT,
    created_by_user_id  TEXT,
    -- provisioning: pod being made; idle/busy: pod runs; stopping: being saved; stopped: no pod, files in the
    -- snapshot; failed: see status_reason and last_error.
    status              TEXT NOT NULL CHECK (status IN ('provisioning', 'idle', 'busy', 'stopping', 'stopped', 'failed')),
    status_reason       TEXT CHECK (status_reason IN ('created', 'resume_requested', 'restart_requested',
                            'stop_requested', 'stop_all', 'role_stop_workspaces', 'idle_timeout', 'ready', 'restored',
                            'reattached', 'restore_failed', 'pod_start_failed', 'pod_exited', 'pod_vanished',
                            'snapshot_failed')),
    last_error          TEXT,
    desired             TEXT NOT NULL CHECK (desired IN ('running', 'stopped')),
    generation          BIGINT NOT NULL,
    pod_id              TEXT,
    pod_pack_ids        TEXT, -- JSON array, the pack set the pod started with
    snapshot_id         TEXT,
    last_snapshot_error TEXT,
    lease_owner         TEXT,
    lease_until         BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    archived_at         BIGINT,
    pod_address         TEXT,
    pod_capability      TEXT,
    pod_capability_expires_at BIGINT,
    intent_generation   BIGINT NOT NULL DEFAULT 1,
    request_seq         BIGINT NOT NULL DEFAULT 0,
    request_status      TEXT CHECK (request_status IN ('provisioning', 'stopping')),
    request_reason      TEXT CHECK (request_reason IN ('created', 'resume_requested', 'restart_requested',
                            'stop_requested', 'stop_all', 'role_stop_workspaces', 'idle_timeout')),
    adopted_seq         BIGINT NOT NULL DEFAULT 0,
    lease_epoch         BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT workspaces_pod_id_key UNIQUE (pod_id),
    CHECK (archived_at IS NULL OR status IN ('stopped', 'failed'))
);
INSERT INTO workspaces (id, org_id, role_id, environment, created_by_user_id, status, status_reason, last_error,
    desired, generation, pod_id, pod_pack_ids, snapshot_id, last_snapshot_error, lease_owner, lease_until, created_at,
    updated_at, archived_at, pod_address, pod_capability, pod_capability_expires_at, intent_generation, request_seq,
    request_status, request_reason, adopted_seq, lease_epoch)
SELECT id, org_id, role_id, environment, created_by_user_id, status, status_reason, last_error,
    desired, generation, pod_id, pod_pack_ids, snapshot_id, last_snapshot_error, lease_owner, lease_until, created_at,
    updated_at, archived_at, pod_address, pod_capability, pod_capability_expires_at, intent_generation, request_seq,
    request_status, request_reason, adopted_seq, lease_epoch
FROM workspaces_before_idle;
DROP TABLE workspaces_before_idle;
CREATE INDEX workspaces_org_idx ON workspaces (org_id, id);
CREATE INDEX workspaces_role_status_idx ON workspaces (role_id, status);
CREATE INDEX workspaces_status_idx ON workspaces (status);
CREATE INDEX workspaces_pod_address ON workspaces (pod_address) WHERE pod_address IS NOT NULL;
