//! The reconciler over the simulated runtime (`evershell_runtime::sim`) and a SQLite store in a temp file: create,
//! stop with a snapshot, resume, retried failures, `max_attempts`, a pod that exits, an agent that never answers, a
//! lost lease (renewal refused; a late write fenced off) and recovery after a crash. Lifecycle calls go through
//! `App`, as the API's do. Every wait is for the condition itself (the reconciler's change feed), bounded.

use std::sync::Arc;
use std::time::Duration;

use evershell_core::Timestamp;
use evershell_core::audit::{AuditQuery, Condition, EventType, FilterOp, Order};
use evershell_core::ids::{ApiKeyId, OrgId, ProviderId, RoleId, WorkspaceId};
use evershell_core::lifecycle::{StatusReason, WorkspaceStatus};
use evershell_core::model::{
    AgentRole, BillingStatus, Environment, Org, PoolPolicy, Provider, ProviderKind, WorkspaceRecord,
};
use evershell_core::scope::PermissionSet;
use evershell_runtime::{PodRuntime, SimOp, SimRuntime};
use evershell_snapshot::{SnapshotKeys, SnapshotStore};
use evershell_store::Store;

use crate::workspaces::{CreateWorkspace, LifecycleCall};
use crate::{App, AppConfig, Caller, Principal, ReconcilerConfig};

const WAIT: Duration = Duration::from_secs(20);

struct Rig {
    _dir: tempfile::TempDir,
    url: String,
    snapshots_dir: std::path::PathBuf,
    app: App,
    sim: Arc<SimRuntime>,
    caller: Caller,
    role: RoleId,
}

fn cfg() -> ReconcilerConfig {
    ReconcilerConfig {
        // The timer never fires during a test: every pass below is started by a wake-up.
        interval: Duration::from_secs(3600),
        lease: Duration::from_secs(600),
        pod_start_timeout: Duration::from_millis(300),
        max_attempts: 3,
        ..Default::default()
    }
}

async fn open(url: &str, snapshots: &std::path::Path, sim: Arc<SimRuntime>, rc: ReconcilerConfig) -> App {
    let store = evershell_store::connect(url).await.expect("open the SQLite store");
    let snapshots = SnapshotStore::local(snapshots).unwrap();
    App::new(store, sim, snapshots, AppConfig { reconciler: rc, ..Default::default() })
}

async fn seed(store: &Arc<dyn Store>) -> (OrgId, RoleId) {
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
        default_model: None,
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
        description: None,
        provider_id: provider.id,
        model: None,
        capabilities: None,
        environment: Environment::Staging,
        environment_description: None,
        task_timeout_seconds: None,
        idle_timeout_seconds: None,
        thinking_effort: None,
        max_continuations: None,
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
    (org.id, role.id)
}

fn caller(org: OrgId) -> Caller {
    Caller {
        org_id: org,
        principal: Principal::ApiKey {
            key_id: ApiKeyId::new(),
            label: "test".into(),
            permission_set: PermissionSet::FullAccess,
        },
        scopes: PermissionSet::FullAccess.scopes(),
        request_id: None,
    }
}

async fn rig_with(sim: Arc<SimRuntime>, rc: ReconcilerConfig) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("evershell.db").display());
    let snapshots_dir = dir.path().join("snapshots");
    let app = open(&url, &snapshots_dir, sim.clone(), rc).await;
    let (org, role) = seed(&app.store).await;
    app.reconciler.start().await.unwrap();
    Rig { _dir: dir, url, snapshots_dir, app, sim, caller: caller(org), role }
}

async fn rig() -> Rig {
    rig_with(SimRuntime::new(), cfg()).await
}

impl Rig {
    async fn create(&self) -> WorkspaceId {
        let req = CreateWorkspace { role_id: Some(self.role.to_string()), role_name: None, environment: None };
        self.app.create_workspace(&self.caller, req).await.unwrap().id
    }

    async fn call(&self, id: WorkspaceId, call: LifecycleCall) {
        self.app.lifecycle(&self.caller, &id.to_string(), call).await.unwrap();
    }

    async fn get(&self, id: WorkspaceId) -> WorkspaceRecord {
        self.app.store.get_workspace_by_id(id).await.unwrap().unwrap()
    }

    /// Wait until the workspace's row satisfies `ok` (woken by the reconciler's change feed).
    async fn until(&self, id: WorkspaceId, what: &str, ok: impl Fn(&WorkspaceRecord) -> bool) -> WorkspaceRecord {
        let mut changes = self.app.reconciler.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ws = self.get(id).await;
            if ok(&ws) {
                return ws;
            }
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(_) => {}
                Err(_) => panic!("timed out waiting for {what}; the workspace is {ws:?}"),
            }
        }
    }

    async fn status(&self, id: WorkspaceId, status: WorkspaceStatus) -> WorkspaceRecord {
        self.until(id, status.as_str(), |ws| ws.status() == status).await
    }

    /// Wait until no worker has the workspace (its pass ended).
    async fn pass_ended(&self, id: WorkspaceId) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.app.reconciler.inner.states.is_running(id) {
            assert!(tokio::time::Instant::now() < deadline, "the pass never ended");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn audit_count(&self, id: WorkspaceId, t: EventType) -> usize {
        let q = AuditQuery {
            org_id: self.caller.org_id,
            conditions: vec![Condition { column: "event_type", op: FilterOp::In(vec![t.as_str().into()]) }],
            workspace_id: Some(id),
            user_id: None,
            from: None,
            to: None,
            order: Order::Asc,
            limit: 1000,
            after: None,
        };
        self.app.store.query_audit(&q).await.unwrap().len()
    }
}

#[tokio::test]
async fn create_goes_idle() {
    let r = rig().await;
    let id = r.create().await;
    let ws = r.status(id, WorkspaceStatus::Idle).await;
    assert_eq!(ws.public_status(false), (WorkspaceStatus::Idle, Some(StatusReason::Ready)));
    assert!(r.sim.is_running(ws.observed.pod_id.unwrap()));
    // The derivation the task subsystem uses: an idle workspace with a running task reads busy.
    assert_eq!(ws.public_status(true).0, WorkspaceStatus::Busy);
    r.app.reconciler.shutdown().await;
}

#[tokio::test]
async fn stop_saves_a_snapshot_and_resume_restores_it() {
    let r = rig().await;
    let id = r.create().await;
    let pod = r.status(id, WorkspaceStatus::Idle).await.observed.pod_id.unwrap();
    r.sim.write_file(pod, "notes.txt", b"keep me");
    r.call(id, LifecycleCall::Stop).await;
    let stopped = r.status(id, WorkspaceStatus::Stopped).await;
    assert_eq!(stopped.observed.status_reason, Some(StatusReason::StopRequested));
    assert_eq!(stopped.observed.pod_id, None);
    assert!(r.sim.files(pod).is_none(), "the pod is removed once its files are saved");
    let snap = r.app.store.get_snapshot(stopped.observed.snapshot_id.unwrap()).await.unwrap().unwrap();
    let keys = SnapshotKeys::from_strings(&snap.archive_key, &snap.manifest_key);
    assert_eq!(r.sim.snapshot_files(&keys).unwrap()["notes.txt"], b"keep me");

    r.call(id, LifecycleCall::Resume { allow_empty: false }).await;
    let idle = r.status(id, WorkspaceStatus::Idle).await;
    assert_eq!(idle.observed.status_reason, Some(StatusReason::Restored));
    let new_pod = idle.observed.pod_id.unwrap();
    assert_ne!(new_pod, pod);
    assert_eq!(r.sim.files(new_pod).unwrap()["notes.txt"], b"keep me");
    r.app.reconciler.shutdown().await;
}

#[tokio::test]
async fn a_failing_step_is_retried_until_it_works() {
    let r = rig().await;
    r.sim.fail_next(SimOp::Start, 2);
    let id = r.create().await;
    let ws = r.status(id, WorkspaceStatus::Idle).await;
    assert_eq!(r.sim.calls(SimOp::Start), 3);
    assert_eq!(ws.observed.last_error, None);
    r.app.reconciler.shutdown().await;
}

#[tokio::test]
async fn a_step_failing_max_attempts_times_fails_the_workspace_with_a_reason() {
    let r = rig().await;
    r.sim.fail_next(SimOp::Prepare, 100);
    let id = r.create().await;
    let ws = r.status(id, WorkspaceStatus::Failed).await;
    assert_eq!(ws.observed.status_reason, Some(StatusReason::PodStartFailed));
    let err = ws.observed.last_error.unwrap();
    assert!(err.contains("PreparePod failed 3 times") && err.contains("simulated Prepare failure"), "{err}");
    assert_eq!(r.sim.calls(SimOp::Prepare), 3);
    // The incomplete pod is released after the failure is recorded.
    r.until(id, "the pod released", |ws| ws.observed.pod_id.is_none()).await;
    assert_eq!(r.audit_count(id, EventType::WorkspaceFailed).await, 1);
    r.app.reconciler.shutdown().await;
}

#[tokio::test]
async fn a_stop_whose_capture_keeps_failing_fails_with_snapshot_failed_and_keeps_the_files() {
    let r = rig().await;
    let id = r.create().await;
    let pod = r.status(id, WorkspaceStatus::Idle).await.observed.pod_id.unwrap();
    r.sim.write_file(pod, "a", b"1");
    r.sim.fail_next(SimOp::Capture, 100);
    r.call(id, LifecycleCall::Stop).await;
    let ws = r.status(id, WorkspaceStatus::Failed).await;
    assert_eq!(ws.observed.status_reason, Some(StatusReason::SnapshotFailed));
    assert_eq!(ws.observed.pod_id, Some(pod));
    assert_eq!(r.sim.files(pod).unwrap()["a"], b"1");
    assert_eq!(r.sim.calls(SimOp::Capture), 3);
    r.app.reconciler.shutdown().await;
}

#[tokio::test]
async fn a_pod_that_exits_fails_the_workspace_with_pod_exited() {
    let r = rig().await;
    let id = r.create().await;
    let pod = r.status(id, WorkspaceStatus::Idle).await.observed.pod_id.unwrap();
    r.sim.exit(pod, "exit status 137");
    r.app.reconciler.wake(id);
    let ws = r.status(id, WorkspaceStatus::Failed).await;
    assert_eq!(ws.observed.status_reason, Some(StatusReason::PodExited));
    assert!(ws.observed.last_error.as_deref().unwrap().contains("exit status 137"));
    assert!(r.sim.files(pod).is_some(), "the files are kept for a resume");
    // Resume reattaches to them, and the resume cleared the error at once.
    r.call(id, LifecycleCall::Resume { allow_empty: false }).await;
    assert_eq!(r.get(id).await.public_last_error(), None);
    let ws = r.status(id, WorkspaceStatus::Idle).await;
    assert_eq!((ws.observed.status_reason, ws.observed.pod_id), (Some(StatusReason::Reattached), Some(pod)));
    r.app.reconciler.shutdown().await;
}

#[tokio::test]
async fn an_agent_that_never_answers_fails_the_start() {
    let r = rig().await;
    r.sim.mute_agents_on_start(true);
    let id = r.create().await;
    let ws = r.status(id, WorkspaceStatus::Failed).await;
    assert_eq!(ws.observed.status_reason, Some(StatusReason::PodStartFailed));
    assert!(ws.observed.last_error.as_deref().unwrap().contains("did not answer"), "{ws:?}");
    // Its sandbox was stopped; a running agent that goes quiet later is left alone.
    assert!(!r.sim.is_running(ws.observed.pod_id.unwrap()));
    r.app.reconciler.shutdown().await;
}

/// Take the lease from under the reconciler, as another replica would once it lapsed.
async fn steal_lease(r: &Rig, id: WorkspaceId) -> evershell_store::Fence {
    r.app.store.clear_leases().await.unwrap();
    let now = Timestamp::now();
    r.app.store.claim_workspace(id, "thief", now, now.plus_millis(600_000)).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_late_write_after_the_lease_was_lost_is_refused_by_the_fence() {
    // The lease is long: the reconciler's renewal does not notice the theft before its next write.
    let r = rig().await;
    let id = r.create().await;
    let pod = r.status(id, WorkspaceStatus::Idle).await.observed.pod_id.unwrap();
    let pause = r.sim.pause_next(SimOp::Capture);
    r.call(id, LifecycleCall::Stop).await;
    pause.reached().await;
    let before = r.get(id).await;
    assert_eq!(before.observed.status, WorkspaceStatus::Stopping);
    let thief = steal_lease(&r, id).await;
    pause.release();
    r.pass_ended(id).await;
    // The capture finished, but its commit (snapshot + observation) was fenced off: nothing was written.
    let after = r.get(id).await;
    assert_eq!(after.observed, before.observed);
    assert_eq!(r.audit_count(id, EventType::SnapshotSaved).await, 0);
    assert!(r.sim.files(pod).is_some());
    // The holder of the lease writes; once it lets go, the stop completes.
    let mut theirs = after.clone();
    theirs.observed.last_snapshot_error = Some("written by the new holder".into());
    let g = after.observed.generation;
    let w = r.app.store.record_observation(&theirs, g, &thief, &[]).await.unwrap();
    assert_eq!(w, evershell_store::ObservationWrite::Written);
    r.app.store.release_workspace(id, &thief).await.unwrap();
    r.app.reconciler.wake(id);
    let stopped = r.status(id, WorkspaceStatus::Stopped).await;
    assert!(stopped.observed.snapshot_id.is_some());
    assert_eq!(stopped.observed.last_snapshot_error, None);
    r.app.reconciler.shutdown().await;
}

#[tokio::test]
async fn a_refused_renewal_stops_the_pass_at_once() {
    // A short lease: renewed every 100 ms while the pass runs.
    let r = rig_with(SimRuntime::new(), ReconcilerConfig { lease: Duration::from_millis(300), ..cfg() }).await;
    let id = r.create().await;
    r.status(id, WorkspaceStatus::Idle).await;
    let pause = r.sim.pause_next(SimOp::Capture);
    r.call(id, LifecycleCall::Stop).await;
    pause.reached().await;
    let before = r.get(id).await;
    let _thief = steal_lease(&r, id).await;
    // The capture is still held at its pause point: the pass ends because the renewal was refused, not because a
    // write was fenced off.
    r.pass_ended(id).await;
    pause.release();
    tokio::task::yield_now().await;
    assert_eq!(r.get(id).await.observed, before.observed);
    assert_eq!(r.sim.calls(SimOp::Capture), 1);
    assert_eq!(r.audit_count(id, EventType::SnapshotSaved).await, 0);
    r.app.reconciler.shutdown().await;
}

/// A control plane dies while a pod is being prepared (its runtime dropped mid-step, its lease left behind); the
/// next one, on the same store and the same pods, recovers: an audit row says so and the workspace ends idle.
#[test]
fn recovery_after_a_crash_mid_prepare() {
    let sim = SimRuntime::new();
    let crashed = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (r, id) = crashed.block_on(async {
        let r = rig_with(sim.clone(), cfg()).await;
        let pause = sim.pause_next(SimOp::Prepare);
        let id = r.create().await;
        pause.reached().await;
        (r, id)
    });
    // The crash: every task of that control plane stops where it is.
    crashed.shutdown_background();
    let Rig { _dir, url, snapshots_dir, caller, role, app, .. } = r;
    std::mem::forget(app);

    let next = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    next.block_on(async {
        let app = open(&url, &snapshots_dir, sim.clone(), cfg()).await;
        let stuck = app.store.get_workspace_by_id(id).await.unwrap().unwrap();
        assert_eq!(stuck.status(), WorkspaceStatus::Provisioning);
        let pod = stuck.observed.pod_id.expect("the pod id was recorded before its files were made");
        app.reconciler.start().await.unwrap();
        let r = Rig { _dir, url, snapshots_dir, app, sim: sim.clone(), caller, role };
        let ws = r.status(id, WorkspaceStatus::Idle).await;
        assert_eq!(ws.observed.pod_id, Some(pod));
        assert!(sim.is_running(pod));
        assert_eq!(r.audit_count(id, EventType::WorkspaceRecovered).await, 1);
        assert_eq!(sim.calls(SimOp::Prepare), 2);
        r.app.reconciler.shutdown().await;
    });
}

// ---- the idle timeout (`idle.rs`), on a clock the test moves

/// A clock running `offset` milliseconds ahead of the system's.
fn moved_clock() -> (crate::Clock, Arc<std::sync::atomic::AtomicI64>) {
    let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let o = offset.clone();
    (crate::Clock::new(move || Timestamp::now().plus_millis(o.load(std::sync::atomic::Ordering::SeqCst))), offset)
}

struct IdleRig {
    r: Rig,
    offset: Arc<std::sync::atomic::AtomicI64>,
}

/// A rig whose role has `idle_timeout_seconds = limit`, and one idle workspace of it.
async fn idle_rig(limit: Option<i64>) -> (IdleRig, WorkspaceId) {
    let (clock, offset) = moved_clock();
    let r = rig_with(SimRuntime::new(), ReconcilerConfig { clock, ..cfg() }).await;
    let mut role = r.app.store.get_role(r.caller.org_id, r.role).await.unwrap().unwrap();
    role.idle_timeout_seconds = limit;
    r.app.store.update_role(&role, &[]).await.unwrap();
    let id = r.create().await;
    r.status(id, WorkspaceStatus::Idle).await;
    (IdleRig { r, offset }, id)
}

impl IdleRig {
    /// Move the clock to `secs` after now (from the start of the test).
    fn at(&self, secs: i64) {
        self.offset.store(secs * 1000, std::sync::atomic::Ordering::SeqCst);
    }

    /// Run one pass on `id` and wait until it checked the idle timeout and ended.
    async fn check(&self, id: WorkspaceId) {
        let checks = || self.r.app.reconciler.inner.idle_checks.load(std::sync::atomic::Ordering::SeqCst);
        let before = checks();
        self.r.app.reconciler.wake(id);
        let deadline = tokio::time::Instant::now() + WAIT;
        while checks() == before {
            assert!(tokio::time::Instant::now() < deadline, "no idle check happened");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.r.pass_ended(id).await;
    }

    /// Still running, and no stop was asked for.
    async fn still_idle(&self, id: WorkspaceId) {
        let ws = self.r.get(id).await;
        assert_eq!(ws.status(), WorkspaceStatus::Idle, "{ws:?}");
        assert_eq!(ws.intent.desired, evershell_core::lifecycle::Desired::Running);
        assert_eq!(self.r.audit_count(id, EventType::WorkspaceStopRequested).await, 0);
    }

    async fn task(&self, id: WorkspaceId, status: evershell_core::task::TaskStatus) -> evershell_core::ids::TaskId {
        let t = evershell_core::model::TaskRecord {
            id: evershell_core::ids::TaskId::new(),
            org_id: self.r.caller.org_id,
            workspace_id: id,
            created_by_user_id: None,
            description: "work".into(),
            status,
            reason: None,
            options: Default::default(),
            queue_seq: 0,
            created_at: Timestamp::now(),
            delivered_at: None,
            started_at: None,
            completed_at: None,
            result: None,
        };
        self.r.app.store.insert_task(&t, &[]).await.unwrap();
        t.id
    }
}

#[tokio::test]
async fn idle_past_the_limit_stops_with_a_snapshot_and_the_reason() {
    let (ir, id) = idle_rig(Some(60)).await;
    let pod = ir.r.get(id).await.observed.pod_id.unwrap();
    ir.r.sim.write_file(pod, "notes.txt", b"idle but kept");
    ir.at(59);
    ir.check(id).await;
    ir.still_idle(id).await;
    ir.at(61);
    ir.r.app.reconciler.wake(id);
    let stopped = ir.r.status(id, WorkspaceStatus::Stopped).await;
    assert_eq!(stopped.observed.status_reason, Some(StatusReason::IdleTimeout));
    assert_eq!(stopped.intent.desired, evershell_core::lifecycle::Desired::Stopped);
    let snap = ir.r.app.store.get_snapshot(stopped.observed.snapshot_id.unwrap()).await.unwrap().unwrap();
    let keys = SnapshotKeys::from_strings(&snap.archive_key, &snap.manifest_key);
    assert_eq!(ir.r.sim.snapshot_files(&keys).unwrap()["notes.txt"], b"idle but kept");
    assert!(ir.r.sim.files(pod).is_none(), "the pod is removed once its files are saved");
    // The audit trail says who and why: the request (control plane, user `system`) and the stop.
    let q = AuditQuery {
        org_id: ir.r.caller.org_id,
        conditions: vec![],
        workspace_id: Some(id),
        user_id: None,
        from: None,
        to: None,
        order: Order::Asc,
        limit: 1000,
        after: None,
    };
    let rows = ir.r.app.store.query_audit(&q).await.unwrap();
    let asked = rows.iter().find(|e| e.event_type == EventType::WorkspaceStopRequested).expect("a stop request row");
    assert_eq!((asked.user_id.as_str(), asked.actor), ("system", evershell_core::audit::Actor::ControlPlane));
    assert_eq!(asked.reason.as_deref(), Some("idle_timeout"));
    assert_eq!(asked.details.as_ref().unwrap()["idle_timeout_seconds"], 60);
    let done = rows.iter().find(|e| e.event_type == EventType::WorkspaceStopped).expect("a stopped row");
    assert_eq!(done.reason.as_deref(), Some("idle_timeout"));
    // It resumes as any stopped workspace, with its files (the clock back to the system's).
    ir.at(0);
    ir.r.call(id, LifecycleCall::Resume { allow_empty: false }).await;
    let idle = ir.r.status(id, WorkspaceStatus::Idle).await;
    assert_eq!(idle.observed.status_reason, Some(StatusReason::Restored));
    assert_eq!(ir.r.sim.files(idle.observed.pod_id.unwrap()).unwrap()["notes.txt"], b"idle but kept");
    // The resume restarted the clock: idle for less than the limit since, it is not stopped again.
    ir.at(59);
    ir.check(id).await;
    ir.still_idle_after_resume(id).await;
    ir.r.app.reconciler.shutdown().await;
}

impl IdleRig {
    async fn still_idle_after_resume(&self, id: WorkspaceId) {
        let ws = self.r.get(id).await;
        assert_eq!(ws.status(), WorkspaceStatus::Idle, "{ws:?}");
        assert_eq!(self.r.audit_count(id, EventType::WorkspaceStopRequested).await, 1);
    }
}

#[tokio::test]
async fn a_running_task_over_the_limit_is_never_stopped() {
    use evershell_core::task::TaskStatus;
    for status in [TaskStatus::Delivered, TaskStatus::Running, TaskStatus::Compacting] {
        let (ir, id) = idle_rig(Some(60)).await;
        ir.task(id, status).await;
        ir.at(3600);
        ir.check(id).await;
        ir.still_idle(id).await;
        ir.r.app.reconciler.shutdown().await;
    }
}

#[tokio::test]
async fn a_queued_task_over_the_limit_is_never_stopped() {
    let (ir, id) = idle_rig(Some(60)).await;
    ir.task(id, evershell_core::task::TaskStatus::Submitted).await;
    ir.at(3600);
    ir.check(id).await;
    ir.still_idle(id).await;
    ir.r.app.reconciler.shutdown().await;
}

#[tokio::test]
async fn activity_restarts_the_clock() {
    use evershell_core::task::TaskStatus;
    let (ir, id) = idle_rig(Some(60)).await;
    // A task submitted and ended 50 s in (the store's rows carry those times).
    let t = ir.task(id, TaskStatus::Running).await;
    let ended = Timestamp::now().plus_millis(50_000);
    let update = evershell_store::TaskUpdate {
        status: TaskStatus::Completed,
        reason: None,
        delivered_at: None,
        started_at: None,
        completed_at: Some(ended),
        result: None,
    };
    assert!(ir.r.app.store.update_task(t, TaskStatus::Running, &update, &[]).await.unwrap());
    ir.at(100);
    ir.check(id).await;
    ir.still_idle(id).await;
    // An exec through the API 105 s in (its audit row).
    let mut exec =
        evershell_core::audit::AuditEvent::system(ir.r.caller.org_id, EventType::WorkspaceExec).workspace(id);
    exec.timestamp = Timestamp::now().plus_millis(105_000);
    ir.r.app.store.append_audit(&[exec]).await.unwrap();
    ir.at(160);
    ir.check(id).await;
    ir.still_idle(id).await;
    // What the workspace writes about itself while idle is not activity.
    let mut egress =
        evershell_core::audit::AuditEvent::system(ir.r.caller.org_id, EventType::EgressRequest).workspace(id);
    egress.timestamp = Timestamp::now().plus_millis(164_000);
    ir.r.app.store.append_audit(&[egress]).await.unwrap();
    ir.at(166);
    ir.r.app.reconciler.wake(id);
    let stopped = ir.r.status(id, WorkspaceStatus::Stopped).await;
    assert_eq!(stopped.observed.status_reason, Some(StatusReason::IdleTimeout));
    ir.r.app.reconciler.shutdown().await;
}

#[tokio::test]
async fn no_limit_or_zero_never_stops() {
    for limit in [None, Some(0)] {
        let (ir, id) = idle_rig(limit).await;
        ir.at(365 * 86_400);
        ir.check(id).await;
        ir.still_idle(id).await;
        ir.r.app.reconciler.shutdown().await;
    }
}

/// The stop and a submission race: whichever takes the workspace's row lock first wins, cleanly.
#[tokio::test]
async fn a_submission_and_the_idle_stop_never_both_win() {
    use evershell_core::task::TaskStatus;
    let (ir, id) = idle_rig(Some(60)).await;
    let store = &ir.r.app.store;
    // The decision was made from this row and this last activity; then a task arrives before the write.
    let ws = ir.r.get(id).await;
    let since = store.last_workspace_activity(id, evershell_core::idle::ACTIVITY_EVENTS).await.unwrap().unwrap();
    let mut next = ws.clone();
    next.intent.desired = evershell_core::lifecycle::Desired::Stopped;
    next.intent.request = Some(evershell_core::model::Request {
        seq: ws.observed.adopted + 1,
        status: WorkspaceStatus::Stopping,
        reason: StatusReason::IdleTimeout,
    });
    let g = (ws.intent.generation, ws.observed.generation);
    let events = evershell_core::idle::ACTIVITY_EVENTS;
    let t = ir.task(id, TaskStatus::Submitted).await;
    assert!(!store.update_intent_if_inactive(&next, g.0, g.1, since, events, &[]).await.unwrap(), "a task is queued");
    // The task ends (a moment later than the decision's last activity): still refused, that was activity.
    let end = evershell_store::TaskUpdate {
        status: TaskStatus::Cancelled,
        reason: Some(evershell_core::task::TaskReason::Cancelled),
        delivered_at: None,
        started_at: None,
        completed_at: Some(since.plus_millis(1)),
        result: None,
    };
    assert!(store.update_task(t, TaskStatus::Submitted, &end, &[]).await.unwrap());
    assert!(!store.update_intent_if_inactive(&next, g.0, g.1, since, events, &[]).await.unwrap(), "activity since");
    // With nothing since, the stop lands; a submission after it is refused with the stopping workspace's 409.
    let since = store.last_workspace_activity(id, events).await.unwrap().unwrap();
    assert!(store.update_intent_if_inactive(&next, g.0, g.1, since, events, &[]).await.unwrap());
    let t = evershell_core::model::TaskRecord {
        id: evershell_core::ids::TaskId::new(),
        status: TaskStatus::Submitted,
        reason: None,
        completed_at: None,
        ..store.get_task(ir.r.caller.org_id, id, t).await.unwrap().unwrap()
    };
    let err = store.insert_task(&t, &[]).await.unwrap_err();
    assert_eq!(err.code, evershell_core::ErrorCode::WorkspaceStopped, "{err:?}");
    // The same written twice does not land twice (the generation moved).
    assert!(!store.update_intent_if_inactive(&next, g.0, g.1, since, events, &[]).await.unwrap());
    ir.r.app.reconciler.wake(id);
    ir.r.status(id, WorkspaceStatus::Stopped).await;
    ir.r.app.reconciler.shutdown().await;
}

#[tokio::test]
async fn a_pod_network_write_after_the_lease_was_lost_is_refused_by_the_fence() {
    // Pods get addresses, so marking a pod ready first records its address and capability token.
    let sim = SimRuntime::new();
    sim.give_pods_addresses(true);
    let r = rig_with(sim, cfg()).await;
    let pause = r.sim.pause_next(SimOp::Start);
    let id = r.create().await;
    pause.reached().await;
    let before = r.get(id).await;
    assert_eq!(before.observed.status, WorkspaceStatus::Provisioning);
    let pod = before.observed.pod_id.unwrap();
    // Another replica takes the lease while the sandbox starts; the next write of the old owner is the pod's network
    // (the pass goes start → await agent → record the network → mark ready).
    let thief = steal_lease(&r, id).await;
    pause.release();
    r.pass_ended(id).await;
    assert_eq!(r.app.store.pod_network(id).await.unwrap(), None, "a stale owner recorded the pod's network");
    assert_eq!(r.get(id).await.observed, before.observed);
    // The holder writes (and clears) it; a fence of the old epoch is refused either way.
    let addr = r.sim.pod_address(pod).unwrap().to_string();
    let net = evershell_store::PodNetwork {
        address: addr.clone(),
        capability: "thief-token".into(),
        capability_expires_at: Timestamp::now().plus_millis(60_000),
    };
    let old = evershell_store::Fence { owner: thief.owner.clone(), epoch: thief.epoch - 1 };
    let w = r.app.store.set_pod_network(id, pod, Some(&net), &old).await.unwrap();
    assert_eq!(w, evershell_store::ObservationWrite::Fenced);
    let w = r.app.store.set_pod_network(id, pod, Some(&net), &thief).await.unwrap();
    assert_eq!(w, evershell_store::ObservationWrite::Written);
    let w = r.app.store.set_pod_network(id, pod, None, &thief).await.unwrap();
    assert_eq!(w, evershell_store::ObservationWrite::Written);
    // Once it lets go, the reconciler takes the workspace on again and records the network before it is ready.
    r.app.store.release_workspace(id, &thief).await.unwrap();
    r.app.reconciler.wake(id);
    r.status(id, WorkspaceStatus::Idle).await;
    let (p, recorded) = r.app.store.pod_network(id).await.unwrap().expect("the network was recorded");
    assert_eq!((p, recorded.address.as_str()), (pod, addr.as_str()));
    assert_ne!(recorded.capability, "thief-token");
    r.app.reconciler.shutdown().await;
}
