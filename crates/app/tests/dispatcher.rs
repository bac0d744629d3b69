//! The task dispatcher against a scripted fake agent: a real HTTP server on a Unix socket speaking
//! `evershell_core::agent_wire`, reached through the real `AgentClient`, on a real SQLite store. No reconciler
//! runs: workspace states are written to the store directly, so each test decides exactly what the dispatcher sees.
//! Every wait is for the exact condition (a task status, an audit row), polled with a deadline.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use evershell_app::caller::{Caller, Principal};
use evershell_app::tasks::SubmitTask;
use evershell_app::{App, AppConfig};
use evershell_core::Timestamp;
use evershell_core::agent_wire::{AgentEvent, AgentTaskState, AgentTaskStatus, EventPage, TaskDelivery};
use evershell_core::audit::{Actor, AuditQuery, Order};
use evershell_core::ids::{ApiKeyId, OrgId, PodId, ProviderId, RoleId, SnapshotId, TaskId, WorkspaceId};
use evershell_core::lifecycle::{Desired, PodObservation, StatusReason, WorkspaceStatus};
use evershell_core::model::{
    AgentRole, BillingStatus, Environment, Org, PoolPolicy, Provider, ProviderKind, TaskRecord, WorkspaceRecord,
};
use evershell_core::scope::PermissionSet;
use evershell_core::task::{TaskReason, TaskStatus};
use evershell_runtime::{AgentClient, PodError, PodRuntime, PodSpec, PrepareReport};
use evershell_snapshot::{Manifest, SnapshotKeys, SnapshotStore};
use tokio::sync::Notify;

// ---- the scripted agent ------------------------------------------------------------------------------------------

#[derive(Default)]
struct AgentState {
    instance: String,
    tasks: HashMap<TaskId, AgentTaskStatus>,
    current: Option<TaskId>,
    events: Vec<AgentEvent>,
    seq: u64,
    deliveries: Vec<TaskDelivery>,
    cancels: Vec<TaskId>,
    /// Answer every delivery with this status code instead (e.g. 503).
    refuse_with: Option<u16>,
}

#[derive(Clone)]
struct FakeAgent {
    state: Arc<Mutex<AgentState>>,
    changed: Arc<Notify>,
}

impl FakeAgent {
    fn emit(st: &mut AgentState, task: Option<TaskId>, t: &str, data: serde_json::Value) {
        st.seq += 1;
        let seq = st.seq;
        st.events.push(AgentEvent { seq, task_id: task, event_type: t.into(), at: Timestamp::now(), data });
    }

    /// End `id` as the agent would.
    fn finish(&self, id: TaskId, state: AgentTaskState, reason: Option<&str>, result: Option<&str>) {
        let mut st = self.state.lock().unwrap();
        let t = st.tasks.get_mut(&id).expect("the agent holds the task");
        t.state = state;
        t.reason = reason.map(str::to_string);
        t.result = result.map(str::to_string);
        t.ended_at = Some(Timestamp::now());
        let status = serde_json::to_value(state).unwrap();
        Self::emit(&mut st, Some(id), "task_completed", serde_json::json!({ "status": status }));
        drop(st);
        self.changed.notify_waiters();
    }

    fn emit_event(&self, task: Option<TaskId>, t: &str) {
        Self::emit(&mut self.state.lock().unwrap(), task, t, serde_json::json!({ "n": 1 }));
        self.changed.notify_waiters();
    }

    /// A new agent process: a new instance, no tasks, no events.
    fn restart(&self) {
        let mut st = self.state.lock().unwrap();
        st.instance = uuid::Uuid::now_v7().to_string();
        st.tasks.clear();
        st.current = None;
        st.events.clear();
        st.seq = 0;
        drop(st);
        self.changed.notify_waiters();
    }

    fn deliveries(&self) -> Vec<TaskDelivery> {
        self.state.lock().unwrap().deliveries.clone()
    }
}

fn error(status: StatusCode, code: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": {"code": code, "message": code}}))).into_response()
}

async fn deliver(State(a): State<FakeAgent>, axum::Json(d): axum::Json<TaskDelivery>) -> Response {
    let mut st = a.state.lock().unwrap();
    if let Some(code) = st.refuse_with {
        return error(StatusCode::from_u16(code).unwrap(), "refused");
    }
    if let Some(t) = st.tasks.get(&d.task_id) {
        return (StatusCode::ACCEPTED, axum::Json(t.clone())).into_response();
    }
    if let Some(cur) = st.current
        && !st.tasks[&cur].state.is_terminal()
    {
        return error(StatusCode::CONFLICT, "agent_busy");
    }
    let status = AgentTaskStatus {
        task_id: d.task_id,
        state: AgentTaskState::Running,
        reason: None,
        result: None,
        started_at: Timestamp::now(),
        ended_at: None,
        iterations: 0,
        tokens_in: 0,
        tokens_out: 0,
    };
    st.tasks.insert(d.task_id, status.clone());
    st.current = Some(d.task_id);
    FakeAgent::emit(&mut st, Some(d.task_id), "task_started", serde_json::json!({}));
    st.deliveries.push(d);
    drop(st);
    a.changed.notify_waiters();
    (StatusCode::ACCEPTED, axum::Json(status)).into_response()
}

async fn status(State(a): State<FakeAgent>, Path(id): Path<TaskId>) -> Response {
    match a.state.lock().unwrap().tasks.get(&id) {
        Some(t) => axum::Json(t.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "task_not_found"),
    }
}

async fn cancel(State(a): State<FakeAgent>, Path(id): Path<TaskId>) -> Response {
    let known = {
        let mut st = a.state.lock().unwrap();
        st.cancels.push(id);
        st.tasks.contains_key(&id)
    };
    if !known {
        return error(StatusCode::NOT_FOUND, "task_not_found");
    }
    // Cooperative: the iteration finishes, then the task ends cancelled.
    a.finish(id, AgentTaskState::Cancelled, Some("cancelled"), None);
    let t = a.state.lock().unwrap().tasks[&id].clone();
    (StatusCode::ACCEPTED, axum::Json(t)).into_response()
}

#[derive(serde::Deserialize)]
struct EventsQ {
    after: u64,
    wait_ms: u64,
}

async fn events(State(a): State<FakeAgent>, Query(q): Query<EventsQ>) -> Response {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms);
    loop {
        let notified = a.changed.notified();
        {
            let st = a.state.lock().unwrap();
            let events: Vec<AgentEvent> = st.events.iter().filter(|e| e.seq > q.after).cloned().collect();
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                let next_after = events.last().map_or(q.after, |e| e.seq);
                let page = EventPage { agent_instance: st.instance.clone(), events, next_after, dropped: 0 };
                return axum::Json(page).into_response();
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

async fn session(State(a): State<FakeAgent>) -> Response {
    let n = a.state.lock().unwrap().tasks.len();
    axum::Json(serde_json::json!({ "tasks": n })).into_response()
}

async fn start_agent(socket: PathBuf) -> FakeAgent {
    let agent = FakeAgent { state: Arc::new(Mutex::new(AgentState::default())), changed: Arc::new(Notify::new()) };
    agent.restart();
    let app = Router::new()
        .route("/v1/tasks", post(deliver))
        .route("/v1/tasks/{id}", get(status))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/events", get(events))
        .route("/v1/session", get(session))
        .with_state(agent.clone());
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    agent
}

// ---- a runtime whose pods are the fake agents ----------------------------------------------------------------------

struct FakeRuntime {
    sockets: Mutex<HashMap<PodId, PathBuf>>,
}

#[async_trait]
impl PodRuntime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn observe(&self, _: PodId) -> Result<PodObservation, PodError> {
        Ok(PodObservation::Running)
    }
    async fn prepare(&self, _: &PodSpec, _: Option<&SnapshotKeys>) -> Result<PrepareReport, PodError> {
        Err(PodError::Other(anyhow::anyhow!("not in this test")))
    }
    async fn start(&self, _: &PodSpec) -> Result<(), PodError> {
        Err(PodError::Other(anyhow::anyhow!("not in this test")))
    }
    async fn stop(&self, _: PodId) -> Result<(), PodError> {
        Ok(())
    }
    async fn capture(
        &self,
        _: PodId,
        _: &SnapshotKeys,
        _: (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, PodError> {
        Err(PodError::Other(anyhow::anyhow!("not in this test")))
    }
    async fn remove(&self, _: PodId) -> Result<(), PodError> {
        Ok(())
    }
    async fn list_pods(&self) -> Result<Vec<PodId>, PodError> {
        Ok(vec![])
    }
    fn agent(&self, pod: PodId) -> AgentClient {
        let path = self.sockets.lock().unwrap().get(&pod).cloned().unwrap_or_else(|| "/nonexistent/agent.sock".into());
        AgentClient::unix(path)
    }
    async fn diagnostics(&self, _: PodId) -> Option<String> {
        None
    }
}

// ---- fixtures ------------------------------------------------------------------------------------------------------

struct World {
    app: Arc<App>,
    runtime: Arc<FakeRuntime>,
    caller: Caller,
    role: AgentRole,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let store = evershell_store::connect(&url).await.unwrap();
    let now = Timestamp::now();
    let org = Org {
        id: OrgId::new(),
        slug: "acme".into(),
        billing_status: BillingStatus::Active,
        trial_ends_at: None,
        created_at: now,
        updated_at: now,
    };
    store.create_org(&org, &[]).await.unwrap();
    let provider = Provider {
        id: ProviderId::new(),
        org_id: org.id,
        name: "anthropic".into(),
        kind: ProviderKind::Anthropic,
        display_name: None,
        domain: "api.anthropic.com".into(),
        credential_name: None,
        default_model: Some("claude-x".into()),
        capabilities: None,
        config: Default::default(),
        created_at: now,
        updated_at: now,
        archived_at: None,
    };
    store.create_provider(&provider, &[]).await.unwrap();
    let role = AgentRole {
        id: RoleId::new(),
        org_id: org.id,
        name: "coder".into(),
        display_name: None,
        description: Some("Writes Rust.".into()),
        provider_id: provider.id,
        model: None,
        capabilities: None,
        environment: Environment::Staging,
        environment_description: None,
        task_timeout_seconds: Some(600),
        idle_timeout_seconds: None,
        thinking_effort: None,
        max_continuations: Some(9),
        max_context_tokens: None,
        pool_policy: PoolPolicy::Off,
        pool_size: None,
        pool_max_size: None,
        pack_ids: vec![],
        created_at: now,
        updated_at: now,
        archived_at: None,
        memory_limit_bytes: None,
        pids_limit: None,
        cpu_limit_millis: None,
    };
    store.create_role(&role, &[]).await.unwrap();
    let runtime = Arc::new(FakeRuntime { sockets: Mutex::new(HashMap::new()) });
    let snapshots = SnapshotStore::local(&dir.path().join("snapshots")).unwrap();
    let mut cfg = AppConfig::default();
    cfg.reconciler.interval = Duration::from_secs(3600);
    let app = Arc::new(App::new(store, runtime.clone(), snapshots, cfg));
    // No reconciler: its feed never fires; the dispatcher runs on wakes and its scan.
    let (_tx, rx) = tokio::sync::broadcast::channel(16);
    std::mem::forget(_tx);
    app.dispatcher().start(rx).await.unwrap();
    let caller = Caller {
        org_id: org.id,
        principal: Principal::ApiKey {
            key_id: ApiKeyId::new(),
            label: "test".into(),
            permission_set: PermissionSet::FullAccess,
        },
        scopes: PermissionSet::FullAccess.scopes(),
        request_id: None,
    };
    World { app, runtime, caller, role, dir }
}

impl World {
    /// An idle workspace whose pod is a fresh fake agent.
    async fn workspace(&self) -> (WorkspaceRecord, FakeAgent) {
        let pod = PodId::new();
        let socket = self.dir.path().join(format!("{pod}.sock"));
        let agent = start_agent(socket.clone()).await;
        self.runtime.sockets.lock().unwrap().insert(pod, socket);
        let ws = self.workspace_without_agent(pod).await;
        (ws, agent)
    }

    async fn workspace_without_agent(&self, pod: PodId) -> WorkspaceRecord {
        let now = Timestamp::now();
        let ws = WorkspaceRecord {
            id: WorkspaceId::new(),
            org_id: self.caller.org_id,
            role_id: self.role.id,
            environment: None,
            created_by_user_id: None,
            intent: evershell_core::model::Intent { desired: Desired::Running, request: None, generation: 1 },
            observed: evershell_core::model::Observation {
                status: WorkspaceStatus::Idle,
                status_reason: Some(StatusReason::Ready),
                last_error: None,
                pod_id: Some(pod),
                pod_pack_ids: Some(vec![]),
                snapshot_id: None,
                last_snapshot_error: None,
                adopted: 0,
                generation: 1,
            },
            created_at: now,
            updated_at: now,
            archived_at: None,
        };
        self.app.store().create_workspace(&ws, &[]).await.unwrap();
        ws
    }

    async fn submit(&self, ws: &WorkspaceRecord, description: &str) -> TaskId {
        let req = SubmitTask { description: description.into(), ..Default::default() };
        self.app.submit_task(&self.caller, &ws.id.to_string(), req).await.unwrap().task_id
    }

    async fn task(&self, ws: &WorkspaceRecord, id: TaskId) -> TaskRecord {
        self.app.store().get_task(ws.org_id, ws.id, id).await.unwrap().unwrap()
    }

    /// Wait until the task is in `want` (panics after 20 s with what it is instead).
    async fn wait_task(&self, ws: &WorkspaceRecord, id: TaskId, want: TaskStatus) -> TaskRecord {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.task(ws, id).await;
            if t.status == want {
                return t;
            }
            assert!(tokio::time::Instant::now() < deadline, "task {id} never reached {want:?}: {t:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Change the workspace's row as the reconciler would, and wake the dispatcher as its feed would.
    async fn set_status(&self, ws: &mut WorkspaceRecord, status: WorkspaceStatus, desired: Desired) {
        let store = self.app.store();
        let mut next = ws.clone();
        if next.intent.desired != desired {
            next.intent.desired = desired;
            let quota = evershell_store::WorkspaceQuota::default();
            let (gi, go) = (ws.intent.generation, ws.observed.generation);
            assert!(store.update_intent(&next, gi, go, &quota, &[]).await.unwrap());
            next.intent.generation += 1;
        }
        next.observed.status = status;
        let now = Timestamp::now();
        let until = Timestamp::from_millis(now.millis() + 60_000);
        let fence = store.claim_workspace(ws.id, "dispatcher-test", now, until).await.unwrap().unwrap();
        let wrote = store.record_observation(&next, ws.observed.generation, &fence, &[]).await.unwrap();
        assert_eq!(wrote, evershell_store::ObservationWrite::Written);
        store.release_workspace(ws.id, &fence).await.unwrap();
        next.observed.generation += 1;
        *ws = next;
        self.app.dispatcher().wake(ws.id);
    }

    async fn agent_rows(&self, ws: &WorkspaceRecord) -> Vec<evershell_core::audit::AuditEvent> {
        let q = AuditQuery {
            org_id: ws.org_id,
            conditions: vec![],
            workspace_id: Some(ws.id),
            user_id: None,
            from: None,
            to: None,
            order: Order::Asc,
            limit: 10_000,
            after: None,
        };
        self.app.store().query_audit(&q).await.unwrap().into_iter().filter(|e| e.actor == Actor::Agent).collect()
    }
}

async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- tests ---------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_is_delivered_followed_and_completed_with_its_events_recorded() {
    let w = world().await;
    let (ws, agent) = w.workspace().await;
    let id = w.submit(&ws, "write hello.txt").await;
    let t = w.wait_task(&ws, id, TaskStatus::Running).await;
    assert!(t.delivered_at.is_some() && t.started_at.is_some());
    // What the agent was handed: the role's model target, prompt and limits.
    let d = agent.deliveries().pop().unwrap();
    assert_eq!(d.task_id, id);
    assert_eq!(d.description, "write hello.txt");
    assert_eq!(d.model.model, "claude-x");
    assert_eq!(d.model.base_url, "https://api.anthropic.com");
    assert_eq!(d.max_continuations, 9);
    assert!(d.system_prompt.contains("Writes Rust."));
    // The workspace reads busy while the task runs (the row itself stays idle).
    assert_eq!(w.app.get_workspace(&w.caller, &ws.id.to_string()).await.unwrap().status, WorkspaceStatus::Busy);
    let listed = w.app.list_workspaces(&w.caller, Default::default()).await.unwrap();
    assert_eq!(listed[0].status, WorkspaceStatus::Busy);
    assert_eq!(w.app.store().get_workspace_by_id(ws.id).await.unwrap().unwrap().status(), WorkspaceStatus::Idle);

    agent.emit_event(Some(id), "iteration_completed");
    agent.emit_event(None, "not_a_known_type");
    agent.finish(id, AgentTaskState::Completed, None, Some("done: hello.txt"));
    let t = w.wait_task(&ws, id, TaskStatus::Completed).await;
    assert_eq!(t.reason, None);
    assert_eq!(t.result.as_deref(), Some("done: hello.txt"));
    assert!(t.completed_at.is_some());
    let view = w.app.get_task(&w.caller, &ws.id.to_string(), &id.to_string()).await.unwrap();
    assert!(view.duration_seconds.is_some());
    assert_eq!(w.app.get_workspace(&w.caller, &ws.id.to_string()).await.unwrap().status, WorkspaceStatus::Idle);

    // Every agent event lands once as an activity row with actor agent, in order, the task's carrying its id.
    wait_until("four agent rows", async || w.agent_rows(&ws).await.len() >= 4).await;
    let rows = w.agent_rows(&ws).await;
    let kinds: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(kinds, ["task_started", "iteration_completed", "agent_event", "task_completed"]);
    assert!(rows.iter().all(|r| r.category == evershell_core::audit::Category::Activity));
    assert_eq!(rows[1].task_id, Some(id));
    assert_eq!(rows[2].task_id, None);
    assert_eq!(rows[2].details.as_ref().unwrap()["agent_event_type"], "not_a_known_type");
    // The session view is proxied.
    assert_eq!(w.app.task_session(&w.caller, &ws.id.to_string()).await.unwrap()["tasks"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_queue_and_run_one_at_a_time_in_order() {
    let w = world().await;
    let (ws, agent) = w.workspace().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(w.submit(&ws, &format!("task {i}")).await);
    }
    for (i, &id) in ids.iter().enumerate() {
        w.wait_task(&ws, id, TaskStatus::Running).await;
        // The ones behind it wait, undelivered.
        for &later in &ids[i + 1..] {
            assert_eq!(w.task(&ws, later).await.status, TaskStatus::Submitted);
        }
        agent.finish(id, AgentTaskState::Completed, None, None);
        w.wait_task(&ws, id, TaskStatus::Completed).await;
    }
    let order: Vec<TaskId> = agent.deliveries().iter().map(|d| d.task_id).collect();
    assert_eq!(order, ids, "delivered in submission order, each once");
    // Newest first.
    let listed: Vec<TaskId> =
        w.app.list_tasks(&w.caller, &ws.id.to_string()).await.unwrap().iter().map(|t| t.id).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_ends_the_running_task_and_the_next_one_runs() {
    let w = world().await;
    let (ws, agent) = w.workspace().await;
    let a = w.submit(&ws, "long").await;
    let b = w.submit(&ws, "next").await;
    w.wait_task(&ws, a, TaskStatus::Running).await;
    let ans = w.app.cancel_task(&w.caller, &ws.id.to_string()).await.unwrap();
    assert_eq!(ans.task_id, a);
    let t = w.wait_task(&ws, a, TaskStatus::Cancelled).await;
    assert_eq!(t.reason, Some(TaskReason::Cancelled));
    w.wait_task(&ws, b, TaskStatus::Running).await;
    agent.finish(b, AgentTaskState::Completed, None, None);
    w.wait_task(&ws, b, TaskStatus::Completed).await;
    // Nothing left: 409 invalid_state.
    let e = w.app.cancel_task(&w.caller, &ws.id.to_string()).await.unwrap_err();
    assert_eq!(e.code, evershell_core::ErrorCode::InvalidState);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_task_keeps_the_agents_reason_mapped_into_the_closed_set() {
    let w = world().await;
    let (ws, agent) = w.workspace().await;
    let a = w.submit(&ws, "loops").await;
    w.wait_task(&ws, a, TaskStatus::Running).await;
    agent.finish(a, AgentTaskState::Failed, Some("max_continuations"), None);
    assert_eq!(w.wait_task(&ws, a, TaskStatus::Failed).await.reason, Some(TaskReason::MaxContinuations));
    let b = w.submit(&ws, "weird").await;
    w.wait_task(&ws, b, TaskStatus::Running).await;
    agent.finish(b, AgentTaskState::Failed, Some("<script>"), None);
    assert_eq!(w.wait_task(&ws, b, TaskStatus::Failed).await.reason, Some(TaskReason::AgentError));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_to_an_unreachable_agent_fails_after_bounded_retries_and_the_queue_moves_on() {
    let w = world().await;
    let ws = w.workspace_without_agent(PodId::new()).await;
    let a = w.submit(&ws, "nobody home").await;
    let b = w.submit(&ws, "nor here").await;
    let t = w.wait_task(&ws, a, TaskStatus::DeliveryFailed).await;
    assert_eq!(t.reason, Some(TaskReason::AgentUnreachable));
    assert!(t.completed_at.is_some());
    assert_eq!(w.wait_task(&ws, b, TaskStatus::DeliveryFailed).await.reason, Some(TaskReason::AgentUnreachable));
    // An agent that refuses outright (4xx) is not retried into the ground.
    let (ws2, agent) = w.workspace().await;
    agent.state.lock().unwrap().refuse_with = Some(400);
    let c = w.submit(&ws2, "refused").await;
    assert_eq!(w.wait_task(&ws2, c, TaskStatus::DeliveryFailed).await.reason, Some(TaskReason::DeliveryRefused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_restart_ends_its_task_agent_restarted() {
    let w = world().await;
    let (ws, agent) = w.workspace().await;
    let a = w.submit(&ws, "interrupted").await;
    w.wait_task(&ws, a, TaskStatus::Running).await;
    agent.restart();
    assert_eq!(w.wait_task(&ws, a, TaskStatus::Failed).await.reason, Some(TaskReason::AgentRestarted));
    // The new process takes the next task normally.
    let b = w.submit(&ws, "after").await;
    w.wait_task(&ws, b, TaskStatus::Running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_ends_running_and_queued_tasks_workspace_stopped_and_refuses_new_ones() {
    let w = world().await;
    let (mut ws, _agent) = w.workspace().await;
    let a = w.submit(&ws, "running").await;
    let b = w.submit(&ws, "queued").await;
    w.wait_task(&ws, a, TaskStatus::Running).await;
    w.set_status(&mut ws, WorkspaceStatus::Stopping, Desired::Stopped).await;
    for id in [a, b] {
        let t = w.wait_task(&ws, id, TaskStatus::Cancelled).await;
        assert_eq!(t.reason, Some(TaskReason::WorkspaceStopped));
    }
    let req = SubmitTask { description: "late".into(), ..Default::default() };
    let e = w.app.submit_task(&w.caller, &ws.id.to_string(), req).await.unwrap_err();
    assert_eq!(e.code, evershell_core::ErrorCode::WorkspaceStopped);
    let e = w.app.cancel_task(&w.caller, &ws.id.to_string()).await.unwrap_err();
    assert_eq!(e.code, evershell_core::ErrorCode::WorkspaceProvisioning, "stopping answers like provisioning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_loss_and_a_forced_restart_end_the_running_task_with_their_reason() {
    let w = world().await;
    let (mut ws, _agent) = w.workspace().await;
    let a = w.submit(&ws, "lost").await;
    let queued = w.submit(&ws, "queued").await;
    w.wait_task(&ws, a, TaskStatus::Running).await;
    w.set_status(&mut ws, WorkspaceStatus::Failed, Desired::Running).await;
    assert_eq!(w.wait_task(&ws, a, TaskStatus::Failed).await.reason, Some(TaskReason::PodLost));
    assert_eq!(w.wait_task(&ws, queued, TaskStatus::DeliveryFailed).await.reason, Some(TaskReason::PodLost));

    let (mut ws2, agent2) = w.workspace().await;
    let b = w.submit(&ws2, "restarted").await;
    let after = w.submit(&ws2, "survives").await;
    w.wait_task(&ws2, b, TaskStatus::Running).await;
    w.set_status(&mut ws2, WorkspaceStatus::Stopping, Desired::Running).await;
    assert_eq!(w.wait_task(&ws2, b, TaskStatus::Cancelled).await.reason, Some(TaskReason::WorkspaceRestarted));
    // The queued task waits for the fresh pod, and is delivered once the workspace is idle again.
    assert_eq!(w.task(&ws2, after).await.status, TaskStatus::Submitted);
    agent2.restart(); // the fresh pod's agent
    w.set_status(&mut ws2, WorkspaceStatus::Idle, Desired::Running).await;
    w.wait_task(&ws2, after, TaskStatus::Running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_restart_ends_tasks_it_can_no_longer_follow_and_follows_the_others() {
    let w = world().await;
    let (mut gone, _a1) = w.workspace().await;
    let (alive, agent2) = w.workspace().await;
    let t1 = w.submit(&gone, "on a pod that went away").await;
    let t2 = w.submit(&alive, "on a pod that lives on").await;
    w.wait_task(&gone, t1, TaskStatus::Running).await;
    w.wait_task(&alive, t2, TaskStatus::Running).await;
    agent2.emit_event(Some(t2), "iteration_completed");
    wait_until("the iteration row", async || w.agent_rows(&alive).await.len() == 2).await;
    // The control plane goes away; meanwhile the first workspace stops.
    w.app.dispatcher().shutdown().await;
    w.set_status(&mut gone, WorkspaceStatus::Stopped, Desired::Stopped).await;
    // A new control plane on the same store.
    let app2 = Arc::new(App::new(
        w.app.store().clone(),
        w.runtime.clone(),
        SnapshotStore::local(&w.dir.path().join("snapshots")).unwrap(),
        AppConfig::default(),
    ));
    let (_tx, rx) = tokio::sync::broadcast::channel(16);
    app2.dispatcher().start(rx).await.unwrap();
    let t = app2.store().get_task(gone.org_id, gone.id, t1).await.unwrap().unwrap();
    assert_eq!((t.status, t.reason), (TaskStatus::Failed, Some(TaskReason::ControlPlaneRestart)));
    // The other is followed again from where the recorded events left off: no event is recorded twice.
    agent2.finish(t2, AgentTaskState::Completed, None, None);
    w.wait_task(&alive, t2, TaskStatus::Completed).await;
    wait_until("the completion row", async || w.agent_rows(&alive).await.len() >= 3).await;
    let kinds: Vec<String> = w.agent_rows(&alive).await.iter().map(|r| r.event_type.as_str().to_string()).collect();
    assert_eq!(kinds, ["task_started", "iteration_completed", "task_completed"]);
    app2.dispatcher().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_that_cannot_be_saved_does_not_fail_the_task_and_refuses_a_fork_at_it() {
    use evershell_app::forks::ForkWorkspace;
    let w = world().await;
    let (ws, agent) = w.workspace().await;
    let id = w.submit(&ws, "one").await;
    w.wait_task(&ws, id, TaskStatus::Running).await;
    agent.finish(id, AgentTaskState::Completed, None, Some("done"));
    // This runtime cannot capture a running pod: the checkpoint fails, and says why.
    let store = w.app.store().clone();
    wait_until("the failed checkpoint is recorded", async || {
        store.get_checkpoint(ws.id, 1).await.unwrap().is_some_and(|c| c.error.is_some() && c.snapshot_id.is_none())
    })
    .await;
    assert_eq!(w.task(&ws, id).await.status, TaskStatus::Completed);
    let q = AuditQuery {
        org_id: ws.org_id,
        conditions: vec![],
        workspace_id: Some(ws.id),
        user_id: None,
        from: None,
        to: None,
        order: Order::Asc,
        limit: 1000,
        after: None,
    };
    let rows = store.query_audit(&q).await.unwrap();
    assert!(
        rows.iter().any(|r| r.event_type == evershell_core::audit::EventType::SnapshotFailed
            && r.reason.as_deref() == Some("checkpoint")),
        "{rows:?}"
    );
    let fork = |n: serde_json::Value| ForkWorkspace { fork_point_task_count: Some(n) };
    let e = w.app.fork_workspace(&w.caller, &ws.id.to_string(), fork(1.into())).await.unwrap_err();
    assert_eq!(e.code, evershell_core::ErrorCode::SnapshotMissing);
    assert!(e.message.contains("could not be saved"), "{}", e.message);
    let e = w.app.fork_workspace(&w.caller, &ws.id.to_string(), fork(2.into())).await.unwrap_err();
    assert_eq!(e.code, evershell_core::ErrorCode::SnapshotMissing);
    let e = w.app.fork_workspace(&w.caller, &ws.id.to_string(), fork((-1).into())).await.unwrap_err();
    assert_eq!(e.code, evershell_core::ErrorCode::ValidationError);
    // Checkpoint 0 of a workspace created empty is the empty state: that fork is made.
    let child = w.app.fork_workspace(&w.caller, &ws.id.to_string(), fork(0.into())).await.unwrap();
    assert_eq!(
        (child.parent_workspace_id, child.fork_point_task_count, child.fork_source_snapshot_ref),
        (ws.id, 0, None)
    );
    let view = w.app.get_workspace(&w.caller, &child.workspace_id.to_string()).await.unwrap();
    assert_eq!(view.parent_workspace_id, Some(ws.id));
    assert_eq!(view.fork_point_task_count, Some(0));
    // The queue carries on.
    let next = w.submit(&ws, "two").await;
    w.wait_task(&ws, next, TaskStatus::Running).await;
}
