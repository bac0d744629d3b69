//! Budget accounting as pure logic: a counter value and the ceilings give the next counter value or the budget
//! that would be crossed. No clocks, no locks: the caller stores counters and makes `charge` atomic by
//! compare-and-set.
//!
//! Semantics. A request is admitted when, for every budget its capability names, `requests + 1 <= requests
//! ceiling` and `bytes + request_bytes <= bytes ceiling` (a budget whose bytes are already at or over the ceiling
//! admits nothing more). Admission counts the request and its request-body bytes at once; response-body bytes are
//! added afterwards with `record_bytes`, which never refuses (the response is already on its way), so the request
//! after an oversized response is the one refused. Charging several budgets is all or nothing.
//!
//! Concurrency: counters only ever grow, so a caller can read a value, compute `charge`, and write it back only if
//! the stored value still equals what it read (compare-and-set, free of ABA), retrying from the fresh value
//! otherwise. With N concurrent requests and a ceiling of k remaining, exactly k succeed.

use serde::Serialize;

use super::model::{Budgets, Limits};

/// Which counter a budget is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    PerWorkspace,
    PerTask,
}

impl BudgetScope {
    pub const ALL: &[BudgetScope] = &[BudgetScope::PerWorkspace, BudgetScope::PerTask];

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::PerWorkspace => "per_workspace",
            BudgetScope::PerTask => "per_task",
        }
    }
}

/// One budget an allowed request is charged to: the caller keys its counter by (workspace or task, `name()`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetRef {
    pub capability: String,
    pub scope: BudgetScope,
    pub limits: Limits,
}

impl BudgetRef {
    /// `<capability>.per_workspace` / `<capability>.per_task`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.capability, self.scope.as_str())
    }

    pub(crate) fn of(capability: &str, b: &Budgets) -> Vec<BudgetRef> {
        [(BudgetScope::PerWorkspace, b.per_workspace), (BudgetScope::PerTask, b.per_task)]
            .into_iter()
            .filter_map(|(scope, l)| l.map(|limits| BudgetRef { capability: capability.to_string(), scope, limits }))
            .collect()
    }
}

/// A counter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counter {
    pub requests: u64,
    pub bytes: u64,
}

/// Which ceiling of a budget would be crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetLimit {
    Requests,
    Bytes,
}

impl BudgetLimit {
    pub const ALL: &[BudgetLimit] = &[BudgetLimit::Requests, BudgetLimit::Bytes];

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetLimit::Requests => "requests",
            BudgetLimit::Bytes => "bytes",
        }
    }
}

/// The request would cross `name`'s `limit` ceiling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetExceeded {
    /// `<capability>.per_workspace` or `<capability>.per_task`.
    pub name: String,
    pub limit: BudgetLimit,
    pub ceiling: u64,
}

/// Admit one request of `request_bytes` against one budget.
pub fn charge(state: Counter, budget: &BudgetRef, request_bytes: u64) -> Result<Counter, BudgetExceeded> {
    let exceeded = |limit, ceiling| BudgetExceeded { name: budget.name(), limit, ceiling };
    let requests = state.requests.saturating_add(1);
    if let Some(ceiling) = budget.limits.requests
        && requests > ceiling
    {
        return Err(exceeded(BudgetLimit::Requests, ceiling));
    }
    let bytes = state.bytes.saturating_add(request_bytes);
    if let Some(ceiling) = budget.limits.bytes
        && (state.bytes >= ceiling || bytes > ceiling)
    {
        return Err(exceeded(BudgetLimit::Bytes, ceiling));
    }
    Ok(Counter { requests, bytes })
}

/// Admit one request against every budget it names, all or nothing: the new values in the same order, or the
/// first budget that would be crossed.
pub fn charge_all(states: &[(BudgetRef, Counter)], request_bytes: u64) -> Result<Vec<Counter>, BudgetExceeded> {
    states.iter().map(|(b, s)| charge(*s, b, request_bytes)).collect()
}

/// Add response-body bytes after the fact; never refuses.
pub fn record_bytes(state: Counter, bytes: u64) -> Counter {
    Counter { requests: state.requests, bytes: state.bytes.saturating_add(bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(requests: Option<u64>, bytes: Option<u64>) -> BudgetRef {
        BudgetRef { capability: "up".into(), scope: BudgetScope::PerWorkspace, limits: Limits { requests, bytes } }
    }

    #[test]
    fn requests_ceiling_admits_exactly_the_ceiling() {
        let b = budget(Some(3), None);
        let mut s = Counter::default();
        for _ in 0..3 {
            s = charge(s, &b, 10).unwrap();
        }
        assert_eq!(s, Counter { requests: 3, bytes: 30 });
        let e = charge(s, &b, 0).unwrap_err();
        assert_eq!(e, BudgetExceeded { name: "up.per_workspace".into(), limit: BudgetLimit::Requests, ceiling: 3 });
        assert!(charge(Counter::default(), &budget(Some(0), None), 0).is_err(), "a zero ceiling admits nothing");
    }

    #[test]
    fn bytes_ceiling_at_the_edge() {
        let b = budget(None, Some(100));
        let s = charge(Counter::default(), &b, 100).unwrap();
        assert_eq!(s.bytes, 100, "exactly at the ceiling passes");
        assert_eq!(charge(s, &b, 0).unwrap_err().limit, BudgetLimit::Bytes, "a spent budget admits nothing more");
        assert!(charge(Counter { requests: 0, bytes: 99 }, &b, 2).is_err(), "one byte over is refused");
        assert!(charge(Counter { requests: 0, bytes: 99 }, &b, 1).is_ok());
        let over = record_bytes(Counter { requests: 1, bytes: 50 }, 500);
        assert_eq!(over, Counter { requests: 1, bytes: 550 }, "responses are recorded even past the ceiling");
        assert!(charge(over, &b, 0).is_err(), "and the next request is refused");
    }

    #[test]
    fn no_ceiling_never_refuses_and_saturates() {
        let b = budget(None, None);
        let s = charge(Counter { requests: u64::MAX, bytes: u64::MAX }, &b, u64::MAX).unwrap();
        assert_eq!(s, Counter { requests: u64::MAX, bytes: u64::MAX });
    }

    #[test]
    fn charge_all_is_all_or_nothing() {
        let ws = budget(Some(10), None);
        let task = BudgetRef { scope: BudgetScope::PerTask, ..budget(Some(1), None) };
        let fresh = [(ws.clone(), Counter::default()), (task.clone(), Counter::default())];
        let next = charge_all(&fresh, 5).unwrap();
        assert_eq!(next, [Counter { requests: 1, bytes: 5 }, Counter { requests: 1, bytes: 5 }]);
        let e = charge_all(&[(ws, next[0]), (task, next[1])], 5).unwrap_err();
        assert_eq!(e.name, "up.per_task");
        assert_eq!(charge_all(&[], 5).unwrap(), Vec::<Counter>::new());
    }

    /// Every small state against every small ceiling, both scopes: `charge` admits exactly when both ceilings hold
    /// after the request (bytes also refusing a spent budget), names the first ceiling crossed (requests before
    /// bytes), and counts the request and its bytes once. `charge_all` over a workspace and a task budget is the
    /// conjunction, the first refusal in order, and writes nothing on refusal.
    #[test]
    fn charge_over_every_small_state_and_ceiling() {
        let ceilings = [None, Some(0), Some(1), Some(2), Some(3)];
        for &scope in BudgetScope::ALL {
            for requests in ceilings {
                for bytes in ceilings {
                    let b = BudgetRef { capability: "c".into(), scope, limits: Limits { requests, bytes } };
                    for r in 0..=4u64 {
                        for by in 0..=4u64 {
                            for req in 0..=3u64 {
                                let s = Counter { requests: r, bytes: by };
                                let got = charge(s, &b, req);
                                let req_ok = requests.is_none_or(|c| r < c);
                                let bytes_ok = bytes.is_none_or(|c| by < c && by + req <= c);
                                let want = if !req_ok {
                                    Err(BudgetExceeded {
                                        name: format!("c.{}", scope.as_str()),
                                        limit: BudgetLimit::Requests,
                                        ceiling: requests.unwrap(),
                                    })
                                } else if !bytes_ok {
                                    Err(BudgetExceeded {
                                        name: format!("c.{}", scope.as_str()),
                                        limit: BudgetLimit::Bytes,
                                        ceiling: bytes.unwrap(),
                                    })
                                } else {
                                    Ok(Counter { requests: r + 1, bytes: by + req })
                                };
                                assert_eq!(got, want, "{b:?} {s:?} +{req}");
                            }
                        }
                    }
                }
            }
        }
        // Two budgets (a workspace's and a task's) over every small pair of request counts.
        let ws = BudgetRef {
            capability: "c".into(),
            scope: BudgetScope::PerWorkspace,
            limits: Limits { requests: Some(3), bytes: None },
        };
        let task = BudgetRef {
            capability: "c".into(),
            scope: BudgetScope::PerTask,
            limits: Limits { requests: Some(2), bytes: None },
        };
        for w in 0..=4u64 {
            for t in 0..=4u64 {
                let states = [
                    (ws.clone(), Counter { requests: w, bytes: 0 }),
                    (task.clone(), Counter { requests: t, bytes: 0 }),
                ];
                let got = charge_all(&states, 0);
                match (w < 3, t < 2) {
                    (true, true) => assert_eq!(
                        got.unwrap(),
                        [Counter { requests: w + 1, bytes: 0 }, Counter { requests: t + 1, bytes: 0 }]
                    ),
                    (false, _) => assert_eq!(got.unwrap_err().name, "c.per_workspace", "{w} {t}"),
                    (true, false) => assert_eq!(got.unwrap_err().name, "c.per_task", "{w} {t}"),
                }
            }
        }
    }

    /// A fresh task's counter (absent, read as zero) admits exactly its ceiling again, whatever an earlier task
    /// spent; the workspace's counter carries across.
    #[test]
    fn a_new_task_starts_from_zero_and_the_workspace_counter_carries_on() {
        let ws = BudgetRef {
            capability: "c".into(),
            scope: BudgetScope::PerWorkspace,
            limits: Limits { requests: Some(5), bytes: None },
        };
        let task = BudgetRef {
            capability: "c".into(),
            scope: BudgetScope::PerTask,
            limits: Limits { requests: Some(3), bytes: None },
        };
        let mut w = Counter::default();
        let mut admitted = Vec::new();
        for _task in 0..3 {
            let mut t = Counter::default();
            let mut n = 0;
            for _ in 0..10 {
                if let Ok(next) = charge_all(&[(ws.clone(), w), (task.clone(), t)], 1) {
                    (w, t) = (next[0], next[1]);
                    n += 1;
                }
            }
            admitted.push(n);
        }
        assert_eq!(admitted, [3, 2, 0]);
        assert_eq!(w, Counter { requests: 5, bytes: 5 });
    }

    /// The compare-and-set loop the docs promise, run by real threads: exactly the ceiling passes.
    #[test]
    fn compare_and_set_admits_exactly_the_ceiling_under_contention() {
        use std::sync::Mutex;
        let stored = Mutex::new(Counter::default());
        let cas = |expected: Counter, new: Counter| {
            let mut s = stored.lock().unwrap();
            if *s == expected {
                *s = new;
                true
            } else {
                false
            }
        };
        let b = budget(Some(50), None);
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    for _ in 0..20 {
                        loop {
                            let seen = *stored.lock().unwrap();
                            match charge(seen, &b, 1) {
                                Ok(next) if cas(seen, next) => {
                                    admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    break;
                                }
                                Ok(_) => continue,
                                Err(_) => break,
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 50);
        assert_eq!(*stored.lock().unwrap(), Counter { requests: 50, bytes: 50 });
    }
}
