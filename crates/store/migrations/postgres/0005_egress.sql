-- The egress proxy's state. A running pod's address (where its connections come from) and its capability token,
-- written by the reconciler as observations when the pod starts (and renewed while it runs, cleared when it stops):
-- narrow updates beside the generation-guarded row. The token never leaves the control plane and the proxy.
ALTER TABLE workspaces ADD COLUMN pod_address TEXT;
ALTER TABLE workspaces ADD COLUMN pod_capability TEXT;
ALTER TABLE workspaces ADD COLUMN pod_capability_expires_at BIGINT;
CREATE INDEX workspaces_pod_address ON workspaces (pod_address) WHERE pod_address IS NOT NULL;

-- caps budget counters, moved by compare-and-set. `scope` is a workspace, task or pod id; `name` is
-- `<capability>.per_workspace` or `<capability>.per_task`. Counters only grow.
CREATE TABLE egress_budgets (
    scope      TEXT NOT NULL,
    name       TEXT NOT NULL,
    requests   BIGINT NOT NULL,
    bytes      BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope, name)
);
