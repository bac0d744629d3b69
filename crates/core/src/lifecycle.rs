//! The workspace state machine as pure functions over closed enums: which API call is allowed from which state
//! (`decide`), and what the reconciler does next given what it observes of the pod (`plan`). No I/O here; both are
//! tested over every state × input below.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ErrorCode;

/// The observed lifecycle status of a workspace. `archived_at` is a separate flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceStatus {
    /// A pod is being created (and a snapshot restored into it); ends `idle` or `failed`.
    Provisioning,
    /// The pod runs and no task is running.
    Idle,
    /// The pod runs a task.
    Busy,
    /// The pod is being stopped and its `/workspace` saved; ends `stopped`, `provisioning` (restart) or `failed`.
    Stopping,
    /// No pod; the files live in the snapshot.
    Stopped,
    /// Something went wrong; `status_reason` and `last_error` say what. Resumable when a snapshot or the pod's files
    /// survive.
    Failed,
}

impl WorkspaceStatus {
    pub const ALL: &[WorkspaceStatus] = &[
        WorkspaceStatus::Provisioning,
        WorkspaceStatus::Idle,
        WorkspaceStatus::Busy,
        WorkspaceStatus::Stopping,
        WorkspaceStatus::Stopped,
        WorkspaceStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceStatus::Provisioning => "provisioning",
            WorkspaceStatus::Idle => "idle",
            WorkspaceStatus::Busy => "busy",
            WorkspaceStatus::Stopping => "stopping",
            WorkspaceStatus::Stopped => "stopped",
            WorkspaceStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }

    /// Settled states need no reconciler work to reach; `?wait=true` returns when one is reached.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            WorkspaceStatus::Idle | WorkspaceStatus::Busy | WorkspaceStatus::Stopped | WorkspaceStatus::Failed
        )
    }

    /// A pod exists or is being made: the states that block archiving a role or provider.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            WorkspaceStatus::Provisioning | WorkspaceStatus::Idle | WorkspaceStatus::Busy | WorkspaceStatus::Stopping
        )
    }

    /// The pod runs and its agent can be reached.
    pub fn is_running(self) -> bool {
        matches!(self, WorkspaceStatus::Idle | WorkspaceStatus::Busy)
    }

    /// For calls that need a running pod: the 409 to answer from this state, or `None` when the pod runs.
    pub fn not_running_code(self) -> Option<ErrorCode> {
        match self {
            WorkspaceStatus::Idle | WorkspaceStatus::Busy => None,
            WorkspaceStatus::Provisioning | WorkspaceStatus::Stopping => Some(ErrorCode::WorkspaceProvisioning),
            WorkspaceStatus::Stopped => Some(ErrorCode::WorkspaceStopped),
            WorkspaceStatus::Failed => Some(ErrorCode::WorkspaceFailed),
        }
    }
}

/// What the user wants: a running pod or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Desired::Running),
            "stopped" => Some(Desired::Stopped),
            _ => None,
        }
    }
}

/// Why a workspace is in its current status. Every automatic transition records one, so "why did it stop?" always
/// has an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusReason {
    /// Provisioning after `POST /workspaces`.
    Created,
    /// Provisioning after a resume.
    ResumeRequested,
    /// Stopping / provisioning for a restart.
    RestartRequested,
    /// Stopping / stopped after `POST /workspaces/{id}/stop`.
    StopRequested,
    /// Stopping / stopped after `POST /workspaces/stop-all`.
    StopAll,
    /// Stopping / stopped after `POST /agent-roles/{id}/stop-workspaces`.
    RoleStopWorkspaces,
    /// Stopping / stopped because the workspace sat idle for its role's `idle_timeout_seconds` (see `idle`).
    IdleTimeout,
    /// Idle on a fresh, empty pod.
    Ready,
    /// Idle on a fresh pod with the snapshot restored.
    Restored,
    /// Idle again on the pod's retained files (resume of a failed workspace whose pod files survived).
    Reattached,
    /// Failed: the snapshot was missing, unreadable or did not match its manifest. The snapshot is kept.
    RestoreFailed,
    /// Failed: the sandbox could not be started or its agent never answered.
    PodStartFailed,
    /// Failed: the sandbox exited on its own (killed from outside, crashed). Its files are kept; resume reattaches.
    PodExited,
    /// The pod's files disappeared from under the control plane.
    PodVanished,
    /// Failed: the files could not be saved to a snapshot after retries. The pod's files are kept.
    SnapshotFailed,
}

impl StatusReason {
    pub const ALL: &[StatusReason] = &[
        StatusReason::Created,
        StatusReason::ResumeRequested,
        StatusReason::RestartRequested,
        StatusReason::StopRequested,
        StatusReason::StopAll,
        StatusReason::RoleStopWorkspaces,
        StatusReason::IdleTimeout,
        StatusReason::Ready,
        StatusReason::Restored,
        StatusReason::Reattached,
        StatusReason::RestoreFailed,
        StatusReason::PodStartFailed,
        StatusReason::PodExited,
        StatusReason::PodVanished,
        StatusReason::SnapshotFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusReason::Created => "created",
            StatusReason::ResumeRequested => "resume_requested",
            StatusReason::RestartRequested => "restart_requested",
            StatusReason::StopRequested => "stop_requested",
            StatusReason::StopAll => "stop_all",
            StatusReason::RoleStopWorkspaces => "role_stop_workspaces",
            StatusReason::IdleTimeout => "idle_timeout",
            StatusReason::Ready => "ready",
            StatusReason::Restored => "restored",
            StatusReason::Reattached => "reattached",
            StatusReason::RestoreFailed => "restore_failed",
            StatusReason::PodStartFailed => "pod_start_failed",
            StatusReason::PodExited => "pod_exited",
            StatusReason::PodVanished => "pod_vanished",
            StatusReason::SnapshotFailed => "snapshot_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }
}

/// The public status of a workspace, from its two halves (see `model::WorkspaceRecord`):
///
/// 1. a request the reconciler has not adopted yet (`pending`) shows as its own status and reason — the API has
///    accepted it, so callers see `provisioning` / `stopping` at once;
/// 2. otherwise the observed status and reason;
/// 3. an observed `idle` with a running task reads `busy` (the task subsystem knows; the reconciler never writes
///    `busy`).
pub fn public_status(
    pending: Option<(WorkspaceStatus, StatusReason)>,
    observed: (WorkspaceStatus, Option<StatusReason>),
    running_task: bool,
) -> (WorkspaceStatus, Option<StatusReason>) {
    let (status, reason) = match pending {
        Some((s, r)) => (s, Some(r)),
        None => observed,
    };
    match status {
        WorkspaceStatus::Idle if running_task => (WorkspaceStatus::Busy, reason),
        s => (s, reason),
    }
}

/// A lifecycle call on one workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `reason` is the stop's origin (`StopRequested`, `StopAll`, `RoleStopWorkspaces`).
    Stop {
        reason: StatusReason,
    },
    Resume {
        allow_empty: bool,
    },
    Restart {
        force: bool,
    },
    Archive,
    Unarchive,
}

/// What `decide` needs to know about a workspace and its parents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub status: WorkspaceStatus,
    pub archived: bool,
    /// A verified snapshot exists.
    pub has_snapshot: bool,
    /// The failed pod's files are still on disk (resume reattaches to them).
    pub has_retained_pod: bool,
    pub role_archived: bool,
    pub provider_archived: bool,
}

/// The outcome of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write this intent (status, desired, reason) and wake the reconciler.
    Begin { status: WorkspaceStatus, desired: Desired, reason: StatusReason },
    /// Set (`true`) or clear (`false`) `archived_at`; status unchanged.
    SetArchived(bool),
    /// Refuse with this 409 code and message.
    Refuse(ErrorCode, &'static str),
}

/// Decide a lifecycle call (CONTRACT.md §4). Checks run in the order the contract gives for 409s: archived
/// workspace, archived parents, then state.
pub fn decide(call: Call, f: Facts) -> Decision {
    use Decision::*;
    use WorkspaceStatus as S;
    match call {
        Call::Stop { reason } => match f.status {
            S::Idle | S::Busy => Begin { status: S::Stopping, desired: Desired::Stopped, reason },
            _ => Refuse(ErrorCode::InvalidState, "only an idle or busy workspace can be stopped"),
        },
        Call::Resume { allow_empty } => {
            if f.archived {
                return Refuse(ErrorCode::WorkspaceArchived, "the workspace is archived; unarchive it first");
            }
            if f.role_archived {
                return Refuse(ErrorCode::RoleArchived, "the workspace's agent role is archived; unarchive it first");
            }
            if f.provider_archived {
                return Refuse(ErrorCode::ProviderArchived, "the role's provider is archived; unarchive it first");
            }
            let resumable_failed = f.status == S::Failed && (f.has_snapshot || f.has_retained_pod);
            match f.status {
                S::Stopped if f.has_snapshot || allow_empty => {
                    Begin { status: S::Provisioning, desired: Desired::Running, reason: StatusReason::ResumeRequested }
                }
                S::Failed if resumable_failed || allow_empty => {
                    Begin { status: S::Provisioning, desired: Desired::Running, reason: StatusReason::ResumeRequested }
                }
                S::Stopped | S::Failed => Refuse(
                    ErrorCode::SnapshotMissing,
                    "the workspace has no snapshot to restore; pass allow_empty=true to resume it empty",
                ),
                _ => Refuse(ErrorCode::InvalidState, "only a stopped or failed workspace can be resumed"),
            }
        }
        Call::Restart { force } => {
            if f.archived {
                return Refuse(ErrorCode::WorkspaceArchived, "the workspace is archived; unarchive it first");
            }
            match f.status {
                S::Idle => {
                    Begin { status: S::Stopping, desired: Desired::Running, reason: StatusReason::RestartRequested }
                }
                S::Busy if force => {
                    Begin { status: S::Stopping, desired: Desired::Running, reason: StatusReason::RestartRequested }
                }
                S::Busy => {
                    Refuse(ErrorCode::WorkspaceBusy, "the workspace is busy; pass force=true to interrupt its task")
                }
                _ => Refuse(ErrorCode::InvalidState, "only an idle or busy workspace can be restarted"),
            }
        }
        Call::Archive => {
            if f.archived {
                return Refuse(ErrorCode::InvalidState, "the workspace is already archived");
            }
            match f.status {
                S::Stopped | S::Failed => SetArchived(true),
                _ => Refuse(ErrorCode::InvalidState, "only a stopped or failed workspace can be archived"),
            }
        }
        Call::Unarchive => {
            if f.archived {
                SetArchived(false)
            } else {
                Refuse(ErrorCode::NotArchived, "the workspace is not archived")
            }
        }
    }
}

/// What the reconciler observes of a workspace's pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodObservation {
    /// No pod id allocated yet.
    Unallocated,
    /// A pod id is allocated but nothing exists on disk.
    Absent,
    /// The pod directory exists but its files are incomplete (a restore did not finish).
    Partial,
    /// The pod's files are complete and no sandbox runs on them.
    Exited,
    /// A sandbox is set up on the pod's files but its agent is held (not started): sandboxes are started while a
    /// snapshot is being restored, and the agent is let go only once the restore is complete and verified.
    Held,
    /// The sandbox runs and its agent answers.
    Running,
    /// The sandbox runs but its agent does not answer (yet).
    Unhealthy,
}

/// The next step for one workspace. The reconciler performs it, then plans again until `Nothing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Settled and consistent.
    Nothing,
    /// Record a fresh pod id before touching the disk.
    AllocatePod,
    /// Build the pod's files: restore the latest snapshot (verified) or start empty.
    PreparePod,
    /// Remove incomplete pod files (an interrupted restore) so they can be prepared again.
    DiscardPartialPod,
    /// Forget a pod that has nothing worth keeping (absent, or incomplete files): remove what is left, clear the id.
    ReleasePod,
    /// Start the sandbox on the pod's complete files (or let a held one's agent go).
    StartSandbox,
    /// Wait for the agent to answer (or give up and fail after the start timeout).
    AwaitAgent,
    /// The pod is up: record `idle`.
    MarkReady,
    /// Stop the sandbox process (its files stay).
    StopSandbox,
    /// Save `/workspace` to a snapshot (skipped when the latest snapshot already holds this pod's files), remove the
    /// pod, then record `stopped` (or `provisioning` for a restart).
    SnapshotAndRelease,
    /// The pod vanished before it could be saved: record `last_snapshot_error` and finish the stop with the previous
    /// snapshot kept.
    FinishStopWithoutSnapshot,
    /// The sandbox died on its own: record `failed` (`pod_exited`), keeping its files.
    FailExited,
    /// The pod's files are gone: record `failed` (`pod_vanished`).
    FailVanished,
}

/// Plan the next reconciler step from the workspace's status and intent and the pod observation.
pub fn plan(status: WorkspaceStatus, desired: Desired, pod: PodObservation) -> Step {
    use PodObservation as P;
    use WorkspaceStatus as S;
    match (status, pod) {
        (S::Provisioning, P::Unallocated) => Step::AllocatePod,
        (S::Provisioning, P::Absent) => Step::PreparePod,
        (S::Provisioning, P::Partial) => Step::DiscardPartialPod,
        (S::Provisioning, P::Exited | P::Held) => Step::StartSandbox,
        (S::Provisioning, P::Unhealthy) => Step::AwaitAgent,
        (S::Provisioning, P::Running) => Step::MarkReady,

        (S::Idle | S::Busy, P::Running) => Step::Nothing,
        // A running-but-unanswering agent is given time; the start timeout only applies while provisioning.
        (S::Idle | S::Busy, P::Unhealthy) => Step::Nothing,
        (S::Idle | S::Busy, P::Exited) => Step::FailExited,
        // Not reached in practice (an idle pod's agent was let go); letting it go again is harmless.
        (S::Idle | S::Busy, P::Held) => Step::StartSandbox,
        (S::Idle | S::Busy, P::Absent | P::Unallocated | P::Partial) => Step::FailVanished,

        (S::Stopping, P::Running | P::Unhealthy | P::Held) => Step::StopSandbox,
        (S::Stopping, P::Exited) => Step::SnapshotAndRelease,
        (S::Stopping, P::Absent | P::Unallocated | P::Partial) => Step::FinishStopWithoutSnapshot,

        // Settled without a pod. A stopped workspace's pod was saved before it was released; a failed workspace
        // keeps an exited pod's files for resume, but never a running sandbox.
        (S::Stopped | S::Failed, P::Unallocated) => Step::Nothing,
        (S::Stopped | S::Failed, P::Running | P::Unhealthy | P::Held) => Step::StopSandbox,
        (S::Stopped | S::Failed, P::Absent | P::Partial) => Step::ReleasePod,
        // Complete files a stopped workspace still holds were never saved (a stop is recorded only after its
        // snapshot): save them rather than lose them.
        (S::Stopped, P::Exited) => Step::SnapshotAndRelease,
        (S::Failed, P::Exited) => {
            // Kept on purpose: resume reattaches to them.
            let _ = desired;
            Step::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorCode as E;
    use WorkspaceStatus as S;

    fn facts(status: S) -> Facts {
        Facts {
            status,
            archived: false,
            has_snapshot: true,
            has_retained_pod: false,
            role_archived: false,
            provider_archived: false,
        }
    }

    fn refused(d: Decision) -> Option<ErrorCode> {
        match d {
            Decision::Refuse(c, _) => Some(c),
            _ => None,
        }
    }

    const STOP: Call = Call::Stop { reason: StatusReason::StopRequested };

    #[test]
    fn stop_over_every_state() {
        for &s in S::ALL {
            let d = decide(STOP, facts(s));
            match s {
                S::Idle | S::Busy => assert_eq!(
                    d,
                    Decision::Begin {
                        status: S::Stopping,
                        desired: Desired::Stopped,
                        reason: StatusReason::StopRequested
                    }
                ),
                _ => assert_eq!(refused(d), Some(E::InvalidState), "{s:?}"),
            }
        }
    }

    #[test]
    fn resume_over_every_state_and_snapshot_presence() {
        for &s in S::ALL {
            for has_snapshot in [false, true] {
                for retained in [false, true] {
                    for allow_empty in [false, true] {
                        let f = Facts { has_snapshot, has_retained_pod: retained, ..facts(s) };
                        let d = decide(Call::Resume { allow_empty }, f);
                        let ok = Decision::Begin {
                            status: S::Provisioning,
                            desired: Desired::Running,
                            reason: StatusReason::ResumeRequested,
                        };
                        let expected = match s {
                            S::Stopped if has_snapshot || allow_empty => None,
                            S::Failed if has_snapshot || retained || allow_empty => None,
                            S::Stopped | S::Failed => Some(E::SnapshotMissing),
                            _ => Some(E::InvalidState),
                        };
                        match expected {
                            None => assert_eq!(d, ok, "{s:?} {f:?}"),
                            Some(c) => assert_eq!(refused(d), Some(c), "{s:?} {f:?}"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn resume_checks_archived_before_parents_before_state() {
        let all = Facts { archived: true, role_archived: true, provider_archived: true, ..facts(S::Idle) };
        assert_eq!(refused(decide(Call::Resume { allow_empty: false }, all)), Some(E::WorkspaceArchived));
        let parents = Facts { archived: false, ..all };
        assert_eq!(refused(decide(Call::Resume { allow_empty: false }, parents)), Some(E::RoleArchived));
        let provider = Facts { role_archived: false, ..parents };
        assert_eq!(refused(decide(Call::Resume { allow_empty: false }, provider)), Some(E::ProviderArchived));
    }

    #[test]
    fn restart_over_every_state() {
        for &s in S::ALL {
            for force in [false, true] {
                for archived in [false, true] {
                    let d = decide(Call::Restart { force }, Facts { archived, ..facts(s) });
                    let expected = if archived {
                        Some(E::WorkspaceArchived)
                    } else {
                        match s {
                            S::Idle => None,
                            S::Busy if force => None,
                            S::Busy => Some(E::WorkspaceBusy),
                            _ => Some(E::InvalidState),
                        }
                    };
                    match expected {
                        None => assert_eq!(
                            d,
                            Decision::Begin {
                                status: S::Stopping,
                                desired: Desired::Running,
                                reason: StatusReason::RestartRequested
                            }
                        ),
                        Some(c) => assert_eq!(refused(d), Some(c), "{s:?} force={force} archived={archived}"),
                    }
                }
            }
        }
    }

    #[test]
    fn archive_and_unarchive_over_every_state() {
        for &s in S::ALL {
            for archived in [false, true] {
                let f = Facts { archived, ..facts(s) };
                let a = decide(Call::Archive, f);
                if !archived && matches!(s, S::Stopped | S::Failed) {
                    assert_eq!(a, Decision::SetArchived(true));
                } else {
                    assert_eq!(refused(a), Some(E::InvalidState));
                }
                let u = decide(Call::Unarchive, f);
                if archived {
                    assert_eq!(u, Decision::SetArchived(false));
                } else {
                    assert_eq!(refused(u), Some(E::NotArchived));
                }
            }
        }
    }

    const PODS: &[PodObservation] = &[
        PodObservation::Unallocated,
        PodObservation::Absent,
        PodObservation::Partial,
        PodObservation::Exited,
        PodObservation::Running,
        PodObservation::Unhealthy,
        PodObservation::Held,
    ];

    #[test]
    fn plan_never_leaves_a_running_sandbox_without_a_running_status() {
        for &s in S::ALL {
            for desired in [Desired::Running, Desired::Stopped] {
                for &p in PODS {
                    let step = plan(s, desired, p);
                    if matches!(p, PodObservation::Running | PodObservation::Unhealthy | PodObservation::Held)
                        && matches!(s, S::Stopping | S::Stopped | S::Failed)
                    {
                        assert_eq!(step, Step::StopSandbox, "{s:?} {p:?}");
                    }
                    if s.is_running() && p == PodObservation::Running {
                        assert_eq!(step, Step::Nothing);
                    }
                }
            }
        }
    }

    #[test]
    fn plan_drives_provisioning_to_ready() {
        // Walk the provisioning chain as the reconciler would.
        let chain = [
            (PodObservation::Unallocated, Step::AllocatePod),
            (PodObservation::Absent, Step::PreparePod),
            (PodObservation::Partial, Step::DiscardPartialPod),
            (PodObservation::Exited, Step::StartSandbox),
            (PodObservation::Held, Step::StartSandbox),
            (PodObservation::Unhealthy, Step::AwaitAgent),
            (PodObservation::Running, Step::MarkReady),
        ];
        for (p, step) in chain {
            assert_eq!(plan(S::Provisioning, Desired::Running, p), step);
        }
    }

    #[test]
    fn plan_never_discards_complete_files_of_a_failed_pod() {
        for desired in [Desired::Running, Desired::Stopped] {
            assert_eq!(plan(S::Failed, desired, PodObservation::Exited), Step::Nothing);
        }
    }

    #[test]
    fn every_status_and_observation_has_a_plan() {
        // Exhaustiveness is enforced by the compiler; this checks the settled states are fixed points.
        for &s in S::ALL {
            for &p in PODS {
                let step = plan(s, Desired::Running, p);
                if s == S::Stopped && p == PodObservation::Unallocated {
                    assert_eq!(step, Step::Nothing);
                }
            }
        }
    }

    #[test]
    fn public_status_over_every_pending_and_observed_state() {
        for &obs in S::ALL {
            for running_task in [false, true] {
                let observed = (obs, Some(StatusReason::Ready));
                let (s, r) = public_status(None, observed, running_task);
                let expected = if obs == S::Idle && running_task { S::Busy } else { obs };
                assert_eq!((s, r), (expected, Some(StatusReason::Ready)), "{obs:?} task={running_task}");
                for (ps, pr) in
                    [(S::Provisioning, StatusReason::ResumeRequested), (S::Stopping, StatusReason::StopRequested)]
                {
                    assert_eq!(public_status(Some((ps, pr)), observed, running_task), (ps, Some(pr)));
                }
            }
        }
    }

    #[test]
    fn not_running_codes() {
        assert_eq!(S::Stopped.not_running_code(), Some(E::WorkspaceStopped));
        assert_eq!(S::Failed.not_running_code(), Some(E::WorkspaceFailed));
        assert_eq!(S::Provisioning.not_running_code(), Some(E::WorkspaceProvisioning));
        assert_eq!(S::Idle.not_running_code(), None);
    }

    #[test]
    fn reason_strings_round_trip() {
        for r in StatusReason::ALL {
            assert_eq!(StatusReason::parse(r.as_str()), Some(*r));
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::json!(r.as_str()));
        }
    }
}
