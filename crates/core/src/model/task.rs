//! Tasks as the store keeps them (`TaskRecord`: the submission, its options, where it stands, its queue position)
//! and as the API shows them (`Task`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{OrgId, TaskId, UserId, WorkspaceId};
use crate::model::ThinkingEffort;
use crate::task::{TaskReason, TaskStatus};
use crate::time::Timestamp;

/// Per-task overrides of the role's settings, kept as one JSON column.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TaskOptions {
    pub thinking_effort: Option<ThinkingEffort>,
    pub max_continuations: Option<i64>,
    pub max_context_tokens: Option<i64>,
    /// Start with a fresh agent session instead of continuing the workspace's.
    pub reset_session: bool,
    /// Caller-defined data kept with the task (an object).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// File names placed under `/data/uploads/<task_id>/` before delivery.
    pub uploads: Vec<String>,
    /// The files uploaded with the task (names and sizes; the bytes are never kept in the store).
    pub files: Vec<TaskFile>,
}

/// A file uploaded with a task: its name under `/data/uploads/<task_id>/` and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskFile {
    pub name: String,
    pub size: u64,
}

/// A task row.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: TaskId,
    pub org_id: OrgId,
    pub workspace_id: WorkspaceId,
    /// `None` for tasks submitted with an API key.
    pub created_by_user_id: Option<UserId>,
    pub description: String,
    pub status: TaskStatus,
    pub reason: Option<TaskReason>,
    pub options: TaskOptions,
    /// Position in the workspace's queue (increasing with submission; the lowest non-ended task runs next).
    pub queue_seq: i64,
    pub created_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// The agent's final answer on completion (bounded).
    pub result: Option<String>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: TaskId,
    pub org_id: OrgId,
    pub workspace_id: WorkspaceId,
    pub description: String,
    pub status: TaskStatus,
    /// Why it ended, on every non-completed end.
    pub reason: Option<TaskReason>,
    pub created_by_user_id: Option<UserId>,
    pub created_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// `completed_at − created_at`, set when the task ends.
    pub duration_seconds: Option<f64>,
    pub thinking_effort: Option<ThinkingEffort>,
    pub max_continuations: Option<i64>,
    pub max_context_tokens: Option<i64>,
    pub reset_session: bool,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// File names under `/data/uploads/<task_id>/`.
    pub uploads: Vec<String>,
    /// The files uploaded with the task (name, size in bytes), in the order they were sent.
    pub files: Vec<TaskFile>,
    /// The agent's final answer, once completed.
    pub result: Option<String>,
}

impl From<&TaskRecord> for Task {
    fn from(t: &TaskRecord) -> Self {
        Task {
            id: t.id,
            org_id: t.org_id,
            workspace_id: t.workspace_id,
            description: t.description.clone(),
            status: t.status,
            reason: t.reason,
            created_by_user_id: t.created_by_user_id,
            created_at: t.created_at,
            delivered_at: t.delivered_at,
            started_at: t.started_at,
            completed_at: t.completed_at,
            duration_seconds: t.completed_at.map(|c| (c.millis() - t.created_at.millis()).max(0) as f64 / 1000.0),
            thinking_effort: t.options.thinking_effort,
            max_continuations: t.options.max_continuations,
            max_context_tokens: t.options.max_context_tokens,
            reset_session: t.options.reset_session,
            metadata: t.options.metadata.clone(),
            uploads: t.options.uploads.clone(),
            files: t.options.files.clone(),
            result: t.result.clone(),
        }
    }
}
