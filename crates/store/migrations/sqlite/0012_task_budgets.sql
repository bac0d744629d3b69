-- Per-task egress identity, which keys the per-task caps budgets. While a task runs on a workspace the control plane
-- holds a capability token for it, bound to the workspace's current pod: the proxy resolves that pod's connections
-- to the task (its audit rows carry the task id, its `per_task` budget counters are kept under the task id in
-- `egress_budgets`). Granted before the task is delivered, renewed while it runs, deleted when it ends. The token
-- never leaves the control plane and the proxy.
CREATE TABLE task_capabilities (
    task_id      TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    pod_id       TEXT NOT NULL,
    capability   TEXT NOT NULL,
    expires_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX task_capabilities_workspace ON task_capabilities (workspace_id, pod_id);
