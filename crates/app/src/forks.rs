//! Fork: a new workspace, owned by the caller, whose `/workspace` starts as its parent's right after N completed
//! tasks — the parent's checkpoint N (see `checkpoint.rs`), or for N = 0 the state the parent was created with
//! (empty, or its own fork source). The child is created like any workspace (quotas, live role) with that snapshot
//! as its own, so the reconciler restores it into a fresh pod exactly as for a resume; its origin is written in the
//! same transaction, which re-checks that the checkpoint still exists. The parent is not touched.

use evershell_core::audit::EventType;
use evershell_core::ids::{SnapshotId, WorkspaceId};
use evershell_core::lifecycle::{Desired, StatusReason, WorkspaceStatus};
use evershell_core::model::{ForkOrigin, Intent, Observation, Request, WorkspaceRecord};
use evershell_core::scope::Scope;
use evershell_core::{Error, ErrorCode, Result, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::App;
use crate::caller::Caller;

/// `POST /v1/workspaces/{id}/fork`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkWorkspace {
    /// How many of the parent's completed tasks the fork includes: `0` is the parent as created, `N` its state
    /// right after its N-th completed task (required, an integer ≥ 0).
    #[schema(value_type = i64, minimum = 0, required = true)]
    pub fork_point_task_count: Option<serde_json::Value>,
}

/// The `202` answer of a fork.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForkAnswer {
    /// The new workspace.
    pub workspace_id: WorkspaceId,
    pub parent_workspace_id: WorkspaceId,
    pub fork_point_task_count: i64,
    /// The snapshot the new workspace starts from (`null`: it starts empty, as its parent did).
    pub fork_source_snapshot_ref: Option<SnapshotId>,
    /// `provisioning`.
    pub status: WorkspaceStatus,
}

impl App {
    /// Fork `id` at `req.fork_point_task_count`. Order of checks: 403 scope → 400 body → 404 → 403
    /// `workspace_not_visible` (`:own` caller, another member's workspace) → 423 → 409.
    pub async fn fork_workspace(&self, caller: &Caller, id: &str, req: ForkWorkspace) -> Result<ForkAnswer> {
        caller.reach(Scope::WorkspaceRead)?;
        // Tenancy before the body: another org's workspace is 404 whatever was sent.
        let parent = self.readable_workspace(caller, id).await?;
        let n = match req.fork_point_task_count {
            Some(serde_json::Value::Number(v)) if v.as_i64().is_some_and(|n| n >= 0) => v.as_i64().unwrap_or(0),
            Some(serde_json::Value::Number(v)) if v.as_u64().is_some() => {
                return Err(Error::invalid_field("fork_point_task_count", "is too large"));
            }
            None | Some(serde_json::Value::Null) => {
                return Err(Error::invalid_field("fork_point_task_count", "is required"));
            }
            Some(_) => return Err(Error::invalid_field("fork_point_task_count", "must be an integer ≥ 0")),
        };
        self.ensure_billing(caller).await?;
        let origin = self.fork_source(&parent, n).await?;
        let role =
            self.store.get_role(parent.org_id, parent.role_id).await?.ok_or_else(|| {
                Error::new(ErrorCode::RoleNotFound, "the parent workspace's agent role no longer exists")
            })?;
        if role.archived_at.is_some() {
            return Err(Error::conflict(ErrorCode::RoleArchived, "the agent role is archived; unarchive it first"));
        }
        let now = Timestamp::now();
        let child = WorkspaceRecord {
            id: WorkspaceId::new(),
            org_id: caller.org_id,
            role_id: parent.role_id,
            environment: parent.environment.clone(),
            created_by_user_id: caller.user_id(),
            intent: Intent {
                desired: Desired::Running,
                request: Some(Request { seq: 1, status: WorkspaceStatus::Provisioning, reason: StatusReason::Created }),
                generation: 1,
            },
            // The source is the child's snapshot from the start: provisioning restores it as a resume would.
            observed: Observation {
                status: WorkspaceStatus::Provisioning,
                status_reason: Some(StatusReason::Created),
                last_error: None,
                pod_id: None,
                pod_pack_ids: None,
                snapshot_id: origin.source_snapshot_id,
                last_snapshot_error: None,
                adopted: 1,
                generation: 1,
            },
            created_at: now,
            updated_at: now,
            archived_at: None,
        };
        let audit = caller.audit(EventType::WorkspaceForked).workspace(child.id).target("workspace", child.id).details(
            serde_json::json!({
                "parent_workspace_id": parent.id,
                "fork_point_task_count": n,
                "fork_source_snapshot_id": origin.source_snapshot_id,
                "role_id": role.id,
            }),
        );
        let audit = self.with_names(audit, &role).await;
        let checkpoint = (n > 0).then_some(n);
        self.store.create_fork(&child, &origin, checkpoint, &self.quota_for(caller), &[audit]).await?;
        self.reconciler.wake(child.id);
        Ok(ForkAnswer {
            workspace_id: child.id,
            parent_workspace_id: parent.id,
            fork_point_task_count: n,
            fork_source_snapshot_ref: origin.source_snapshot_id,
            status: WorkspaceStatus::Provisioning,
        })
    }

    /// Where a fork of `parent` at `n` starts from; `409 snapshot_missing` when there is no such state to fork.
    async fn fork_source(&self, parent: &WorkspaceRecord, n: i64) -> Result<ForkOrigin> {
        let origin = |source| ForkOrigin {
            parent_workspace_id: parent.id,
            source_snapshot_id: source,
            fork_point_task_count: n,
        };
        if n == 0 {
            let own = self.store.get_fork_origins(&[parent.id]).await?;
            return Ok(origin(own.first().and_then(|(_, o)| o.source_snapshot_id)));
        }
        let completed = self.store.completed_task_count(parent.id).await?;
        if n > completed {
            return Err(Error::conflict(
                ErrorCode::SnapshotMissing,
                format!("fork_point_task_count {n} is past the workspace's {completed} completed tasks"),
            ));
        }
        match self.store.get_checkpoint(parent.id, n).await? {
            Some(cp) => match (cp.snapshot_id, cp.error) {
                (Some(s), _) => Ok(origin(Some(s))),
                (None, err) => Err(Error::conflict(
                    ErrorCode::SnapshotMissing,
                    err.unwrap_or_else(|| format!("the checkpoint after {n} completed tasks failed")),
                )),
            },
            None if n == completed => Err(Error::conflict(
                ErrorCode::SnapshotMissing,
                format!(
                    "the checkpoint after {n} completed tasks is not written yet (it is taken right after the task, or when a workspace stopped before it runs again; retry then)"
                ),
            )),
            None => {
                let keep = self.config.checkpoints.keep;
                Err(Error::conflict(
                    ErrorCode::SnapshotMissing,
                    format!("the checkpoint after {n} completed tasks was pruned (the last {keep} are kept)"),
                ))
            }
        }
    }
}
