//! A running pod's network observation: the address its connections come from and its capability token. The
//! reconciler records both when the pod is marked ready, renews the token while the pod runs (so a proxy in another
//! process denies a pod whose control plane is gone once the token lapses), and clears them before the pod stops.
//! Every write presents the reconciler's lease fence, as observation writes do: a reconciler that lost the lease
//! (another replica took the workspace over) writes nothing and must stop. The token is minted here and stored for
//! the proxy; it is never written where the pod can read it.

use std::time::Duration;

use evershell_core::Timestamp;
use evershell_core::ids::{PodId, WorkspaceId};
use evershell_runtime::PodRuntime;
use evershell_store::{Fence, ObservationWrite, PodNetwork, Store};
use rand::RngCore;

/// How long a capability token lives; renewed once less than half of it is left.
pub const CAPABILITY_TTL: Duration = Duration::from_secs(15 * 60);

fn mint(address: String, now: Timestamp) -> PodNetwork {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    PodNetwork {
        address,
        capability: hex::encode(bytes),
        capability_expires_at: now.plus_millis(CAPABILITY_TTL.as_millis() as i64),
    }
}

/// Record the pod's address and a fresh capability token under `fence` (`Written` with nothing done when pods have
/// no network of their own; `Fenced` when the lease is no longer `fence`'s: the caller stops).
pub async fn record(
    store: &dyn Store,
    rt: &dyn PodRuntime,
    ws: WorkspaceId,
    pod: PodId,
    fence: &Fence,
) -> evershell_core::Result<ObservationWrite> {
    let Some(addr) = rt.pod_address(pod) else { return Ok(ObservationWrite::Written) };
    let net = mint(addr.to_string(), Timestamp::now());
    let wrote = store.set_pod_network(ws, pod, Some(&net), fence).await?;
    match wrote {
        ObservationWrite::Written => {
            tracing::debug!(workspace_id = %ws, pod_id = %pod, address = %addr, "pod network recorded")
        }
        ObservationWrite::Stale => {
            tracing::debug!(workspace_id = %ws, pod_id = %pod, "pod network of a pod no longer owned")
        }
        ObservationWrite::Fenced => {
            tracing::warn!(workspace_id = %ws, pod_id = %pod, epoch = fence.epoch, "pod network write fenced off")
        }
    }
    Ok(wrote)
}

/// Renew the token of a running pod when less than half its life is left (or record it when missing: a pod adopted
/// after a restart).
pub async fn renew(
    store: &dyn Store,
    rt: &dyn PodRuntime,
    ws: WorkspaceId,
    pod: PodId,
    fence: &Fence,
) -> evershell_core::Result<ObservationWrite> {
    let Some(addr) = rt.pod_address(pod) else { return Ok(ObservationWrite::Written) };
    let now = Timestamp::now();
    let half = (CAPABILITY_TTL.as_millis() / 2) as i64;
    match store.pod_network(ws).await? {
        Some((p, net))
            if p == pod && net.address == addr.to_string() && net.capability_expires_at > now.plus_millis(half) =>
        {
            Ok(ObservationWrite::Written)
        }
        _ => record(store, rt, ws, pod, fence).await,
    }
}

/// Forget the pod's address and token (before it stops): from now on its connections are denied.
pub async fn clear(
    store: &dyn Store,
    ws: WorkspaceId,
    pod: PodId,
    fence: &Fence,
) -> evershell_core::Result<ObservationWrite> {
    store.set_pod_network(ws, pod, None, fence).await
}
