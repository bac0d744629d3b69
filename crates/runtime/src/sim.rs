//! `SimRuntime`: an in-memory, deterministic `PodRuntime` for the reconciler's own tests, with scripted faults. No
//! process, no file, no socket: a pod is a map of file contents plus a sandbox state. Faults are scripted per
//! operation — fail the next N calls, hold the next call at a pause point until the test lets it go — and per pod —
//! its sandbox exits, its agent stops answering. Never the default for users: nothing outside tests constructs it.
//!
//! Snapshots captured here live in the simulator's own map, keyed by archive key (the reconciler's `SnapshotStore`
//! never sees their bytes); deleting one through the `SnapshotStore` does not remove it from that map.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use evershell_core::Timestamp;
use evershell_core::ids::{OrgId, PodId, SnapshotId, WorkspaceId};
use evershell_core::lifecycle::PodObservation;
use evershell_snapshot::{Manifest, SnapshotError, SnapshotKeys};
use tokio::sync::{Notify, Semaphore};

use crate::agent_client::AgentClient;
use crate::pod::{PodError, PodRuntime, PodSpec, PrepareReport};

/// A pod's files: path → content.
pub type Files = BTreeMap<String, Vec<u8>>;

/// The runtime operations faults can be scripted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimOp {
    Observe,
    Prepare,
    Start,
    Stop,
    Capture,
    /// `capture_running`: a checkpoint of a running pod.
    CaptureRunning,
    Remove,
}

/// A point where the next call of an operation waits until the test releases it.
pub struct Pause {
    arrived: AtomicBool,
    arrival: Notify,
    release: Semaphore,
}

impl Default for Pause {
    fn default() -> Self {
        Self { arrived: AtomicBool::new(false), arrival: Notify::new(), release: Semaphore::new(0) }
    }
}

impl Pause {
    /// Wait until a call has reached the pause point.
    pub async fn reached(&self) {
        loop {
            let notified = self.arrival.notified();
            if self.arrived.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Let the held call go on.
    pub fn release(&self) {
        self.release.add_permits(1);
    }

    async fn hold(&self) {
        self.arrived.store(true, Ordering::SeqCst);
        self.arrival.notify_waiters();
        let _ = self.release.acquire().await.map(|p| p.forget());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sandbox {
    None,
    Running { answering: bool },
}

#[derive(Debug, Clone)]
struct SimPod {
    /// `None` while a prepare is incomplete (interrupted).
    files: Option<Files>,
    sandbox: Sandbox,
    /// Why the sandbox last ended on its own.
    exited: Option<String>,
}

#[derive(Default)]
struct State {
    pods: HashMap<PodId, SimPod>,
    snapshots: HashMap<String, Files>,
    fail_next: HashMap<SimOp, u32>,
    pauses: HashMap<SimOp, Arc<Pause>>,
    calls: HashMap<SimOp, u32>,
    /// A started sandbox's agent does not answer (`Unhealthy` for ever).
    mute_on_start: bool,
    /// Pods have a network of their own: each known pod gets an address (`pod_address`).
    networked: bool,
    addresses: HashMap<PodId, std::net::IpAddr>,
}

/// The simulated runtime. Cheap to share: wrap it in an `Arc` and hand the same one to a "restarted" control plane
/// to simulate a crash (pods outlive the control plane, as real ones do).
#[derive(Default)]
pub struct SimRuntime {
    state: Mutex<State>,
}

impl SimRuntime {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The next `n` calls of `op` fail with a retryable error.
    pub fn fail_next(&self, op: SimOp, n: u32) {
        *self.state.lock().unwrap().fail_next.entry(op).or_default() += n;
    }

    /// The next call of `op` waits at a pause point until released.
    pub fn pause_next(&self, op: SimOp) -> Arc<Pause> {
        let p = Arc::new(Pause::default());
        self.state.lock().unwrap().pauses.insert(op, p.clone());
        p
    }

    /// Sandboxes started from now on run an agent that never answers.
    pub fn mute_agents_on_start(&self, mute: bool) {
        self.state.lock().unwrap().mute_on_start = mute;
    }

    /// Pods get a network of their own (an address each, as the local runtime's networked pods do).
    pub fn give_pods_addresses(&self, on: bool) {
        self.state.lock().unwrap().networked = on;
    }

    /// The pod's sandbox exits on its own with `why` (its files stay).
    pub fn exit(&self, pod: PodId, why: &str) {
        if let Some(p) = self.state.lock().unwrap().pods.get_mut(&pod) {
            p.sandbox = Sandbox::None;
            p.exited = Some(why.to_string());
        }
    }

    /// The pod's agent stops answering (the sandbox keeps running).
    pub fn silence_agent(&self, pod: PodId) {
        if let Some(p) = self.state.lock().unwrap().pods.get_mut(&pod)
            && let Sandbox::Running { .. } = p.sandbox
        {
            p.sandbox = Sandbox::Running { answering: false };
        }
    }

    /// Write a file into the pod's `/workspace` (as a task would).
    pub fn write_file(&self, pod: PodId, path: &str, content: &[u8]) {
        if let Some(files) = self.state.lock().unwrap().pods.get_mut(&pod).and_then(|p| p.files.as_mut()) {
            files.insert(path.to_string(), content.to_vec());
        }
    }

    /// The pod's files (`None` when it has none, or incomplete ones).
    pub fn files(&self, pod: PodId) -> Option<Files> {
        self.state.lock().unwrap().pods.get(&pod).and_then(|p| p.files.clone())
    }

    /// Whether the pod's sandbox runs.
    pub fn is_running(&self, pod: PodId) -> bool {
        self.state.lock().unwrap().pods.get(&pod).is_some_and(|p| matches!(p.sandbox, Sandbox::Running { .. }))
    }

    /// The files captured under a snapshot's archive key.
    pub fn snapshot_files(&self, keys: &SnapshotKeys) -> Option<Files> {
        self.state.lock().unwrap().snapshots.get(keys.archive.as_ref()).cloned()
    }

    /// How many calls of `op` were made (failed and paused ones included).
    pub fn calls(&self, op: SimOp) -> u32 {
        self.state.lock().unwrap().calls.get(&op).copied().unwrap_or(0)
    }

    /// Count the call, then apply a scripted pause and failure.
    async fn enter(&self, op: SimOp) -> Result<(), PodError> {
        let pause = {
            let mut st = self.state.lock().unwrap();
            *st.calls.entry(op).or_default() += 1;
            st.pauses.remove(&op)
        };
        if let Some(p) = pause {
            p.hold().await;
        }
        let mut st = self.state.lock().unwrap();
        if let Some(n) = st.fail_next.get_mut(&op)
            && *n > 0
        {
            *n -= 1;
            return Err(PodError::Other(anyhow::anyhow!("simulated {op:?} failure")));
        }
        Ok(())
    }
}

/// The manifest the simulator makes up for a capture of `files`.
fn sim_manifest(files: &Files, (org_id, workspace_id, snapshot_id): (OrgId, WorkspaceId, SnapshotId)) -> Manifest {
    let bytes: u64 = files.values().map(|c| c.len() as u64).sum();
    Manifest {
        format_version: 2,
        snapshot_id,
        org_id,
        workspace_id,
        archive_sha256: format!("{:064x}", bytes),
        archive_bytes: bytes,
        file_count: files.len() as u64,
        content_bytes: bytes,
        data_bytes: bytes,
        created_at: Timestamp::now(),
        index: None,
    }
}

#[async_trait]
impl PodRuntime for SimRuntime {
    fn name(&self) -> &'static str {
        "sim"
    }

    async fn observe(&self, pod: PodId) -> Result<PodObservation, PodError> {
        self.enter(SimOp::Observe).await?;
        let st = self.state.lock().unwrap();
        Ok(match st.pods.get(&pod) {
            None => PodObservation::Absent,
            Some(SimPod { files: None, .. }) => PodObservation::Partial,
            Some(SimPod { sandbox: Sandbox::None, .. }) => PodObservation::Exited,
            Some(SimPod { sandbox: Sandbox::Running { answering: true }, .. }) => PodObservation::Running,
            Some(SimPod { sandbox: Sandbox::Running { answering: false }, .. }) => PodObservation::Unhealthy,
        })
    }

    async fn prepare(&self, spec: &PodSpec, snapshot: Option<&SnapshotKeys>) -> Result<PrepareReport, PodError> {
        // Incomplete files exist from the first moment, as on disk.
        self.state
            .lock()
            .unwrap()
            .pods
            .insert(spec.pod_id, SimPod { files: None, sandbox: Sandbox::None, exited: None });
        self.enter(SimOp::Prepare).await?;
        let mut st = self.state.lock().unwrap();
        let files = match snapshot {
            None => Files::new(),
            Some(keys) => match st.snapshots.get(keys.archive.as_ref()) {
                Some(f) => f.clone(),
                None => return Err(PodError::Snapshot(SnapshotError::Missing(keys.archive.to_string()))),
            },
        };
        st.pods.insert(spec.pod_id, SimPod { files: Some(files), sandbox: Sandbox::None, exited: None });
        // The simulator keeps no manifest for its snapshots.
        Ok(PrepareReport { restored: None })
    }

    async fn start(&self, spec: &PodSpec) -> Result<(), PodError> {
        self.enter(SimOp::Start).await?;
        let mut st = self.state.lock().unwrap();
        let answering = !st.mute_on_start;
        match st.pods.get_mut(&spec.pod_id) {
            Some(p) if p.files.is_some() => {
                p.sandbox = Sandbox::Running { answering };
                p.exited = None;
                Ok(())
            }
            _ => Err(PodError::Start("the pod has no complete files".into())),
        }
    }

    async fn stop(&self, pod: PodId) -> Result<(), PodError> {
        self.enter(SimOp::Stop).await?;
        if let Some(p) = self.state.lock().unwrap().pods.get_mut(&pod) {
            p.sandbox = Sandbox::None;
        }
        Ok(())
    }

    async fn capture(
        &self,
        pod: PodId,
        keys: &SnapshotKeys,
        (org_id, workspace_id, snapshot_id): (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, PodError> {
        self.enter(SimOp::Capture).await?;
        let mut st = self.state.lock().unwrap();
        let files = match st.pods.get(&pod) {
            Some(SimPod { files: Some(f), sandbox: Sandbox::None, .. }) => f.clone(),
            Some(SimPod { sandbox: Sandbox::Running { .. }, .. }) => {
                return Err(PodError::Other(anyhow::anyhow!("capture of a running sandbox")));
            }
            _ => return Err(PodError::Other(anyhow::anyhow!("the pod has no files to capture"))),
        };
        let manifest = sim_manifest(&files, (org_id, workspace_id, snapshot_id));
        st.snapshots.insert(keys.archive.to_string(), files);
        Ok(manifest)
    }

    async fn capture_running(
        &self,
        pod: PodId,
        keys: &SnapshotKeys,
        (org_id, workspace_id, snapshot_id): (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, PodError> {
        self.enter(SimOp::CaptureRunning).await?;
        let mut st = self.state.lock().unwrap();
        let files = match st.pods.get(&pod) {
            Some(SimPod { files: Some(f), sandbox: Sandbox::Running { .. }, .. }) => f.clone(),
            Some(SimPod { sandbox: Sandbox::None, .. }) => {
                return Err(PodError::Other(anyhow::anyhow!("the pod's sandbox does not run")));
            }
            _ => return Err(PodError::Other(anyhow::anyhow!("the pod has no files to capture"))),
        };
        let manifest = sim_manifest(&files, (org_id, workspace_id, snapshot_id));
        st.snapshots.insert(keys.archive.to_string(), files);
        Ok(manifest)
    }

    async fn remove(&self, pod: PodId) -> Result<(), PodError> {
        self.enter(SimOp::Remove).await?;
        self.state.lock().unwrap().pods.remove(&pod);
        Ok(())
    }

    async fn list_pods(&self) -> Result<Vec<PodId>, PodError> {
        let mut pods: Vec<PodId> = self.state.lock().unwrap().pods.keys().copied().collect();
        pods.sort();
        Ok(pods)
    }

    fn pod_address(&self, pod: PodId) -> Option<std::net::IpAddr> {
        let mut st = self.state.lock().unwrap();
        if !st.networked || !st.pods.contains_key(&pod) {
            return None;
        }
        let n = st.addresses.len() as u32;
        Some(*st.addresses.entry(pod).or_insert_with(|| std::net::Ipv4Addr::from(0x0ad4_0002 + 4 * n).into()))
    }

    fn agent(&self, pod: PodId) -> AgentClient {
        // Nothing listens there: the simulator has no agent to talk to.
        AgentClient::unix(std::path::PathBuf::from(format!("/nonexistent/evershell-sim/{pod}.sock")))
    }

    async fn diagnostics(&self, pod: PodId) -> Option<String> {
        self.state.lock().unwrap().pods.get(&pod).and_then(|p| p.exited.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodSpec {
        PodSpec {
            pod_id: PodId::new(),
            org_id: OrgId::new(),
            workspace_id: WorkspaceId::new(),
            limits: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_pod_goes_through_its_observations() {
        let rt = SimRuntime::new();
        let s = spec();
        assert_eq!(rt.observe(s.pod_id).await.unwrap(), PodObservation::Absent);
        rt.fail_next(SimOp::Prepare, 1);
        assert!(matches!(rt.prepare(&s, None).await, Err(PodError::Other(_))));
        assert_eq!(rt.observe(s.pod_id).await.unwrap(), PodObservation::Partial);
        rt.prepare(&s, None).await.unwrap();
        assert_eq!(rt.observe(s.pod_id).await.unwrap(), PodObservation::Exited);
        rt.start(&s).await.unwrap();
        assert_eq!(rt.observe(s.pod_id).await.unwrap(), PodObservation::Running);
        rt.silence_agent(s.pod_id);
        assert_eq!(rt.observe(s.pod_id).await.unwrap(), PodObservation::Unhealthy);
        rt.exit(s.pod_id, "killed");
        assert_eq!(rt.observe(s.pod_id).await.unwrap(), PodObservation::Exited);
        assert_eq!(rt.diagnostics(s.pod_id).await.as_deref(), Some("killed"));
        rt.remove(s.pod_id).await.unwrap();
        assert_eq!(rt.observe(s.pod_id).await.unwrap(), PodObservation::Absent);
        assert_eq!(rt.calls(SimOp::Prepare), 2);
    }

    #[tokio::test]
    async fn a_running_pod_is_captured_and_keeps_running() {
        let rt = SimRuntime::new();
        let s = spec();
        rt.prepare(&s, None).await.unwrap();
        let keys = SnapshotKeys::new(s.org_id, s.workspace_id, SnapshotId::new());
        let ids = (s.org_id, s.workspace_id, SnapshotId::new());
        assert!(rt.capture_running(s.pod_id, &keys, ids).await.is_err(), "a pod that does not run is refused");
        rt.start(&s).await.unwrap();
        rt.write_file(s.pod_id, "a.txt", b"after one task");
        let m = rt.capture_running(s.pod_id, &keys, ids).await.unwrap();
        assert_eq!(m.file_count, 1);
        assert!(rt.is_running(s.pod_id));
        rt.write_file(s.pod_id, "b.txt", b"later");
        assert_eq!(rt.snapshot_files(&keys).unwrap().keys().collect::<Vec<_>>(), vec!["a.txt"]);
        rt.fail_next(SimOp::CaptureRunning, 1);
        assert!(rt.capture_running(s.pod_id, &keys, ids).await.is_err());
        assert_eq!(rt.calls(SimOp::CaptureRunning), 3);
    }

    #[tokio::test]
    async fn capture_and_restore_carry_the_files() {
        let rt = SimRuntime::new();
        let s = spec();
        rt.prepare(&s, None).await.unwrap();
        rt.write_file(s.pod_id, "a.txt", b"hello");
        let keys = SnapshotKeys::new(s.org_id, s.workspace_id, SnapshotId::new());
        let m = rt.capture(s.pod_id, &keys, (s.org_id, s.workspace_id, SnapshotId::new())).await.unwrap();
        assert_eq!((m.file_count, m.content_bytes), (1, 5));
        let again = PodSpec { pod_id: PodId::new(), ..s.clone() };
        rt.prepare(&again, Some(&keys)).await.unwrap();
        assert_eq!(rt.files(again.pod_id).unwrap()["a.txt"], b"hello");
        let missing = SnapshotKeys::new(s.org_id, s.workspace_id, SnapshotId::new());
        assert!(matches!(rt.prepare(&again, Some(&missing)).await, Err(PodError::Snapshot(_))));
    }

    #[tokio::test]
    async fn a_paused_call_waits_for_its_release() {
        let rt = SimRuntime::new();
        let s = spec();
        let pause = rt.pause_next(SimOp::Prepare);
        let rt2 = rt.clone();
        let s2 = s.clone();
        let call = tokio::spawn(async move { rt2.prepare(&s2, None).await });
        pause.reached().await;
        assert_eq!(rt.observe(s.pod_id).await.unwrap(), PodObservation::Partial);
        pause.release();
        call.await.unwrap().unwrap();
        assert_eq!(rt.observe(s.pod_id).await.unwrap(), PodObservation::Exited);
    }
}
