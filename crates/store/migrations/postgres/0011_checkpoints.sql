-- Checkpoints: a workspace's `/workspace` right after its N-th completed task, as a verified snapshot of its own
-- (`snapshot_id`), or the reason that capture failed (`error`; forking at that N is refused). One row per (workspace,
-- N); older rows are pruned to the configured retention. Checkpoint 0 ("as created") has no row: it is the
-- workspace's fork source, or empty.
CREATE TABLE checkpoints (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    task_count   BIGINT NOT NULL CHECK (task_count > 0),
    task_id      TEXT,
    snapshot_id  TEXT REFERENCES snapshots (id),
    error        TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, task_count),
    CHECK ((snapshot_id IS NULL) <> (error IS NULL))
);
CREATE INDEX checkpoints_snapshot_idx ON checkpoints (snapshot_id);

-- Where a forked workspace came from: its parent, the parent's checkpoint it restores (NULL: the parent's empty
-- checkpoint 0), and how many of the parent's completed tasks that state includes. Written once, with the workspace.
CREATE TABLE workspace_forks (
    workspace_id          TEXT PRIMARY KEY REFERENCES workspaces (id),
    parent_workspace_id   TEXT NOT NULL REFERENCES workspaces (id),
    source_snapshot_id    TEXT REFERENCES snapshots (id),
    fork_point_task_count BIGINT NOT NULL CHECK (fork_point_task_count >= 0)
);
CREATE INDEX workspace_forks_source_idx ON workspace_forks (source_snapshot_id);
