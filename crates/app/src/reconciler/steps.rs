//! Performing the planned steps for one workspace: take on a pending request, observe the pod, `plan`, act, record
//! the observed outcome (under the observation generation and the lease's fence), repeat until settled (then check
//! the idle timeout, `idle.rs`). Failures are retried with backoff; a step that keeps failing moves the workspace to
//! `failed` with a reason, never leaving it stuck in a transitional state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use evershell_core::audit::{AuditEvent, EventType};
use evershell_core::ids::{SnapshotId, WorkspaceId};
use evershell_core::lifecycle::{Desired, PodObservation, StatusReason, Step, WorkspaceStatus, plan};
use evershell_core::model::{SnapshotRecord, SnapshotState, WorkspaceRecord};
use evershell_core::{Result, Timestamp};
use evershell_runtime::{PodError, PodSpec};
use evershell_snapshot::SnapshotKeys;
use evershell_store::ObservationWrite;
use tracing::{info, warn};

use super::Inner;
use crate::egress::pod_network;

/// What a step did.
enum Flow {
    /// Plan again.
    Again,
    /// The step failed in a way worth retrying later.
    Retry(anyhow::Error),
}

/// Memory of one reconcile pass (what this pass did, for the reason it records).
#[derive(Default)]
struct Pass {
    /// `Some(snapshot)` once this pass prepared the pod's files (restored from `snapshot`, or empty).
    prepared: Option<Option<SnapshotId>>,
    /// When this pass started the sandbox.
    started_at: Option<Instant>,
}

/// Reconcile `id` until its plan is `Nothing`. Returns a delay when it should be tried again later.
pub(crate) async fn reconcile(inner: &Arc<Inner>, id: WorkspaceId) -> Option<Duration> {
    let mut pass = Pass::default();
    // Only what this pass writes may stand in for a read: drop anything an earlier pass left.
    inner.states.take_last(id);
    let lost = match inner.states.lease(id) {
        Some(lease) => lease.lost,
        None => return None,
    };
    for _ in 0..64 {
        if lost.is_cancelled() {
            return None;
        }
        let just_written = inner.states.take_last(id);
        let ws = match just_written {
            Some(ws) => ws,
            None => match inner.store.get_workspace_by_id(id).await {
                Ok(Some(ws)) => ws,
                Ok(None) => return None,
                Err(e) => return Some(backoff(inner, id, &anyhow::anyhow!("{e:?}"))),
            },
        };
        if let Some(request) = ws.pending_request() {
            // Take the request on: the observed status becomes the one asked for (a resume clears the last error).
            let mut next = ws.clone();
            next.observed.status = request.status;
            next.observed.status_reason = Some(request.reason);
            next.observed.adopted = request.seq;
            if request.status == WorkspaceStatus::Provisioning {
                next.observed.last_error = None;
            }
            match write(inner, &ws, next, &[]).await {
                Ok(_) => continue,
                Err(e) => return Some(backoff(inner, id, &anyhow::anyhow!("{e:?}"))),
            }
        }
        let obs = match ws.observed.pod_id {
            None => PodObservation::Unallocated,
            Some(pod) => match inner.runtime.observe(pod).await {
                Ok(o) => o,
                Err(e) => return Some(backoff(inner, id, &anyhow::anyhow!(e))),
            },
        };
        let step = plan(ws.observed.status, ws.intent.desired, obs);
        if step == Step::Nothing {
            inner.states.reset_attempts(id);
            if matches!(ws.observed.status, WorkspaceStatus::Idle | WorkspaceStatus::Busy)
                && let Some(pod) = ws.observed.pod_id
                && let Ok(fence) = lease_fence(inner, &ws)
            {
                match pod_network::renew(inner.store.as_ref(), inner.runtime.as_ref(), ws.id, pod, &fence).await {
                    Ok(w) => {
                        let _ = unless_fenced(inner, &ws, w);
                    }
                    Err(e) => warn!(error = ?e, "renewing the pod's capability token failed"),
                }
            }
            return match super::idle::check(inner, &ws).await {
                Ok(super::idle::Outcome::StopRequested) => continue,
                Ok(super::idle::Outcome::LookAgain(after)) => Some(after),
                Ok(super::idle::Outcome::Nothing) => None,
                Err(e) => {
                    warn!(error = ?e, "checking the idle timeout failed; the next pass tries again");
                    None
                }
            };
        }
        let started = Instant::now();
        let flow = perform(inner, &ws, obs, step, &mut pass).await;
        let took = started.elapsed();
        metrics::histogram!("evershell_reconcile_step_seconds", "step" => format!("{step:?}"))
            .record(took.as_secs_f64());
        tracing::debug!(?step, took_ms = took.as_secs_f64() * 1000.0, "reconcile step");
        if lost.is_cancelled() {
            return None;
        }
        match flow {
            Ok(Flow::Again) => {}
            Ok(Flow::Retry(e)) => return give_up_or_retry(inner, &ws, step, e).await,
            Err(e) => return give_up_or_retry(inner, &ws, step, anyhow::anyhow!("{e:?}")).await,
        }
    }
    warn!("reconcile pass did not settle after 64 steps; trying again shortly");
    Some(Duration::from_secs(1))
}

fn backoff(inner: &Inner, id: WorkspaceId, e: &anyhow::Error) -> Duration {
    let (n, delay) = inner.states.failed(id);
    warn!(error = %format!("{e:#}"), attempt = n, "reconcile step failed; will retry");
    delay
}

/// Retry a failing step with backoff; after `max_attempts` move the workspace to `failed` so it is never stuck.
async fn give_up_or_retry(inner: &Arc<Inner>, ws: &WorkspaceRecord, step: Step, e: anyhow::Error) -> Option<Duration> {
    let delay = backoff(inner, ws.id, &e);
    let n = inner.states.attempts(ws.id);
    if n < inner.cfg.max_attempts
        || !matches!(ws.observed.status, WorkspaceStatus::Provisioning | WorkspaceStatus::Stopping)
    {
        return Some(delay);
    }
    let reason = match ws.observed.status {
        WorkspaceStatus::Stopping => StatusReason::SnapshotFailed,
        _ => StatusReason::PodStartFailed,
    };
    let msg = format!("{step:?} failed {n} times: {e:#}");
    match fail(inner, ws, reason, msg).await {
        Ok(_) => {
            inner.states.reset_attempts(ws.id);
            Some(Duration::from_millis(100)) // plan once more (e.g. release a partial pod)
        }
        Err(_) => Some(delay),
    }
}

/// An audit row for an automatic transition of `ws`.
pub(super) async fn auto_audit(inner: &Inner, ws: &WorkspaceRecord, t: EventType) -> AuditEvent {
    let mut e = AuditEvent::system(ws.org_id, t).workspace(ws.id).target("workspace", ws.id);
    if let Some((role, provider)) = names(inner, ws).await {
        e.agent_role = Some(role);
        e.agent_provider = provider;
    }
    e
}

/// How long a role's (and its provider's) names are reused for audit rows: one transition writes several rows
/// within milliseconds; a role re-pointed at another provider shows in rows written after this.
const NAMES_TTL: Duration = Duration::from_secs(2);

/// The workspace's role name and its provider's name.
async fn names(inner: &Inner, ws: &WorkspaceRecord) -> Option<(String, Option<String>)> {
    if let Some((at, names)) = inner.names.lock().unwrap().get(&ws.role_id)
        && at.elapsed() < NAMES_TTL
    {
        return Some(names.clone());
    }
    let role = inner.store.get_role(ws.org_id, ws.role_id).await.ok()??;
    let provider = inner.store.get_provider(ws.org_id, role.provider_id).await.ok().flatten().map(|p| p.name);
    let names = (role.name, provider);
    let mut cache = inner.names.lock().unwrap();
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.insert(ws.role_id, (Instant::now(), names.clone()));
    Some(names)
}

/// Record `next`'s observation over `ws` under the observation generation and this pass's fence; `true` when it
/// landed. A fenced-off write (another holder took the lease) fires the pass's `lost` signal and is an error: the
/// pass stops at once.
async fn write(inner: &Inner, ws: &WorkspaceRecord, mut next: WorkspaceRecord, audit: &[AuditEvent]) -> Result<bool> {
    let Some(lease) = inner.states.lease(ws.id) else {
        return Err(lost_lease());
    };
    next.updated_at = Timestamp::now();
    match inner.store.record_observation(&next, ws.observed.generation, &lease.fence, audit).await? {
        ObservationWrite::Written => {
            inner.notify(ws.id);
            // The next plan starts from what was just written instead of reading it back. A request the API wrote
            // meanwhile is seen at the next pass (its wake-up marked this workspace to run again).
            next.observed.generation = ws.observed.generation + 1;
            inner.states.set_last(ws.id, next);
            Ok(true)
        }
        ObservationWrite::Stale => Ok(false),
        ObservationWrite::Fenced => {
            lease.lost.cancel();
            Err(lost_lease())
        }
    }
}

/// The fence of the lease this pass holds on `ws` (an error when it holds none: the pass must stop).
fn lease_fence(inner: &Inner, ws: &WorkspaceRecord) -> Result<evershell_store::Fence> {
    inner.states.lease(ws.id).map(|l| l.fence).ok_or_else(lost_lease)
}

/// A fenced-off narrow write (the pod's network) ends the pass as a fenced observation write does.
fn unless_fenced(inner: &Inner, ws: &WorkspaceRecord, w: ObservationWrite) -> Result<()> {
    if w != ObservationWrite::Fenced {
        return Ok(());
    }
    if let Some(lease) = inner.states.lease(ws.id) {
        lease.lost.cancel();
    }
    Err(lost_lease())
}

fn lost_lease() -> evershell_core::Error {
    evershell_core::Error::new(evershell_core::ErrorCode::Unavailable, "the workspace's lease was lost")
}

/// Move `ws` to `failed` with a reason and an explanation.
async fn fail(inner: &Inner, ws: &WorkspaceRecord, reason: StatusReason, error: String) -> Result<bool> {
    let mut next = ws.clone();
    next.observed.status = WorkspaceStatus::Failed;
    next.observed.status_reason = Some(reason);
    next.observed.last_error = Some(error.clone());
    let audit = auto_audit(inner, ws, EventType::WorkspaceFailed)
        .await
        .reason(reason.as_str())
        .details(serde_json::json!({ "from": ws.observed.status, "error": error, "pod_id": ws.observed.pod_id }));
    info!(reason = reason.as_str(), "workspace failed");
    write(inner, ws, next, &[audit]).await
}

fn spec(ws: &WorkspaceRecord) -> PodSpec {
    PodSpec {
        pod_id: ws.observed.pod_id.expect("planned steps that need a pod have one"),
        org_id: ws.org_id,
        workspace_id: ws.id,
        limits: Default::default(),
    }
}

/// A role's overrides of the pods' resource limits.
fn role_limits(r: &evershell_core::model::AgentRole) -> evershell_runtime::PodLimits {
    let pos = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).filter(|&v| v > 0);
    evershell_runtime::PodLimits {
        memory_bytes: pos(r.memory_limit_bytes),
        pids: pos(r.pids_limit),
        cpu_millis: pos(r.cpu_limit_millis),
    }
}

async fn perform(
    inner: &Arc<Inner>,
    ws: &WorkspaceRecord,
    obs: PodObservation,
    step: Step,
    pass: &mut Pass,
) -> Result<Flow> {
    let rt = &inner.runtime;
    match step {
        Step::Nothing => Ok(Flow::Again),
        Step::AllocatePod => {
            let mut next = ws.clone();
            next.observed.pod_id = Some(inner.runtime.reserve_pod());
            next.observed.pod_pack_ids = inner.store.get_role(ws.org_id, ws.role_id).await?.map(|r| r.pack_ids);
            write(inner, ws, next, &[]).await?;
            Ok(Flow::Again)
        }
        Step::PreparePod => {
            let snap = match ws.observed.snapshot_id {
                Some(id) => inner.store.get_snapshot(id).await?,
                None => None,
            };
            if let (Some(id), None) = (ws.observed.snapshot_id, &snap) {
                let msg = format!("snapshot {id} is recorded on the workspace but its row is missing");
                fail(inner, ws, StatusReason::RestoreFailed, msg).await?;
                return Ok(Flow::Again);
            }
            let keys = snap.as_ref().map(|s| SnapshotKeys::from_strings(&s.archive_key, &s.manifest_key));
            // The role's resource limits over the runtime's defaults (a pod taken from the spares gets them before
            // its agent is released).
            let mut pod_spec = spec(ws);
            if let Some(role) = inner.store.get_role(ws.org_id, ws.role_id).await? {
                pod_spec.limits = role_limits(&role);
            }
            match rt.prepare(&pod_spec, keys.as_ref()).await {
                Ok(_) => {
                    pass.prepared = Some(ws.observed.snapshot_id);
                    Ok(Flow::Again)
                }
                Err(PodError::Snapshot(e)) => {
                    // Never an empty idle: the resume fails, the snapshot stays for inspection.
                    let mut msg = format!(
                        "restoring snapshot {}: {e}",
                        ws.observed.snapshot_id.map(|s| s.to_string()).unwrap_or_default()
                    );
                    msg.push_str(" (the snapshot is kept for inspection)");
                    let audit = auto_audit(inner, ws, EventType::SnapshotFailed)
                        .await
                        .reason("restore_failed")
                        .details(serde_json::json!({ "snapshot_id": ws.observed.snapshot_id, "error": e.to_string() }));
                    inner.store.append_audit(&[audit]).await?;
                    fail(inner, ws, StatusReason::RestoreFailed, msg).await?;
                    Ok(Flow::Again)
                }
                Err(e) => Ok(Flow::Retry(e.into())),
            }
        }
        Step::DiscardPartialPod => {
            rt.remove(spec(ws).pod_id).await.map_err(pod_err)?;
            Ok(Flow::Again)
        }
        Step::ReleasePod => {
            rt.remove(spec(ws).pod_id).await.map_err(pod_err)?;
            let mut next = ws.clone();
            next.observed.pod_id = None;
            next.observed.pod_pack_ids = None;
            write(inner, ws, next, &[]).await?;
            Ok(Flow::Again)
        }
        Step::StartSandbox => match rt.start(&spec(ws)).await {
            Ok(()) => {
                pass.started_at = Some(Instant::now());
                Ok(Flow::Again)
            }
            Err(PodError::Start(msg)) => {
                fail(inner, ws, StatusReason::PodStartFailed, format!("the sandbox could not start: {msg}")).await?;
                Ok(Flow::Again)
            }
            Err(e) => Ok(Flow::Retry(e.into())),
        },
        Step::AwaitAgent => {
            let began = *pass.started_at.get_or_insert_with(Instant::now);
            let pod = spec(ws).pod_id;
            let mut pause = Duration::from_millis(2);
            loop {
                match rt.observe(pod).await.map_err(pod_err)? {
                    PodObservation::Unhealthy => {}
                    _ => return Ok(Flow::Again),
                }
                if began.elapsed() >= inner.cfg.pod_start_timeout {
                    let diag = rt.diagnostics(pod).await.unwrap_or_default();
                    rt.stop(pod).await.map_err(pod_err)?;
                    let msg = format!(
                        "the agent did not answer within {:?} of the sandbox starting{}{diag}",
                        inner.cfg.pod_start_timeout,
                        if diag.is_empty() { "" } else { ": " }
                    );
                    fail(inner, ws, StatusReason::PodStartFailed, msg).await?;
                    return Ok(Flow::Again);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
        Step::MarkReady => {
            let reason = match pass.prepared {
                Some(Some(_)) => StatusReason::Restored,
                Some(None) => StatusReason::Ready,
                None if pass.started_at.is_some() => StatusReason::Reattached,
                None if ws.observed.snapshot_id.is_some() => StatusReason::Restored,
                None => StatusReason::Ready,
            };
            let mut next = ws.clone();
            next.observed.status = WorkspaceStatus::Idle;
            next.observed.status_reason = Some(reason);
            next.observed.last_error = None;
            let mut audit = vec![
                auto_audit(inner, ws, EventType::WorkspaceReady)
                    .await
                    .reason(reason.as_str())
                    .details(serde_json::json!({ "pod_id": ws.observed.pod_id })),
            ];
            if reason == StatusReason::Restored && pass.prepared.is_some() {
                audit.push(auto_audit(inner, ws, EventType::SnapshotRestored).await.details(
                    serde_json::json!({ "snapshot_id": ws.observed.snapshot_id, "pod_id": ws.observed.pod_id }),
                ));
            }
            // The proxy knows the pod (address and capability token) before anyone sees it ready.
            let fence = lease_fence(inner, ws)?;
            let w = pod_network::record(inner.store.as_ref(), rt.as_ref(), ws.id, spec(ws).pod_id, &fence).await?;
            unless_fenced(inner, ws, w)?;
            write(inner, ws, next, &audit).await?;
            Ok(Flow::Again)
        }
        Step::StopSandbox => {
            // A checkpoint capture in flight finishes first (it needs the sandbox running and frozen).
            let _checkpoint = crate::checkpoint::hold(ws.id).await;
            // From here on the pod's connections are denied.
            let fence = lease_fence(inner, ws)?;
            unless_fenced(inner, ws, pod_network::clear(inner.store.as_ref(), ws.id, spec(ws).pod_id, &fence).await?)?;
            rt.stop(spec(ws).pod_id).await.map_err(pod_err)?;
            Ok(Flow::Again)
        }
        Step::SnapshotAndRelease => {
            let _checkpoint = crate::checkpoint::hold(ws.id).await;
            snapshot_and_release(inner, ws).await
        }
        Step::FinishStopWithoutSnapshot => {
            if obs == PodObservation::Partial {
                rt.remove(spec(ws).pod_id).await.map_err(pod_err)?;
            }
            let kept =
                ws.observed.snapshot_id.map(|s| format!("; the previous snapshot {s} is kept")).unwrap_or_default();
            let msg = format!(
                "the pod no longer existed when the workspace was stopped, so its files could not be saved{kept}"
            );
            let mut next = release(ws);
            next.observed.last_snapshot_error = Some(msg.clone());
            let mut audit = vec![
                auto_audit(inner, ws, EventType::SnapshotFailed)
                    .await
                    .reason("pod_vanished")
                    .details(serde_json::json!({ "error": msg })),
            ];
            audit.push(finish_stop(inner, ws, &mut next).await);
            write(inner, ws, next, &audit).await?;
            Ok(Flow::Again)
        }
        Step::FailExited => {
            let diag = rt.diagnostics(spec(ws).pod_id).await.unwrap_or_default();
            let msg = format!(
                "the sandbox exited unexpectedly{}{diag}; its files are kept: resume to restart it on them",
                if diag.is_empty() { "" } else { ": " }
            );
            fail(inner, ws, StatusReason::PodExited, msg).await?;
            Ok(Flow::Again)
        }
        Step::FailVanished => {
            if obs == PodObservation::Partial {
                rt.remove(spec(ws).pod_id).await.map_err(pod_err)?;
            }
            let mut next = release(ws);
            next.observed.status = WorkspaceStatus::Failed;
            next.observed.status_reason = Some(StatusReason::PodVanished);
            let msg = match ws.observed.snapshot_id {
                Some(s) => format!("the pod's files disappeared; resume restores the last snapshot ({s})"),
                None => "the pod's files disappeared and the workspace has no snapshot".to_string(),
            };
            next.observed.last_error = Some(msg.clone());
            let audit = auto_audit(inner, ws, EventType::WorkspaceFailed)
                .await
                .reason("pod_vanished")
                .details(serde_json::json!({ "from": ws.observed.status, "error": msg }));
            write(inner, ws, next, &[audit]).await?;
            Ok(Flow::Again)
        }
    }
}

fn pod_err(e: PodError) -> evershell_core::Error {
    evershell_core::Error::internal(anyhow::anyhow!(e))
}

/// `ws` without its pod.
fn release(ws: &WorkspaceRecord) -> WorkspaceRecord {
    let mut next = ws.clone();
    next.observed.pod_id = None;
    next.observed.pod_pack_ids = None;
    next
}

/// Finish a stop: `stopped`, or back to `provisioning` for a restart. Returns the audit row.
async fn finish_stop(inner: &Inner, ws: &WorkspaceRecord, next: &mut WorkspaceRecord) -> AuditEvent {
    if ws.observed.status == WorkspaceStatus::Stopping && ws.intent.desired == Desired::Running {
        next.observed.status = WorkspaceStatus::Provisioning;
        next.observed.status_reason = Some(StatusReason::RestartRequested);
        auto_audit(inner, ws, EventType::WorkspaceRestarting)
            .await
            .details(serde_json::json!({ "snapshot_id": next.observed.snapshot_id }))
    } else {
        next.observed.status = WorkspaceStatus::Stopped;
        auto_audit(inner, ws, EventType::WorkspaceStopped)
            .await
            .reason(ws.observed.status_reason.map(|r| r.as_str()).unwrap_or("stop_requested"))
            .details(serde_json::json!({ "snapshot_id": next.observed.snapshot_id }))
    }
}

/// Save the stopped pod's files (unless the latest snapshot already holds them), delete older snapshots, remove the
/// pod, and record the stop. A snapshot counts only once written, read back and verified; the previous one is
/// deleted only after that.
async fn snapshot_and_release(inner: &Arc<Inner>, ws: &WorkspaceRecord) -> Result<Flow> {
    let pod = spec(ws).pod_id;
    let current = match ws.observed.snapshot_id {
        Some(id) => inner.store.get_snapshot(id).await?,
        None => None,
    };
    let mut ws = ws.clone();
    let already = current.as_ref().is_some_and(|s| s.pod_id == Some(pod) && s.state == SnapshotState::Verified);
    if !already {
        // Leftovers of an interrupted capture of this workspace (we hold its lease, so nobody else writes them).
        for s in inner.store.list_snapshots(ws.id).await? {
            if s.state == SnapshotState::Pending {
                discard_snapshot(inner, &s, &[]).await?;
            }
        }
        let snap_id = SnapshotId::new();
        let keys = SnapshotKeys::new(ws.org_id, ws.id, snap_id);
        let mut rec = SnapshotRecord {
            id: snap_id,
            org_id: ws.org_id,
            workspace_id: ws.id,
            pod_id: Some(pod),
            state: SnapshotState::Pending,
            archive_key: keys.archive.to_string(),
            manifest_key: keys.manifest.to_string(),
            sha256: None,
            size_bytes: None,
            file_count: None,
            created_at: Timestamp::now(),
        };
        inner.store.insert_snapshot(&rec).await?;
        let manifest = match inner.runtime.capture(pod, &keys, (ws.org_id, ws.id, snap_id)).await {
            Ok(m) => m,
            Err(PodError::Snapshot(
                e @ (evershell_snapshot::SnapshotError::Unsafe(_) | evershell_snapshot::SnapshotError::TooLarge { .. }),
            )) => {
                // The files themselves cannot be snapshotted (a link a restore would refuse, more content than the
                // workspace may hold): retrying cannot help.
                let why = match e {
                    evershell_snapshot::SnapshotError::Unsafe(why) => why,
                    other => other.to_string(),
                };
                let msg = format!(
                    "the workspace could not be saved: {why}; its files are kept — resume it, fix that, and stop again"
                );
                let audit = auto_audit(inner, &ws, EventType::SnapshotFailed)
                    .await
                    .details(serde_json::json!({ "snapshot_id": snap_id, "error": msg }));
                discard_snapshot(inner, &rec, &[audit]).await?;
                fail(inner, &ws, StatusReason::SnapshotFailed, msg).await?;
                return Ok(Flow::Again);
            }
            Err(e) => {
                let audit = auto_audit(inner, &ws, EventType::SnapshotFailed)
                    .await
                    .details(serde_json::json!({ "snapshot_id": snap_id, "error": e.to_string() }));
                discard_snapshot(inner, &rec, &[audit]).await?;
                return Ok(Flow::Retry(anyhow::anyhow!("saving the snapshot: {e}")));
            }
        };
        rec.state = SnapshotState::Verified;
        rec.sha256 = Some(manifest.archive_sha256.clone());
        rec.size_bytes = Some(manifest.archive_bytes as i64);
        rec.file_count = Some(manifest.file_count as i64);
        let mut next = ws.clone();
        next.observed.snapshot_id = Some(snap_id);
        next.observed.last_snapshot_error = None;
        next.updated_at = Timestamp::now();
        let audit = auto_audit(inner, &ws, EventType::SnapshotSaved).await.details(serde_json::json!({
            "snapshot_id": snap_id, "sha256": manifest.archive_sha256, "size_bytes": manifest.archive_bytes,
            "file_count": manifest.file_count, "content_bytes": manifest.content_bytes,
        }));
        let Some(lease) = inner.states.lease(ws.id) else { return Err(lost_lease()) };
        match inner.store.commit_snapshot(&rec, &next, ws.observed.generation, &lease.fence, &[audit]).await? {
            ObservationWrite::Written => {}
            ObservationWrite::Stale => {
                discard_snapshot(inner, &rec, &[]).await?;
                return Ok(Flow::Again);
            }
            ObservationWrite::Fenced => {
                // The new holder discards the pending row and its objects as an interrupted capture's leftovers.
                lease.lost.cancel();
                return Err(lost_lease());
            }
        }
        inner.notify(ws.id);
        next.observed.generation = ws.observed.generation + 1;
        ws = next;
    }
    inner.runtime.remove(pod).await.map_err(pod_err)?;
    let mut next = release(&ws);
    let audit = if ws.observed.status == WorkspaceStatus::Stopping {
        vec![finish_stop(inner, &ws, &mut next).await]
    } else {
        vec![]
    };
    write(inner, &ws, next, &audit).await?;
    // Older snapshots go only now that a newer one is verified and the workspace points at it — and after the
    // caller has its answer: deleting a large file can take longer than a stop's own bookkeeping. Best effort: what
    // is left (an error, a crash) goes at the next stop or the next start-up (`recovery`).
    // Checkpoints and fork sources are not replaced by a stop's snapshot: their retention is `checkpoint.rs`'s.
    let kept = inner.store.fork_kept_snapshots(ws.id).await;
    let older: Vec<SnapshotRecord> = match (inner.store.list_snapshots(ws.id).await, kept) {
        (Ok(all), Ok(kept)) => {
            all.into_iter().filter(|s| Some(s.id) != ws.observed.snapshot_id && !kept.contains(&s.id)).collect()
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = ?e, "listing replaced snapshots failed; retried later");
            vec![]
        }
    };
    let begun = std::time::Instant::now();
    let count = older.len();
    for s in older {
        let audit = auto_audit(inner, &ws, EventType::SnapshotDeleted)
            .await
            .details(serde_json::json!({ "snapshot_id": s.id, "replaced_by": ws.observed.snapshot_id }));
        if let Err(e) = discard_snapshot(inner, &s, &[audit]).await {
            tracing::warn!(snapshot_id = %s.id, error = %e, "deleting a replaced snapshot failed; retried later");
        }
    }
    if count > 0 {
        tracing::debug!(count, took_ms = begun.elapsed().as_secs_f64() * 1e3, "replaced snapshots deleted");
    }
    Ok(Flow::Again)
}

/// Delete a snapshot's objects, then its row.
async fn discard_snapshot(inner: &Inner, s: &SnapshotRecord, audit: &[AuditEvent]) -> Result<()> {
    let keys = SnapshotKeys::from_strings(&s.archive_key, &s.manifest_key);
    inner.snapshots.delete(&keys).await.map_err(|e| evershell_core::Error::internal(anyhow::anyhow!(e)))?;
    inner.store.delete_snapshot(s.id, audit).await
}
