//! The `PodRuntime` contract.

use async_trait::async_trait;
use evershell_core::ids::{OrgId, PodId, SnapshotId, TaskId, WorkspaceId};
use evershell_core::lifecycle::PodObservation;
use evershell_snapshot::{Manifest, SnapshotError, SnapshotKeys};

use crate::agent_client::AgentClient;

/// What a pod is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub pod_id: PodId,
    pub org_id: OrgId,
    pub workspace_id: WorkspaceId,
    /// The role's overrides of the runtime's default resource limits (unset fields keep the defaults).
    pub limits: PodLimits,
}

/// What a pod may use: memory, processes, CPU. `None`: the runtime's default for that field (in a runtime's own
/// defaults, `None` is "not limited").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PodLimits {
    /// Most memory (RSS and the page cache the pod causes), bytes, with no swap on top; over it the kernel's OOM
    /// killer ends the pod's largest process.
    pub memory_bytes: Option<u64>,
    /// Most processes and threads at once (a fork beyond fails with EAGAIN).
    pub pids: Option<u64>,
    /// CPU time per wall-clock time in thousandths of a CPU (1000 = one full core).
    pub cpu_millis: Option<u64>,
}

impl PodLimits {
    /// `self` with every field `over` sets taken from it.
    pub fn overridden_by(self, over: PodLimits) -> PodLimits {
        PodLimits {
            memory_bytes: over.memory_bytes.or(self.memory_bytes),
            pids: over.pids.or(self.pids),
            cpu_millis: over.cpu_millis.or(self.cpu_millis),
        }
    }
}

/// What `prepare` did.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareReport {
    /// The manifest of the restored snapshot; `None` for an empty workspace.
    pub restored: Option<Manifest>,
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The snapshot could not be restored (missing, corrupt, unsafe). Permanent: the workspace fails.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The sandbox could not be started. Permanent for this attempt.
    #[error("sandbox failed to start: {0}")]
    Start(String),
    /// Anything else (I/O); may be retried.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Where pods run. Every method is idempotent and safe to call again after a crash at any point.
#[async_trait]
pub trait PodRuntime: Send + Sync + 'static {
    /// `local`, `kubernetes`, …
    fn name(&self) -> &'static str;

    /// The id for a new pod. A runtime that keeps pods ready ahead of need hands out one of theirs; the id is recorded
    /// by the caller before `prepare` is called with it.
    fn reserve_pod(&self) -> PodId {
        PodId::new()
    }

    /// The pods kept ready ahead of need that `reserve_pod` would hand out now, oldest first (none by default).
    fn ready_spares(&self) -> Vec<PodId> {
        Vec::new()
    }

    /// Release what the runtime holds for itself (pods kept ready ahead of need). Workspaces' pods are left alone:
    /// they outlive the control plane.
    async fn shutdown(&self) {}

    /// What exists of the pod. Never answers `Unallocated` (that is the store's to say).
    async fn observe(&self, pod: PodId) -> Result<PodObservation, PodError>;

    /// Create the pod's files: restore `snapshot` into `/workspace` (verifying it against its manifest) or start
    /// empty, then mark the files complete. Any earlier incomplete files are discarded first. The sandbox is not
    /// started.
    async fn prepare(&self, spec: &PodSpec, snapshot: Option<&SnapshotKeys>) -> Result<PrepareReport, PodError>;

    /// Start the sandbox on the pod's complete files. Returns once the process is spawned; the agent may take a
    /// moment to answer (`observe` says `Unhealthy` until it does).
    async fn start(&self, spec: &PodSpec) -> Result<(), PodError>;

    /// Stop the sandbox and wait until every process in it is gone. The files stay. No-op when not running.
    async fn stop(&self, pod: PodId) -> Result<(), PodError>;

    /// Save the pod's `/workspace` as snapshot `snap` (written, read back and verified). The sandbox must be stopped.
    async fn capture(
        &self,
        pod: PodId,
        keys: &SnapshotKeys,
        ids: (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, PodError>;

    /// Save the `/workspace` of a pod whose sandbox runs as snapshot `snap` (written, read back and verified), with
    /// its processes frozen for the length of the capture so the snapshot is one moment's state, and thawed after —
    /// always, also when the capture fails. A runtime with no way to freeze captures the files as they are (see
    /// its docs). Fails when the sandbox does not run.
    async fn capture_running(
        &self,
        pod: PodId,
        keys: &SnapshotKeys,
        ids: (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, PodError> {
        let _ = (pod, keys, ids);
        Err(PodError::Other(anyhow::anyhow!("the {} runtime cannot capture a running pod", self.name())))
    }

    /// Stop the sandbox if it runs and delete the pod's files. No-op when absent.
    async fn remove(&self, pod: PodId) -> Result<(), PodError>;

    /// Every pod that exists (files or process), for adoption and garbage collection after a restart.
    async fn list_pods(&self) -> Result<Vec<PodId>, PodError>;

    /// The address the pod's outbound connections come from (what the egress proxy knows it by), when pods get a
    /// network of their own; `None` otherwise or when the pod has no identity yet.
    fn pod_address(&self, _pod: PodId) -> Option<std::net::IpAddr> {
        None
    }

    /// A client for the agent inside the pod.
    fn agent(&self, pod: PodId) -> AgentClient;

    /// Copy a task's uploaded files (name, host path of the staged copy) to `/data/uploads/<task>/<name>` in the
    /// pod: owned by the sandbox user, mode 0644, in a 0755 directory, never through a link pod code planted.
    /// Idempotent (a placed file is replaced). A runtime that cannot place files refuses.
    async fn place_uploads(
        &self,
        _pod: PodId,
        _task: TaskId,
        _files: &[(String, std::path::PathBuf)],
    ) -> Result<(), PodError> {
        Err(PodError::Other(anyhow::anyhow!("the `{}` runtime cannot place uploaded files", self.name())))
    }

    /// A short, secret-free description of why the sandbox ended (exit status, last log lines), for `last_error`.
    async fn diagnostics(&self, pod: PodId) -> Option<String>;
}
