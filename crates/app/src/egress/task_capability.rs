//! A task's egress identity: the capability token that makes the proxy resolve the pod's connections to the task
//! (audit rows with its `task_id`, its own `per_task` budget counters). The dispatcher holds it for the task at the
//! head of the workspace's queue — granted before the task is delivered, so the agent's first request already
//! carries it, and renewed on every round while the task runs — and releases it when the task ends. The store
//! grants it only while the task is open and the proxy's lookup joins the task's status, so a token whose release
//! was lost (a crash) names nobody once its task ended. The token is minted here and stored for the proxy; it is
//! never sent to the pod nor logged.

use std::time::Duration;

use evershell_core::Timestamp;
use evershell_core::ids::{PodId, TaskId, WorkspaceId};
use evershell_store::{Store, TaskCapability};
use rand::RngCore;

/// How long a task's token lives; renewed once less than half of it is left (the dispatcher's rounds are far
/// shorter). A task whose control plane is gone loses its identity at most this long after.
pub const TASK_CAPABILITY_TTL: Duration = Duration::from_secs(15 * 60);

/// Make sure `task`, about to run or running on `ws`'s pod `pod`, holds a live token (grant or renew).
pub async fn hold(store: &dyn Store, ws: WorkspaceId, pod: PodId, task: TaskId) -> evershell_core::Result<()> {
    let now = Timestamp::now();
    let half = (TASK_CAPABILITY_TTL.as_millis() / 2) as i64;
    if let Some(c) = store.task_capability(task).await?
        && c.pod_id == pod
        && c.workspace_id == ws
        && c.expires_at > now.plus_millis(half)
    {
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let cap = TaskCapability {
        task_id: task,
        workspace_id: ws,
        pod_id: pod,
        capability: hex::encode(bytes),
        expires_at: now.plus_millis(TASK_CAPABILITY_TTL.as_millis() as i64),
    };
    if store.set_task_capability(&cap, now).await? {
        tracing::debug!(workspace_id = %ws, task_id = %task, pod_id = %pod, "task egress capability granted");
    }
    Ok(())
}

/// The task ended: revoke its token. From the proxy's next identity lookup on (within its cache TTL), the pod's
/// requests carry no task.
pub async fn release(store: &dyn Store, task: TaskId) -> evershell_core::Result<()> {
    store.revoke_task_capability(task).await?;
    tracing::debug!(task_id = %task, "task egress capability revoked");
    Ok(())
}
