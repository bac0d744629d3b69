//! The idle timeout as a pure function: given what is known of a workspace (its observed status, whether a lifecycle
//! request is pending, its role's `idle_timeout_seconds`, the tasks it has open, when it was last active and the time
//! now), is it time to stop it (`decide`)? A running or queued task always counts as activity, so the answer is
//! never `Stop` while a task runs or waits. Which events restart the clock is `ACTIVITY_EVENTS`. No I/O here; tested
//! over every input at the edges of the limit below.

use crate::audit::EventType;
use crate::lifecycle::WorkspaceStatus;
use crate::task::TaskStatus;
use crate::time::Timestamp;

/// The audit/activity rows about a workspace that restart its idle clock: the pod became ready (a create, resume or
/// restart), a task was submitted, cancelled before delivery, or ended (by the agent, by the control plane, or
/// undelivered), and a file write or an exec through the API (both recorded when they finish).
pub const ACTIVITY_EVENTS: &[EventType] = &[
    EventType::WorkspaceReady,
    EventType::TaskSubmitted,
    EventType::TaskDelivered,
    EventType::TaskCancelRequested,
    EventType::TaskCompleted,
    EventType::TaskInterrupted,
    EventType::TaskDeliveryFailed,
    EventType::WorkspaceFileWritten,
    EventType::WorkspaceExec,
];

/// What the workspace's open tasks amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskLoad {
    /// No task has been submitted and not ended.
    None,
    /// A task waits (`submitted`), none was handed to the agent.
    Queued,
    /// A task was handed to the agent and has not ended (`delivered`, `running`, `compacting`).
    Running,
}

impl TaskLoad {
    pub const ALL: &[TaskLoad] = &[TaskLoad::None, TaskLoad::Queued, TaskLoad::Running];

    /// The load of a workspace whose tasks are in `statuses` (ended ones are ignored).
    pub fn of(statuses: impl IntoIterator<Item = TaskStatus>) -> Self {
        let mut load = TaskLoad::None;
        for s in statuses {
            match s {
                TaskStatus::Delivered | TaskStatus::Running | TaskStatus::Compacting => return TaskLoad::Running,
                TaskStatus::Submitted => load = TaskLoad::Queued,
                TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::DeliveryFailed => {}
            }
        }
        load
    }
}

/// Everything `decide` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleFacts {
    /// The observed status (`busy` is derived from the tasks, see `tasks`).
    pub status: WorkspaceStatus,
    /// The API asked for a transition the reconciler has not taken on yet.
    pub request_pending: bool,
    /// The role's `idle_timeout_seconds`: `None` or `0` (or less) means never.
    pub limit_seconds: Option<i64>,
    pub tasks: TaskLoad,
    /// The latest activity (see `ACTIVITY_EVENTS`).
    pub last_activity: Timestamp,
    pub now: Timestamp,
}

/// What to do about a workspace's idleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleDecision {
    /// The role sets no idle timeout.
    Never,
    /// Not a running workspace left alone: not `idle`, or a request is pending.
    NotIdle,
    /// A task runs or waits: that is activity, whatever the clock says.
    TaskActive,
    /// Idle, but not yet for the limit: look again after `remaining_ms`.
    Wait { remaining_ms: i64 },
    /// Idle for `idle_ms`, at least the limit: stop it (snapshot first, as an API stop).
    Stop { idle_ms: i64 },
}

/// Is it time to stop this workspace for idleness? Idle for exactly the limit counts as over it; a last activity in
/// the future (clocks of replicas disagreeing) counts as activity now.
pub fn decide(f: IdleFacts) -> IdleDecision {
    let limit_ms = match f.limit_seconds {
        Some(s) if s > 0 => s.saturating_mul(1000),
        _ => return IdleDecision::Never,
    };
    if f.status != WorkspaceStatus::Idle || f.request_pending {
        return IdleDecision::NotIdle;
    }
    if f.tasks != TaskLoad::None {
        return IdleDecision::TaskActive;
    }
    let idle_ms = f.now.millis().saturating_sub(f.last_activity.millis()).max(0);
    if idle_ms >= limit_ms {
        IdleDecision::Stop { idle_ms }
    } else {
        IdleDecision::Wait { remaining_ms: limit_ms - idle_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn facts(limit: Option<i64>, tasks: TaskLoad, idle_ms: i64) -> IdleFacts {
        IdleFacts {
            status: WorkspaceStatus::Idle,
            request_pending: false,
            limit_seconds: limit,
            tasks,
            last_activity: Timestamp::from_millis(T0),
            now: Timestamp::from_millis(T0 + idle_ms),
        }
    }

    #[test]
    fn just_under_at_and_over_the_limit() {
        assert_eq!(decide(facts(Some(60), TaskLoad::None, 59_999)), IdleDecision::Wait { remaining_ms: 1 });
        assert_eq!(decide(facts(Some(60), TaskLoad::None, 60_000)), IdleDecision::Stop { idle_ms: 60_000 });
        assert_eq!(decide(facts(Some(60), TaskLoad::None, 60_001)), IdleDecision::Stop { idle_ms: 60_001 });
        assert_eq!(decide(facts(Some(1), TaskLoad::None, 0)), IdleDecision::Wait { remaining_ms: 1000 });
        assert_eq!(decide(facts(Some(1), TaskLoad::None, 999)), IdleDecision::Wait { remaining_ms: 1 });
        assert_eq!(decide(facts(Some(1), TaskLoad::None, 1000)), IdleDecision::Stop { idle_ms: 1000 });
    }

    #[test]
    fn a_running_or_queued_task_is_never_stopped_however_long() {
        for tasks in [TaskLoad::Running, TaskLoad::Queued] {
            for idle in [0, 59_999, 60_000, 60_001, i64::MAX / 2] {
                assert_eq!(decide(facts(Some(60), tasks, idle)), IdleDecision::TaskActive, "{tasks:?} {idle}");
            }
        }
    }

    #[test]
    fn no_limit_zero_or_negative_means_never() {
        for limit in [None, Some(0), Some(-1), Some(i64::MIN)] {
            for tasks in TaskLoad::ALL {
                for idle in [0, 1, 60_000, i64::MAX / 2] {
                    assert_eq!(decide(facts(limit, *tasks, idle)), IdleDecision::Never, "{limit:?}");
                }
            }
        }
    }

    #[test]
    fn only_an_idle_workspace_without_a_pending_request_is_stopped() {
        for status in WorkspaceStatus::ALL {
            for pending in [false, true] {
                let f = IdleFacts {
                    status: *status,
                    request_pending: pending,
                    ..facts(Some(60), TaskLoad::None, 1e9 as i64)
                };
                let stops = matches!(decide(f), IdleDecision::Stop { .. });
                assert_eq!(stops, *status == WorkspaceStatus::Idle && !pending, "{status:?} pending={pending}");
                if !stops {
                    assert_eq!(decide(f), IdleDecision::NotIdle);
                }
            }
        }
    }

    #[test]
    fn activity_in_the_future_counts_as_now_and_huge_limits_do_not_overflow() {
        assert_eq!(decide(facts(Some(60), TaskLoad::None, -5_000)), IdleDecision::Wait { remaining_ms: 60_000 });
        let d = decide(facts(Some(i64::MAX), TaskLoad::None, i64::MAX / 2));
        assert!(matches!(d, IdleDecision::Wait { remaining_ms } if remaining_ms > 0), "{d:?}");
    }

    /// Every combination of the closed inputs, at the edges of the limit, against the rule written out once more.
    #[test]
    fn exhaustive() {
        let limits = [None, Some(0), Some(-3), Some(1), Some(2), Some(60), Some(86_400)];
        for status in WorkspaceStatus::ALL {
            for pending in [false, true] {
                for limit in limits {
                    for tasks in TaskLoad::ALL {
                        let l = limit.unwrap_or(0).max(0) * 1000;
                        for idle in [-1, 0, 1, l - 1, l, l + 1, l * 10] {
                            let f =
                                IdleFacts { status: *status, request_pending: pending, ..facts(limit, *tasks, idle) };
                            let want = if l == 0 {
                                IdleDecision::Never
                            } else if *status != WorkspaceStatus::Idle || pending {
                                IdleDecision::NotIdle
                            } else if *tasks != TaskLoad::None {
                                IdleDecision::TaskActive
                            } else if idle.max(0) >= l {
                                IdleDecision::Stop { idle_ms: idle.max(0) }
                            } else {
                                IdleDecision::Wait { remaining_ms: l - idle.max(0) }
                            };
                            assert_eq!(decide(f), want, "{f:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn task_load_of_every_status() {
        for s in TaskStatus::ALL {
            let want = match s {
                TaskStatus::Submitted => TaskLoad::Queued,
                TaskStatus::Delivered | TaskStatus::Running | TaskStatus::Compacting => TaskLoad::Running,
                _ => TaskLoad::None,
            };
            assert_eq!(TaskLoad::of([*s]), want, "{s:?}");
            // Whatever else is open or ended beside it: running beats queued beats none.
            for other in TaskStatus::ALL {
                let both = [*s, *other];
                let want = if both
                    .iter()
                    .any(|t| matches!(t, TaskStatus::Delivered | TaskStatus::Running | TaskStatus::Compacting))
                {
                    TaskLoad::Running
                } else if both.contains(&TaskStatus::Submitted) {
                    TaskLoad::Queued
                } else {
                    TaskLoad::None
                };
                assert_eq!(TaskLoad::of(both), want, "{both:?}");
                assert_eq!(TaskLoad::of([*other, *s]), want, "{both:?} reversed");
            }
        }
        assert_eq!(TaskLoad::of([]), TaskLoad::None);
    }

    #[test]
    fn every_activity_event_is_about_a_workspace_and_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for e in ACTIVITY_EVENTS {
            assert!(seen.insert(e), "{e:?} listed twice");
        }
        // What an idle workspace writes about itself on its own is not activity.
        for e in [
            EventType::SnapshotSaved,
            EventType::EgressRequest,
            EventType::EgressDnsDenied,
            EventType::WorkspaceStopRequested,
        ] {
            assert!(!ACTIVITY_EVENTS.contains(&e), "{e:?}");
        }
    }
}
