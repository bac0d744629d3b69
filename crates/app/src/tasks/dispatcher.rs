//! The dispatcher: hands each workspace's queue head to its agent and follows it to its end.
//!
//! One worker per workspace at a time (the `running` set, like the reconciler's). A worker reads the workspace and
//! its open tasks and does one thing: ends the tasks the workspace's state interrupts (`task::next` decides), or
//! delivers the head (`POST /v1/tasks`, bounded retries, then `delivery_failed`), or follows the running head one
//! round (`GET /v1/events` long-poll, each event written as an `activity` audit row with actor `agent`, then
//! `GET /v1/tasks/{id}`: its state moves the task, a 404 ends it `agent_restarted`); then it looks again, until
//! the workspace has no open task or cannot run one yet. Workers are woken on submit, on every row the reconciler
//! writes (its change feed), and by a periodic scan of the workspaces with open tasks; the dispatcher is not part
//! of the reconciler's pass. Every status change is a narrow guarded update (`WHERE id = ? AND status = ?`), so a
//! cancel, an interruption and the agent's report never overwrite one another.
//!
//! Start-up recovery: a task that was handed over on a workspace that no longer runs ends `failed` with reason
//! `control_plane_restart`; one on a running workspace is followed again (its event cursor is recovered from the
//! last agent row written, so events are not recorded twice).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evershell_core::Timestamp;
use evershell_core::agent_wire::{AgentEvent, AgentTaskStatus};
use evershell_core::audit::{Actor, AuditEvent, AuditQuery, Condition, EventType, FilterOp, Order};
use evershell_core::ids::{TaskId, WorkspaceId};
use evershell_core::lifecycle::{Desired, WorkspaceStatus};
use evershell_core::model::{TaskRecord, WorkspaceRecord};
use evershell_core::task::{Interruption, Next, TaskInput, TaskReason, TaskStatus, next};
use evershell_runtime::{AgentClient, AgentError, DeliveryAnswer, PodRuntime};
use evershell_store::{Store, TaskUpdate};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::delivery;
use crate::checkpoint::Checkpointer;

/// Tunables.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Delivery attempts before a task ends `delivery_failed`.
    pub delivery_attempts: u32,
    /// Pause after the first failed attempt; doubled after each.
    pub retry_base: Duration,
    /// How long one event long-poll waits (the worker re-reads the workspace after each).
    pub poll_wait: Duration,
    /// How often every workspace with an open task is looked at.
    pub scan_interval: Duration,
    /// Where uploaded files wait: copied into the pod before delivery, removed once the task leaves `submitted`.
    pub uploads: super::uploads::Staging,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            delivery_attempts: 5,
            retry_base: Duration::from_millis(200),
            poll_wait: Duration::from_secs(2),
            scan_interval: Duration::from_secs(5),
            uploads: Default::default(),
        }
    }
}

/// Most bytes of an agent event's `data` kept in its audit row (beyond: replaced by a note of its size).
const MAX_EVENT_DATA: usize = 2 * 1024 * 1024;
/// Most bytes of the agent's final answer kept on the task.
const MAX_RESULT: usize = 64 * 1024;
/// Longest agent event type kept.
const MAX_EVENT_TYPE: usize = 64;

/// Where the worker is in an agent's event stream.
#[derive(Debug, Clone, Default)]
struct Cursor {
    instance: Option<String>,
    after: u64,
}

struct Inner {
    store: Arc<dyn Store>,
    runtime: Arc<dyn PodRuntime>,
    cfg: DispatcherConfig,
    queue: mpsc::UnboundedSender<WorkspaceId>,
    queue_rx: Mutex<Option<mpsc::UnboundedReceiver<WorkspaceId>>>,
    /// Workspaces with a worker; `true` when woken again meanwhile.
    running: Mutex<HashMap<WorkspaceId, bool>>,
    cursors: Mutex<HashMap<WorkspaceId, Cursor>>,
    /// Cuts a worker's event long-poll short when its workspace is woken (a stop, a cancel, a submit).
    kicks: Mutex<HashMap<WorkspaceId, Arc<tokio::sync::Notify>>>,
    /// Takes a checkpoint after each completed task (`None`: none are taken).
    checkpoints: Option<Checkpointer>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// A handle to the dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl Dispatcher {
    pub fn new(store: Arc<dyn Store>, runtime: Arc<dyn PodRuntime>, cfg: DispatcherConfig) -> Self {
        Self::with_checkpoints(store, runtime, cfg, None)
    }

    /// A dispatcher that has `checkpoints` take a checkpoint after each completed task, before the next one is
    /// delivered (see `checkpoint.rs`).
    pub fn with_checkpoints(
        store: Arc<dyn Store>,
        runtime: Arc<dyn PodRuntime>,
        cfg: DispatcherConfig,
        checkpoints: Option<Checkpointer>,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                store,
                runtime,
                cfg,
                queue,
                queue_rx: Mutex::new(Some(rx)),
                running: Mutex::new(HashMap::new()),
                cursors: Mutex::new(HashMap::new()),
                kicks: Mutex::new(HashMap::new()),
                checkpoints,
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// Look at `id`'s queue soon.
    pub fn wake(&self, id: WorkspaceId) {
        let _ = self.inner.queue.send(id);
    }

    /// Recover what a previous run left, then run until `shutdown`, woken by `wake`, by `changes` (the
    /// reconciler's feed of rows it wrote) and by the periodic scan.
    pub async fn start(&self, mut changes: tokio::sync::broadcast::Receiver<WorkspaceId>) -> anyhow::Result<()> {
        let rx = self.inner.queue_rx.lock().unwrap().take();
        let Some(mut rx) = rx else { anyhow::bail!("the dispatcher is already running") };
        recover(&self.inner).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let inner = self.inner.clone();
        self.inner.tracker.spawn(async move {
            let mut tick = tokio::time::interval(inner.cfg.scan_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = inner.cancel.cancelled() => break,
                    Some(id) = rx.recv() => dispatch(&inner, id),
                    changed = changes.recv() => match changed {
                        Ok(id) => dispatch(&inner, id),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => scan(&inner).await,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            // No reconciler any more: the scan alone wakes workers.
                            changes = tokio::sync::broadcast::channel(1).1;
                        }
                    },
                    _ = tick.tick() => scan(&inner).await,
                }
            }
        });
        Ok(())
    }

    /// Stop taking work and wait for the workers (each stops at its next step).
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

async fn scan(inner: &Arc<Inner>) {
    match inner.store.workspaces_with_open_tasks().await {
        Ok(ids) => ids.into_iter().for_each(|id| dispatch(inner, id)),
        Err(e) => warn!(error = ?e, "listing workspaces with open tasks failed"),
    }
}

async fn recover(inner: &Arc<Inner>) -> evershell_core::Result<()> {
    match inner.cfg.uploads.sweep(inner.store.as_ref()).await {
        Ok(0) => {}
        Ok(n) => info!(count = n, "removed uploaded files no queued task waits for"),
        Err(e) => warn!(error = ?e, "sweeping staged uploads failed"),
    }
    for id in inner.store.workspaces_with_open_tasks().await? {
        let Some(ws) = inner.store.get_workspace_by_id(id).await? else { continue };
        if ws.status().is_running() {
            continue; // followed again by its worker
        }
        for t in inner.store.open_tasks(id).await?.iter().filter(|t| t.status.is_active()) {
            if apply(inner, &ws, t, TaskInput::Interrupted(Interruption::ControlPlaneRestart), None).await? {
                info!(task_id = %t.id, workspace_id = %id, "ended a task the control-plane restart interrupted");
            }
        }
    }
    scan(inner).await;
    Ok(())
}

fn dispatch(inner: &Arc<Inner>, id: WorkspaceId) {
    if inner.cancel.is_cancelled() {
        return;
    }
    {
        let mut running = inner.running.lock().unwrap();
        if let Some(dirty) = running.get_mut(&id) {
            *dirty = true;
            if let Some(k) = inner.kicks.lock().unwrap().get(&id) {
                k.notify_one();
            }
            return;
        }
        running.insert(id, false);
        inner.kicks.lock().unwrap().insert(id, Arc::new(tokio::sync::Notify::new()));
    }
    let inner2 = inner.clone();
    inner.tracker.spawn(
        async move {
            loop {
                if let Err(e) = drive(&inner2, id).await {
                    warn!(error = ?e, "dispatching the workspace's tasks failed; retried by the next scan");
                }
                let mut running = inner2.running.lock().unwrap();
                match running.get_mut(&id) {
                    Some(dirty) if *dirty && !inner2.cancel.is_cancelled() => *dirty = false,
                    _ => {
                        running.remove(&id);
                        inner2.kicks.lock().unwrap().remove(&id);
                        break;
                    }
                }
            }
        }
        .instrument(info_span!("dispatch", workspace_id = %id)),
    );
}

/// What the workspace's state does to its tasks (`None` while its pod runs).
fn interruption_of(ws: &WorkspaceRecord) -> Option<Interruption> {
    match ws.status() {
        WorkspaceStatus::Idle | WorkspaceStatus::Busy => None,
        WorkspaceStatus::Stopping | WorkspaceStatus::Stopped if ws.intent.desired == Desired::Stopped => {
            Some(Interruption::WorkspaceStopped)
        }
        // Stopping on the way to a fresh pod, or provisioning one: the agent that ran the task is gone.
        WorkspaceStatus::Stopping | WorkspaceStatus::Stopped | WorkspaceStatus::Provisioning => {
            Some(Interruption::WorkspaceRestarted)
        }
        WorkspaceStatus::Failed => Some(Interruption::PodLost),
    }
}

/// Work on one workspace until it has no open task or cannot run one now.
async fn drive(inner: &Arc<Inner>, id: WorkspaceId) -> evershell_core::Result<()> {
    loop {
        if inner.cancel.is_cancelled() {
            return Ok(());
        }
        let Some(ws) = inner.store.get_workspace_by_id(id).await? else { return Ok(()) };
        let open = inner.store.open_tasks(id).await?;
        let Some(head) = open.first() else {
            inner.cursors.lock().unwrap().remove(&id);
            return Ok(());
        };
        if let Some(i) = interruption_of(&ws) {
            for t in &open {
                apply(inner, &ws, t, TaskInput::Interrupted(i), None).await?;
            }
            // Queued work that survives waits for the pod (the reconciler's feed wakes this worker).
            return Ok(());
        }
        let Some(pod) = ws.observed.pod_id else { return Ok(()) };
        let agent = inner.runtime.agent(pod);
        // The task's egress identity, before the agent can make its first request (renewed on every round).
        crate::egress::task_capability::hold(inner.store.as_ref(), ws.id, pod, head.id).await?;
        if head.status == TaskStatus::Submitted {
            // The state the next task starts from is checkpointed first (again, if a crash lost it).
            checkpoint(inner, &ws, None).await;
            deliver(inner, &ws, head, &agent).await?;
        } else {
            follow(inner, &ws, head, &agent).await?;
        }
    }
}

/// Sleep `d` unless the dispatcher shuts down first (`false` then).
async fn pause(inner: &Inner, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = inner.cancel.cancelled() => false,
    }
}

async fn deliver(
    inner: &Arc<Inner>,
    ws: &WorkspaceRecord,
    task: &TaskRecord,
    agent: &AgentClient,
) -> evershell_core::Result<()> {
    let role = inner.store.get_role(ws.org_id, ws.role_id).await?;
    let provider = match &role {
        Some(r) => inner.store.get_provider(ws.org_id, r.provider_id).await?,
        None => None,
    };
    let built = match (&role, &provider) {
        (Some(r), Some(p)) => delivery::delivery(task, r, p),
        _ => Err(evershell_core::Error::new(evershell_core::ErrorCode::RoleNotFound, "the role is gone")),
    };
    // The task's files are in the pod before the agent hears of the task.
    let built = match built {
        Ok(d) if !task.options.files.is_empty() => place_uploads(inner, ws, task).await.map(|()| d),
        other => other,
    };
    let d = match built {
        Ok(d) => d,
        Err(e) => {
            warn!(task_id = %task.id, error = ?e, "the task cannot be delivered");
            apply(inner, ws, task, TaskInput::DeliveryFailed(TaskReason::DeliveryRefused), None).await?;
            return Ok(());
        }
    };
    let mut reason = TaskReason::AgentUnreachable;
    let mut delay = inner.cfg.retry_base;
    for attempt in 1..=inner.cfg.delivery_attempts.max(1) {
        match agent.deliver_task(&d).await {
            Ok(DeliveryAnswer::Accepted(status)) => {
                if !apply(inner, ws, task, TaskInput::Delivered, None).await? {
                    // Cancelled (or interrupted) while the delivery was under way: the agent must not run it.
                    let _ = agent.cancel_task(task.id).await;
                    return Ok(());
                }
                debug!(task_id = %task.id, attempt, "task delivered");
                inner.cursors.lock().unwrap().entry(ws.id).or_default();
                let delivered = TaskRecord { status: TaskStatus::Delivered, ..task.clone() };
                report(inner, ws, &delivered, &status).await?;
                return Ok(());
            }
            Ok(DeliveryAnswer::Busy) => reason = TaskReason::DeliveryRefused,
            // An agent without the task routes answers 404: it will never take the task.
            Err(AgentError::Rejected(msg) | AgentError::NotFound(msg)) => {
                warn!(task_id = %task.id, message = %msg, "the agent refused the task");
                apply(inner, ws, task, TaskInput::DeliveryFailed(TaskReason::DeliveryRefused), None).await?;
                return Ok(());
            }
            Err(e) => {
                reason = TaskReason::AgentUnreachable;
                debug!(task_id = %task.id, attempt, error = %e, "delivery failed; retrying");
            }
        }
        if attempt == inner.cfg.delivery_attempts.max(1) || !pause(inner, delay).await {
            break;
        }
        delay *= 2;
        // Give up early when the task was cancelled or the workspace stopped meanwhile.
        let still = inner.store.get_task(ws.org_id, ws.id, task.id).await?;
        let ws_now = inner.store.get_workspace_by_id(ws.id).await?;
        if still.is_none_or(|t| t.status != TaskStatus::Submitted) || ws_now.is_none_or(|w| !w.status().is_running()) {
            return Ok(());
        }
    }
    if inner.cancel.is_cancelled() {
        return Ok(());
    }
    warn!(task_id = %task.id, reason = reason.as_str(), "task delivery failed");
    apply(inner, ws, task, TaskInput::DeliveryFailed(reason), None).await?;
    Ok(())
}

/// Copy `task`'s staged files to `/data/uploads/<task_id>/` in the workspace's pod.
async fn place_uploads(inner: &Arc<Inner>, ws: &WorkspaceRecord, task: &TaskRecord) -> evershell_core::Result<()> {
    let pod = ws.observed.pod_id.ok_or_else(|| evershell_core::Error::internal(anyhow::anyhow!("no pod")))?;
    let files = inner.cfg.uploads.staged(ws.id, task.id, &task.options.files).await?;
    inner
        .runtime
        .place_uploads(pod, task.id, &files)
        .await
        .map_err(|e| evershell_core::Error::internal(anyhow::anyhow!(e)))?;
    debug!(task_id = %task.id, files = files.len(), "uploaded files placed in the pod");
    Ok(())
}

/// Move `task` by what the agent reports of it.
async fn report(
    inner: &Arc<Inner>,
    ws: &WorkspaceRecord,
    task: &TaskRecord,
    status: &AgentTaskStatus,
) -> evershell_core::Result<bool> {
    let reason = TaskReason::from_agent(status.state, status.reason.as_deref());
    apply(inner, ws, task, TaskInput::Agent(status.state, reason), Some(status)).await
}

/// One round of following the running head: record the agent's new events, then read the task's state.
async fn follow(
    inner: &Arc<Inner>,
    ws: &WorkspaceRecord,
    task: &TaskRecord,
    agent: &AgentClient,
) -> evershell_core::Result<()> {
    let cursor = inner.cursors.lock().unwrap().get(&ws.id).cloned();
    let mut cursor = match cursor {
        Some(c) => c,
        None => recovered_cursor(inner, ws).await?,
    };
    let kick = inner.kicks.lock().unwrap().get(&ws.id).cloned().unwrap_or_default();
    let page = tokio::select! {
        p = agent.events(cursor.after, inner.cfg.poll_wait) => Some(p),
        // Woken: look at the workspace again at once (the events are read again next round).
        _ = kick.notified() => return Ok(()),
        _ = inner.cancel.cancelled() => None,
    };
    let Some(page) = page else { return Ok(()) };
    let mut reachable = true;
    match page {
        Ok(page) => {
            if cursor.instance.as_deref().is_some_and(|i| i != page.agent_instance) {
                // A new agent process: its sequence numbers start again, and the task it ran is gone (the status
                // read below says so with a 404).
                info!(agent_instance = %page.agent_instance, "the agent restarted");
                cursor = Cursor { instance: Some(page.agent_instance.clone()), after: 0 };
            } else {
                let mut rows: Vec<AuditEvent> = page
                    .events
                    .iter()
                    .filter(|e| e.seq > cursor.after)
                    .map(|e| event_row(ws, task.id, &page.agent_instance, e))
                    .collect();
                if page.dropped > 0 {
                    let mut r = agent_row(ws, EventType::AgentEvent);
                    r.details = Some(serde_json::json!({
                        "agent_event_type": "events_dropped",
                        "dropped": page.dropped,
                        "agent_instance": page.agent_instance,
                    }));
                    rows.push(r);
                }
                if !rows.is_empty() {
                    inner.store.append_audit(&rows).await?;
                }
                cursor =
                    Cursor { instance: Some(page.agent_instance.clone()), after: page.next_after.max(cursor.after) };
            }
            inner.cursors.lock().unwrap().insert(ws.id, cursor);
        }
        Err(e) => {
            debug!(error = %e, "reading the agent's events failed");
            reachable = false;
        }
    }
    match agent.task_status(task.id).await {
        Ok(Some(status)) => {
            if status.state.is_terminal() {
                // The task's last events (`task_completed`, …) may have been emitted after the page above: record
                // them before the task ends, since the next round follows another task.
                drain_events(inner, ws, task, agent).await?;
            }
            report(inner, ws, task, &status).await?;
        }
        Ok(None) => {
            apply(inner, ws, task, TaskInput::Interrupted(Interruption::AgentRestarted), None).await?;
        }
        Err(e) => {
            debug!(error = %e, "reading the task's state from the agent failed");
            reachable = false;
        }
    }
    if !reachable {
        // The reconciler notices a dead pod (and the worker then ends the task); meanwhile do not spin.
        pause(inner, inner.cfg.retry_base * 4).await;
    }
    Ok(())
}

/// Record the events already waiting at the agent (no long-poll), from the same agent process only.
async fn drain_events(
    inner: &Arc<Inner>,
    ws: &WorkspaceRecord,
    task: &TaskRecord,
    agent: &AgentClient,
) -> evershell_core::Result<()> {
    let Some(cursor) = inner.cursors.lock().unwrap().get(&ws.id).cloned() else { return Ok(()) };
    let Ok(page) = agent.events(cursor.after, Duration::ZERO).await else { return Ok(()) };
    if cursor.instance.as_deref() != Some(page.agent_instance.as_str()) {
        return Ok(());
    }
    let rows: Vec<AuditEvent> = page
        .events
        .iter()
        .filter(|e| e.seq > cursor.after)
        .map(|e| event_row(ws, task.id, &page.agent_instance, e))
        .collect();
    if !rows.is_empty() {
        inner.store.append_audit(&rows).await?;
    }
    let after = page.next_after.max(cursor.after);
    inner.cursors.lock().unwrap().insert(ws.id, Cursor { instance: Some(page.agent_instance), after });
    Ok(())
}

/// Where the last agent row recorded for `ws` left the event stream (after a control-plane restart).
async fn recovered_cursor(inner: &Arc<Inner>, ws: &WorkspaceRecord) -> evershell_core::Result<Cursor> {
    let q = AuditQuery {
        org_id: ws.org_id,
        conditions: vec![Condition { column: "actor", op: FilterOp::In(vec![Actor::Agent.as_str().into()]) }],
        workspace_id: Some(ws.id),
        user_id: None,
        from: None,
        to: None,
        order: Order::Desc,
        limit: 1,
        after: None,
    };
    let last = inner.store.query_audit(&q).await?;
    let d = last.first().and_then(|e| e.details.as_ref());
    let instance = d.and_then(|d| d.get("agent_instance")).and_then(|v| v.as_str()).map(str::to_string);
    let after = d.and_then(|d| d.get("agent_seq")).and_then(|v| v.as_u64()).unwrap_or(0);
    Ok(match instance {
        Some(i) => Cursor { instance: Some(i), after },
        None => Cursor::default(),
    })
}

fn agent_row(ws: &WorkspaceRecord, t: EventType) -> AuditEvent {
    let mut r = AuditEvent::system(ws.org_id, t).workspace(ws.id);
    r.actor = Actor::Agent;
    r
}

/// The event types an agent may name; anything else is recorded as `agent_event`.
const AGENT_TYPES: &[EventType] = &[
    EventType::SessionStarted,
    EventType::SessionResumed,
    EventType::TaskStarted,
    EventType::IterationCompleted,
    EventType::ToolCallCompleted,
    EventType::CompactionStarted,
    EventType::CompactionCompleted,
    EventType::TaskCompleted,
];

fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The audit row of one agent event (hostile input: type mapped into the closed set, sizes bounded, the task id
/// kept only when it is the task being followed).
fn event_row(ws: &WorkspaceRecord, current: TaskId, instance: &str, e: &AgentEvent) -> AuditEvent {
    let t = EventType::parse(&e.event_type).filter(|t| AGENT_TYPES.contains(t)).unwrap_or(EventType::AgentEvent);
    let mut r = agent_row(ws, t);
    let ours = e.task_id == Some(current);
    if ours {
        r.task_id = Some(current);
        r = r.target("task", current);
    }
    let size = serde_json::to_vec(&e.data).map(|v| v.len()).unwrap_or(usize::MAX);
    let data =
        if size <= MAX_EVENT_DATA { e.data.clone() } else { serde_json::json!({ "omitted": true, "bytes": size }) };
    let mut details = serde_json::json!({
        "agent_event_type": cut(&e.event_type, MAX_EVENT_TYPE),
        "agent_seq": e.seq,
        "agent_instance": cut(instance, MAX_EVENT_TYPE),
        "at": e.at,
        "data": data,
    });
    if let (false, Some(other)) = (ours, e.task_id) {
        details["agent_task_id"] = serde_json::json!(other);
    }
    r.details = Some(details);
    r
}

/// Apply `input` to `task` through the pure state machine and write the move (guarded by the status it was read
/// in) with its audit row. `true` when the task moved.
async fn apply(
    inner: &Arc<Inner>,
    ws: &WorkspaceRecord,
    task: &TaskRecord,
    input: TaskInput,
    agent: Option<&AgentTaskStatus>,
) -> evershell_core::Result<bool> {
    let Next::Move { status, reason } = next(task.status, input) else { return Ok(false) };
    let now = Timestamp::now();
    let update = TaskUpdate {
        status,
        reason,
        delivered_at: match input {
            TaskInput::Delivered => Some(now),
            TaskInput::Agent(..) if task.status == TaskStatus::Submitted => Some(now),
            _ => None,
        },
        started_at: matches!(status, TaskStatus::Running | TaskStatus::Compacting).then_some(now),
        completed_at: status.is_terminal().then_some(now),
        result: agent
            .filter(|_| status == TaskStatus::Completed)
            .and_then(|a| a.result.as_deref())
            .map(|r| cut(r, MAX_RESULT)),
    };
    let event = match input {
        TaskInput::Delivered => Some(EventType::TaskDelivered),
        TaskInput::DeliveryFailed(_) => Some(EventType::TaskDeliveryFailed),
        TaskInput::Interrupted(_) if status == TaskStatus::DeliveryFailed => Some(EventType::TaskDeliveryFailed),
        TaskInput::Interrupted(_) => Some(EventType::TaskInterrupted),
        // The agent's own events tell of its moves.
        TaskInput::Agent(..) | TaskInput::CancelRequested => None,
    };
    let audit: Vec<AuditEvent> = event
        .map(|t| {
            let mut r = AuditEvent::system(ws.org_id, t).workspace(ws.id).target("task", task.id);
            r.task_id = Some(task.id);
            r.reason = reason.map(|x| x.as_str().to_string());
            r.details = Some(serde_json::json!({ "from": task.status, "to": status }));
            r
        })
        .into_iter()
        .collect();
    let moved = inner.store.update_task(task.id, task.status, &update, &audit).await?;
    if moved && task.status == TaskStatus::Submitted && !task.options.files.is_empty() {
        // In the pod (delivered) or never needed again (ended before delivery).
        inner.cfg.uploads.discard(ws.id, task.id).await;
    }
    if moved {
        info!(task_id = %task.id, from = task.status.as_str(), to = status.as_str(),
            reason = reason.map(|r| r.as_str()), "task moved");
        metrics::counter!("evershell_task_transitions_total", "to" => status.as_str()).increment(1);
        if status == TaskStatus::Completed {
            checkpoint(inner, ws, Some(task.id)).await;
        }
    }
    if moved
        && status.is_terminal()
        && let Err(e) = crate::egress::task_capability::release(inner.store.as_ref(), task.id).await
    {
        // The proxy's lookup joins the task's status: an ended task's token names nobody even if it stays.
        warn!(task_id = %task.id, error = ?e, "revoking the task's egress capability failed");
    }
    Ok(moved)
}

/// Take the workspace's checkpoint for its completed-task count if it is missing. A failure is the checkpoint's,
/// never the task's: logged here (and recorded by the checkpointer when the capture itself failed).
async fn checkpoint(inner: &Arc<Inner>, ws: &WorkspaceRecord, task: Option<TaskId>) {
    if let Some(cp) = &inner.checkpoints
        && let Err(e) = cp.ensure(ws, task).await
    {
        warn!(error = ?e, "checkpointing the workspace failed; retried before its next task");
    }
}

#[cfg(test)]
mod tests {
    use evershell_core::ids::{OrgId, RoleId};
    use evershell_core::lifecycle::StatusReason;

    use super::*;

    fn ws(status: WorkspaceStatus, desired: Desired) -> WorkspaceRecord {
        WorkspaceRecord {
            id: WorkspaceId::new(),
            org_id: OrgId::new(),
            role_id: RoleId::new(),
            environment: None,
            created_by_user_id: None,
            intent: evershell_core::model::Intent { desired, request: None, generation: 1 },
            observed: evershell_core::model::Observation {
                status,
                status_reason: Some(StatusReason::Created),
                last_error: None,
                pod_id: None,
                pod_pack_ids: None,
                snapshot_id: None,
                last_snapshot_error: None,
                adopted: 0,
                generation: 1,
            },
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            archived_at: None,
        }
    }

    #[test]
    fn interruption_over_every_workspace_state() {
        use Interruption as I;
        use WorkspaceStatus as S;
        for &s in S::ALL {
            for d in [Desired::Running, Desired::Stopped] {
                let want = match (s, d) {
                    (S::Idle | S::Busy, _) => None,
                    (S::Stopping | S::Stopped, Desired::Stopped) => Some(I::WorkspaceStopped),
                    (S::Stopping | S::Stopped | S::Provisioning, _) => Some(I::WorkspaceRestarted),
                    (S::Failed, _) => Some(I::PodLost),
                };
                assert_eq!(interruption_of(&ws(s, d)), want, "{s:?} {d:?}");
            }
        }
    }

    #[test]
    fn agent_events_are_bounded_and_typed_within_the_closed_set() {
        let w = ws(WorkspaceStatus::Idle, Desired::Running);
        let current = TaskId::new();
        let ev = |t: &str, task: Option<TaskId>, data: serde_json::Value| AgentEvent {
            seq: 7,
            task_id: task,
            event_type: t.into(),
            at: Timestamp::from_millis(5),
            data,
        };
        let r = event_row(&w, current, "inst", &ev("iteration_completed", Some(current), serde_json::json!({"n": 1})));
        assert_eq!(r.event_type, EventType::IterationCompleted);
        assert_eq!(r.actor, Actor::Agent);
        assert_eq!(r.category, evershell_core::audit::Category::Activity);
        assert_eq!(r.task_id, Some(current));
        assert_eq!(r.workspace_id, Some(w.id));
        assert_eq!(r.details.as_ref().unwrap()["agent_seq"], 7);
        // An agent cannot write control-plane event types, nor claim another task.
        let other = TaskId::new();
        let r = event_row(&w, current, "inst", &ev("workspace_stopped", Some(other), serde_json::json!({})));
        assert_eq!(r.event_type, EventType::AgentEvent);
        assert_eq!(r.task_id, None);
        assert_eq!(r.details.as_ref().unwrap()["agent_task_id"], serde_json::json!(other));
        assert_eq!(r.details.as_ref().unwrap()["agent_event_type"], "workspace_stopped");
        let long = "x".repeat(10_000);
        let big = serde_json::json!({ "out": "y".repeat(MAX_EVENT_DATA + 1) });
        let r = event_row(&w, current, &long, &ev(&long, None, big));
        let d = r.details.unwrap();
        assert_eq!(d["agent_event_type"].as_str().unwrap().len(), MAX_EVENT_TYPE);
        assert_eq!(d["data"]["omitted"], true);
    }

    #[test]
    fn cut_keeps_utf8_boundaries() {
        assert_eq!(cut("ééé", 3), "é");
        assert_eq!(cut("abc", 10), "abc");
    }
}
