//! The task state machine as a pure function over closed enums: `submitted → delivered → running (⇄ compacting) →
//! completed | failed | cancelled`, and `delivery_failed` for a task the agent never accepted. `next` says where a
//! task goes on each input (a delivery, what the agent reports, a cancel, an interruption of its workspace); every
//! non-completed end carries a `TaskReason`. No I/O here; tested over every state × input below.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::agent_wire::AgentTaskState;

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Accepted and queued; not yet handed to the agent.
    Submitted,
    /// The agent accepted it and has not yet reported it running.
    Delivered,
    /// The agent runs it.
    Running,
    /// The agent is summarising the conversation to fit its context; running resumes after.
    Compacting,
    Completed,
    Failed,
    Cancelled,
    /// The agent never accepted it (the pod was unreachable, or went away before delivery).
    DeliveryFailed,
}

impl TaskStatus {
    pub const ALL: &[TaskStatus] = &[
        TaskStatus::Submitted,
        TaskStatus::Delivered,
        TaskStatus::Running,
        TaskStatus::Compacting,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::DeliveryFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Submitted => "submitted",
            TaskStatus::Delivered => "delivered",
            TaskStatus::Running => "running",
            TaskStatus::Compacting => "compacting",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::DeliveryFailed => "delivery_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::DeliveryFailed)
    }

    /// Handed to the agent and not ended: the workspace reads `busy` while one exists.
    pub fn is_active(self) -> bool {
        matches!(self, TaskStatus::Delivered | TaskStatus::Running | TaskStatus::Compacting)
    }
}

/// Why a task ended other than `completed`. The control plane's own reasons, and the agent's (a reason the agent
/// reports that is not one of these is recorded as `agent_error`: the agent is not trusted to name new ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskReason {
    /// `POST …/task/cancel` (the agent ended it cooperatively, or it had not been delivered yet).
    Cancelled,
    /// The workspace was stopped while the task was queued or ran.
    WorkspaceStopped,
    /// The workspace was restarted (`?force=true`) while the task ran.
    WorkspaceRestarted,
    /// The pod died or vanished (the workspace failed).
    PodLost,
    /// The agent process restarted (a new `agent_instance`, or it no longer knows the task).
    AgentRestarted,
    /// The control plane restarted and could no longer follow the task.
    ControlPlaneRestart,
    /// Delivery to the agent failed after bounded retries.
    AgentUnreachable,
    /// The agent refused the delivery (malformed, or it was busy with a task the control plane does not know).
    DeliveryRefused,
    // The agent's reasons (see `agent_wire::AgentTaskStatus::reason`).
    MaxContinuations,
    TaskTimeout,
    ModelError,
    ContextOverflow,
    CompactionLimit,
    InternalError,
    /// The agent failed the task with a reason outside this list.
    AgentError,
}

impl TaskReason {
    pub const ALL: &[TaskReason] = &[
        TaskReason::Cancelled,
        TaskReason::WorkspaceStopped,
        TaskReason::WorkspaceRestarted,
        TaskReason::PodLost,
        TaskReason::AgentRestarted,
        TaskReason::ControlPlaneRestart,
        TaskReason::AgentUnreachable,
        TaskReason::DeliveryRefused,
        TaskReason::MaxContinuations,
        TaskReason::TaskTimeout,
        TaskReason::ModelError,
        TaskReason::ContextOverflow,
        TaskReason::CompactionLimit,
        TaskReason::InternalError,
        TaskReason::AgentError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskReason::Cancelled => "cancelled",
            TaskReason::WorkspaceStopped => "workspace_stopped",
            TaskReason::WorkspaceRestarted => "workspace_restarted",
            TaskReason::PodLost => "pod_lost",
            TaskReason::AgentRestarted => "agent_restarted",
            TaskReason::ControlPlaneRestart => "control_plane_restart",
            TaskReason::AgentUnreachable => "agent_unreachable",
            TaskReason::DeliveryRefused => "delivery_refused",
            TaskReason::MaxContinuations => "max_continuations",
            TaskReason::TaskTimeout => "task_timeout",
            TaskReason::ModelError => "model_error",
            TaskReason::ContextOverflow => "context_overflow",
            TaskReason::CompactionLimit => "compaction_limit",
            TaskReason::InternalError => "internal_error",
            TaskReason::AgentError => "agent_error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }

    /// The reason for an end the agent reported in `state`, from its (untrusted) reason string.
    pub fn from_agent(state: AgentTaskState, reason: Option<&str>) -> Option<Self> {
        match state {
            AgentTaskState::Completed | AgentTaskState::Running | AgentTaskState::Compacting => None,
            AgentTaskState::Cancelled => Some(TaskReason::Cancelled),
            AgentTaskState::Failed => Some(reason.and_then(Self::parse).unwrap_or(TaskReason::AgentError)),
        }
    }
}

/// What happened to the task's workspace that the task cannot survive (or, queued, may).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interruption {
    /// Stop, stop-all, a role's stop-workspaces, the idle timeout.
    WorkspaceStopped,
    /// A forced restart.
    WorkspaceRestarted,
    /// The pod exited or vanished; the workspace failed.
    PodLost,
    /// The agent restarted inside a running pod (new `agent_instance`, or 404 on the task).
    AgentRestarted,
    /// Found at control-plane start-up with no way to follow it further.
    ControlPlaneRestart,
}

impl Interruption {
    pub const ALL: &[Interruption] = &[
        Interruption::WorkspaceStopped,
        Interruption::WorkspaceRestarted,
        Interruption::PodLost,
        Interruption::AgentRestarted,
        Interruption::ControlPlaneRestart,
    ];

    pub fn reason(self) -> TaskReason {
        match self {
            Interruption::WorkspaceStopped => TaskReason::WorkspaceStopped,
            Interruption::WorkspaceRestarted => TaskReason::WorkspaceRestarted,
            Interruption::PodLost => TaskReason::PodLost,
            Interruption::AgentRestarted => TaskReason::AgentRestarted,
            Interruption::ControlPlaneRestart => TaskReason::ControlPlaneRestart,
        }
    }
}

/// An input to the task state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskInput {
    /// The agent accepted the delivery.
    Delivered,
    /// Delivery failed for good (after bounded retries, or the agent refused it).
    DeliveryFailed(TaskReason),
    /// The agent reported the task in this state (with its reason, already mapped).
    Agent(AgentTaskState, Option<TaskReason>),
    /// `POST …/task/cancel`.
    CancelRequested,
    Interrupted(Interruption),
}

/// Where the task goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// No change (a repeated report, a late one after the end, a cancel the agent must carry out).
    Stay,
    /// Move to `status`; `reason` is set exactly when the status is a non-completed end.
    Move { status: TaskStatus, reason: Option<TaskReason> },
}

fn to(status: TaskStatus, reason: Option<TaskReason>) -> Next {
    Next::Move { status, reason }
}

/// The transition function. Ends are final: nothing moves a terminal task.
pub fn next(status: TaskStatus, input: TaskInput) -> Next {
    use TaskStatus as S;
    if status.is_terminal() {
        return Next::Stay;
    }
    match input {
        TaskInput::Delivered => match status {
            S::Submitted => to(S::Delivered, None),
            _ => Next::Stay,
        },
        TaskInput::DeliveryFailed(reason) => match status {
            S::Submitted => to(S::DeliveryFailed, Some(reason)),
            _ => Next::Stay,
        },
        TaskInput::Agent(state, reason) => {
            let target = match state {
                AgentTaskState::Running => S::Running,
                AgentTaskState::Compacting => S::Compacting,
                AgentTaskState::Completed => S::Completed,
                AgentTaskState::Failed => S::Failed,
                AgentTaskState::Cancelled => S::Cancelled,
            };
            let reason = if target.is_terminal() && target != S::Completed {
                Some(reason.unwrap_or(match target {
                    S::Cancelled => TaskReason::Cancelled,
                    _ => TaskReason::AgentError,
                }))
            } else {
                None
            };
            if target == status { Next::Stay } else { to(target, reason) }
        }
        TaskInput::CancelRequested => match status {
            // Never handed over: it simply ends.
            S::Submitted => to(S::Cancelled, Some(TaskReason::Cancelled)),
            // The agent ends it cooperatively and reports `cancelled`.
            _ => Next::Stay,
        },
        TaskInput::Interrupted(i) => match (status, i) {
            // A stop ends queued work too: a stopped workspace takes no tasks, so none may wait on it.
            (_, Interruption::WorkspaceStopped) => to(S::Cancelled, Some(TaskReason::WorkspaceStopped)),
            // Queued work survives a restart, a new agent process or a control-plane restart; it is delivered next.
            (
                S::Submitted,
                Interruption::WorkspaceRestarted | Interruption::AgentRestarted | Interruption::ControlPlaneRestart,
            ) => Next::Stay,
            // A failed workspace takes no tasks either: queued work ends as never delivered.
            (S::Submitted, Interruption::PodLost) => to(S::DeliveryFailed, Some(TaskReason::PodLost)),
            (_, Interruption::WorkspaceRestarted) => to(S::Cancelled, Some(TaskReason::WorkspaceRestarted)),
            (_, i) => to(S::Failed, Some(i.reason())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskStatus as S;

    fn inputs() -> Vec<TaskInput> {
        let mut v = vec![
            TaskInput::Delivered,
            TaskInput::DeliveryFailed(TaskReason::AgentUnreachable),
            TaskInput::DeliveryFailed(TaskReason::DeliveryRefused),
            TaskInput::CancelRequested,
        ];
        for st in [
            AgentTaskState::Running,
            AgentTaskState::Compacting,
            AgentTaskState::Completed,
            AgentTaskState::Failed,
            AgentTaskState::Cancelled,
        ] {
            v.push(TaskInput::Agent(st, None));
            v.push(TaskInput::Agent(st, TaskReason::from_agent(st, Some("max_continuations"))));
        }
        v.extend(Interruption::ALL.iter().map(|&i| TaskInput::Interrupted(i)));
        v
    }

    #[test]
    fn names_round_trip() {
        for &s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for &r in TaskReason::ALL {
            assert_eq!(TaskReason::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(S::parse("busy"), None);
    }

    #[test]
    fn terminal_states_never_move() {
        for &s in S::ALL.iter().filter(|s| s.is_terminal()) {
            for i in inputs() {
                assert_eq!(next(s, i), Next::Stay, "{s:?} on {i:?}");
            }
        }
    }

    /// Over every state × input: a move lands on a reason exactly when it is a non-completed end, never goes back
    /// to `submitted`, and `delivered`/`delivery_failed` are reached only from `submitted`.
    #[test]
    fn every_state_and_input_obeys_the_invariants() {
        for &s in S::ALL {
            for i in inputs() {
                match next(s, i) {
                    Next::Stay => {}
                    Next::Move { status, reason } => {
                        assert_ne!(status, s, "{s:?} on {i:?} moved to itself");
                        assert_ne!(status, S::Submitted, "{s:?} on {i:?}");
                        assert_eq!(
                            reason.is_some(),
                            status.is_terminal() && status != S::Completed,
                            "{s:?} on {i:?} → {status:?} {reason:?}"
                        );
                        if matches!(status, S::Delivered | S::DeliveryFailed) {
                            assert_eq!(s, S::Submitted, "{s:?} on {i:?} → {status:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn delivery() {
        assert_eq!(next(S::Submitted, TaskInput::Delivered), to(S::Delivered, None));
        for &s in &[S::Delivered, S::Running, S::Compacting] {
            assert_eq!(next(s, TaskInput::Delivered), Next::Stay, "{s:?}");
            assert_eq!(next(s, TaskInput::DeliveryFailed(TaskReason::AgentUnreachable)), Next::Stay, "{s:?}");
        }
        assert_eq!(
            next(S::Submitted, TaskInput::DeliveryFailed(TaskReason::AgentUnreachable)),
            to(S::DeliveryFailed, Some(TaskReason::AgentUnreachable))
        );
    }

    #[test]
    fn agent_reports_over_every_live_state() {
        use AgentTaskState as A;
        for &s in &[S::Submitted, S::Delivered, S::Running, S::Compacting] {
            let run = next(s, TaskInput::Agent(A::Running, None));
            assert_eq!(run, if s == S::Running { Next::Stay } else { to(S::Running, None) }, "{s:?}");
            let compact = next(s, TaskInput::Agent(A::Compacting, None));
            assert_eq!(compact, if s == S::Compacting { Next::Stay } else { to(S::Compacting, None) }, "{s:?}");
            assert_eq!(next(s, TaskInput::Agent(A::Completed, None)), to(S::Completed, None), "{s:?}");
            // A reason the agent attaches to a completion is dropped.
            assert_eq!(
                next(s, TaskInput::Agent(A::Completed, Some(TaskReason::ModelError))),
                to(S::Completed, None),
                "{s:?}"
            );
            assert_eq!(
                next(s, TaskInput::Agent(A::Failed, Some(TaskReason::MaxContinuations))),
                to(S::Failed, Some(TaskReason::MaxContinuations))
            );
            assert_eq!(next(s, TaskInput::Agent(A::Failed, None)), to(S::Failed, Some(TaskReason::AgentError)));
            assert_eq!(next(s, TaskInput::Agent(A::Cancelled, None)), to(S::Cancelled, Some(TaskReason::Cancelled)));
        }
    }

    #[test]
    fn agent_reasons_are_mapped_into_the_closed_set() {
        use AgentTaskState as A;
        assert_eq!(TaskReason::from_agent(A::Failed, Some("task_timeout")), Some(TaskReason::TaskTimeout));
        assert_eq!(TaskReason::from_agent(A::Failed, Some("rm -rf /; <script>")), Some(TaskReason::AgentError));
        assert_eq!(TaskReason::from_agent(A::Failed, None), Some(TaskReason::AgentError));
        assert_eq!(TaskReason::from_agent(A::Cancelled, Some("whatever")), Some(TaskReason::Cancelled));
        assert_eq!(TaskReason::from_agent(A::Completed, Some("model_error")), None);
        assert_eq!(TaskReason::from_agent(A::Running, Some("model_error")), None);
    }

    #[test]
    fn cancel() {
        assert_eq!(next(S::Submitted, TaskInput::CancelRequested), to(S::Cancelled, Some(TaskReason::Cancelled)));
        for &s in &[S::Delivered, S::Running, S::Compacting] {
            assert_eq!(next(s, TaskInput::CancelRequested), Next::Stay, "{s:?}: the agent carries it out");
        }
    }

    #[test]
    fn interruptions_over_every_live_state() {
        use Interruption as I;
        for &s in &[S::Submitted, S::Delivered, S::Running, S::Compacting] {
            for &i in I::ALL {
                let got = next(s, TaskInput::Interrupted(i));
                let want = match (s, i) {
                    (_, I::WorkspaceStopped) => to(S::Cancelled, Some(TaskReason::WorkspaceStopped)),
                    (S::Submitted, I::PodLost) => to(S::DeliveryFailed, Some(TaskReason::PodLost)),
                    (S::Submitted, _) => Next::Stay,
                    (_, I::WorkspaceRestarted) => to(S::Cancelled, Some(TaskReason::WorkspaceRestarted)),
                    (_, I::PodLost) => to(S::Failed, Some(TaskReason::PodLost)),
                    (_, I::AgentRestarted) => to(S::Failed, Some(TaskReason::AgentRestarted)),
                    (_, I::ControlPlaneRestart) => to(S::Failed, Some(TaskReason::ControlPlaneRestart)),
                };
                assert_eq!(got, want, "{s:?} on {i:?}");
            }
        }
    }

    /// No interruption leaves a handed-over task live: the guarantee "no task is left running on a workspace that
    /// is not".
    #[test]
    fn no_interruption_leaves_an_active_task_active() {
        for &s in S::ALL.iter().filter(|s| s.is_active()) {
            for &i in Interruption::ALL {
                match next(s, TaskInput::Interrupted(i)) {
                    Next::Move { status, .. } => assert!(status.is_terminal(), "{s:?} on {i:?}"),
                    Next::Stay => panic!("{s:?} stayed live on {i:?}"),
                }
            }
        }
    }
}
