//! The idle timeout, the reconciler's side. At the end of a pass that leaves a workspace `idle` with nothing else to
//! do, gather what `evershell_core::idle::decide` looks at — the role's `idle_timeout_seconds`, the workspace's open
//! tasks, its last activity (`Store::last_workspace_activity` over `idle::ACTIVITY_EVENTS`) and the time (`Clock`,
//! the seam the tests drive) — and when it says `Stop`, write the stop request an API stop writes (`lifecycle::decide`
//! with reason `idle_timeout`, audit row `workspace_stop_requested` by the control plane as user `system`), guarded
//! so it lands only if no task and no activity arrived since the decision (`Store::update_intent_if_inactive`, under
//! the workspace's row lock, which a task submission takes too). The pass then takes the request on like any other:
//! stop the sandbox, snapshot, release, `stopped` with reason `idle_timeout`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use evershell_core::audit::EventType;
use evershell_core::idle::{ACTIVITY_EVENTS, IdleDecision, IdleFacts, TaskLoad, decide};
use evershell_core::lifecycle::{self, Call, Decision, Facts, StatusReason, WorkspaceStatus};
use evershell_core::model::{Request, WorkspaceRecord};
use evershell_core::{Result, Timestamp};
use tracing::info;

use super::Inner;

/// Where the idle timeout reads the time. The system clock, except in tests that move it.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Timestamp + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(Timestamp::now))
    }

    /// A clock reading `now()`.
    pub fn new(now: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    pub fn now(&self) -> Timestamp {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// What the idle check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing to do now.
    Nothing,
    /// Not idle long enough yet, and the limit falls before the next periodic pass: look again after this.
    LookAgain(Duration),
    /// The stop request was written: plan again (the pass takes it on).
    StopRequested,
}

/// Check `ws` (as the pass just left it: no step planned) against its role's idle timeout.
pub(crate) async fn check(inner: &Inner, ws: &WorkspaceRecord) -> Result<Outcome> {
    if ws.observed.status != WorkspaceStatus::Idle || ws.pending_request().is_some() || ws.archived_at.is_some() {
        return Ok(Outcome::Nothing);
    }
    inner.idle_checks.fetch_add(1, Ordering::Relaxed);
    let Some(role) = inner.store.get_role(ws.org_id, ws.role_id).await? else { return Ok(Outcome::Nothing) };
    let limit = role.idle_timeout_seconds.filter(|&s| s > 0);
    if limit.is_none() {
        return Ok(Outcome::Nothing);
    }
    let open = inner.store.open_tasks(ws.id).await?;
    let tasks = TaskLoad::of(open.iter().map(|t| t.status));
    let last = match tasks {
        // A task runs or waits: no need to find out since when it is quiet.
        TaskLoad::Running | TaskLoad::Queued => ws.updated_at,
        TaskLoad::None => inner.store.last_workspace_activity(ws.id, ACTIVITY_EVENTS).await?.unwrap_or(ws.updated_at),
    };
    let facts = IdleFacts {
        status: ws.observed.status,
        request_pending: ws.pending_request().is_some(),
        limit_seconds: limit,
        tasks,
        last_activity: last,
        now: inner.cfg.clock.now(),
    };
    let decision = decide(facts);
    tracing::debug!(?decision, last_activity = %last, "idle check");
    match decision {
        IdleDecision::Never | IdleDecision::NotIdle | IdleDecision::TaskActive => Ok(Outcome::Nothing),
        IdleDecision::Wait { remaining_ms } => {
            let remaining = Duration::from_millis(remaining_ms.max(1) as u64);
            Ok(if remaining < inner.cfg.interval { Outcome::LookAgain(remaining) } else { Outcome::Nothing })
        }
        IdleDecision::Stop { idle_ms } => request_stop(inner, ws, limit.unwrap_or_default(), last, idle_ms).await,
    }
}

/// Write the stop an API stop writes, with reason `idle_timeout`, unless anything happened since `last`.
async fn request_stop(
    inner: &Inner,
    ws: &WorkspaceRecord,
    limit_seconds: i64,
    last: Timestamp,
    idle_ms: i64,
) -> Result<Outcome> {
    let facts = Facts {
        status: WorkspaceStatus::Idle,
        archived: false,
        has_snapshot: ws.observed.snapshot_id.is_some(),
        has_retained_pod: false,
        role_archived: false,
        provider_archived: false,
    };
    let Decision::Begin { status, desired, reason } =
        lifecycle::decide(Call::Stop { reason: StatusReason::IdleTimeout }, facts)
    else {
        return Ok(Outcome::Nothing);
    };
    let mut next = ws.clone();
    let seq = ws.intent.request.map_or(0, |r| r.seq).max(ws.observed.adopted) + 1;
    next.intent.desired = desired;
    next.intent.request = Some(Request { seq, status, reason });
    next.updated_at = Timestamp::now();
    let audit = super::steps::auto_audit(inner, ws, EventType::WorkspaceStopRequested)
        .await
        .reason(reason.as_str())
        .details(serde_json::json!({
            "from": ws.observed.status,
            "to": status,
            "idle_timeout_seconds": limit_seconds,
            "idle_seconds": idle_ms / 1000,
            "last_activity_at": last,
        }));
    let written = inner
        .store
        .update_intent_if_inactive(&next, ws.intent.generation, ws.observed.generation, last, ACTIVITY_EVENTS, &[audit])
        .await?;
    if !written {
        // A task or other activity arrived meanwhile, or the API wrote first: the next pass decides afresh.
        return Ok(Outcome::Nothing);
    }
    info!(idle_seconds = idle_ms / 1000, limit_seconds, "workspace idle for its role's limit: stopping it");
    metrics::counter!("evershell_idle_stops_total").increment(1);
    inner.notify(ws.id);
    Ok(Outcome::StopRequested)
}
