//! The `local` runtime: one bubblewrap sandbox per pod on this machine, its files in `<pods_dir>/<pod_id>/`.
//!
//! Everything the runtime knows lives on disk in the pod directory (the `complete` marker, `sandbox.pid`,
//! `exit_status`, bwrap's `sandbox.status`), so a restarted control plane adopts running sandboxes simply by
//! observing them: the only in-memory state is the set of reaper tasks for sandboxes this process spawned.

mod bwrap;
mod cgroup;
mod diag;
mod disk;
mod identity;
mod layout;
mod logpipe;
mod netns;
mod procfs;
mod sandbox;
mod seccomp;
mod spares;
mod trust;
mod uploads;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use evershell_core::ids::{OrgId, PodId, SnapshotId, TaskId, WorkspaceId};
use evershell_core::lifecycle::PodObservation;
use evershell_snapshot::{Manifest, SnapshotKeys, SnapshotStore};
use tokio::sync::watch;
use tracing::Instrument;

use crate::agent_client::AgentClient;
use crate::pod::{PodError, PodLimits, PodRuntime, PodSpec, PrepareReport};
use layout::PodDir;

pub use bwrap::{AGENT_PATH, AGENT_SOCKET};
pub use cgroup::base_name as cgroup_base_name;
pub use identity::{DEFAULT_BASE as DEFAULT_POD_UID_BASE, DEFAULT_COUNT as DEFAULT_POD_UID_COUNT, PodIdentity};
pub use logpipe::DEFAULT_CAP as DEFAULT_SANDBOX_LOG_BYTES;
pub use netns::{
    DEFAULT_DNS_PORT, DEFAULT_PROXY_PORT, Ports as NetworkPorts, addresses as pod_addresses, table as network_table,
};
pub use sandbox::kill_all_under as kill_all_sandboxes;
pub use seccomp::denied_names as seccomp_denied_syscalls;
pub use trust::{ENV as CA_ENV, POD_BUNDLE as POD_CA_BUNDLE, POD_PLATFORM_CA};

/// The pods' seccomp programs as two fresh memfds (deny list, guard), for benchmarks that replay a sandbox's
/// command line with `--add-seccomp-fd`.
pub fn seccomp_memfds() -> anyhow::Result<[std::os::fd::OwnedFd; 2]> {
    let p = seccomp::build()?;
    Ok([seccomp::memfd("evershell-seccomp", &p.deny)?, seccomp::memfd("evershell-seccomp-guard", &p.guard)?])
}

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
    /// When the control plane runs as root, pods run as uids `pod_uid_base + 1 ..= pod_uid_base + pod_uid_count`
    /// (one per pod); `pod_uid_base` itself is the group that may search the pods directory.
    pub pod_uid_base: u32,
    pub pod_uid_count: u32,
    /// Cap of a pod's `sandbox.log` (one rotated file of the same size is kept beside it).
    pub sandbox_log_bytes: u64,
    /// Most content (apparent bytes of regular files) a workspace may hold: a stop over it fails with the files
    /// kept, a restore over it is refused before anything is written. `None`: no cap.
    pub max_workspace_bytes: Option<u64>,
    /// Give pods a network namespace of their own whose outbound traffic goes to the egress proxy and DNS responder
    /// on these host ports (needs root and `ip`/`nft`; otherwise pods have loopback only). `None`: loopback only.
    pub network: Option<netns::Ports>,
    /// The egress proxy's platform CA certificate (PEM; the proxy creates it as `ca.pem` in its CA directory).
    /// Every pod trusts it: the host's bundle plus this certificate is bound over the distro bundle paths and named
    /// by `SSL_CERT_FILE` and friends. Re-read whenever it changes. `None`: pods see the host's bundle only.
    pub egress_ca_file: Option<PathBuf>,
    /// Every pod's default memory, process and CPU limits (cgroups; a role's `PodSpec::limits` overrides them).
    pub limits: PodLimits,
    /// Size of each pod's `/workspace` file system (a loop-mounted sparse ext4 image, `disk.rs`): writes beyond it
    /// fail with ENOSPC inside the pod. `None`: no disk limit (`/workspace` is a directory of the data dir).
    pub disk_limit_bytes: Option<u64>,
    /// Extra environment of every pod's agent, set after the sandbox clears its environment: only the names in
    /// [`AGENT_ENV_NAMES`], each with a decimal value (`LocalRuntime::new` refuses anything else), so neither the
    /// API nor a typo can put arbitrary variables or secrets into pods.
    pub agent_env: Vec<(String, String)>,
}

/// The agent settings a pod's environment may carry (read by `evershell agent`, `LoopConfig::from_env`): the model
/// call's first retry wait, its wait for response headers, and the longest silence inside a streamed answer, in ms.
pub const AGENT_ENV_NAMES: &[&str] = &[
    "EVERSHELL_AGENT_MODEL_RETRY_BASE_MS",
    "EVERSHELL_AGENT_MODEL_RESPONSE_TIMEOUT_MS",
    "EVERSHELL_AGENT_MODEL_IDLE_TIMEOUT_MS",
];

/// Refuse agent environment outside [`AGENT_ENV_NAMES`] or with a value that is not a plain decimal number.
pub fn check_agent_env(env: &[(String, String)]) -> anyhow::Result<()> {
    for (k, v) in env {
        anyhow::ensure!(AGENT_ENV_NAMES.contains(&k.as_str()), "`{k}` is not an agent setting a pod may be given");
        anyhow::ensure!(
            !v.is_empty() && v.len() <= 12 && v.bytes().all(|b| b.is_ascii_digit()),
            "the agent setting `{k}` must be a decimal number, not `{v}`"
        );
    }
    Ok(())
}

impl LocalRuntimeConfig {
    /// A config using the `bwrap` found on `PATH` (or plain `bwrap`, which `LocalRuntime::new` then reports missing).
    pub fn new(pods_dir: PathBuf, agent_binary: PathBuf, snapshots: SnapshotStore) -> Self {
        let bwrap = bwrap::find_on_path().unwrap_or_else(|| PathBuf::from("bwrap"));
        Self {
            pods_dir,
            agent_binary,
            snapshots,
            bwrap,
            spare_pods: 0,
            pod_uid_base: identity::DEFAULT_BASE,
            pod_uid_count: identity::DEFAULT_COUNT,
            sandbox_log_bytes: logpipe::DEFAULT_CAP,
            max_workspace_bytes: None,
            network: None,
            egress_ca_file: None,
            limits: PodLimits::default(),
            disk_limit_bytes: None,
            agent_env: Vec::new(),
        }
    }
}

/// Pods as bubblewrap sandboxes on this machine.
pub struct LocalRuntime {
    cfg: LocalRuntimeConfig,
    launcher: sandbox::Launcher,
    /// Pod uids, when this process is root (`None`: pods run as this process's own unprivileged uid).
    identities: Option<Arc<identity::Identities>>,
    /// Sandboxes this process spawned: their reaper flips the flag once `exit_status` is written.
    reapers: Reapers,
    /// Pods whose `sandbox.log` this process relays.
    relays: Relays,
    spares: Arc<spares::Spares>,
    /// The CA bundle's generation the ready spares were set up with.
    trust_generation: AtomicU64,
}

type Relays = Arc<Mutex<HashSet<PodId>>>;

type Reapers = Arc<Mutex<HashMap<PodId, watch::Receiver<bool>>>>;

impl LocalRuntime {
    /// Check bubblewrap (installed, and able to create every namespace) and the agent binary, and create `pods_dir`.
    /// Fails rather than run anything unsandboxed.
    pub fn new(cfg: LocalRuntimeConfig) -> anyhow::Result<Self> {
        check_agent_env(&cfg.agent_env)?;
        let programs = Arc::new(seccomp::build()?);
        let identities = identity::Identities::for_this_process(cfg.pod_uid_base, cfg.pod_uid_count)?.map(Arc::new);
        anyhow::ensure!(
            cfg.agent_binary.is_file(),
            "the agent binary {} does not exist (it is bound into every sandbox)",
            cfg.agent_binary.display()
        );
        std::fs::create_dir_all(&cfg.pods_dir).with_context(|| format!("creating {}", cfg.pods_dir.display()))?;
        let pods_dir = cfg.pods_dir.canonicalize().with_context(|| format!("resolving {}", cfg.pods_dir.display()))?;
        let agent_binary = cfg.agent_binary.canonicalize()?;
        if let Some(ids) = &identities {
            ids.prepare_tree(&pods_dir)?;
        }
        let probe_as =
            identities.as_ref().map(|i| bwrap::RunAs { uid: i.group, gid: i.group, group: i.group, net_index: None });
        let caps = bwrap::probe(&cfg.bwrap, &agent_binary, probe_as, &programs)?;
        let cfg = LocalRuntimeConfig { pods_dir, agent_binary, ..cfg };
        let network = match (cfg.network, &identities) {
            (None, _) => None,
            (Some(_), None) => {
                tracing::warn!("pods get no network: pod networking needs a control plane running as root");
                None
            }
            (Some(ports), Some(_)) => match netns::setup_host(ports) {
                Ok(()) => {
                    tracing::info!(proxy_port = ports.proxy, dns_port = ports.dns, "pods get their own network");
                    Some(ports)
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "pods get no network (loopback only)");
                    None
                }
            },
        };
        let cgroups = cgroup::Cgroups::for_host(&cfg.pods_dir, cfg.limits).map(Arc::new);
        let disk = cfg.disk_limit_bytes.and_then(|b| disk::DiskLimit::probe(b, &cfg.pods_dir.join(".disk-probe")));
        if let Some(d) = &disk {
            tracing::info!(bytes = d.bytes, "each pod's /workspace is a file system of its own");
        }
        let launcher = sandbox::Launcher {
            bwrap: cfg.bwrap.clone(),
            agent_binary: cfg.agent_binary.clone(),
            disable_userns: caps.disable_userns,
            seccomp: programs,
            log_cap: cfg.sandbox_log_bytes,
            network,
            trust: cfg.egress_ca_file.clone().map(|f| Arc::new(trust::Trust::new(f, &cfg.pods_dir))),
            cgroups,
            disk,
            agent_env: cfg.agent_env.clone().into(),
        };
        // Spares belong to no workspace: those a previous run left are killed and deleted.
        let spares = Arc::new(spares::Spares::new(&cfg.pods_dir, cfg.spare_pods));
        if let Ok(rd) = std::fs::read_dir(spares.root()) {
            for e in rd.flatten() {
                spares::discard(&e.path(), None, launcher.cgroups.as_deref());
            }
        }
        if let Some(ids) = &identities {
            let dirs = std::fs::read_dir(&cfg.pods_dir).into_iter().flatten().flatten();
            ids.adopt(dirs.filter_map(|e| identity::read(&e.path())));
        }
        // Files of pods removed before a crash or restart, still waiting to be deleted.
        let trash = layout::trash_root(&cfg.pods_dir);
        disk::unmount_all_under(&trash);
        // Cgroups of pods whose files are gone (removed before a crash, spares): their processes are killed.
        if let Some(cg) = &launcher.cgroups {
            let pods_dir = cfg.pods_dir.clone();
            let n = cg.sweep(|name| pods_dir.join(name).is_dir());
            if n > 0 {
                tracing::info!(removed = n, "removed leftover pod cgroups");
            }
            // A checkpoint's freeze a crash left in place: the adopted pods run on.
            for e in std::fs::read_dir(&cfg.pods_dir).into_iter().flatten().flatten() {
                if let Some(name) = e.file_name().to_str().filter(|n| n.starts_with(PodId::PREFIX)) {
                    let _ = cg.thaw(name);
                }
            }
        }
        if trash.exists() {
            std::thread::spawn(move || {
                if let Err(e) = layout::remove_tree(&trash) {
                    tracing::warn!(error = %e, "deleting removed pods' files failed");
                }
            });
        }
        let trust_generation = launcher.trust.as_ref().map_or(0, |t| t.refresh().generation);
        let rt = Self {
            cfg,
            launcher,
            identities,
            reapers: Arc::default(),
            relays: Arc::default(),
            spares,
            trust_generation: AtomicU64::new(trust_generation),
        };
        rt.refill(Duration::ZERO);
        Ok(rt)
    }

    /// A new pod's owner: a fresh uid from the range (none when this process is not root).
    fn allocate(&self) -> anyhow::Result<Option<layout::Ownership>> {
        allocate(self.identities.as_deref())
    }

    /// Top the spares up in the background after `delay` (and throw away stale ones). Needs a tokio runtime;
    /// without one it does nothing.
    fn refill(&self, delay: Duration) {
        if self.spares.target == 0 || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (spares, cfg, reapers) = (self.spares.clone(), self.cfg.clone(), self.reapers.clone());
        let (launcher, ids, relays) = (self.launcher.clone(), self.identities.clone(), self.relays.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Ok(_one_at_a_time) = spares.filling.try_lock() else { return };
            let stale = spares.stale();
            if !stale.is_empty() {
                let (ids, cg) = (ids.clone(), launcher.cgroups.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    stale.iter().for_each(|d| spares::discard(d, ids.as_deref(), cg.as_deref()))
                })
                .await;
            }
            let discard = |root: PathBuf| {
                let (ids, cg) = (ids.clone(), launcher.cgroups.clone());
                tokio::task::spawn_blocking(move || spares::discard(&root, ids.as_deref(), cg.as_deref()))
            };
            while spares.missing() > 0 {
                let pod = PodId::new();
                let dir = spares.dir(pod);
                let owner = match allocate(ids.as_deref()) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "no uid for a spare pod");
                        return;
                    }
                };
                let (d, id, disk) = (dir.clone(), pod.to_string(), launcher.disk.clone());
                let made = blocking(move || create_files(&d, &id, owner, disk.as_ref()));
                if let Err(e) = made.await {
                    tracing::warn!(error = %format!("{e:#}"), "creating a spare pod failed");
                    let _ = discard(dir.root.clone()).await;
                    if let (Some(ids), Some(o)) = (&ids, owner) {
                        ids.release(o.pod);
                    }
                    return;
                }
                match sandbox::spawn(launcher.clone(), dir.clone(), pod.to_string(), run_as(ids.as_deref(), owner))
                    .await
                {
                    Ok(spawned) => {
                        let rec = spawned.rec;
                        // The reaper records into the pod's final place, where the spare will be moved.
                        watch_child((&reapers, &relays), PodDir::new(&cfg.pods_dir, &pod.to_string()), pod, spawned);
                        // bwrap resolves its mount sources by path while it sets up, so the directory may move
                        // only once that is over: when the held agent runs and has written its marker.
                        let deadline = Instant::now() + SPARE_SETTLE;
                        while !layout::exists(&dir.held()).unwrap_or(false) && rec.alive() && Instant::now() < deadline
                        {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        if !layout::exists(&dir.held()).unwrap_or(false) {
                            let diag = diag::describe(&dir).unwrap_or_else(|| "no diagnostics".into());
                            tracing::warn!(%diag, "a spare pod did not come up");
                            let _ = discard(dir.root.clone()).await;
                            return;
                        }
                        spares.add_ready(pod);
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "setting a spare pod up failed");
                        let _ = discard(dir.root.clone()).await;
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

    /// The host identity a pod runs as (`None` when pods run as this process's own uid).
    pub fn pod_identity(&self, pod: PodId) -> Option<PodIdentity> {
        self.identities.as_ref()?;
        identity::read(&self.dir(pod).root)
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
        let Some(rec) = self.running(&dir) else {
            return Ok(PodObservation::Exited);
        };
        self.adopt_log(pod, &dir, rec);
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
            blocking(move || {
                disk::unmount(&d.workspace())?;
                layout::remove_tree(&d.root)
            })
            .await
            .context("removing incomplete pod files")?;
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
            // Its sandbox runs under the default limits; the role's apply before its agent is released.
            self.record_limits(&dir, spec, true).await?;
            None
        } else {
            let owner = self.allocate()?;
            let (d, id, disk) = (dir.clone(), spec.pod_id.to_string(), self.launcher.disk.clone());
            if let Err(e) = blocking(move || create_files(&d, &id, owner, disk.as_ref())).await {
                if let (Some(ids), Some(o)) = (&self.identities, owner) {
                    ids.release(o.pod);
                }
                return Err(e.context("creating the pod directory").into());
            }
            self.record_limits(&dir, spec, false).await?;
            Some(tokio::spawn(sandbox::spawn(
                self.launcher.clone(),
                dir.clone(),
                spec.pod_id.to_string(),
                run_as(self.identities.as_deref(), owner),
            )))
        };
        // Restored files belong to the pod's uid; a snapshot over the cap, or larger than the free space, is
        // refused before anything is written.
        let options = evershell_snapshot::RestoreOptions {
            max_content_bytes: self.cfg.max_workspace_bytes,
            owner: self.ownership(&dir).map(|o| (o.pod.uid, o.pod.gid)),
            own_filesystem: self.launcher.disk.is_some() && disk::image(&dir).is_file(),
        };
        let restored = match snapshot {
            Some(keys) => self.cfg.snapshots.restore_with(keys, &dir.workspace(), &options).await.map(Some),
            None => Ok(None),
        };
        if let Some(early) = early {
            match early.await {
                Ok(Ok(spawned)) => self.watch(spec.pod_id, spawned),
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
        if self.running(&dir).is_none() {
            // Files of a pod made before pods had their own uid (or before `ctl/` existed) are brought up to date.
            self.upgrade(&dir).await?;
            self.ensure_mounted(&dir).await?;
        }
        // Let the agent go: the one held in a sandbox set up by `prepare`, or the one spawned below. `ctl/` is
        // root's: nothing the pod wrote can redirect this write.
        let release = dir.release();
        blocking(move || layout::write_nofollow(&release, b"released\n")).await.context("writing the release file")?;
        let begun = Instant::now();
        let rec = match self.running(&dir) {
            Some(rec) => rec,
            None => {
                let spawned = sandbox::spawn(self.launcher.clone(), dir.clone(), pod.to_string(), self.run_as(&dir))
                    .await
                    .map_err(|e| {
                        let diag = diag::describe(&dir).unwrap_or_default();
                        PodError::Start(format!("{e:#}{}{diag}", if diag.is_empty() { "" } else { "; " }))
                    })?;
                let rec = spawned.rec;
                self.watch(pod, spawned);
                rec
            }
        };
        // Setup errors (a bind that fails, a missing library) end the sandbox within milliseconds: report them
        // here rather than as an agent that never answers. Normally the agent's socket appears first.
        let deadline = Instant::now() + START_SETTLE;
        while !layout::is_socket(&dir.socket()) && Instant::now() < deadline {
            if !rec.alive() {
                self.await_reaper(pod).await;
                let diag = diag::describe(&dir).unwrap_or_else(|| "no diagnostics".into());
                let diag = self.with_limits(pod, diag);
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

    /// Record the pod's limits (the defaults with the role's overrides) in its directory; `apply`: write them into
    /// the cgroup its sandbox already runs in (a spare's), when they differ from the defaults it was made with.
    async fn record_limits(&self, dir: &PodDir, spec: &PodSpec, apply: bool) -> Result<(), PodError> {
        let Some(cg) = self.launcher.cgroups.clone() else { return Ok(()) };
        let limits = cg.defaults.overridden_by(spec.limits);
        let (d, id) = (dir.clone(), spec.pod_id.to_string());
        blocking(move || {
            cgroup::write_record(&d.root, &limits)?;
            if apply && limits != cg.defaults { cg.apply(&id, &limits) } else { Ok(()) }
        })
        .await
        .context("setting the pod's resource limits")?;
        Ok(())
    }

    /// Mount the pod's workspace image again if a reboot unmounted it.
    async fn ensure_mounted(&self, dir: &PodDir) -> Result<(), PodError> {
        if let Some(disk) = self.launcher.disk.clone() {
            let d = dir.clone();
            blocking(move || disk.ensure_mounted(&d)).await.context("mounting the workspace image")?;
        }
        Ok(())
    }

    /// What the kernel counted against the pod's limits, as a sentence for `last_error` (`None`: nothing hit).
    fn limits_line(&self, pod: PodId) -> Option<String> {
        let cg = self.launcher.cgroups.as_ref()?;
        let id = pod.to_string();
        let limits = cgroup::read_record(&self.dir(pod).root).unwrap_or(cg.defaults);
        cgroup::describe(cg.events(&id), &limits)
    }

    fn with_limits(&self, pod: PodId, diag: String) -> String {
        match self.limits_line(pod) {
            Some(l) => format!("{l}; {diag}"),
            None => diag,
        }
    }

    /// Reap a sandbox this process spawned, recording how it ended.
    fn watch(&self, pod: PodId, spawned: sandbox::Spawned) {
        watch_child((&self.reapers, &self.relays), self.dir(pod), pod, spawned);
    }

    /// The identity recorded in a pod directory, with the traversal group.
    fn ownership(&self, dir: &PodDir) -> Option<layout::Ownership> {
        let ids = self.identities.as_ref()?;
        identity::read(&dir.root).map(|pod| layout::Ownership { pod, group: ids.group })
    }

    fn run_as(&self, dir: &PodDir) -> Option<bwrap::RunAs> {
        run_as(self.identities.as_deref(), self.ownership(dir))
    }

    /// The pod's cgroup directories (one per controller on v1, one on v2); empty when pods run without cgroups.
    pub fn pod_cgroups(&self, pod: PodId) -> Vec<PathBuf> {
        self.launcher.cgroups.as_ref().map(|cg| cg.dirs(&pod.to_string())).unwrap_or_default()
    }

    /// The cgroup version pods' limits use (`None`: no usable hierarchy).
    pub fn cgroup_version(&self) -> Option<u8> {
        self.launcher.cgroups.as_ref().map(|cg| cg.layout.version())
    }

    /// Whether each pod's `/workspace` is a file system of its own (the disk limit).
    pub fn disk_limited(&self) -> bool {
        self.launcher.disk.is_some()
    }

    /// Whether pods get a network of their own (and so an address the proxy knows them by).
    pub fn networked(&self) -> bool {
        self.launcher.network.is_some()
    }

    /// Relay the log of a running sandbox this process did not spawn (adopted after a restart).
    fn adopt_log(&self, pod: PodId, dir: &PodDir, rec: sandbox::PidRecord) {
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        if relays.contains(&pod) || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (read, sink) = match logpipe::reopen(rec.pid)
            .and_then(|r| Ok((r, logpipe::Sink::new(&dir.root, self.launcher.log_cap)?)))
        {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(pod_id = %pod, error = %e, "cannot adopt the sandbox's log pipe");
                return;
            }
        };
        relays.insert(pod);
        let relays = self.relays.clone();
        tokio::spawn(async move {
            logpipe::relay(read, sink).await;
            relays.lock().unwrap_or_else(|p| p.into_inner()).remove(&pod);
        });
    }

    /// Bring a pod directory written by an older version up to date: a `ctl/` directory, and (when pods get their
    /// own uid) a recorded identity owning its writable directories. Runs only while no sandbox runs on it.
    async fn upgrade(&self, dir: &PodDir) -> Result<(), PodError> {
        let needs_ctl = !layout::exists(&dir.ctl()).context("reading ctl/")?;
        let needs_id = self.identities.is_some() && identity::read(&dir.root).is_none();
        if !needs_ctl && !needs_id {
            return Ok(());
        }
        let owner = if needs_id { self.allocate()? } else { self.ownership(dir) };
        let d = dir.clone();
        blocking(move || layout::upgrade(&d, owner, needs_id)).await.context("upgrading the pod directory")?;
        tracing::info!(ctl = needs_ctl, identity = needs_id, "pod directory upgraded");
        Ok(())
    }

    async fn do_stop(&self, pod: PodId) -> Result<(), PodError> {
        let dir = self.dir(pod);
        if let Some(rec) = self.running(&dir) {
            // A frozen process cannot act on a signal: a checkpoint's freeze ends before the stop begins.
            if let Some(cg) = self.launcher.cgroups.clone() {
                let id = pod.to_string();
                if let Err(e) = blocking(move || cg.thaw(&id)).await {
                    tracing::warn!(error = %format!("{e:#}"), "thawing the pod before its stop failed");
                }
            }
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
        let dir = self.capturable(pod, false).await?;
        let manifest = self.capture_files(&dir, keys, ids).await?;
        tracing::info!(files = manifest.file_count, bytes = manifest.archive_bytes, "workspace captured");
        Ok(manifest)
    }

    /// The pod's files, checked for a capture: complete, the sandbox running (`running`) or not, and the workspace
    /// image mounted (a reboot may have unmounted it: never capture the empty directory under it).
    async fn capturable(&self, pod: PodId, running: bool) -> Result<PodDir, PodError> {
        let dir = self.dir(pod);
        if !dir.is_complete().context("reading the complete marker")? {
            return Err(anyhow!("pod {pod} has no complete files to capture").into());
        }
        match (self.running(&dir).is_some(), running) {
            (true, false) => return Err(anyhow!("pod {pod} is running; stop its sandbox before capturing").into()),
            (false, true) => return Err(anyhow!("pod {pod}'s sandbox does not run").into()),
            _ => {}
        }
        self.ensure_mounted(&dir).await?;
        Ok(dir)
    }

    /// Save the pod's `/workspace` as a verified snapshot, within the workspace size limit.
    async fn capture_files(
        &self,
        dir: &PodDir,
        keys: &SnapshotKeys,
        ids: (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, PodError> {
        let options = evershell_snapshot::CaptureOptions { max_content_bytes: self.cfg.max_workspace_bytes };
        Ok(self.cfg.snapshots.capture_with(&dir.workspace(), keys, ids, &options).await?)
    }

    /// Capture a running pod with its cgroup frozen (`Cgroups::freeze`), thawed by a guard when the capture ends,
    /// fails or is dropped. Without a freezer (no cgroups, or v1 without the `freezer` controller) the files are
    /// captured as they are, which is consistent as long as nothing in the pod writes meanwhile (between tasks the
    /// agent does not).
    async fn do_capture_running(
        &self,
        pod: PodId,
        keys: &SnapshotKeys,
        ids: (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, PodError> {
        let dir = self.capturable(pod, true).await?;
        let _thaw = match self.launcher.cgroups.clone() {
            Some(cg) => {
                let id = pod.to_string();
                let frozen = {
                    let (cg, id) = (cg.clone(), id.clone());
                    blocking(move || cg.freeze(&id)).await.context("freezing the pod")?
                };
                if !frozen {
                    tracing::debug!("no freezer for this pod: capturing it unfrozen");
                }
                frozen.then(|| ThawOnDrop { cg, pod: id })
            }
            None => None,
        };
        let began = std::time::Instant::now();
        let manifest = self.capture_files(&dir, keys, ids).await?;
        tracing::info!(
            files = manifest.file_count,
            bytes = manifest.archive_bytes,
            frozen_ms = began.elapsed().as_secs_f64() * 1e3,
            "running workspace captured"
        );
        Ok(manifest)
    }

    async fn do_remove(&self, pod: PodId) -> Result<(), PodError> {
        self.do_stop(pod).await?;
        let dir = self.dir(pod);
        if !dir.exists().context("reading the pod directory")? {
            return Ok(());
        }
        let released = self.identities.clone().zip(identity::read(&dir.root));
        let trash = layout::trash_dir(&self.cfg.pods_dir, pod);
        let doomed = trash.clone();
        blocking(move || {
            // Unmark first: a crash halfway through leaves `Partial` files, never a complete-looking husk. Then move
            // the tree out of the pods directory at once (one rename) and unlink its files in the background: a stop
            // does not wait for thousands of unlinks. Leftovers of a crash are swept when the runtime starts.
            layout::unmark_complete(&dir)?;
            // Its workspace file system goes first (one umount, not thousands of unlinks in the image).
            disk::unmount(&dir.workspace())?;
            std::fs::create_dir_all(doomed.parent().expect("the trash dir has a parent"))?;
            match std::fs::rename(&dir.root, &doomed) {
                // Removed by someone else meanwhile: the outcome is the same.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        })
        .await
        .context("removing the pod directory")?;
        let id = pod.to_string();
        let cgroups = self.launcher.cgroups.clone();
        tokio::task::spawn_blocking(move || {
            // Its cgroup and network go once its files are out of the pods directory (no sandbox runs on it any more).
            if let Some(cg) = cgroups {
                cg.remove(&id);
            }
            netns::remove(&id);
            if let Err(e) = layout::remove_tree(&trash) {
                tracing::warn!(error = %e, path = %trash.display(), "deleting a removed pod's files failed");
            }
            // Its uid is free once no file of it is left.
            if let Some((ids, id)) = released {
                ids.release(id);
            }
        });
        tracing::info!("pod removed");
        Ok(())
    }
}

/// Reap a sandbox, recording how it ended in `dir`, and let `await_reaper` know.
fn watch_child((reapers, relays): (&Reapers, &Relays), dir: PodDir, pod: PodId, spawned: sandbox::Spawned) {
    let sandbox::Spawned { child, rec, log } = spawned;
    tracing::info!(pid = rec.pid, init_pid = ?rec.init_pid, "sandbox started");
    let (tx, rx) = watch::channel(false);
    let mine = rx.clone();
    reapers.lock().unwrap_or_else(|p| p.into_inner()).insert(pod, rx);
    relays.lock().unwrap_or_else(|p| p.into_inner()).insert(pod);
    let (reapers, relays) = (reapers.clone(), relays.clone());
    tokio::spawn(
        async move {
            sandbox::reap(child, dir, rec, log).await;
            relays.lock().unwrap_or_else(|p| p.into_inner()).remove(&pod);
            let _ = tx.send(true);
            let mut map = reapers.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&pod).is_some_and(|rx| rx.same_channel(&mine)) {
                map.remove(&pod);
            }
        }
        .instrument(tracing::info_span!("reaper", pod_id = %pod)),
    );
}

/// A pod's files: the directory layout, and its workspace file system when workspaces are limited.
fn create_files(
    dir: &PodDir,
    pod_id: &str,
    owner: Option<layout::Ownership>,
    disk: Option<&disk::DiskLimit>,
) -> std::io::Result<()> {
    layout::create(dir, pod_id, owner)?;
    if let Some(d) = disk {
        d.create(dir, owner.map(|o| (o.pod.uid, o.pod.gid)))?;
    }
    Ok(())
}

/// A fresh uid for a new pod, when pods get their own.
fn allocate(ids: Option<&identity::Identities>) -> anyhow::Result<Option<layout::Ownership>> {
    ids.map(|i| Ok(layout::Ownership { pod: i.allocate()?, group: i.group })).transpose()
}

fn run_as(ids: Option<&identity::Identities>, owner: Option<layout::Ownership>) -> Option<bwrap::RunAs> {
    let (ids, o) = (ids?, owner?);
    Some(bwrap::RunAs { uid: o.pod.uid, gid: o.pod.gid, group: o.group, net_index: Some(ids.index(o.pod)) })
}

/// Thaws a frozen pod when dropped (the end of a capture, its failure, or its future being dropped).
struct ThawOnDrop {
    cg: Arc<cgroup::Cgroups>,
    pod: String,
}

impl Drop for ThawOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.cg.thaw(&self.pod) {
            tracing::error!(error = %e, pod_id = %self.pod, "thawing the pod after its capture failed");
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await.context("blocking task panicked")??)
}

#[async_trait]
impl PodRuntime for LocalRuntime {
    fn pod_address(&self, pod: PodId) -> Option<std::net::IpAddr> {
        self.launcher.network?;
        let ids = self.identities.as_ref()?;
        let owner = self.ownership(&self.dir(pod))?;
        Some(std::net::IpAddr::V4(netns::addresses(ids.index(owner.pod)).1))
    }

    fn name(&self) -> &'static str {
        "local"
    }

    fn reserve_pod(&self) -> PodId {
        // Spares set up before the CA bundle changed (the proxy created its CA after this runtime started) do not
        // trust it: they are replaced rather than handed out.
        if let Some(t) = &self.launcher.trust {
            let now = t.refresh().generation;
            if self.trust_generation.swap(now, Ordering::SeqCst) != now {
                self.spares.forget_ready();
                self.refill(Duration::ZERO);
                return PodId::new();
            }
        }
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
        let (ids, cg) = (self.identities.clone(), self.launcher.cgroups.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                spares::discard(&e.path(), ids.as_deref(), cg.as_deref());
            }
            // The cgroup bases go when no pod is left in them (workspaces' pods outlive the control plane).
            if let Some(cg) = cg {
                cg.remove_bases_if_empty();
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

    async fn capture_running(
        &self,
        pod: PodId,
        keys: &SnapshotKeys,
        ids: (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, PodError> {
        self.do_capture_running(pod, keys, ids).instrument(tracing::info_span!("pod.checkpoint", pod_id = %pod)).await
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

    async fn place_uploads(
        &self,
        pod: PodId,
        task: TaskId,
        files: &[(String, std::path::PathBuf)],
    ) -> Result<(), PodError> {
        let dir = self.dir(pod);
        let owner = match (&self.identities, self.ownership(&dir)) {
            (None, _) => None,
            (Some(_), Some(o)) => Some((o.pod.uid, o.pod.gid)),
            (Some(_), None) => return Err(PodError::Other(anyhow::anyhow!("the pod has no recorded identity"))),
        };
        let (uploads, task, files) = (dir.uploads(), task.to_string(), files.to_vec());
        blocking(move || uploads::place(&uploads, &task, &files, owner))
            .await
            .context("placing the task's uploaded files in the pod")?;
        Ok(())
    }

    async fn diagnostics(&self, pod: PodId) -> Option<String> {
        let dir = self.dir(pod);
        let said = tokio::task::spawn_blocking(move || diag::describe(&dir)).await.ok().flatten();
        let limits = self.limits_line(pod);
        match (said, limits) {
            (None, None) => None,
            (Some(s), None) => Some(s),
            (None, Some(l)) => Some(l),
            (Some(s), Some(l)) => Some(format!("{l}; {s}")),
        }
    }
}

#[cfg(test)]
mod agent_env_tests {
    use super::check_agent_env;

    fn env(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_string(), v.to_string())]
    }

    #[test]
    fn only_the_listed_agent_settings_with_numbers_reach_a_pod() {
        check_agent_env(&[]).unwrap();
        check_agent_env(&env("EVERSHELL_AGENT_MODEL_RETRY_BASE_MS", "10")).unwrap();
        check_agent_env(&env("EVERSHELL_AGENT_MODEL_IDLE_TIMEOUT_MS", "300000")).unwrap();
        for (k, v) in [
            ("LD_PRELOAD", "1"),
            ("ANTHROPIC_API_KEY", "1"),
            ("EVERSHELL_AGENT_OTHER", "1"),
            ("EVERSHELL_AGENT_MODEL_RETRY_BASE_MS", ""),
            ("EVERSHELL_AGENT_MODEL_RETRY_BASE_MS", "10; rm -rf /"),
            ("EVERSHELL_AGENT_MODEL_RETRY_BASE_MS", "-1"),
            ("EVERSHELL_AGENT_MODEL_RETRY_BASE_MS", "1234567890123"),
        ] {
            assert!(check_agent_env(&env(k, v)).is_err(), "{k}={v}");
        }
    }
}
