//! Workspaces as the store keeps them (`WorkspaceRecord`: intent, observation, pod, snapshot) and as the API shows
//! them (`Workspace`), plus the snapshot manifest summary.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{OrgId, PackId, PodId, RoleId, SnapshotId, UserId, WorkspaceId};
use crate::lifecycle::{Desired, StatusReason, WorkspaceStatus};
use crate::time::Timestamp;

/// A workspace row: what the user asked for (`desired`), what the reconciler observed (`status`), and the pod and
/// snapshot it currently owns. `generation` guards every write.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceRecord {
    pub id: WorkspaceId,
    pub org_id: OrgId,
    pub role_id: RoleId,
    pub environment: Option<String>,
    pub created_by_user_id: Option<UserId>,
    pub status: WorkspaceStatus,
    pub status_reason: Option<StatusReason>,
    pub last_error: Option<String>,
    pub desired: Desired,
    /// Bumped by every write; a write names the generation it read (`… WHERE generation = ?`).
    pub generation: i64,
    /// The pod this workspace owns now (allocated before anything is created on disk).
    pub pod_id: Option<PodId>,
    /// The pack set the current pod was started with (for `pack_status`).
    pub pod_pack_ids: Option<Vec<PackId>>,
    /// The latest verified snapshot.
    pub snapshot_id: Option<SnapshotId>,
    pub last_snapshot_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub archived_at: Option<Timestamp>,
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
