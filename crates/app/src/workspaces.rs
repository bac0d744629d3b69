//! Workspace use cases: create, list, get, and the lifecycle calls (stop, resume, restart, archive, unarchive,
//! stop-all, a role's stop-workspaces). Calls decide from the public status (intent + observation), write only the
//! intent half (with an audit row) under the intent generation — refused if the observation they decided from moved
//! — then wake the reconciler; the reconciler alone touches pods and writes the observation half.

use std::collections::HashMap;
use std::time::Duration;

use evershell_core::audit::EventType;
use evershell_core::ids::{RoleId, SnapshotId, WorkspaceId};
use evershell_core::lifecycle::{Call, Decision, Desired, Facts, StatusReason, WorkspaceStatus, decide};
use evershell_core::model::{
    AgentRole, ForkOrigin, Intent, Observation, PackStatus, Request, SnapshotRecord, SnapshotSummary, Workspace,
    WorkspaceRecord,
};
use evershell_core::names;
use evershell_core::scope::{MemberRole, Reach, Scope};
use evershell_core::{Error, ErrorCode, FieldErrors, Result, Timestamp};
use evershell_store::{WorkspaceFilter, WorkspaceQuota};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::App;
use crate::caller::{Caller, Principal};

/// `POST /v1/workspaces`: one of `role_id` or `role_name`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    #[schema(value_type = Option<RoleId>)]
    pub role_id: Option<String>,
    /// The role's name; with `role_id` too, it must name the same role.
    pub role_name: Option<String>,
    /// Free text kept on the workspace.
    #[schema(schema_with = names::schema::opt_label)]
    pub environment: Option<String>,
}

/// Filters of `GET /v1/workspaces`.
#[derive(Debug, Clone, Default)]
pub struct ListWorkspaces {
    pub role_name: Option<String>,
    pub status: Option<String>,
    pub include_archived: bool,
    /// A page: only workspaces older than this one (the list is newest first)…
    pub before: Option<WorkspaceId>,
    /// …and at most this many.
    pub limit: Option<u32>,
}

/// `{"status": …}` answers of lifecycle calls.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusAnswer {
    pub status: String,
}

/// `{"stopping": n}` answers of bulk stops.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoppingAnswer {
    /// How many workspaces got a stop.
    pub stopping: u64,
}

fn not_found() -> Error {
    Error::new(ErrorCode::WorkspaceNotFound, "no such workspace in this organisation")
}

fn role_not_found() -> Error {
    Error::new(ErrorCode::RoleNotFound, "no such agent role in this organisation")
}

/// The lifecycle calls the API exposes, with their audit event and the answer's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleCall {
    Stop,
    Resume { allow_empty: bool },
    Restart { force: bool },
    Archive,
    Unarchive,
}

impl LifecycleCall {
    fn call(self) -> Call {
        match self {
            LifecycleCall::Stop => Call::Stop { reason: StatusReason::StopRequested },
            LifecycleCall::Resume { allow_empty } => Call::Resume { allow_empty },
            LifecycleCall::Restart { force } => Call::Restart { force },
            LifecycleCall::Archive => Call::Archive,
            LifecycleCall::Unarchive => Call::Unarchive,
        }
    }

    fn event(self) -> EventType {
        match self {
            LifecycleCall::Stop => EventType::WorkspaceStopRequested,
            LifecycleCall::Resume { .. } => EventType::WorkspaceResumeRequested,
            LifecycleCall::Restart { .. } => EventType::WorkspaceRestartRequested,
            LifecycleCall::Archive => EventType::WorkspaceArchived,
            LifecycleCall::Unarchive => EventType::WorkspaceUnarchived,
        }
    }

    /// The `status` word of the 202/200 answer.
    pub fn answer(self) -> &'static str {
        match self {
            LifecycleCall::Stop => "stopping",
            LifecycleCall::Resume { .. } => "resuming",
            LifecycleCall::Restart { .. } => "restarting",
            LifecycleCall::Archive => "archived",
            LifecycleCall::Unarchive => "unarchived",
        }
    }

    /// The scope family the call is gated on (resume brings tasks back, so it needs `tasks:write`).
    fn scope(self) -> Scope {
        match self {
            LifecycleCall::Resume { .. } => Scope::TasksWrite,
            _ => Scope::WorkspaceWrite,
        }
    }

    /// Create-class calls need an active billing posture; stop and archive are wind-down.
    fn create_class(self) -> bool {
        matches!(self, LifecycleCall::Resume { .. } | LifecycleCall::Restart { .. } | LifecycleCall::Unarchive)
    }
}

impl App {
    /// The limits a new workspace of `caller` must stay within.
    pub(crate) fn quota_for(&self, caller: &Caller) -> WorkspaceQuota {
        let q = &self.config.quotas;
        let limit = |n: u64| (n > 0).then_some(n);
        let per_user = match &caller.principal {
            Principal::User { role: MemberRole::Owner, .. } => limit(q.workspaces_per_user.owner),
            Principal::User { role: MemberRole::Operator, .. } => limit(q.workspaces_per_user.operator),
            Principal::User { role: MemberRole::Member, .. } => limit(q.workspaces_per_user.member),
            Principal::ApiKey { .. } => None,
        };
        WorkspaceQuota { per_org: limit(q.workspaces_per_org), per_role: limit(q.workspaces_per_agent_role), per_user }
    }

    pub async fn create_workspace(&self, caller: &Caller, req: CreateWorkspace) -> Result<Workspace> {
        let mut errs = FieldErrors::default();
        names::check_opt_text(&mut errs, "environment", req.environment.as_deref(), names::MAX_LABEL);
        if req.role_id.is_none() && req.role_name.is_none() {
            errs.add("role_id", "one of role_id or role_name is required");
        }
        errs.into_result()?;
        let role = match (&req.role_id, &req.role_name) {
            (Some(id), name) => {
                let id: RoleId = id.parse().map_err(|_| role_not_found())?;
                let r = self.store.get_role(caller.org_id, id).await?.ok_or_else(role_not_found)?;
                if name.as_ref().is_some_and(|n| *n != r.name) {
                    return Err(Error::invalid_field("role_name", "names a different role than role_id"));
                }
                r
            }
            (None, Some(name)) => self.store.get_role_by_name(caller.org_id, name).await?.ok_or_else(role_not_found)?,
            (None, None) => unreachable!("checked above"),
        };
        self.ensure_billing(caller).await?;
        if role.archived_at.is_some() {
            return Err(Error::conflict(ErrorCode::RoleArchived, "the agent role is archived; unarchive it first"));
        }
        let now = Timestamp::now();
        let ws = WorkspaceRecord {
            id: WorkspaceId::new(),
            org_id: caller.org_id,
            role_id: role.id,
            environment: req.environment,
            created_by_user_id: caller.user_id(),
            // The create is request 1, and the first observation (nothing exists yet) takes it on.
            intent: Intent {
                desired: Desired::Running,
                request: Some(Request { seq: 1, status: WorkspaceStatus::Provisioning, reason: StatusReason::Created }),
                generation: 1,
            },
            observed: Observation {
                status: WorkspaceStatus::Provisioning,
                status_reason: Some(StatusReason::Created),
                last_error: None,
                pod_id: None,
                pod_pack_ids: None,
                snapshot_id: None,
                last_snapshot_error: None,
                adopted: 1,
                generation: 1,
            },
            created_at: now,
            updated_at: now,
            archived_at: None,
        };
        let audit = caller
            .audit(EventType::WorkspaceCreated)
            .workspace(ws.id)
            .target("workspace", ws.id)
            .details(serde_json::json!({ "role_id": role.id }));
        let audit = self.with_names(audit, &role).await;
        self.store.create_workspace_within(&ws, &self.quota_for(caller), &[audit]).await?;
        self.reconciler.wake(ws.id);
        self.view(&ws, Some(&role)).await
    }

    pub async fn list_workspaces(&self, caller: &Caller, q: ListWorkspaces) -> Result<Vec<Workspace>> {
        let mut filter = WorkspaceFilter { include_archived: q.include_archived, ..Default::default() };
        if let Some(s) = &q.status {
            filter.status = Some(WorkspaceStatus::parse(s).ok_or_else(|| {
                Error::invalid_field("status", "must be one of provisioning, idle, busy, stopping, stopped, failed")
            })?);
        }
        // `busy` is derived: both it and `idle` are stored as `idle` and told apart after the tasks are read.
        let wanted = filter.status;
        if wanted == Some(WorkspaceStatus::Busy) {
            filter.status = Some(WorkspaceStatus::Idle);
        }
        if let Some(name) = &q.role_name {
            // An unknown name is a 404, not an empty list that would hide a typo.
            filter.role_id =
                Some(self.store.get_role_by_name(caller.org_id, name).await?.ok_or_else(role_not_found)?.id);
        }
        if caller.reach(Scope::WorkspaceRead)? == Reach::Own {
            filter.created_by = Some(caller.user_id().unwrap_or_default());
        }
        filter.before = q.before;
        filter.limit = q.limit;
        // Three queries whatever the page size: the workspaces, the org's roles, and their snapshots in one batch.
        let records = self.store.list_workspaces(caller.org_id, &filter).await?;
        let roles: HashMap<RoleId, AgentRole> =
            self.store.list_roles(caller.org_id, true).await?.into_iter().map(|r| (r.id, r)).collect();
        let snapshot_ids: Vec<SnapshotId> = records.iter().filter_map(|w| w.observed.snapshot_id).collect();
        let mut snapshots: HashMap<SnapshotId, SnapshotRecord> = if snapshot_ids.is_empty() {
            HashMap::new()
        } else {
            self.store.get_snapshots(&snapshot_ids).await?.into_iter().map(|s| (s.id, s)).collect()
        };
        let ids: Vec<WorkspaceId> = records.iter().map(|w| w.id).collect();
        let origins: HashMap<WorkspaceId, ForkOrigin> = if ids.is_empty() {
            HashMap::new()
        } else {
            self.store.get_fork_origins(&ids).await?.into_iter().collect()
        };
        let mut views: Vec<Workspace> = records
            .iter()
            .map(|ws| {
                let snap = ws.observed.snapshot_id.and_then(|id| snapshots.remove(&id));
                view_of(ws, roles.get(&ws.role_id), snap, origins.get(&ws.id))
            })
            .collect();
        self.derive_busy(&mut views).await?;
        if let Some(w) = wanted {
            views.retain(|v| v.status == w);
        }
        Ok(views)
    }

    /// Load a workspace the caller may read: 404 for unknown or another org's, 403 `workspace_not_visible` for a
    /// `:own` caller reading someone else's.
    pub async fn readable_workspace(&self, caller: &Caller, id: &str) -> Result<WorkspaceRecord> {
        let ws = self.load_workspace(caller, id).await?;
        caller.check_owner(Scope::WorkspaceRead, ws.created_by_user_id, ErrorCode::WorkspaceNotVisible)?;
        Ok(ws)
    }

    pub async fn load_workspace(&self, caller: &Caller, id: &str) -> Result<WorkspaceRecord> {
        let id: WorkspaceId = id.parse().map_err(|_| not_found())?;
        self.store.get_workspace(caller.org_id, id).await?.ok_or_else(not_found)
    }

    pub async fn get_workspace(&self, caller: &Caller, id: &str) -> Result<Workspace> {
        let ws = self.readable_workspace(caller, id).await?;
        self.view(&ws, None).await
    }

    /// Hold until the workspace settles (`idle`, `busy`, `stopped`, `failed`) or `timeout` passes; return it as it
    /// is then, with whether it settled.
    pub async fn wait_settled(&self, caller: &Caller, id: WorkspaceId, timeout: Duration) -> Result<(Workspace, bool)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.reconciler.subscribe();
        loop {
            let ws = self.store.get_workspace(caller.org_id, id).await?.ok_or_else(not_found)?;
            if ws.status().is_settled() || tokio::time::Instant::now() >= deadline {
                let settled = ws.status().is_settled();
                return Ok((self.view(&ws, None).await?, settled));
            }
            // Woken by the reconciler's change feed; the short poll covers other replicas and lagged receivers.
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(250)),
                async {
                    loop {
                        match changes.recv().await {
                            Ok(changed) if changed == id => break,
                            Ok(_) => continue,
                            Err(_) => break,
                        }
                    }
                },
            )
            .await;
        }
    }

    /// A lifecycle call on one workspace. Order of checks: 404 → 403 ownership → 423 → 409 (CONTRACT.md §4).
    /// Concurrent calls serialise on the generation guard: exactly one wins a transition, the others re-decide
    /// against the new state and get the documented 409.
    pub async fn lifecycle(&self, caller: &Caller, id: &str, call: LifecycleCall) -> Result<WorkspaceRecord> {
        let mut ws = self.load_workspace(caller, id).await?;
        caller.check_owner(call.scope(), ws.created_by_user_id, ErrorCode::PermissionDenied)?;
        if call.create_class() {
            self.ensure_billing(caller).await?;
        }
        loop {
            match self.apply(caller, &ws, call.call(), call.event()).await? {
                Some(updated) => return Ok(updated),
                None => ws = self.store.get_workspace(caller.org_id, ws.id).await?.ok_or_else(not_found)?,
            }
        }
    }

    /// Decide `call` against `ws` and write the outcome under the generation guard. `None` when another writer got
    /// there first (re-read and decide again).
    async fn apply(
        &self,
        caller: &Caller,
        ws: &WorkspaceRecord,
        call: Call,
        event: EventType,
    ) -> Result<Option<WorkspaceRecord>> {
        let role = self.store.get_role(ws.org_id, ws.role_id).await?;
        let provider = match &role {
            Some(r) => self.store.get_provider(ws.org_id, r.provider_id).await?,
            None => None,
        };
        let status = ws.status();
        let facts = Facts {
            // `busy` is derived from the tasks (a restart without `force` refuses it).
            status: self.derived_status(ws).await?,
            archived: ws.archived_at.is_some(),
            has_snapshot: ws.observed.snapshot_id.is_some(),
            has_retained_pod: status == WorkspaceStatus::Failed && ws.observed.pod_id.is_some(),
            role_archived: role.as_ref().is_none_or(|r| r.archived_at.is_some()),
            provider_archived: provider.as_ref().is_none_or(|p| p.archived_at.is_some()),
        };
        let now = Timestamp::now();
        let mut next = ws.clone();
        let mut quota = WorkspaceQuota::default();
        match decide(call, facts) {
            Decision::Refuse(code, msg) => return Err(Error::conflict(code, msg)),
            Decision::SetArchived(on) => {
                next.archived_at = on.then_some(now);
                if !on {
                    // Back among the live workspaces: the org and role limits apply as to a create.
                    quota = WorkspaceQuota { per_user: None, ..self.quota_for(caller) };
                }
            }
            Decision::Begin { status, desired, reason } => {
                // A new request, pending until the reconciler takes it on (the public status shows it at once).
                let seq = ws.intent.request.map_or(0, |r| r.seq).max(ws.observed.adopted) + 1;
                next.intent.desired = desired;
                next.intent.request = Some(Request { seq, status, reason });
            }
        }
        next.updated_at = now;
        let mut audit = caller.audit(event).workspace(ws.id).target("workspace", ws.id).details(serde_json::json!({
            "from": status, "to": next.status(),
        }));
        audit.agent_role = role.as_ref().map(|r| r.name.clone());
        audit.agent_provider = provider.map(|p| p.name);
        if !self.store.update_intent(&next, ws.intent.generation, ws.observed.generation, &quota, &[audit]).await? {
            return Ok(None);
        }
        next.intent.generation = ws.intent.generation + 1;
        self.reconciler.wake(ws.id);
        Ok(Some(next))
    }

    /// `POST /v1/workspaces/stop-all`: stop every idle or busy workspace of the org.
    pub async fn stop_all(&self, caller: &Caller) -> Result<StoppingAnswer> {
        caller.require(Scope::WorkspaceWrite)?;
        let filter = WorkspaceFilter { include_archived: true, ..Default::default() };
        let all = self.store.list_workspaces(caller.org_id, &filter).await?;
        self.stop_each(caller, all, StatusReason::StopAll).await
    }

    /// `POST /v1/agent-roles/{id}/stop-workspaces`: stop every idle or busy workspace of the role. Idempotent.
    pub async fn stop_role_workspaces(&self, caller: &Caller, role: &str) -> Result<StoppingAnswer> {
        let role = self.get_role(caller, role).await?;
        caller.require(Scope::WorkspaceWrite)?;
        let filter = WorkspaceFilter { role_id: Some(role.id), include_archived: true, ..Default::default() };
        let all = self.store.list_workspaces(caller.org_id, &filter).await?;
        self.stop_each(caller, all, StatusReason::RoleStopWorkspaces).await
    }

    async fn stop_each(
        &self,
        caller: &Caller,
        all: Vec<WorkspaceRecord>,
        reason: StatusReason,
    ) -> Result<StoppingAnswer> {
        let mut n = 0;
        for mut ws in all {
            loop {
                if !ws.status().is_running() {
                    break;
                }
                match self.apply(caller, &ws, Call::Stop { reason }, EventType::WorkspaceStopRequested).await {
                    Ok(Some(_)) => {
                        n += 1;
                        break;
                    }
                    Ok(None) => match self.store.get_workspace(caller.org_id, ws.id).await? {
                        Some(fresh) => ws = fresh,
                        None => break,
                    },
                    Err(e) if e.code == ErrorCode::InvalidState => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(StoppingAnswer { stopping: n })
    }

    /// Add the role and provider names to a workspace audit row.
    pub(crate) async fn with_names(
        &self,
        mut e: evershell_core::audit::AuditEvent,
        role: &AgentRole,
    ) -> evershell_core::audit::AuditEvent {
        e.agent_role = Some(role.name.clone());
        if let Ok(Some(p)) = self.store.get_provider(role.org_id, role.provider_id).await {
            e.agent_provider = Some(p.name);
        }
        e
    }

    /// The API view of a workspace: its snapshot's manifest and `pack_status` (computed when read).
    pub async fn view(&self, ws: &WorkspaceRecord, role: Option<&AgentRole>) -> Result<Workspace> {
        let snapshot = match ws.observed.snapshot_id {
            Some(id) => self.store.get_snapshot(id).await?,
            None => None,
        };
        let fetched;
        let role = match role {
            Some(r) => Some(r),
            None => {
                fetched = self.store.get_role(ws.org_id, ws.role_id).await?;
                fetched.as_ref()
            }
        };
        let origin = self.store.get_fork_origins(&[ws.id]).await?.pop().map(|(_, o)| o);
        let mut view = view_of(ws, role, snapshot, origin.as_ref());
        view.status = self.derived_status(ws).await?;
        Ok(view)
    }
}

/// The API view of a workspace, given its role and its snapshot row.
fn view_of(
    ws: &WorkspaceRecord,
    role: Option<&AgentRole>,
    snapshot: Option<SnapshotRecord>,
    origin: Option<&ForkOrigin>,
) -> Workspace {
    {
        let snapshot = snapshot.and_then(|s| {
            Some(SnapshotSummary {
                reference: s.id,
                size_bytes: s.size_bytes?,
                file_count: s.file_count?,
                sha256: s.sha256?,
                created_at: s.created_at,
            })
        });
        let (status, status_reason) = ws.public_status(false);
        let pack_status = match (&ws.observed.pod_pack_ids, role, status.is_running()) {
            (Some(pod), Some(r), true) if *pod == r.pack_ids => PackStatus::Current,
            (Some(_), Some(_), true) => PackStatus::Stale,
            _ => PackStatus::Unknown,
        };
        Workspace {
            id: ws.id,
            org_id: ws.org_id,
            role_id: ws.role_id,
            environment: ws.environment.clone(),
            status,
            status_reason,
            last_error: ws.public_last_error().map(str::to_string),
            created_by_user_id: ws.created_by_user_id,
            snapshot_ref: snapshot.as_ref().map(|s| s.reference),
            snapshot,
            last_snapshot_error: ws.observed.last_snapshot_error.clone(),
            parent_workspace_id: origin.map(|o| o.parent_workspace_id),
            fork_source_snapshot_ref: origin.and_then(|o| o.source_snapshot_id),
            fork_point_task_count: origin.map(|o| o.fork_point_task_count),
            pack_status,
            created_at: ws.created_at,
            updated_at: ws.updated_at,
            archived_at: ws.archived_at,
        }
    }
}
