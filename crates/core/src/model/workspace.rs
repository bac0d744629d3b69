//! Workspaces as the store keeps them (`WorkspaceRecord`: intent, observation, pod, snapshot) and as the API shows
//! them (`Workspace`), plus the snapshot manifest summary.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{OrgId, PackId, PodId, RoleId, SnapshotId, UserId, WorkspaceId};
use crate::lifecycle::{Desired, StatusReason, WorkspaceStatus};
use crate::time::Timestamp;

/// A workspace row, in two halves with one writer each: `intent` (what the API was asked: written only by API calls,
/// under `intent.generation`) and `observed` (what the reconciler found and did: written only by the reconciler,
/// under `observed.generation` and its lease's fence). The public status is derived from both
/// ([`WorkspaceRecord::public_status`]); neither writer ever overwrites the other's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceRecord {
    pub id: WorkspaceId,
    pub org_id: OrgId,
    pub role_id: RoleId,
    /// Intent-side (set at creation, never written by the reconciler).
    pub environment: Option<String>,
    pub created_by_user_id: Option<UserId>,
    pub intent: Intent,
    pub observed: Observation,
    pub created_at: Timestamp,
    /// The last write of either half.
    pub updated_at: Timestamp,
    /// Intent-side: set and cleared by archive / unarchive.
    pub archived_at: Option<Timestamp>,
}

/// What the user asked for. Only API calls write it.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// A running pod or none.
    pub desired: Desired,
    /// The latest lifecycle request (create, resume, restart, stop). It is *pending* until the reconciler adopts it
    /// (`Observation::adopted >= seq`); while pending, the public status is the request's.
    pub request: Option<Request>,
    /// Bumped by every intent write; an intent write names the one it read.
    pub generation: i64,
}

/// A lifecycle request: the transitional status it asks for and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Increases with every request on the workspace (1 is the create).
    pub seq: i64,
    /// `provisioning` or `stopping`.
    pub status: WorkspaceStatus,
    pub reason: StatusReason,
}

/// What the reconciler observed of the workspace and did about it. Only the reconciler writes it, and only while it
/// holds the workspace's lease (the store checks the fence on every write).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The observed phase (never `busy`: that is derived from the task table when read).
    pub status: WorkspaceStatus,
    pub status_reason: Option<StatusReason>,
    pub last_error: Option<String>,
    /// The pod this workspace owns now (allocated before anything is created on disk).
    pub pod_id: Option<PodId>,
    /// The pack set the current pod was started with (for `pack_status`).
    pub pod_pack_ids: Option<Vec<PackId>>,
    /// The latest verified snapshot.
    pub snapshot_id: Option<SnapshotId>,
    pub last_snapshot_error: Option<String>,
    /// The `seq` of the latest request this observation has taken on.
    pub adopted: i64,
    /// Bumped by every observation write; a write names the one it read (`… WHERE generation = ?`).
    pub generation: i64,
}

impl WorkspaceRecord {
    /// The request the reconciler has not taken on yet.
    pub fn pending_request(&self) -> Option<Request> {
        self.intent.request.filter(|r| r.seq > self.observed.adopted)
    }

    /// The status the API shows, derived from intent, observation and whether a task runs in the pod (the task
    /// subsystem passes that; `idle` with a running task reads `busy`). See [`crate::lifecycle::public_status`].
    pub fn public_status(&self, running_task: bool) -> (WorkspaceStatus, Option<StatusReason>) {
        crate::lifecycle::public_status(
            self.pending_request().map(|r| (r.status, r.reason)),
            (self.observed.status, self.observed.status_reason),
            running_task,
        )
    }

    /// The public status with no running task known (what the lifecycle calls decide from).
    pub fn status(&self) -> WorkspaceStatus {
        self.public_status(false).0
    }

    /// The public `last_error`: a pending resume has already cleared it.
    pub fn public_last_error(&self) -> Option<&str> {
        match self.pending_request() {
            Some(r) if r.status == WorkspaceStatus::Provisioning => None,
            _ => self.observed.last_error.as_deref(),
        }
    }
}

/// Whether a snapshot is being written, or written and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Being written: not usable; removed (objects and row) if the writer dies.
    Pending,
    /// Written, read back and verified against its manifest.
    Verified,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Pending => "pending",
            SnapshotState::Verified => "verified",
        }
    }
}

/// A snapshot row.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub id: SnapshotId,
    pub org_id: OrgId,
    pub workspace_id: WorkspaceId,
    /// The pod whose `/workspace` it captured.
    pub pod_id: Option<PodId>,
    pub state: SnapshotState,
    pub archive_key: String,
    pub manifest_key: String,
    pub sha256: Option<String>,
    pub size_bytes: Option<i64>,
    pub file_count: Option<i64>,
    pub created_at: Timestamp,
}

/// The snapshot a workspace would be restored from (its manifest, summarised).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotSummary {
    /// The snapshot id (`snapshot_ref`).
    #[serde(rename = "ref")]
    pub reference: SnapshotId,
    /// Size of the compressed archive in bytes.
    pub size_bytes: i64,
    /// Entries in the archive (files, directories and links).
    pub file_count: i64,
    /// sha256 of the archive, hex.
    pub sha256: String,
    pub created_at: Timestamp,
}

/// Whether the running pod reflects the role's current pack set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PackStatus {
    Current,
    Stale,
    Unknown,
}

/// A workspace as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub org_id: OrgId,
    pub role_id: RoleId,
    pub environment: Option<String>,
    pub status: WorkspaceStatus,
    /// Why the workspace is in its current status (`stop_requested`, `pod_exited`, `restore_failed`, …).
    pub status_reason: Option<StatusReason>,
    /// The last failure, in words.
    pub last_error: Option<String>,
    /// `null` for workspaces created with an API key.
    pub created_by_user_id: Option<UserId>,
    /// The latest verified snapshot's id.
    pub snapshot_ref: Option<SnapshotId>,
    /// The latest verified snapshot's manifest.
    pub snapshot: Option<SnapshotSummary>,
    /// Set when a stop could not save the pod's files; cleared by the next successful snapshot.
    pub last_snapshot_error: Option<String>,
    pub parent_workspace_id: Option<WorkspaceId>,
    pub fork_source_snapshot_ref: Option<SnapshotId>,
    pub fork_point_task_count: Option<i64>,
    pub pack_status: PackStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}

/// A checkpoint row: the workspace's `/workspace` right after its `task_count`-th completed task — a verified
/// snapshot of its own, or why that capture failed.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRecord {
    pub workspace_id: WorkspaceId,
    /// How many of the workspace's tasks had completed (≥ 1; checkpoint 0 has no row).
    pub task_count: i64,
    /// The task whose completion made the count.
    pub task_id: Option<crate::ids::TaskId>,
    /// The verified snapshot; `None` when the capture failed.
    pub snapshot_id: Option<SnapshotId>,
    /// Why the capture failed.
    pub error: Option<String>,
    pub created_at: Timestamp,
}

/// Where a forked workspace came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkOrigin {
    pub parent_workspace_id: WorkspaceId,
    /// The snapshot the fork starts from (`None`: the parent's empty checkpoint 0).
    pub source_snapshot_id: Option<SnapshotId>,
    /// How many of the parent's completed tasks that state includes.
    pub fork_point_task_count: i64,
}
