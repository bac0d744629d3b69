//! The sandbox process of a pod: spawning bwrap detached from the control plane (own process group, no inherited
//! pipes, no `--die-with-parent`) so it survives a control-plane crash; the `sandbox.pid` record that lets a later
//! process recognise it (pid + start time of bwrap and of the namespace's init); the reaper; and stopping, which
//! also works for a sandbox adopted from an earlier control-plane process.
//!
//! Process tree: `bwrap` (the recorded `pid`, leader of its own process group, outside the namespaces) →
//! bwrap's init (`init_pid`: pid 1 of the sandbox's pid namespace, leader of a new session because of
//! `--new-session`) → the agent and anything it runs. Killing the namespace's init kills every process in it.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use tokio::process::Child;

use super::bwrap;
use super::layout::{self, PodDir};
use super::procfs;
use super::{cgroup, disk, logpipe, netns, seccomp, trust};

/// How long a stop waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a stop waits for processes to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long `start` waits for bwrap to report its namespace init's pid.
const INIT_PID_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(2);
/// How long the reaper waits for the sandbox's last output to be relayed.
const LOG_DRAIN: Duration = Duration::from_secs(2);

/// `sandbox.pid`: which processes are this pod's sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    /// The outer `bwrap` process (process-group leader).
    pub pid: i32,
    pub starttime: u64,
    /// Pid 1 of the sandbox's pid namespace, as seen from the host.
    pub init_pid: Option<i32>,
    pub init_starttime: Option<u64>,
}

impl PidRecord {
    fn bwrap_alive(&self) -> bool {
        procfs::is_alive(self.pid, self.starttime)
    }

    fn init_alive(&self) -> bool {
        match (self.init_pid, self.init_starttime) {
            (Some(p), Some(t)) => procfs::is_alive(p, t),
            _ => false,
        }
    }

    /// Any process of the sandbox still runs.
    pub fn alive(&self) -> bool {
        self.bwrap_alive() || self.init_alive()
    }

    /// SIGKILL the sandbox at once: its init (which ends the pid namespace) and bwrap's process group. For sandboxes
    /// nothing runs in yet (spares); `stop` is the graceful way.
    pub fn kill(&self) {
        if self.init_alive() {
            procfs::kill(self.init_pid.unwrap_or(0), libc::SIGKILL);
        }
        if self.bwrap_alive() {
            procfs::kill_group(self.pid, libc::SIGKILL);
        }
    }
}

/// SIGKILL every sandbox whose pod directory lies under `pods_dir` — workspaces' pods and spares, whoever started
/// them: by their records, and by command line for one whose record was not written yet (its server was killed while
/// setting it up; bwrap and the sandbox's init name the directory, the rest die with the init). For test and
/// benchmark guards; a server ends its own sandboxes with `stop` and `shutdown`.
pub fn kill_all_under(pods_dir: &std::path::Path) {
    let dirs = |d: &std::path::Path| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path());
    for dir in dirs(pods_dir).chain(dirs(&pods_dir.join(".spare"))) {
        if let Some(rec) = read_pid_record(&PodDir { root: dir.clone() }) {
            rec.kill();
        }
        if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
            netns::remove(name);
        }
        if let Some(id) = super::identity::read(&dir) {
            let _ = std::fs::remove_file(std::path::Path::new(super::identity::CLAIMS_DIR).join(id.uid.to_string()));
        }
    }
    let needle = pods_dir.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            procfs::kill(pid, libc::SIGKILL);
        }
    }
    // Their cgroups (waiting for the killed processes to go) and workspace file systems.
    let real = pods_dir.canonicalize().unwrap_or_else(|_| pods_dir.to_path_buf());
    cgroup::remove_all_for(&real);
    disk::unmount_all_under(&real);
}

/// The sandbox's record. When the init's pid was never recorded (a crash right after spawning), it is recovered
/// from bwrap's status file, trusted only while it is still bwrap's child.
pub fn read_pid_record(dir: &PodDir) -> Option<PidRecord> {
    let mut rec: PidRecord = serde_json::from_slice(&std::fs::read(dir.pid_file()).ok()?).ok()?;
    if rec.init_pid.is_none()
        && rec.bwrap_alive()
        && let Some(init) = read_bwrap_status(dir).child_pid
        && let Some(st) = procfs::stat(init).filter(|s| s.ppid == rec.pid)
    {
        rec.init_pid = Some(init);
        rec.init_starttime = Some(st.starttime);
    }
    Some(rec)
}

fn write_pid_record(dir: &PodDir, rec: &PidRecord) -> std::io::Result<()> {
    layout::write_atomic(&dir.pid_file(), &serde_json::to_vec(rec).expect("a PidRecord serialises"))
}

/// `exit_status`: how the outer bwrap process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code of bwrap (it passes on the agent's; 128 + n when the agent died of signal n).
    pub code: Option<i32>,
    /// Signal that killed bwrap itself.
    pub signal: Option<i32>,
    /// Epoch milliseconds.
    pub at_ms: i64,
}

pub fn read_exit_record(dir: &PodDir) -> Option<ExitRecord> {
    serde_json::from_slice(&std::fs::read(dir.exit_status()).ok()?).ok()
}

/// What bwrap itself wrote to `--json-status-fd`: the init's pid, and (when it saw the sandbox end) the exit code.
#[derive(Debug, Default, Clone, Copy)]
pub struct BwrapStatus {
    pub child_pid: Option<i32>,
    pub exit_code: Option<i32>,
}

pub fn read_bwrap_status(dir: &PodDir) -> BwrapStatus {
    let mut st = BwrapStatus::default();
    let text = std::fs::read_to_string(dir.bwrap_status()).unwrap_or_default();
    // bwrap writes one JSON document per write, not always newline-separated.
    for doc in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>().flatten() {
        if let Some(p) = doc.get("child-pid").and_then(|v| v.as_i64()) {
            st.child_pid = Some(p as i32);
        }
        if let Some(c) = doc.get("exit-code").and_then(|v| v.as_i64()) {
            st.exit_code = Some(c as i32);
        }
    }
    st
}

/// What every sandbox is started with.
#[derive(Clone)]
pub struct Launcher {
    pub bwrap: std::path::PathBuf,
    pub agent_binary: std::path::PathBuf,
    pub disable_userns: bool,
    pub seccomp: Arc<seccomp::Programs>,
    /// Cap of `sandbox.log` (and of its one rotated predecessor).
    pub log_cap: u64,
    /// Pods get a network namespace of their own (`netns.rs`), redirected to these host ports, when they have a
    /// network index.
    pub network: Option<netns::Ports>,
    /// The CA bundle bound into every sandbox (`trust.rs`), when the egress proxy's CA is configured.
    pub trust: Option<Arc<trust::Trust>>,
    /// Pods' cgroups (`cgroup.rs`); `None`: no usable hierarchy, pods run without limits.
    pub cgroups: Option<Arc<cgroup::Cgroups>>,
    /// Pods' workspace file systems (`disk.rs`); `None`: no disk limit.
    pub disk: Option<disk::DiskLimit>,
    /// The agent's environment beyond the sandbox's own (`LocalRuntimeConfig::agent_env`, checked).
    pub agent_env: Arc<[(String, String)]>,
}

/// A spawned sandbox: the child (for the reaper), its record, and the relay of its output into `sandbox.log`.
pub struct Spawned {
    pub child: Child,
    pub rec: PidRecord,
    pub log: tokio::task::JoinHandle<()>,
}

/// Spawn the sandbox on a prepared pod directory and wait until bwrap reports its namespace init. bwrap runs as
/// `run_as` (the pod's unprivileged identity) when given, under the seccomp programs, with its output on a pipe the
/// control plane relays into `sandbox.log`.
pub async fn spawn(
    launcher: Launcher,
    dir: PodDir,
    pod_id: String,
    run_as: Option<bwrap::RunAs>,
) -> anyhow::Result<Spawned> {
    let (dir, pod_id) = (&dir, pod_id.as_str());
    for stale in [dir.socket(), dir.held(), dir.exit_status(), dir.stop_requested(), dir.pid_file()] {
        layout::remove_if_exists(&stale).with_context(|| format!("removing {}", stale.display()))?;
    }
    let mut sink = logpipe::Sink::new(&dir.root, launcher.log_cap).context("opening sandbox.log")?;
    sink.note(&format!("starting sandbox for {pod_id} at {}", evershell_core::Timestamp::now()));
    let (log_read, log_write) = logpipe::pipe().context("creating the log pipe")?;
    let status = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.bwrap_status())
        .context("opening sandbox.status")?;
    let status_fd = status.as_raw_fd();
    let deny = seccomp::memfd("evershell-seccomp", &launcher.seccomp.deny)?;
    let guard = seccomp::memfd("evershell-seccomp-guard", &launcher.seccomp.guard)?;
    let fds = bwrap::SeccompFds { deny: deny.as_raw_fd(), guard: guard.as_raw_fd() };
    // The pod's own network namespace, made (again, after a reboot) if it is missing, joined before the uid drop.
    let net = match (run_as.and_then(|r| r.net_index), launcher.network) {
        (Some(index), Some(ports)) => {
            let id = pod_id.to_string();
            tokio::task::spawn_blocking(move || netns::create(&id, index, ports)).await.context("netns task")??;
            let resolv = dir.etc().join("resolv.conf");
            let text = format!("nameserver {}\noptions timeout:2 attempts:2\n", netns::addresses(index).0);
            layout::write_atomic(&resolv, text.as_bytes()).context("writing resolv.conf")?;
            Some((netns::open(pod_id)?, resolv))
        }
        _ => None,
    };
    let (net, resolv) = net.unzip();
    let net_fd = net.as_ref().map(|f| f.as_raw_fd());
    let trusted = launcher.trust.as_ref().and_then(|t| t.refresh().binds);
    // The pod's cgroup (made again after a reboot, with the limits recorded at prepare): bwrap is placed in it
    // before it runs, so nothing of the sandbox ever runs outside its limits.
    let cgroup_fds = match &launcher.cgroups {
        Some(cg) => {
            let limits = cgroup::read_record(&dir.root).unwrap_or(cg.defaults);
            cg.prepare(pod_id, &limits).with_context(|| format!("setting up the pod's cgroup ({limits:?})"))?
        }
        None => Vec::new(),
    };
    let cgroup_raw = cgroup::raw(&cgroup_fds);

    let mut cmd = tokio::process::Command::new(&launcher.bwrap);
    let args = bwrap::sandbox_args(
        dir,
        pod_id,
        &launcher.agent_binary,
        status_fd,
        fds,
        launcher.disable_userns,
        net_fd.is_some(),
        trusted.as_ref(),
        resolv.as_deref(),
        &launcher.agent_env,
    );
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_write.try_clone().context("duplicating the log pipe")?))
        .stderr(Stdio::from(log_write))
        .process_group(0)
        .kill_on_drop(false);
    let inherit = [status_fd, fds.deny, fds.guard];
    // SAFETY: the closure only makes async-signal-safe system calls (write, fcntl, setns, setgroups, setresgid,
    // setresuid).
    unsafe {
        cmd.pre_exec(move || {
            cgroup::enter(&cgroup_raw)?;
            bwrap::pre_exec(&inherit, run_as, net_fd)
        });
    }
    let spawned = cmd.spawn();
    // Our copies of what bwrap inherited: the pipe's write end now lives only in the sandbox.
    drop((status, deny, guard, net, cgroup_fds));
    let mut child = spawned.with_context(|| format!("spawning {}", launcher.bwrap.display()))?;
    let log = tokio::spawn(logpipe::relay(log_read, sink));
    let pid = child.id().ok_or_else(|| anyhow!("bwrap exited before its pid could be read"))? as i32;
    let starttime = procfs::stat(pid).map(|s| s.starttime).unwrap_or(0);
    let mut rec = PidRecord { pid, starttime, init_pid: None, init_starttime: None };
    write_pid_record(dir, &rec).context("writing sandbox.pid")?;

    let deadline = Instant::now() + INIT_PID_WAIT;
    loop {
        if let Some(init) = read_bwrap_status(dir).child_pid {
            rec.init_pid = Some(init);
            rec.init_starttime = procfs::stat(init).map(|s| s.starttime);
            break;
        }
        if let Some(st) = child.try_wait().context("checking on bwrap")? {
            let _ = tokio::time::timeout(LOG_DRAIN, log).await;
            write_exit_record(dir, st);
            anyhow::bail!("bwrap exited at once ({st})");
        }
        if Instant::now() > deadline {
            // Do not leave a sandbox nobody will recognise.
            procfs::kill_group(pid, libc::SIGKILL);
            let _ = child.wait().await;
            anyhow::bail!("bwrap did not report its sandbox's pid within {INIT_PID_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    write_pid_record(dir, &rec).context("writing sandbox.pid")?;
    Ok(Spawned { child, rec, log })
}

pub fn write_exit_record(dir: &PodDir, st: std::process::ExitStatus) {
    let rec = ExitRecord { code: st.code(), signal: st.signal(), at_ms: evershell_core::Timestamp::now().millis() };
    match layout::write_atomic(&dir.exit_status(), &serde_json::to_vec(&rec).expect("serialises")) {
        Ok(()) => {}
        // A spare discarded before it was used, or a pod already removed: nobody will read it.
        Err(_) if !dir.root.exists() => tracing::debug!("pod directory gone; exit_status not written"),
        Err(e) => tracing::warn!(error = %e, "could not write exit_status"),
    }
}

/// Await the sandbox's exit, make sure nothing of it survives bwrap, let its last output reach `sandbox.log`, and
/// record how it ended.
pub async fn reap(mut child: Child, dir: PodDir, rec: PidRecord, log: tokio::task::JoinHandle<()>) {
    let status = match child.wait().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "waiting for the sandbox failed");
            return;
        }
    };
    if rec.init_alive() {
        // bwrap itself was killed: its namespace would run on unsupervised. End it.
        procfs::kill(rec.init_pid.unwrap_or(0), libc::SIGKILL);
    }
    // Every writer of the pipe was in the sandbox: the relay ends once the last of them is gone.
    let _ = tokio::time::timeout(LOG_DRAIN, log).await;
    write_exit_record(&dir, status);
    tracing::info!(%status, "sandbox exited");
}

/// Stop the sandbox recorded in `rec`: SIGTERM to every process in its namespace, SIGKILL of the namespace and of
/// bwrap's process group after `grace`, then wait until all are gone. Works whether or not this process spawned it.
pub async fn stop(dir: &PodDir, rec: PidRecord, grace: Duration) -> anyhow::Result<()> {
    if !rec.alive() {
        return Ok(());
    }
    let _ = layout::write_atomic(&dir.stop_requested(), b"stop requested by the control plane\n");
    if rec.init_alive() {
        let init = rec.init_pid.unwrap_or(0);
        // The namespace's init ignores SIGTERM (no handler); its descendants get it and init follows them out.
        for p in procfs::descendants(init) {
            procfs::kill(p, libc::SIGTERM);
        }
    } else if rec.bwrap_alive() {
        procfs::kill(rec.pid, libc::SIGTERM);
    }
    if wait_gone(&rec, grace).await {
        return Ok(());
    }
    tracing::warn!(?grace, "sandbox ignored SIGTERM; killing it");
    if rec.init_alive() {
        procfs::kill(rec.init_pid.unwrap_or(0), libc::SIGKILL);
    }
    if rec.bwrap_alive() {
        procfs::kill_group(rec.pid, libc::SIGKILL);
    }
    if wait_gone(&rec, KILL_WAIT).await {
        return Ok(());
    }
    Err(anyhow!("sandbox processes still alive {KILL_WAIT:?} after SIGKILL"))
}

async fn wait_gone(rec: &PidRecord, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !rec.alive() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
