-- Tasks: one row per submission, queued per workspace in `queue_seq` order (the lowest task that has not ended runs
-- next; one at a time). Status changes are narrow guarded updates (`… WHERE id = ? AND status = ?`), so the
-- dispatcher, a cancel and an interruption never overwrite one another. `options` is JSON: thinking_effort,
-- max_continuations, max_context_tokens, reset_session, metadata, uploads.

CREATE TABLE tasks (
    id                 TEXT PRIMARY KEY,
    org_id             TEXT NOT NULL REFERENCES orgs (id),
    workspace_id       TEXT NOT NULL REFERENCES workspaces (id),
    created_by_user_id TEXT,
    description        TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('submitted', 'delivered', 'running', 'compacting',
                           'completed', 'failed', 'cancelled', 'delivery_failed')),
    reason             TEXT,
    options            TEXT NOT NULL DEFAULT '{}',
    queue_seq          BIGINT NOT NULL,
    result             TEXT,
    created_at         BIGINT NOT NULL,
    delivered_at       BIGINT,
    started_at         BIGINT,
    completed_at       BIGINT,
    CONSTRAINT tasks_workspace_seq_key UNIQUE (workspace_id, queue_seq),
    CHECK ((status IN ('completed', 'failed', 'cancelled', 'delivery_failed')) = (completed_at IS NOT NULL))
);
CREATE INDEX tasks_status_idx ON tasks (status, workspace_id);
