//! The egress proxy's store state: a pod's network observation (narrow update, lookup by address, cleared on stop,
//! refused for a pod the workspace no longer owns or without the lease's fence, untouched by generation-guarded writes) and the budget counters
//! (compare-and-set, all or nothing, exactly the ceiling under concurrent writers from two stores, bytes added
//! after the fact).

use evershell_core::policy::Counter;
use evershell_store::{BudgetCounterMove, Fence, ObservationWrite, PodNetwork};

use crate::*;

store_tests!(
    pod_network_is_recorded_looked_up_by_address_and_cleared,
    budget_counters_move_by_compare_and_set_all_or_nothing,
    concurrent_charges_from_two_stores_admit_exactly_the_ceiling,
);

fn net(addr: &str, exp: i64) -> PodNetwork {
    PodNetwork { address: addr.into(), capability: "cap-token".into(), capability_expires_at: ts(exp) }
}

async fn pod_network_is_recorded_looked_up_by_address_and_cleared(ctx: Ctx) {
    let w = world(&ctx, "acme").await;
    let ws = workspace(w.org.id, w.role.id, WorkspaceStatus::Idle);
    ctx.store.create_workspace(&ws, &[]).await.unwrap();
    let pod = ws.observed.pod_id.unwrap();
    assert_eq!(ctx.store.workspace_by_pod_address("10.212.0.6").await.unwrap(), None);
    let fence = ctx.store.claim_workspace(ws.id, "test", ts(1_000), ts(60_000)).await.unwrap().unwrap();
    let set = |pod, n: Option<PodNetwork>, f: Fence| {
        let store = ctx.store.clone();
        async move { store.set_pod_network(ws.id, pod, n.as_ref(), &f).await.unwrap() }
    };
    assert_eq!(set(PodId::new(), Some(net("10.212.0.6", 5_000)), fence.clone()).await, ObservationWrite::Stale);
    // A fence that no longer holds the lease writes nothing.
    let stale = Fence { owner: fence.owner.clone(), epoch: fence.epoch - 1 };
    assert_eq!(set(pod, Some(net("10.212.0.6", 5_000)), stale.clone()).await, ObservationWrite::Fenced);
    let other = Fence { owner: "someone-else".into(), epoch: fence.epoch };
    assert_eq!(set(pod, Some(net("10.212.0.6", 5_000)), other).await, ObservationWrite::Fenced);
    assert_eq!(ctx.store.workspace_by_pod_address("10.212.0.6").await.unwrap(), None);
    assert_eq!(set(pod, Some(net("10.212.0.6", 5_000)), fence.clone()).await, ObservationWrite::Written);
    assert_eq!(ctx.store.workspace_by_pod_address("10.212.0.6").await.unwrap(), Some((ws.id, pod, Some(ts(5_000)))));
    assert_eq!(ctx.store.pod_network(ws.id).await.unwrap(), Some((pod, net("10.212.0.6", 5_000))));
    // An observation write by the reconciler leaves the pod's network alone.
    let mut next = ws.clone();
    next.observed.status = WorkspaceStatus::Stopping;
    let wrote = ctx.store.record_observation(&next, ws.observed.generation, &fence, &[]).await.unwrap();
    assert_eq!(wrote, evershell_store::ObservationWrite::Written);
    assert_eq!(ctx.store.workspace_by_pod_address("10.212.0.6").await.unwrap(), Some((ws.id, pod, Some(ts(5_000)))));
    assert_eq!(set(pod, None, stale).await, ObservationWrite::Fenced, "a stale owner cannot clear it either");
    assert_eq!(ctx.store.workspace_by_pod_address("10.212.0.6").await.unwrap(), Some((ws.id, pod, Some(ts(5_000)))));
    assert_eq!(set(pod, None, fence).await, ObservationWrite::Written);
    assert_eq!(ctx.store.workspace_by_pod_address("10.212.0.6").await.unwrap(), None);
    assert_eq!(ctx.store.pod_network(ws.id).await.unwrap(), None);
}

fn key(scope: &str, name: &str) -> (String, String) {
    (scope.to_string(), name.to_string())
}

fn mv(scope: &str, name: &str, seen: (u64, u64), new: (u64, u64)) -> BudgetCounterMove {
    BudgetCounterMove {
        scope: scope.into(),
        name: name.into(),
        seen: Counter { requests: seen.0, bytes: seen.1 },
        new: Counter { requests: new.0, bytes: new.1 },
    }
}

async fn budget_counters_move_by_compare_and_set_all_or_nothing(ctx: Ctx) {
    let s = &ctx.store;
    let keys = [key("ws_1", "api.per_workspace"), key("pod_1", "api.per_task")];
    assert_eq!(s.budget_counters(&keys).await.unwrap(), [Counter::default(), Counter::default()]);
    assert!(s.charge_budgets(&[mv("ws_1", "api.per_workspace", (0, 0), (1, 10))], ts(1)).await.unwrap());
    // Another writer that also read zero loses.
    assert!(!s.charge_budgets(&[mv("ws_1", "api.per_workspace", (0, 0), (1, 10))], ts(2)).await.unwrap());
    // Two counters: the second is fresh, the first stale → nothing written, the fresh one not created.
    let stale = [mv("pod_1", "api.per_task", (0, 0), (1, 5)), mv("ws_1", "api.per_workspace", (0, 0), (1, 5))];
    assert!(!s.charge_budgets(&stale, ts(3)).await.unwrap());
    assert_eq!(s.budget_counters(&keys).await.unwrap()[1], Counter::default());
    let both = [mv("pod_1", "api.per_task", (0, 0), (1, 5)), mv("ws_1", "api.per_workspace", (1, 10), (2, 15))];
    assert!(s.charge_budgets(&both, ts(4)).await.unwrap());
    s.add_budget_bytes("ws_1", "api.per_workspace", 1_000, ts(5)).await.unwrap();
    s.add_budget_bytes("ws_2", "api.per_workspace", 7, ts(5)).await.unwrap();
    assert_eq!(
        s.budget_counters(&[keys[0].clone(), keys[1].clone(), key("ws_2", "api.per_workspace")]).await.unwrap(),
        [Counter { requests: 2, bytes: 1_015 }, Counter { requests: 1, bytes: 5 }, Counter { requests: 0, bytes: 7 }]
    );
    // A move from what was read before the bytes were added is stale.
    assert!(!s.charge_budgets(&[mv("ws_1", "api.per_workspace", (2, 15), (3, 15))], ts(6)).await.unwrap());
}

async fn concurrent_charges_from_two_stores_admit_exactly_the_ceiling(ctx: Ctx) {
    let stores = [ctx.store.clone(), ctx.reopen().await];
    let budget = evershell_core::policy::BudgetRef {
        capability: "api".into(),
        scope: evershell_core::policy::BudgetScope::PerWorkspace,
        limits: evershell_core::policy::Limits { requests: Some(7), bytes: None },
    };
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (s, budget) = (stores[i % 2].clone(), budget.clone());
        tasks.push(tokio::spawn(async move {
            let k = [key("ws_c", "api.per_workspace")];
            loop {
                let seen = s.budget_counters(&k).await.unwrap()[0];
                let Ok(new) = evershell_core::policy::charge(seen, &budget, 1) else { return false };
                let m = BudgetCounterMove { scope: k[0].0.clone(), name: k[0].1.clone(), seen, new };
                if s.charge_budgets(&[m], ts(1)).await.unwrap() {
                    return true;
                }
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 7);
    assert_eq!(
        ctx.store.budget_counters(&[key("ws_c", "api.per_workspace")]).await.unwrap()[0],
        Counter { requests: 7, bytes: 7 }
    );
}
