//! Task use cases: submit (on an existing workspace, or with a new one in `POST /v1/tasks`), list, get, cancel the
//! running task, the agent's session view, and the `busy` a workspace reads while a task runs (derived when read,
//! never written to the workspace row). Calls write the task row and its audit row, then wake the dispatcher
//! (`dispatcher.rs`), which alone talks to the agent about tasks.

pub mod delivery;
pub mod dispatcher;
pub mod uploads;

use std::collections::HashSet;

use evershell_core::audit::EventType;
use evershell_core::ids::{RoleId, TaskId, WorkspaceId};
use evershell_core::lifecycle::WorkspaceStatus;
use evershell_core::model::{Task, TaskOptions, TaskRecord, ThinkingEffort, Workspace, WorkspaceRecord};
use evershell_core::scope::Scope;
use evershell_core::task::{TaskReason, TaskStatus};
use evershell_core::{Error, ErrorCode, FieldErrors, Result, Timestamp, names};
use evershell_runtime::AgentError;
use evershell_store::TaskUpdate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::App;
use crate::caller::Caller;
use crate::workspaces::CreateWorkspace;
use uploads::Incoming;

pub use dispatcher::{Dispatcher, DispatcherConfig};

/// Longest task description (bytes).
pub const MAX_DESCRIPTION: usize = 100_000;
/// Largest `metadata` object (bytes of its JSON).
pub const MAX_METADATA: usize = 16 * 1024;
/// Largest `max_continuations`.
pub const MAX_CONTINUATIONS: i64 = 10_000;
/// Bounds of `max_context_tokens`.
pub const CONTEXT_TOKENS: (i64, i64) = (1_000, 10_000_000);

/// `POST /v1/workspaces/{id}/tasks`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    /// What the agent is asked to do.
    pub description: String,
    /// Start with a fresh agent session (earlier conversation context is dropped).
    #[serde(default)]
    pub reset_session: bool,
    pub thinking_effort: Option<ThinkingEffort>,
    /// Model turns allowed after the first (0–10000; default the role's, else 50).
    pub max_continuations: Option<i64>,
    /// Context size at which the agent compacts (1000–10000000; default the role's).
    pub max_context_tokens: Option<i64>,
    /// Caller-defined data kept with the task (an object, at most 16 KiB of JSON).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `POST /v1/tasks`: a new workspace of the role (by `role_id` or `role_name`) and its first task.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    #[schema(value_type = Option<RoleId>)]
    pub role_id: Option<String>,
    pub role_name: Option<String>,
    /// Free text kept on the new workspace.
    #[schema(schema_with = names::schema::opt_label)]
    pub environment: Option<String>,
    pub description: String,
    #[serde(default)]
    pub reset_session: bool,
    pub thinking_effort: Option<ThinkingEffort>,
    pub max_continuations: Option<i64>,
    pub max_context_tokens: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// The 202 answer of a submission or a cancel.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskAccepted {
    pub task_id: TaskId,
    pub workspace_id: WorkspaceId,
    /// `submitted` for a submission; for a cancel, the task's status once the signal was accepted (`cancelled` for
    /// a task that had not been delivered, else its current status until the agent ends it).
    pub status: TaskStatus,
}

fn task_not_found() -> Error {
    Error::new(ErrorCode::TaskNotFound, "no such task on this workspace")
}

fn options_of(
    errs: &mut FieldErrors,
    description: &str,
    reset_session: bool,
    thinking_effort: Option<ThinkingEffort>,
    max_continuations: Option<i64>,
    max_context_tokens: Option<i64>,
    metadata: Option<serde_json::Value>,
) -> TaskOptions {
    if description.trim().is_empty() {
        errs.add("description", "is required");
    } else if description.len() > MAX_DESCRIPTION {
        errs.add("description", format!("is longer than {MAX_DESCRIPTION} bytes"));
    }
    if max_continuations.is_some_and(|n| !(0..=MAX_CONTINUATIONS).contains(&n)) {
        errs.add("max_continuations", format!("must be between 0 and {MAX_CONTINUATIONS}"));
    }
    let (lo, hi) = CONTEXT_TOKENS;
    if max_context_tokens.is_some_and(|n| !(lo..=hi).contains(&n)) {
        errs.add("max_context_tokens", format!("must be between {lo} and {hi}"));
    }
    match &metadata {
        None => {}
        Some(serde_json::Value::Object(_))
            if serde_json::to_vec(&metadata).map_or(usize::MAX, |v| v.len()) > MAX_METADATA =>
        {
            errs.add("metadata", format!("is larger than {MAX_METADATA} bytes"))
        }
        Some(serde_json::Value::Object(_)) => {}
        Some(_) => errs.add("metadata", "must be an object"),
    }
    TaskOptions {
        thinking_effort,
        max_continuations,
        max_context_tokens,
        reset_session,
        metadata,
        uploads: vec![],
        files: vec![],
    }
}

impl App {
    /// The files a submission takes (their bounds and where they wait), for the API's multipart reader.
    pub fn task_uploads(&self) -> &uploads::Staging {
        &self.uploads
    }

    /// The checks of `POST /v1/workspaces/{id}/tasks` that need no body (404, then 403), run before files are
    /// received.
    pub async fn check_task_submitter(&self, caller: &Caller, workspace: &str) -> Result<()> {
        let ws = self.load_workspace(caller, workspace).await?;
        caller.check_owner(Scope::TasksWrite, ws.created_by_user_id, ErrorCode::PermissionDenied)
    }

    /// The checks of `POST /v1/tasks` that need no body (the two scope families), run before files are received.
    pub fn check_task_creator(&self, caller: &Caller) -> Result<()> {
        caller.reach(Scope::WorkspaceWrite)?;
        caller.reach(Scope::TasksWrite)?;
        Ok(())
    }

    /// `POST /v1/workspaces/{id}/tasks`. Order of checks: 404 → 403 ownership → 400 → 423 → 409 (another org's
    /// workspace is a 404 whatever the body).
    pub async fn submit_task(&self, caller: &Caller, workspace: &str, req: SubmitTask) -> Result<TaskAccepted> {
        self.submit_task_with_files(caller, workspace, req, None).await
    }

    /// [`App::submit_task`] with the files of a multipart submission (kept only when the task is accepted).
    pub async fn submit_task_with_files(
        &self,
        caller: &Caller,
        workspace: &str,
        req: SubmitTask,
        files: Option<Incoming>,
    ) -> Result<TaskAccepted> {
        let ws = self.load_workspace(caller, workspace).await?;
        caller.check_owner(Scope::TasksWrite, ws.created_by_user_id, ErrorCode::PermissionDenied)?;
        let mut errs = FieldErrors::default();
        let options = options_of(
            &mut errs,
            &req.description,
            req.reset_session,
            req.thinking_effort,
            req.max_continuations,
            req.max_context_tokens,
            req.metadata,
        );
        errs.into_result()?;
        self.ensure_billing(caller).await?;
        self.check_model(&ws).await?;
        self.enqueue(caller, &ws, req.description, options, files).await
    }

    /// `POST /v1/tasks`: create the workspace, then queue its first task (delivered once it is `idle`).
    pub async fn create_task(&self, caller: &Caller, req: CreateTask) -> Result<TaskAccepted> {
        self.create_task_with_files(caller, req, None).await
    }

    /// [`App::create_task`] with the files of a multipart submission: no workspace is created when the request is
    /// refused, and the files are kept only when the task is accepted.
    pub async fn create_task_with_files(
        &self,
        caller: &Caller,
        req: CreateTask,
        files: Option<Incoming>,
    ) -> Result<TaskAccepted> {
        // Both families are needed; an `:own` reach suffices, as the caller owns the new workspace.
        self.check_task_creator(caller)?;
        let mut errs = FieldErrors::default();
        let options = options_of(
            &mut errs,
            &req.description,
            req.reset_session,
            req.thinking_effort,
            req.max_continuations,
            req.max_context_tokens,
            req.metadata,
        );
        if req.role_id.is_none() && req.role_name.is_none() {
            errs.add("role_id", "one of role_id or role_name is required");
        }
        errs.into_result()?;
        // Refuse a role whose provider cannot run tasks before a workspace exists for it.
        let role = match (&req.role_id, &req.role_name) {
            (Some(id), _) => match id.parse::<RoleId>() {
                Ok(id) => self.store.get_role(caller.org_id, id).await?,
                Err(_) => None,
            },
            (None, Some(name)) => self.store.get_role_by_name(caller.org_id, name).await?,
            (None, None) => None,
        };
        if let Some(role) = &role
            && let Some(provider) = self.store.get_provider(caller.org_id, role.provider_id).await?
        {
            delivery::model_target(role, &provider)?;
        }
        let created = self
            .create_workspace(
                caller,
                CreateWorkspace { role_id: req.role_id, role_name: req.role_name, environment: req.environment },
            )
            .await?;
        let ws = self
            .store
            .get_workspace(caller.org_id, created.id)
            .await?
            .ok_or_else(|| Error::internal(anyhow::anyhow!("the workspace just created is gone")))?;
        self.enqueue(caller, &ws, req.description, options, files).await
    }

    /// 409 `invalid_state` when the workspace's role or provider names no usable model endpoint.
    async fn check_model(&self, ws: &WorkspaceRecord) -> Result<()> {
        let role = self.store.get_role(ws.org_id, ws.role_id).await?;
        let Some(role) = role else { return Err(Error::new(ErrorCode::RoleNotFound, "the agent role is gone")) };
        if let Some(provider) = self.store.get_provider(ws.org_id, role.provider_id).await? {
            delivery::model_target(&role, &provider)?;
        }
        Ok(())
    }

    async fn enqueue(
        &self,
        caller: &Caller,
        ws: &WorkspaceRecord,
        description: String,
        mut options: TaskOptions,
        files: Option<Incoming>,
    ) -> Result<TaskAccepted> {
        if let Some(f) = &files {
            options.files = f.files().to_vec();
            options.uploads = options.files.iter().map(|f| f.name.clone()).collect();
        }
        let task = TaskRecord {
            id: TaskId::new(),
            org_id: ws.org_id,
            workspace_id: ws.id,
            created_by_user_id: caller.user_id(),
            description,
            status: TaskStatus::Submitted,
            reason: None,
            options,
            queue_seq: 0,
            created_at: Timestamp::now(),
            delivered_at: None,
            started_at: None,
            completed_at: None,
            result: None,
        };
        let mut audit = caller.audit(EventType::TaskSubmitted).workspace(ws.id).target("task", task.id);
        audit.task_id = Some(task.id);
        if !task.options.files.is_empty() {
            // Names and sizes only, never contents.
            audit.details = Some(serde_json::json!({ "files": task.options.files }));
        }
        // The files are in place before the row exists, so the dispatcher never sees the task without them.
        let staged = files.as_ref().is_some_and(|f| !f.files().is_empty());
        if let Some(f) = files.filter(|f| !f.files().is_empty()) {
            f.commit(&self.uploads, ws.id, task.id).await?;
        }
        let seq = match self.store.insert_task(&task, &[audit]).await {
            Ok(seq) => seq,
            Err(e) => {
                if staged {
                    self.uploads.discard(ws.id, task.id).await;
                }
                return Err(e);
            }
        };
        tracing::info!(task_id = %task.id, workspace_id = %ws.id, queue_seq = seq, "task submitted");
        self.dispatcher.wake(ws.id);
        Ok(TaskAccepted { task_id: task.id, workspace_id: ws.id, status: TaskStatus::Submitted })
    }

    /// `GET /v1/workspaces/{id}/tasks`: newest first.
    pub async fn list_tasks(&self, caller: &Caller, workspace: &str) -> Result<Vec<Task>> {
        let ws = self.readable_workspace(caller, workspace).await?;
        Ok(self.store.list_tasks(caller.org_id, ws.id).await?.iter().map(Task::from).collect())
    }

    /// `GET /v1/workspaces/{id}/tasks/{tid}`.
    pub async fn get_task(&self, caller: &Caller, workspace: &str, task: &str) -> Result<Task> {
        let ws = self.readable_workspace(caller, workspace).await?;
        let id: TaskId = task.parse().map_err(|_| task_not_found())?;
        let t = self.store.get_task(caller.org_id, ws.id, id).await?.ok_or_else(task_not_found)?;
        Ok(Task::from(&t))
    }

    /// `POST /v1/workspaces/{id}/task/cancel`: cancel the task that runs (or, when none runs yet, the queue head).
    /// Wind-down: no billing check. 409 `workspace_stopped` / `workspace_failed` / `workspace_provisioning` outside
    /// `idle`/`busy`; 409 `invalid_state` when no task is running or queued; 502 `agent_unreachable` when the agent
    /// does not take the signal.
    pub async fn cancel_task(&self, caller: &Caller, workspace: &str) -> Result<TaskAccepted> {
        let ws = self.load_workspace(caller, workspace).await?;
        caller.check_owner(Scope::WorkspaceWrite, ws.created_by_user_id, ErrorCode::PermissionDenied)?;
        if let Some(code) = ws.status().not_running_code() {
            return Err(Error::conflict(code, "no task can be running: the workspace's pod is not running"));
        }
        loop {
            let open = self.store.open_tasks(ws.id).await?;
            let Some(head) = open.first() else {
                return Err(Error::conflict(ErrorCode::InvalidState, "no task is running or queued on the workspace"));
            };
            let mut audit = caller.audit(EventType::TaskCancelRequested).workspace(ws.id).target("task", head.id);
            audit.task_id = Some(head.id);
            audit.details = Some(serde_json::json!({ "status": head.status }));
            if head.status == TaskStatus::Submitted {
                // Never handed over: it ends here.
                let now = Timestamp::now();
                let update = TaskUpdate {
                    status: TaskStatus::Cancelled,
                    reason: Some(TaskReason::Cancelled),
                    delivered_at: None,
                    started_at: None,
                    completed_at: Some(now),
                    result: None,
                };
                if !self.store.update_task(head.id, TaskStatus::Submitted, &update, &[audit]).await? {
                    continue; // delivered meanwhile: cancel it at the agent
                }
                self.uploads.discard(ws.id, head.id).await;
                self.dispatcher.wake(ws.id);
                return Ok(TaskAccepted { task_id: head.id, workspace_id: ws.id, status: TaskStatus::Cancelled });
            }
            let pod = ws
                .observed
                .pod_id
                .ok_or_else(|| Error::agent_unreachable(anyhow::anyhow!("the workspace has no pod")))?;
            let answer = self.runtime.agent(pod).cancel_task(head.id).await;
            let status = match answer {
                Ok(_) => head.status,
                // The agent no longer knows the task: the dispatcher ends it (`agent_restarted`).
                Err(AgentError::NotFound(_)) => head.status,
                Err(AgentError::Unreachable(cause)) => return Err(Error::agent_unreachable(cause)),
                Err(AgentError::Rejected(msg)) => {
                    return Err(Error::agent_unreachable(anyhow::anyhow!("the agent refused the cancel: {msg}")));
                }
            };
            self.store.append_audit(&[audit]).await?;
            self.dispatcher.wake(ws.id);
            return Ok(TaskAccepted { task_id: head.id, workspace_id: ws.id, status });
        }
    }

    /// `GET /v1/workspaces/{id}/session`: the agent's session view, proxied (opaque JSON).
    pub async fn task_session(&self, caller: &Caller, workspace: &str) -> Result<serde_json::Value> {
        let ws = self.readable_workspace(caller, workspace).await?;
        if let Some(code) = ws.status().not_running_code() {
            return Err(Error::conflict(code, "the session lives in the running pod; the workspace is not running"));
        }
        let pod =
            ws.observed.pod_id.ok_or_else(|| Error::agent_unreachable(anyhow::anyhow!("the workspace has no pod")))?;
        match self.runtime.agent(pod).session().await {
            Ok(v) => Ok(v),
            Err(AgentError::Unreachable(cause)) => Err(Error::agent_unreachable(cause)),
            Err(e) => Err(Error::agent_unreachable(anyhow::anyhow!("{e}"))),
        }
    }

    /// The status `ws` reads: `busy` when it is `idle` and a task was handed to its agent and has not ended.
    pub async fn derived_status(&self, ws: &WorkspaceRecord) -> Result<WorkspaceStatus> {
        let status = ws.status();
        if status != WorkspaceStatus::Idle {
            return Ok(status);
        }
        let open = self.store.open_tasks(ws.id).await?;
        Ok(ws.public_status(open.first().is_some_and(|t| t.status.is_active())).0)
    }

    /// Workspaces that read `busy`: `idle` ones with a delivered, running or compacting task.
    pub async fn derive_busy(&self, views: &mut [Workspace]) -> Result<()> {
        let Some(org) = views.first().map(|w| w.org_id) else { return Ok(()) };
        if !views.iter().any(|w| w.status == WorkspaceStatus::Idle) {
            return Ok(());
        }
        let busy: HashSet<WorkspaceId> = self.store.busy_workspaces(org).await?.into_iter().collect();
        for w in views.iter_mut() {
            if w.status == WorkspaceStatus::Idle && busy.contains(&w.id) {
                w.status = WorkspaceStatus::Busy;
            }
        }
        Ok(())
    }
}
