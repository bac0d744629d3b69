//! The `local` runtime: one bubblewrap sandbox per pod on this machine, its files in `<pods_dir>/<pod_id>/`.
//!
//! Everything the runtime knows lives on disk in the pod directory (the `complete` marker, `sandbox.pid`,
//! `exit_status`, bwrap's `sandbox.status`), so a restarted control plane adopts running sandboxes simply by
//! observing them: the only in-memory state is the set of reaper tasks for sandboxes this process spawned.

mod bwrap;
mod diag;
mod layout;
mod procfs;
mod sandbox;
mod spares;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use evershell_core::ids::{OrgId, PodId, SnapshotId, WorkspaceId};
use evershell_core::lifecycle::PodObservation;
use evershell_snapshot::{Manifest, SnapshotKeys, SnapshotStore};
use tokio::sync::watch;
use tracing::Instrument;

use crate::agent_client::AgentClient;
use crate::pod::{PodError, PodRuntime, PodSpec, PrepareReport};
use layout::PodDir;

pub use bwrap::{AGENT_PATH, AGENT_SOCKET};
pub use sandbox::kill_all_under as kill_all_sandboxes;

/// How long `start` watches a new sandbox for an immediate failure before leaving the rest to `observe`.
const START_SETTLE: Duration = Duration::from_secs(1);
/// How long a spare pod's agent may take to come up (held) before the spare is thrown away.
const SPARE_SETTLE: Duration = Duration::from_secs(10);
/// How long after a pod's start its spare is replaced.
const REFILL_DELAY: Duration = Duration::from_millis(100);

/// How the `local` runtime is set up.
#[derive(Clone)]
pub struct LocalRuntimeConfig {
    /// One directory per pod lives here.
    pub pods_dir: PathBuf,
    /// The `evershell` binary, bound read-only into every sandbox to run `evershell agent`.
    pub agent_binary: PathBuf,
    pub snapshots: SnapshotStore,
    /// The bubblewrap executable.
    pub bwrap: PathBuf,
    /// Sandboxes kept set up (agent held) ahead of need, so a new pod skips the sandbox's set-up. 0 turns it off.
    pub spare_pods: usize,
}

impl LocalRuntimeConfig {
    /// A config using the `bwrap` found on `PATH` (or plain `bwrap`, which `LocalRuntime::new` then reports missing).
    pub fn new(pods_dir: PathBuf, agent_binary: PathBuf, snapshots: SnapshotStore) -> Self {
        let bwrap = bwrap::find_on_path().unwrap_or_else(|| PathBuf::from("bwrap"));
        Self { pods_dir, agent_binary, snapshots, bwrap, spare_pods: 0 }
    }
}

/// Pods as bubblewrap sandboxes on this machine.
pub struct LocalRuntime {
    cfg: LocalRuntimeConfig,
    caps: bwrap::Capabilities,
    /// Sandboxes this process spawned: their reaper flips the flag once `exit_status` is written.
    reapers: Reapers,
    spares: Arc<spares::Spares>,
}

type Reapers = Arc<Mutex<HashMap<PodId, watch::Receiver<bool>>>>;

impl LocalRuntime {
    /// Check bubblewrap (installed, and able to create every namespace) and the agent binary, and create `pods_dir`.
    /// Fails rather than run anything unsandboxed.
    pub fn new(cfg: LocalRuntimeConfig) -> anyhow::Result<Self> {
        let caps = bwrap::probe(&cfg.bwrap)?;
        anyhow::ensure!(
            cfg.agent_binary.is_file(),
            "the agent binary {} does not exist (it is bound into every sandbox)",
            cfg.agent_binary.display()
        );
        std::fs::create_dir_all(&cfg.pods_dir).with_context(|| format!("creating {}", cfg.pods_dir.display()))?;
        let pods_dir = cfg.pods_dir.canonicalize().with_context(|| format!("resolving {}", cfg.pods_dir.display()))?;
        let agent_binary = cfg.agent_binary.canonicalize()?;
        let cfg = LocalRuntimeConfig { pods_dir, agent_binary, ..cfg };
        // Spares belong to no workspace: those a previous run left are killed and deleted.
        let spares = Arc::new(spares::Spares::new(&cfg.pods_dir, cfg.spare_pods));
        if let Ok(rd) = std::fs::read_dir(spares.root()) {
            for e in rd.flatten() {
                spares::discard(&e.path());
            }
        }
        // Files of pods removed before a crash or restart, still waiting to be deleted.
        let trash = layout::trash_root(&cfg.pods_dir);
        if trash.exists() {
            std::thread::spawn(move || {
                if let Err(e) = layout::remove_tree(&trash) {
                    tracing::warn!(error = %e, "deleting removed pods' files failed");
                }
            });
        }
        let rt = Self { cfg, caps, reapers: Arc::default(), spares };
        rt.refill(Duration::ZERO);
        Ok(rt)
    }

    /// Top the spares up in the background after `delay` (and throw away stale ones). Needs a tokio runtime;
    /// without one it does nothing.
    fn refill(&self, delay: Duration) {
        if self.spares.target == 0 || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (spares, cfg, caps, reapers) = (self.spares.clone(), self.cfg.clone(), self.caps, self.reapers.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Ok(_one_at_a_time) = spares.filling.try_lock() else { return };
            let stale = spares.stale();
            if !stale.is_empty() {
                let _ = tokio::task::spawn_blocking(move || stale.iter().for_each(|d| spares::discard(d))).await;
            }
            while spares.missing() > 0 {
                let pod = PodId::new();
                let dir = spares.dir(pod);
                let (d, id) = (dir.clone(), pod.to_string());
                let made = blocking(move || {
                    std::fs::create_dir_all(d.root.parent().expect("a spare has a parent"))?;
                    layout::create(&d, &id)
                });
                if let Err(e) = made.await {
                    tracing::warn!(error = %format!("{e:#}"), "creating a spare pod failed");
                    return;
                }
                match sandbox::spawn(
                    cfg.bwrap.clone(),
                    cfg.agent_binary.clone(),
                    dir.clone(),
                    pod.to_string(),
                    caps.disable_userns,
                )
                .await
                {
                    Ok((child, rec)) => {
                        // The reaper records into the pod's final place, where the spare will be moved.
                        watch_child(&reapers, PodDir::new(&cfg.pods_dir, &pod.to_string()), pod, child, rec);
                        // bwrap resolves its mount sources by path while it sets up, so the directory may move
                        // only once that is over: when the held agent runs and has written its marker.
                        let deadline = Instant::now() + SPARE_SETTLE;
                        while !dir.held().exists() && rec.alive() && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        if !dir.held().exists() {
                            let diag = diag::describe(&dir).unwrap_or_else(|| "no diagnostics".into());
                            tracing::warn!(%diag, "a spare pod did not come up");
                            let root = dir.root.clone();
                            let _ = tokio::task::spawn_blocking(move || spares::discard(&root)).await;
                            return;
                        }
                        spares.add_ready(pod);
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "setting a spare pod up failed");
                        let root = dir.root.clone();
                        let _ = tokio::task::spawn_blocking(move || spares::discard(&root)).await;
                        return;
                    }
                }
            }
        });
    }

    pub fn pods_dir(&self) -> &std::path::Path {
        &self.cfg.pods_dir
    }

    /// The pod's directory on the host (`<pods_dir>/<pod_id>`).
    pub fn pod_dir(&self, pod: PodId) -> PathBuf {
        self.dir(pod).root
    }

    /// The pid of the sandbox's outer bwrap process, while it runs.
    pub fn sandbox_pid(&self, pod: PodId) -> Option<i32> {
        sandbox::read_pid_record(&self.dir(pod)).filter(|r| r.alive()).map(|r| r.pid)
    }

    /// Stop every running sandbox under `pods_dir` (shutdown, tests).
    pub async fn stop_all(&self) {
        let pods = self.list_pods().await.unwrap_or_default();
        for pod in pods {
            if let Err(e) = self.stop(pod).await {
                tracing::warn!(pod_id = %pod, error = %e, "stopping sandbox failed");
            }
        }
    }

    fn dir(&self, pod: PodId) -> PodDir {
        PodDir::new(&self.cfg.pods_dir, &pod.to_string())
    }

    fn running(&self, dir: &PodDir) -> Option<sandbox::PidRecord> {
        sandbox::read_pid_record(dir).filter(|r| r.alive())
    }

    async fn do_observe(&self, pod: PodId) -> Result<PodObservation, PodError> {
        let dir = self.dir(pod);
        if !dir.exists().context("reading the pod directory")? {
            return Ok(PodObservation::Absent);
        }
        if !dir.is_complete().context("reading the complete marker")? {
            return Ok(PodObservation::Partial);
        }
        if self.running(&dir).is_none() {
            return Ok(PodObservation::Exited);
        }
        if !layout::exists(&dir.release()).context("reading the release file")? {
            return Ok(PodObservation::Held);
        }
        Ok(match AgentClient::unix(dir.socket()).health().await {
            Ok(()) => PodObservation::Running,
            Err(_) => PodObservation::Unhealthy,
        })
    }

    async fn do_prepare(&self, spec: &PodSpec, snapshot: Option<&SnapshotKeys>) -> Result<PrepareReport, PodError> {
        let dir = self.dir(spec.pod_id);
        if dir.exists().context("reading the pod directory")? {
            if self.running(&dir).is_some() {
                return Err(anyhow!("pod {} has a running sandbox; stop it before preparing", spec.pod_id).into());
            }
            if dir.is_complete().context("reading the complete marker")? {
                return Err(anyhow!("pod {} is already prepared; remove it to prepare it again", spec.pod_id).into());
            }
            tracing::info!("discarding incomplete pod files");
            let d = dir.clone();
            blocking(move || layout::remove_tree(&d.root)).await.context("removing incomplete pod files")?;
        }
        // A spare reserved for this id is moved into place with its sandbox already set up (agent held). Otherwise
        // the sandbox is set up while the snapshot is restored. Either way its agent is held (`--hold`) until `start`
        // releases it, so nothing in the pod runs on a workspace that is not complete and verified. Setting it up
        // early is best effort: if it fails, `start` starts one the ordinary way and reports what went wrong.
        let spare = self.spares.dir(spec.pod_id);
        let early = if layout::exists(&spare.root).context("reading the spare pod")? {
            let (from, to) = (spare.root.clone(), dir.root.clone());
            blocking(move || std::fs::rename(&from, &to)).await.context("moving the spare pod into place")?;
            self.spares.taken(spec.pod_id);
            tracing::debug!("took a spare pod");
            None
        } else {
            let (d, id) = (dir.clone(), spec.pod_id.to_string());
            blocking(move || layout::create(&d, &id)).await.context("creating the pod directory")?;
            Some(tokio::spawn(sandbox::spawn(
                self.cfg.bwrap.clone(),
                self.cfg.agent_binary.clone(),
                dir.clone(),
                spec.pod_id.to_string(),
                self.caps.disable_userns,
            )))
        };
        let restored = match snapshot {
            Some(keys) => self.cfg.snapshots.restore(keys, &dir.workspace()).await.map(Some),
            None => Ok(None),
        };
        if let Some(early) = early {
            match early.await {
                Ok(Ok((child, rec))) => self.watch(spec.pod_id, child, rec),
                Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "setting the sandbox up early failed"),
                Err(e) => tracing::warn!(error = %e, "setting the sandbox up early panicked"),
            }
        }
        let restored = match restored {
            Ok(r) => r,
            Err(e) => {
                // No sandbox is left behind on files that will be discarded.
                self.do_stop(spec.pod_id).await?;
                return Err(e.into());
            }
        };
        let d = dir.clone();
        blocking(move || layout::mark_complete(&d)).await.context("marking the pod complete")?;
        tracing::info!(restored = restored.is_some(), "pod prepared");
        Ok(PrepareReport { restored })
    }

    async fn do_start(&self, spec: &PodSpec) -> Result<(), PodError> {
        let pod = spec.pod_id;
        let dir = self.dir(pod);
        if !dir.is_complete().context("reading the complete marker")? {
            return Err(PodError::Start(format!("pod {pod} has no complete files to start on")));
        }
        // Let the agent go: the one held in a sandbox set up by `prepare`, or the one spawned below.
        let release = dir.release();
        blocking(move || std::fs::write(&release, b"released\n")).await.context("writing the release file")?;
        let begun = Instant::now();
        let rec = match self.running(&dir) {
            Some(rec) => rec,
            None => {
                let (child, rec) = sandbox::spawn(
                    self.cfg.bwrap.clone(),
                    self.cfg.agent_binary.clone(),
                    dir.clone(),
                    pod.to_string(),
                    self.caps.disable_userns,
                )
                .await
                .map_err(|e| {
                    let diag = diag::describe(&dir).unwrap_or_default();
                    PodError::Start(format!("{e:#}{}{diag}", if diag.is_empty() { "" } else { "; " }))
                })?;
                self.watch(pod, child, rec);
                rec
            }
        };
        // Setup errors (a bind that fails, a missing library) end the sandbox within milliseconds: report them
        // here rather than as an agent that never answers. Normally the agent's socket appears first.
        let deadline = Instant::now() + START_SETTLE;
        while !dir.socket().exists() && Instant::now() < deadline {
            if !rec.alive() {
                self.await_reaper(pod).await;
                let diag = diag::describe(&dir).unwrap_or_else(|| "no diagnostics".into());
                return Err(PodError::Start(format!("the sandbox exited during start-up: {diag}")));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tracing::debug!(socket_ms = begun.elapsed().as_secs_f64() * 1e3, "agent socket up");
        // Replace the spare this pod may have used — a little later, so that setting a sandbox up does not compete
        // with the rest of this pod's start (marking it ready, answering the caller).
        self.refill(REFILL_DELAY);
        Ok(())
    }

    /// Reap a sandbox this process spawned, recording how it ended.
    fn watch(&self, pod: PodId, child: tokio::process::Child, rec: sandbox::PidRecord) {
        watch_child(&self.reapers, self.dir(pod), pod, child, rec);
    }

    async fn do_stop(&self, pod: PodId) -> Result<(), PodError> {
        let dir = self.dir(pod);
        if let Some(rec) = self.running(&dir) {
            tracing::info!(pid = rec.pid, "stopping sandbox");
            sandbox::stop(&dir, rec, sandbox::STOP_GRACE).await?;
            tracing::info!("sandbox stopped");
        }
        self.await_reaper(pod).await;
        Ok(())
    }

    /// When this process spawned the sandbox, wait (briefly) for its reaper to have recorded the exit.
    async fn await_reaper(&self, pod: PodId) {
        let rx = self.reapers.lock().unwrap_or_else(|p| p.into_inner()).get(&pod).cloned();
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|done| *done)).await;
            self.reapers.lock().unwrap_or_else(|p| p.into_inner()).remove(&pod);
        }
    }

    async fn do_capture(
        &self,
        pod: PodId,
        keys: &SnapshotKeys,
        ids: (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, PodError> {
        let dir = self.dir(pod);
        if !dir.is_complete().context("reading the complete marker")? {
            return Err(anyhow!("pod {pod} has no complete files to capture").into());
        }
        if self.running(&dir).is_some() {
            return Err(anyhow!("pod {pod} is running; stop its sandbox before capturing").into());
        }
        let manifest = self.cfg.snapshots.capture(&dir.workspace(), keys, ids).await?;
        tracing::info!(files = manifest.file_count, bytes = manifest.archive_bytes, "workspace captured");
        Ok(manifest)
    }

    async fn do_remove(&self, pod: PodId) -> Result<(), PodError> {
        self.do_stop(pod).await?;
        let dir = self.dir(pod);
        if !dir.exists().context("reading the pod directory")? {
            return Ok(());
        }
        let trash = layout::trash_dir(&self.cfg.pods_dir, pod);
        let doomed = trash.clone();
        blocking(move || {
            // Unmark first: a crash halfway through leaves `Partial` files, never a complete-looking husk. Then move
            // the tree out of the pods directory at once (one rename) and unlink its files in the background: a stop
            // does not wait for thousands of unlinks. Leftovers of a crash are swept when the runtime starts.
            layout::unmark_complete(&dir)?;
            std::fs::create_dir_all(doomed.parent().expect("the trash dir has a parent"))?;
            match std::fs::rename(&dir.root, &doomed) {
                // Removed by someone else meanwhile: the outcome is the same.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        })
        .await
        .context("removing the pod directory")?;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = layout::remove_tree(&trash) {
                tracing::warn!(error = %e, path = %trash.display(), "deleting a removed pod's files failed");
            }
        });
        tracing::info!("pod removed");
        Ok(())
    }
}

/// Reap a sandbox, recording how it ended in `dir`, and let `await_reaper` know.
fn watch_child(reapers: &Reapers, dir: PodDir, pod: PodId, child: tokio::process::Child, rec: sandbox::PidRecord) {
    tracing::info!(pid = rec.pid, init_pid = ?rec.init_pid, "sandbox started");
    let (tx, rx) = watch::channel(false);
    let mine = rx.clone();
    reapers.lock().unwrap_or_else(|p| p.into_inner()).insert(pod, rx);
    let reapers = reapers.clone();
    tokio::spawn(
        async move {
            sandbox::reap(child, dir, rec).await;
            let _ = tx.send(true);
            let mut map = reapers.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&pod).is_some_and(|rx| rx.same_channel(&mine)) {
                map.remove(&pod);
            }
        }
        .instrument(tracing::info_span!("reaper", pod_id = %pod)),
    );
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await.context("blocking task panicked")??)
}

#[async_trait]
impl PodRuntime for LocalRuntime {
    fn name(&self) -> &'static str {
        "local"
    }

    fn reserve_pod(&self) -> PodId {
        // The replacement is set up once this pod has started (`start`), not beside its restore.
        self.spares.reserve().unwrap_or_default()
    }

    fn ready_spares(&self) -> Vec<PodId> {
        self.spares.ready()
    }

    async fn shutdown(&self) {
        self.spares.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wait for a refill in progress, so no spare is set up after this.
        let _no_more = self.spares.filling.lock().await;
        self.spares.clear();
        let root = self.spares.root().to_path_buf();
        let _ = tokio::task::spawn_blocking(move || {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                spares::discard(&e.path());
            }
        })
        .await;
    }

    async fn observe(&self, pod: PodId) -> Result<PodObservation, PodError> {
        self.do_observe(pod).await
    }

    async fn prepare(&self, spec: &PodSpec, snapshot: Option<&SnapshotKeys>) -> Result<PrepareReport, PodError> {
        let span = tracing::info_span!("pod.prepare", pod_id = %spec.pod_id, workspace_id = %spec.workspace_id);
        self.do_prepare(spec, snapshot).instrument(span).await
    }

    async fn start(&self, spec: &PodSpec) -> Result<(), PodError> {
        let span = tracing::info_span!("pod.start", pod_id = %spec.pod_id, workspace_id = %spec.workspace_id);
        self.do_start(spec).instrument(span).await
    }

    async fn stop(&self, pod: PodId) -> Result<(), PodError> {
        self.do_stop(pod).instrument(tracing::info_span!("pod.stop", pod_id = %pod)).await
    }

    async fn capture(
        &self,
        pod: PodId,
        keys: &SnapshotKeys,
        ids: (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, PodError> {
        self.do_capture(pod, keys, ids).instrument(tracing::info_span!("pod.capture", pod_id = %pod)).await
    }

    async fn remove(&self, pod: PodId) -> Result<(), PodError> {
        self.do_remove(pod).instrument(tracing::info_span!("pod.remove", pod_id = %pod)).await
    }

    async fn list_pods(&self) -> Result<Vec<PodId>, PodError> {
        let dir = self.cfg.pods_dir.clone();
        let pods = blocking(move || {
            let mut pods = Vec::new();
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pods),
                Err(e) => return Err(e),
            };
            for entry in rd {
                let name = entry?.file_name();
                let Some(name) = name.to_str().filter(|n| n.starts_with(PodId::PREFIX)) else { continue };
                match name.parse::<PodId>() {
                    Ok(id) => pods.push(id),
                    Err(_) => tracing::warn!(name, "ignoring an unparsable pod directory"),
                }
            }
            pods.sort();
            Ok(pods)
        })
        .await
        .context("listing pods")?;
        Ok(pods)
    }

    fn agent(&self, pod: PodId) -> AgentClient {
        AgentClient::unix(self.dir(pod).socket())
    }

    async fn diagnostics(&self, pod: PodId) -> Option<String> {
        let dir = self.dir(pod);
        tokio::task::spawn_blocking(move || diag::describe(&dir)).await.ok().flatten()
    }
}
