//! Per-workspace reconciler state, in one struct per workspace: whether a worker has it (and was woken again
//! meanwhile), the lease it works under (the fence every observation write presents, and the signal that fires when
//! the lease is lost), consecutive failures and the backoff they earned, and the last row this process wrote (so the
//! next plan need not read it back). An entry lives while a worker has the workspace or failures are being counted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use evershell_core::ids::WorkspaceId;
use evershell_core::model::WorkspaceRecord;
use evershell_store::Fence;
use tokio_util::sync::CancellationToken;

/// The lease a pass works under.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// Presented by every observation write; the store refuses it once another holder took the lease.
    pub fence: Fence,
    /// Cancelled when the lease is lost (a renewal refused, or a write fenced off): the pass stops at once.
    pub lost: CancellationToken,
}

/// Everything the reconciler keeps about one workspace between and during passes.
#[derive(Debug, Default)]
pub(crate) struct WorkState {
    /// A worker is on it.
    pub running: bool,
    /// Woken again while running: work once more after.
    pub dirty: bool,
    /// Held while a pass runs.
    pub lease: Option<Lease>,
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// The delay before the next attempt, after a failure.
    pub backoff: Option<Duration>,
    /// The row as this pass last wrote it (observation at its new generation).
    pub last: Option<WorkspaceRecord>,
}

impl WorkState {
    fn idle(&self) -> bool {
        !self.running && self.attempts == 0
    }
}

/// The state of every workspace the reconciler is dealing with.
#[derive(Default)]
pub(crate) struct States(Mutex<HashMap<WorkspaceId, WorkState>>);

impl States {
    fn with<T>(&self, id: WorkspaceId, f: impl FnOnce(&mut WorkState) -> T) -> T {
        let mut all = self.0.lock().unwrap();
        let st = all.entry(id).or_default();
        let out = f(st);
        if st.idle() {
            all.remove(&id);
        }
        out
    }

    /// Take `id` for a worker: `false` when one already has it (it is marked to run once more).
    pub fn begin(&self, id: WorkspaceId) -> bool {
        self.with(id, |st| {
            if st.running {
                st.dirty = true;
                false
            } else {
                st.running = true;
                true
            }
        })
    }

    /// The worker finished a pass: `true` when it should run another (woken meanwhile and `again` allowed).
    pub fn end_pass(&self, id: WorkspaceId, again: bool) -> bool {
        self.with(id, |st| {
            st.lease = None;
            st.last = None;
            if st.dirty && again {
                st.dirty = false;
                true
            } else {
                st.running = false;
                st.dirty = false;
                false
            }
        })
    }

    /// Whether a worker has `id` now.
    #[cfg(test)]
    pub fn is_running(&self, id: WorkspaceId) -> bool {
        self.0.lock().unwrap().get(&id).is_some_and(|st| st.running)
    }

    pub fn set_lease(&self, id: WorkspaceId, lease: Lease) {
        self.with(id, |st| st.lease = Some(lease));
    }

    pub fn lease(&self, id: WorkspaceId) -> Option<Lease> {
        self.with(id, |st| st.lease.clone())
    }

    /// A step failed: count it and return (attempts so far, delay before the next try).
    pub fn failed(&self, id: WorkspaceId) -> (u32, Duration) {
        self.with(id, |st| {
            st.attempts += 1;
            let delay = Duration::from_millis(250u64 << st.attempts.min(7));
            st.backoff = Some(delay);
            (st.attempts, delay)
        })
    }

    pub fn attempts(&self, id: WorkspaceId) -> u32 {
        self.with(id, |st| st.attempts)
    }

    /// Settled (or given up on): failures start counting afresh.
    pub fn reset_attempts(&self, id: WorkspaceId) {
        self.with(id, |st| {
            st.attempts = 0;
            st.backoff = None;
        });
    }

    pub fn set_last(&self, id: WorkspaceId, ws: WorkspaceRecord) {
        self.with(id, |st| st.last = Some(ws));
    }

    pub fn take_last(&self, id: WorkspaceId) -> Option<WorkspaceRecord> {
        self.with(id, |st| st.last.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_marks_dirty_and_end_runs_once_more() {
        let s = States::default();
        let id = WorkspaceId::new();
        assert!(s.begin(id));
        assert!(!s.begin(id));
        assert!(s.end_pass(id, true));
        assert!(!s.end_pass(id, true));
        // Gone once idle.
        assert!(s.0.lock().unwrap().is_empty());
        assert!(s.begin(id));
        assert!(!s.begin(id));
        assert!(!s.end_pass(id, false), "shutting down: no further pass");
    }

    #[test]
    fn failures_back_off_and_outlive_the_pass() {
        let s = States::default();
        let id = WorkspaceId::new();
        assert!(s.begin(id));
        assert_eq!(s.failed(id), (1, Duration::from_millis(500)));
        assert_eq!(s.failed(id), (2, Duration::from_millis(1000)));
        assert!(!s.end_pass(id, true));
        assert_eq!(s.attempts(id), 2);
        s.reset_attempts(id);
        assert!(s.0.lock().unwrap().is_empty());
    }
}
