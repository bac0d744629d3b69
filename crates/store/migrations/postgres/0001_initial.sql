-- evershell schema, PostgreSQL ladder. Timestamps are epoch milliseconds (BIGINT); ids are prefixed ULID strings;
-- JSON values are TEXT. Every state and closed enum is mirrored by a CHECK constraint.

CREATE TABLE orgs (
    id             TEXT PRIMARY KEY,
    slug           TEXT NOT NULL,
    billing_status TEXT NOT NULL CHECK (billing_status IN ('active', 'trial', 'past_due', 'decommissioning')),
    trial_ends_at  BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    CONSTRAINT orgs_slug_key UNIQUE (slug)
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    password_hash TEXT,
    created_at    BIGINT NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE TABLE memberships (
    org_id             TEXT NOT NULL REFERENCES orgs (id),
    user_id            TEXT NOT NULL REFERENCES users (id),
    role               TEXT NOT NULL CHECK (role IN ('owner', 'operator', 'member')),
    -- pending: invited, not yet accepted; active: in force.
    status             TEXT NOT NULL CHECK (status IN ('pending', 'active')),
    invite_token_hash  TEXT,
    invited_by_user_id TEXT,
    accepted_at        BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    PRIMARY KEY (org_id, user_id),
    CONSTRAINT memberships_invite_token_key UNIQUE (invite_token_hash),
    CHECK ((status = 'active') = (accepted_at IS NOT NULL))
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

CREATE TABLE api_keys (
    id                 TEXT PRIMARY KEY,
    org_id             TEXT NOT NULL REFERENCES orgs (id),
    label              TEXT NOT NULL,
    prefix             TEXT NOT NULL,
    secret_hash        TEXT NOT NULL,
    permission_set     TEXT NOT NULL CHECK (permission_set IN ('full_access', 'submit_observe', 'read_only')),
    permissions        TEXT NOT NULL, -- JSON array of scope strings
    created_by_user_id TEXT,
    created_at         BIGINT NOT NULL,
    revoked_at         BIGINT,
    CONSTRAINT api_keys_secret_hash_key UNIQUE (secret_hash)
);
CREATE INDEX api_keys_org_idx ON api_keys (org_id);

CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    org_id     TEXT NOT NULL REFERENCES orgs (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_user_org_idx ON sessions (user_id, org_id);

CREATE TABLE server_keys (
    name       TEXT PRIMARY KEY,
    material   TEXT NOT NULL, -- hex
    created_at BIGINT NOT NULL
);

CREATE TABLE providers (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs (id),
    name            TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('anthropic', 'openai', 'gemini', 'vertex', 'azure-openai')),
    display_name    TEXT,
    domain          TEXT NOT NULL,
    credential_name TEXT,
    default_model   TEXT,
    capabilities    TEXT,
    config          TEXT NOT NULL DEFAULT '{}', -- JSON object of string values
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    archived_at     BIGINT,
    CONSTRAINT providers_org_name_key UNIQUE (org_id, name)
);

CREATE TABLE agent_roles (
    id                      TEXT PRIMARY KEY,
    org_id                  TEXT NOT NULL REFERENCES orgs (id),
    name                    TEXT NOT NULL,
    display_name            TEXT,
    description             TEXT,
    provider_id             TEXT NOT NULL REFERENCES providers (id),
    model                   TEXT,
    capabilities            TEXT,
    environment             TEXT NOT NULL CHECK (environment IN ('development', 'staging', 'production')),
    environment_description TEXT,
    task_timeout_seconds    BIGINT,
    idle_timeout_seconds    BIGINT,
    thinking_effort         TEXT CHECK (thinking_effort IN ('high', 'medium', 'low', 'off')),
    max_continuations       BIGINT,
    max_context_tokens      BIGINT,
    pool_policy             TEXT NOT NULL CHECK (pool_policy IN ('', 'static', 'dynamic')),
    pool_size               BIGINT,
    pool_max_size           BIGINT,
    pack_ids                TEXT NOT NULL DEFAULT '[]', -- JSON array of pack ids
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL,
    archived_at             BIGINT,
    CONSTRAINT agent_roles_org_name_key UNIQUE (org_id, name)
);
CREATE INDEX agent_roles_provider_idx ON agent_roles (provider_id);

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
                            'stop_requested', 'stop_all', 'role_stop_workspaces', 'ready', 'restored', 'reattached',
                            'restore_failed', 'pod_start_failed', 'pod_exited', 'pod_vanished', 'snapshot_failed')),
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
    CONSTRAINT workspaces_pod_id_key UNIQUE (pod_id),
    CHECK (archived_at IS NULL OR status IN ('stopped', 'failed'))
);
CREATE INDEX workspaces_org_idx ON workspaces (org_id, id);
CREATE INDEX workspaces_role_status_idx ON workspaces (role_id, status);
CREATE INDEX workspaces_status_idx ON workspaces (status);

CREATE TABLE snapshots (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs (id),
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    pod_id       TEXT,
    -- pending: being written (discarded if its writer died); verified: read back and matched its manifest.
    state        TEXT NOT NULL CHECK (state IN ('pending', 'verified')),
    archive_key  TEXT NOT NULL,
    manifest_key TEXT NOT NULL,
    sha256       TEXT,
    size_bytes   BIGINT,
    file_count   BIGINT,
    created_at   BIGINT NOT NULL,
    CHECK (state = 'pending' OR (sha256 IS NOT NULL AND size_bytes IS NOT NULL AND file_count IS NOT NULL))
);
CREATE INDEX snapshots_workspace_idx ON snapshots (workspace_id, id);
CREATE INDEX snapshots_state_idx ON snapshots (state);

CREATE TABLE audit_events (
    id             TEXT PRIMARY KEY, -- UUIDv7
    org_id         TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    timestamp      BIGINT NOT NULL,
    event_type     TEXT NOT NULL,
    category       TEXT NOT NULL CHECK (category IN ('audit', 'activity')),
    actor          TEXT NOT NULL CHECK (actor IN ('control-plane', 'policy-engine', 'agent')),
    workspace_id   TEXT,
    task_id        TEXT,
    agent_role     TEXT,
    agent_provider TEXT,
    target_type    TEXT,
    target_id      TEXT,
    destination    TEXT,
    method         TEXT,
    path           TEXT,
    decision       TEXT CHECK (decision IN ('allow', 'deny')),
    reason         TEXT,
    latency_ms     BIGINT,
    request_id     TEXT,
    details        TEXT -- JSON
);
CREATE INDEX audit_events_org_ts_idx ON audit_events (org_id, timestamp, id);
CREATE INDEX audit_events_ws_ts_idx ON audit_events (workspace_id, timestamp, id);

-- Audit rows are immutable.
CREATE FUNCTION audit_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are immutable';
END;
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_immutable();

CREATE TABLE idempotency_keys (
    org_id        TEXT NOT NULL,
    key           TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    status_code   BIGINT,
    response_body TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (org_id, key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
