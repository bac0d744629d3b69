//! The `local` runtime against real bubblewrap sandboxes running the real `evershell agent`: lifecycle, isolation
//! (namespaces, hostname, no network but loopback, read-only /usr), live files through the agent, stop/kill
//! diagnostics, adoption by a second runtime over the same pods directory, removal, and snapshot round trips.
//! Every test stops what it started and checks that no sandbox process is left behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evershell_core::files::RelPath;
use evershell_core::ids::{OrgId, PodId, SnapshotId, WorkspaceId};
use evershell_core::lifecycle::PodObservation;
use evershell_runtime::{AgentError, LocalRuntime, LocalRuntimeConfig, PodError, PodRuntime, PodSpec};
use evershell_snapshot::{ByteStream, SnapshotKeys, SnapshotStore};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Env {
    tmp: tempfile::TempDir,
    cfg: LocalRuntimeConfig,
    rt: LocalRuntime,
}

/// A failed test must not leave sandboxes running: kill every process whose command line names this test's pods
/// directory (bwrap and the namespace's init; killing the init ends everything inside).
impl Drop for Env {
    fn drop(&mut self) {
        let needle = self.rt.pods_dir().to_string_lossy().into_owned();
        for pid in processes_mentioning(&needle) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // And their cgroups and workspace file systems.
        evershell_runtime::local::kill_all_sandboxes(self.rt.pods_dir());
    }
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::local(&tmp.path().join("snapshots")).unwrap();
    let cfg =
        LocalRuntimeConfig::new(tmp.path().join("pods"), PathBuf::from(env!("CARGO_BIN_EXE_evershell")), snapshots);
    let rt = LocalRuntime::new(cfg.clone()).expect("bubblewrap must work on this machine");
    Env { tmp, cfg, rt }
}

fn spec() -> PodSpec {
    PodSpec { pod_id: PodId::new(), org_id: OrgId::new(), workspace_id: WorkspaceId::new(), limits: Default::default() }
}

fn rel(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

fn bytes_of(data: &[u8]) -> ByteStream {
    let chunks: Vec<std::io::Result<_>> = data.chunks(3000).map(|c| Ok(c.to_vec().into())).collect();
    futures::stream::iter(chunks).boxed()
}

async fn read_all(body: ByteStream) -> Vec<u8> {
    body.try_fold(Vec::new(), |mut acc, b| async move {
        acc.extend_from_slice(&b);
        Ok(acc)
    })
    .await
    .unwrap()
}

/// The first spare the runtime counts as ready (`ready_spares`) other than `not`.
async fn wait_ready_spare(rt: &LocalRuntime, not: &[PodId]) -> PodId {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(pod) = rt.ready_spares().into_iter().find(|p| !not.contains(p)) {
            return pod;
        }
        assert!(Instant::now() < deadline, "no spare pod became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for(rt: &LocalRuntime, pod: PodId, want: PodObservation, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = rt.observe(pod).await.unwrap();
        if got == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "pod {pod} still {got:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Prepare (empty) and start a pod, and wait until its agent answers.
async fn running_pod(rt: &LocalRuntime) -> PodSpec {
    let s = spec();
    let report = rt.prepare(&s, None).await.unwrap();
    assert!(report.restored.is_none());
    // Prepare sets the sandbox up with its agent held; start lets it go.
    assert_eq!(rt.observe(s.pod_id).await.unwrap(), PodObservation::Held);
    assert!(rt.agent(s.pod_id).health().await.is_err(), "a held agent does not answer");
    rt.start(&s).await.unwrap();
    wait_for(rt, s.pod_id, PodObservation::Running, Duration::from_secs(30)).await;
    s
}

/// Live (non-zombie) processes whose command line mentions `pod`.
fn sandbox_processes(pod: PodId) -> Vec<i32> {
    processes_mentioning(&pod.to_string())
}

fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// The host pid of the agent: bwrap → namespace init → agent.
fn agent_host_pid(rt: &LocalRuntime, pod: PodId) -> i32 {
    let bwrap = rt.sandbox_pid(pod).expect("sandbox runs");
    let init = *children_of(bwrap).first().expect("bwrap has its init");
    *children_of(init).first().expect("init runs the agent")
}

async fn assert_no_leak(rt: &LocalRuntime, pod: PodId) {
    rt.stop_all().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sandbox_processes(pod).is_empty() {
        assert!(Instant::now() < deadline, "sandbox processes leaked: {:?}", sandbox_processes(pod));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn raw_request(socket: &Path, request: &str) -> (u16, String) {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    (out.split(' ').nth(1).unwrap().parse().unwrap(), out)
}

#[tokio::test]
async fn missing_bubblewrap_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = LocalRuntimeConfig::new(
        tmp.path().join("pods"),
        PathBuf::from(env!("CARGO_BIN_EXE_evershell")),
        SnapshotStore::local(&tmp.path().join("snap")).unwrap(),
    );
    cfg.bwrap = tmp.path().join("no-such-bwrap");
    let err = LocalRuntime::new(cfg).err().expect("must refuse").to_string();
    assert!(err.contains("bubblewrap is not installed: install it with `apt-get install bubblewrap`"), "{err}");
}

#[tokio::test]
async fn sandbox_is_isolated_and_named_after_the_pod() {
    let e = env();
    let s = running_pod(&e.rt).await;
    let pod = s.pod_id;
    e.rt.agent(pod).health().await.unwrap();

    let info = e.rt.agent(pod).info().await.unwrap();
    assert_eq!(info["hostname"], pod.to_string());
    assert_eq!(info["pod_id"], pod.to_string());
    assert_eq!(info["uid"], 1000);
    assert_eq!(info["gid"], 1000);
    assert_eq!(info["interfaces"], serde_json::json!(["lo"]), "no network but loopback");
    // bwrap's init is pid 1 of the namespace; the agent is its child.
    assert_eq!(info["pid"], 2);

    let agent = agent_host_pid(&e.rt, pod);
    for ns in ["user", "pid", "mnt", "ipc", "uts", "net"] {
        let inside = std::fs::read_link(format!("/proc/{agent}/ns/{ns}")).unwrap();
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(inside, host, "the sandbox shares the host's {ns} namespace");
    }
    // The sandbox has its own process group and session: it does not go down with the control plane's.
    let ours = unsafe { libc::getpgid(0) };
    assert_ne!(unsafe { libc::getpgid(e.rt.sandbox_pid(pod).unwrap()) }, ours);

    let mounts = std::fs::read_to_string(format!("/proc/{agent}/mountinfo")).unwrap();
    let mount = |point: &str| {
        mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(point))
            .unwrap_or_else(|| panic!("{point} not mounted:\n{mounts}"))
            .to_string()
    };
    assert!(mount("/usr").split_whitespace().nth(5).unwrap().split(',').any(|o| o == "ro"), "{}", mount("/usr"));
    assert!(mount("/workspace").split_whitespace().nth(5).unwrap().split(',').any(|o| o == "rw"));
    assert!(mount("/tmp").contains(" tmpfs "));
    assert!(mount("/opt/evershell/bin/evershell").split_whitespace().nth(5).unwrap().contains("ro"));
    assert!(mount("/data/uploads").contains(" - "));
    assert!(!mounts.lines().any(|l| l.split_whitespace().nth(4) == Some("/home")), "host /home visible");

    e.rt.remove(pod).await.unwrap();
    assert_eq!(e.rt.observe(pod).await.unwrap(), PodObservation::Absent);
    assert_no_leak(&e.rt, pod).await;
}

#[tokio::test]
async fn files_round_trip_between_host_and_sandbox() {
    let e = env();
    let s = running_pod(&e.rt).await;
    let pod = s.pod_id;
    let agent = e.rt.agent(pod);
    let workspace = e.rt.pod_dir(pod).join("workspace");

    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let entry = agent.put_file(&rel("notes/deep/data.bin"), bytes_of(&data)).await.unwrap();
    assert_eq!(entry.size, data.len() as i64);
    assert_eq!(std::fs::read(workspace.join("notes/deep/data.bin")).unwrap(), data);
    // Files written inside belong to the pod's own unprivileged uid on the host (the control plane's own uid when
    // it is not root), never to host root.
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(workspace.join("notes/deep/data.bin")).unwrap();
    match e.rt.pod_identity(pod) {
        Some(id) => assert_eq!((owner.uid(), owner.gid()), (id.uid, id.gid)),
        None => assert_eq!(owner.uid(), unsafe { libc::getuid() }),
    }
    assert_ne!(owner.uid(), 0, "a pod's files belong to host root");

    std::fs::write(workspace.join("from-host.txt"), b"hello from the host").unwrap();
    let listed = agent.list_files().await.unwrap();
    let paths: Vec<_> = listed.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["from-host.txt", "notes", "notes/deep", "notes/deep/data.bin"]);
    let dl = agent.download(&rel("from-host.txt")).await.unwrap();
    assert_eq!(dl.entry.mime_type.as_deref(), Some("text/plain"));
    assert_eq!(read_all(dl.body).await, b"hello from the host");
    assert_eq!(read_all(agent.download(&rel("notes/deep/data.bin")).await.unwrap().body).await, data);

    assert!(matches!(agent.download(&rel("missing")).await, Err(AgentError::NotFound(_))));
    assert!(matches!(agent.download(&rel("notes")).await, Err(AgentError::Rejected(_))));
    // A symlink planted in the workspace cannot read the sandbox's (or the host's) files outside it.
    std::os::unix::fs::symlink("/etc/passwd", workspace.join("escape")).unwrap();
    assert!(matches!(agent.download(&rel("escape")).await, Err(AgentError::Rejected(_))));

    let socket = e.rt.pod_dir(pod).join("run/agent.sock");
    for path in ["../../etc/passwd", "notes/../../x", "%2e%2e/etc/passwd"] {
        let (status, body) =
            raw_request(&socket, &format!("GET /v1/files/{path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
                .await;
        assert_eq!(status, 400, "{path}: {body}");
        let put =
            format!("PUT /v1/files/{path} HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx");
        assert_eq!(raw_request(&socket, &put).await.0, 400, "PUT {path}");
    }
    assert!(!e.tmp.path().join("pods/x").exists());

    e.rt.remove(pod).await.unwrap();
    assert_no_leak(&e.rt, pod).await;
}

#[tokio::test]
async fn stop_keeps_files_restart_reuses_them_and_remove_deletes_everything() {
    let e = env();
    let s = running_pod(&e.rt).await;
    let pod = s.pod_id;
    e.rt.agent(pod).put_file(&rel("keep/me.txt"), bytes_of(b"kept")).await.unwrap();

    e.rt.stop(pod).await.unwrap();
    assert_eq!(e.rt.observe(pod).await.unwrap(), PodObservation::Exited);
    assert!(sandbox_processes(pod).is_empty());
    let workspace = e.rt.pod_dir(pod).join("workspace");
    assert_eq!(std::fs::read(workspace.join("keep/me.txt")).unwrap(), b"kept");
    let diag = e.rt.diagnostics(pod).await.unwrap();
    assert!(diag.contains("status 0") && diag.contains("stop requested"), "{diag}");
    assert!(matches!(e.rt.agent(pod).health().await, Err(AgentError::Unreachable(_))));
    e.rt.stop(pod).await.unwrap(); // idempotent

    // Start again on the same files.
    e.rt.start(&s).await.unwrap();
    e.rt.start(&s).await.unwrap(); // idempotent while running
    wait_for(&e.rt, pod, PodObservation::Running, Duration::from_secs(30)).await;
    let dl = e.rt.agent(pod).download(&rel("keep/me.txt")).await.unwrap();
    assert_eq!(read_all(dl.body).await, b"kept");
    assert!(matches!(e.rt.prepare(&s, None).await, Err(PodError::Other(_))), "prepare over a running pod");

    // Read-only files and directories inside do not stop removal.
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(workspace.join("ro/inner")).unwrap();
    std::fs::write(workspace.join("ro/inner/f"), b"x").unwrap();
    std::fs::set_permissions(workspace.join("ro/inner/f"), std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(workspace.join("ro/inner"), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(workspace.join("ro"), std::fs::Permissions::from_mode(0o500)).unwrap();

    assert_eq!(e.rt.list_pods().await.unwrap(), vec![pod]);
    e.rt.remove(pod).await.unwrap();
    assert!(!e.rt.pod_dir(pod).exists());
    assert_eq!(e.rt.observe(pod).await.unwrap(), PodObservation::Absent);
    // The files themselves, read-only ones included, are deleted in the background.
    let trash = e.rt.pods_dir().join(".trash");
    for _ in 0..500 {
        if std::fs::read_dir(&trash).map(|mut d| d.next().is_none()).unwrap_or(true) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(std::fs::read_dir(&trash).map(|mut d| d.next().is_none()).unwrap_or(true), "removed files linger");
    assert!(e.rt.list_pods().await.unwrap().is_empty());
    e.rt.remove(pod).await.unwrap(); // idempotent
    assert_no_leak(&e.rt, pod).await;
}

#[tokio::test]
async fn start_needs_prepared_files() {
    let e = env();
    let s = spec();
    assert_eq!(e.rt.observe(s.pod_id).await.unwrap(), PodObservation::Absent);
    assert!(matches!(e.rt.start(&s).await, Err(PodError::Start(_))));
    // An interrupted prepare (directory without `complete`) is Partial, and prepare discards it.
    std::fs::create_dir_all(e.rt.pod_dir(s.pod_id).join("workspace/half")).unwrap();
    assert_eq!(e.rt.observe(s.pod_id).await.unwrap(), PodObservation::Partial);
    assert!(matches!(e.rt.start(&s).await, Err(PodError::Start(_))));
    e.rt.prepare(&s, None).await.unwrap();
    assert!(!e.rt.pod_dir(s.pod_id).join("workspace/half").exists());
    assert_eq!(e.rt.observe(s.pod_id).await.unwrap(), PodObservation::Held);
    assert!(matches!(e.rt.prepare(&s, None).await, Err(PodError::Other(_))), "prepared twice");
    // Stopping a held sandbox leaves complete files that start the ordinary way.
    e.rt.stop(s.pod_id).await.unwrap();
    assert_eq!(e.rt.observe(s.pod_id).await.unwrap(), PodObservation::Exited);

    // A sandbox that dies during its own set-up fails `start` at once, with bwrap's complaint.
    std::fs::remove_file(e.rt.pod_dir(s.pod_id).join("etc/hosts")).unwrap();
    // (That the failure is seen, not timed out, is what the message says: no clock is needed, and none is
    // reliable on a loaded machine.)
    match e.rt.start(&s).await {
        Err(PodError::Start(msg)) => assert!(msg.contains("exited during start-up") && msg.contains("bwrap"), "{msg}"),
        other => panic!("expected a start error, got {other:?}"),
    }
    assert_eq!(e.rt.observe(s.pod_id).await.unwrap(), PodObservation::Exited);
    e.rt.remove(s.pod_id).await.unwrap();
    assert_no_leak(&e.rt, s.pod_id).await;
}

#[tokio::test]
async fn sandbox_killed_from_outside_is_exited_with_the_signal_in_diagnostics() {
    let e = env();
    // bwrap itself killed: the reaper records the signal and ends the orphaned namespace.
    let s = running_pod(&e.rt).await;
    let bwrap = e.rt.sandbox_pid(s.pod_id).unwrap();
    unsafe { libc::kill(bwrap, libc::SIGKILL) };
    wait_for(&e.rt, s.pod_id, PodObservation::Exited, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let diag = loop {
        let d = e.rt.diagnostics(s.pod_id).await.unwrap_or_default();
        if d.contains("signal") || Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(diag.contains("killed by signal 9 (SIGKILL)"), "{diag}");
    assert!(!diag.contains("stop requested"), "{diag}");
    wait_no_processes(s.pod_id).await;

    // The agent killed inside the sandbox: bwrap passes on 128 + 9.
    let s2 = running_pod(&e.rt).await;
    let agent = agent_host_pid(&e.rt, s2.pod_id);
    unsafe { libc::kill(agent, libc::SIGKILL) };
    wait_for(&e.rt, s2.pod_id, PodObservation::Exited, Duration::from_secs(30)).await;
    e.rt.stop(s2.pod_id).await.unwrap(); // waits for the reaper
    let diag = e.rt.diagnostics(s2.pod_id).await.unwrap();
    assert!(diag.contains("status 137: the agent was killed by signal 9 (SIGKILL)"), "{diag}");

    for pod in [s.pod_id, s2.pod_id] {
        e.rt.remove(pod).await.unwrap();
        assert_no_leak(&e.rt, pod).await;
    }
}

async fn wait_no_processes(pod: PodId) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sandbox_processes(pod).is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?}", sandbox_processes(pod));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_restarted_control_plane_adopts_running_sandboxes() {
    let e = env();
    // The first control plane runs on its own tokio runtime, which is dropped (its reaper task with it) while the
    // sandbox keeps running: what a crash leaves behind.
    let cfg = e.cfg.clone();
    let s = std::thread::spawn(move || {
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio.block_on(async {
            let first = LocalRuntime::new(cfg).unwrap();
            let s = running_pod(&first).await;
            first.agent(s.pod_id).put_file(&rel("work.txt"), bytes_of(b"in progress")).await.unwrap();
            s
        })
    })
    .join()
    .unwrap();

    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio.block_on(async {
        let second = LocalRuntime::new(e.cfg.clone()).unwrap();
        assert_eq!(second.list_pods().await.unwrap(), vec![s.pod_id]);
        assert_eq!(second.observe(s.pod_id).await.unwrap(), PodObservation::Running);
        let dl = second.agent(s.pod_id).download(&rel("work.txt")).await.unwrap();
        assert_eq!(read_all(dl.body).await, b"in progress");

        second.stop(s.pod_id).await.unwrap();
        assert_eq!(second.observe(s.pod_id).await.unwrap(), PodObservation::Exited);
        assert!(sandbox_processes(s.pod_id).is_empty());
        // No reaper saw it end, but bwrap recorded its own exit code.
        let diag = second.diagnostics(s.pod_id).await.unwrap();
        assert!(diag.contains("status 0"), "{diag}");
        assert_eq!(std::fs::read(second.pod_dir(s.pod_id).join("workspace/work.txt")).unwrap(), b"in progress");
        second.remove(s.pod_id).await.unwrap();
        assert_no_leak(&second, s.pod_id).await;
    });
}

#[tokio::test]
async fn snapshot_capture_and_restore_round_trip() {
    let e = env();
    let store = e.cfg.snapshots.clone();
    let a = running_pod(&e.rt).await;
    let agent = e.rt.agent(a.pod_id);
    agent.put_file(&rel("src/main.rs"), bytes_of(b"fn main() {}\n")).await.unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    agent.put_file(&rel("data/big.bin"), bytes_of(&big)).await.unwrap();
    let ws = e.rt.pod_dir(a.pod_id).join("workspace");
    std::fs::create_dir(ws.join("empty-dir")).unwrap();
    std::os::unix::fs::symlink("src/main.rs", ws.join("link")).unwrap();
    let before = agent.list_files().await.unwrap();

    let snap = SnapshotId::new();
    let keys = SnapshotKeys::new(a.org_id, a.workspace_id, snap);
    let refused = e.rt.capture(a.pod_id, &keys, (a.org_id, a.workspace_id, snap)).await;
    assert!(matches!(refused, Err(PodError::Other(_))), "capture of a running pod must be refused");
    e.rt.stop(a.pod_id).await.unwrap();
    let manifest = e.rt.capture(a.pod_id, &keys, (a.org_id, a.workspace_id, snap)).await.unwrap();
    assert_eq!(manifest.file_count, before.len() as u64);

    let b = PodSpec { pod_id: PodId::new(), ..a.clone() };
    let report = e.rt.prepare(&b, Some(&keys)).await.unwrap();
    assert_eq!(report.restored.as_ref(), Some(&manifest));
    e.rt.start(&b).await.unwrap();
    wait_for(&e.rt, b.pod_id, PodObservation::Running, Duration::from_secs(30)).await;
    let after = e.rt.agent(b.pod_id).list_files().await.unwrap();
    assert_eq!(after, before);
    let dl = e.rt.agent(b.pod_id).download(&rel("data/big.bin")).await.unwrap();
    assert_eq!(read_all(dl.body).await, big);

    // A corrupt archive fails the prepare as a snapshot error and leaves Partial files, never an empty pod.
    let archive = e.tmp.path().join("snapshots").join(keys.archive.as_ref());
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();
    let c = PodSpec { pod_id: PodId::new(), ..a.clone() };
    assert!(matches!(e.rt.prepare(&c, Some(&keys)).await, Err(PodError::Snapshot(_))));
    assert_eq!(e.rt.observe(c.pod_id).await.unwrap(), PodObservation::Partial);
    drop(store);

    for pod in [a.pod_id, b.pod_id, c.pod_id] {
        e.rt.remove(pod).await.unwrap();
        assert_no_leak(&e.rt, pod).await;
    }
    assert!(e.rt.list_pods().await.unwrap().is_empty());
}

#[tokio::test]
async fn start_and_stop_cycle_repeatedly() {
    let e = env();
    let s = spec();
    e.rt.prepare(&s, None).await.unwrap();
    let mut samples = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        e.rt.start(&s).await.unwrap();
        wait_for(&e.rt, s.pod_id, PodObservation::Running, Duration::from_secs(30)).await;
        samples.push(started.elapsed());
        e.rt.stop(s.pod_id).await.unwrap();
    }
    samples.sort();
    // Informational only: latency targets live in `cargo bench -p evershell --bench lifecycle`.
    eprintln!("start → healthy over {} runs: median {:?}, max {:?}", samples.len(), samples[3], samples[6]);
    e.rt.remove(s.pod_id).await.unwrap();
    assert_no_leak(&e.rt, s.pod_id).await;
}

#[tokio::test]
async fn many_pods_run_side_by_side() {
    let e = Arc::new(env());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let s = running_pod(&e.rt).await;
            let info = e.rt.agent(s.pod_id).info().await.unwrap();
            assert_eq!(info["hostname"], s.pod_id.to_string());
            s.pod_id
        }));
    }
    let mut pods = Vec::new();
    for t in tasks {
        pods.push(t.await.unwrap());
    }
    pods.sort();
    assert_eq!(e.rt.list_pods().await.unwrap(), pods);
    e.rt.stop_all().await;
    for pod in pods {
        assert_eq!(e.rt.observe(pod).await.unwrap(), PodObservation::Exited);
        e.rt.remove(pod).await.unwrap();
        assert!(sandbox_processes(pod).is_empty());
    }
}

#[tokio::test]
async fn spare_pods_are_set_up_ahead_and_moved_into_place() {
    let tmp = tempfile::tempdir().unwrap();
    let pods = tmp.path().join("pods");
    // A spare left by a crashed run (its directory, no live process) is discarded at start-up. (The first spare of
    // a fresh pods directory is covered by the server tests, which start without one.)
    std::fs::create_dir_all(pods.join(".spare/pod_01JD8X3Q5M2N4P6R8T0V2W4Y6Z/workspace")).unwrap();
    let snapshots = SnapshotStore::local(&tmp.path().join("snapshots")).unwrap();
    let mut cfg = LocalRuntimeConfig::new(pods.clone(), PathBuf::from(env!("CARGO_BIN_EXE_evershell")), snapshots);
    cfg.spare_pods = 1;
    let rt = LocalRuntime::new(cfg.clone()).unwrap();
    let e = Env { tmp, cfg, rt };
    assert!(!pods.join(".spare/pod_01JD8X3Q5M2N4P6R8T0V2W4Y6Z").exists());
    // Wait for the spare as the runtime counts it ready: a held sandbox (agent up, `run/held` written) under
    // .spare, not listed as a pod.
    let spare = wait_ready_spare(&e.rt, &[]).await;
    assert!(pods.join(".spare").join(spare.to_string()).join("run/held").exists());
    assert!(e.rt.list_pods().await.unwrap().is_empty(), "spares are not pods");
    let pod = e.rt.reserve_pod();
    assert_eq!(pod, spare, "a new pod takes the ready spare's id");
    let s = PodSpec { pod_id: pod, ..spec() };
    e.rt.prepare(&s, None).await.unwrap();
    assert_eq!(e.rt.observe(pod).await.unwrap(), PodObservation::Held);
    assert_eq!(e.rt.list_pods().await.unwrap(), vec![pod]);
    e.rt.start(&s).await.unwrap();
    wait_for(&e.rt, pod, PodObservation::Running, Duration::from_secs(30)).await;
    let info = e.rt.agent(pod).info().await.unwrap();
    assert_eq!(info["hostname"], pod.to_string(), "the spare was set up under the id it now runs as");
    // Files written through the agent land in the pod's (moved) directory.
    e.rt.agent(pod).put_file(&rel("moved.txt"), bytes_of(b"here")).await.unwrap();
    assert_eq!(std::fs::read(e.rt.pod_dir(pod).join("workspace/moved.txt")).unwrap(), b"here");
    // Another spare is set up to replace it (ready, as above); shutdown discards spares and leaves the workspace's
    // pod running.
    let replacement = wait_ready_spare(&e.rt, &[spare]).await;
    let replacements: Vec<PodId> = std::fs::read_dir(pods.join(".spare"))
        .unwrap()
        .flatten()
        .map(|d| d.file_name().to_string_lossy().parse().unwrap())
        .collect();
    assert!(replacements.contains(&replacement), "{replacements:?}");
    e.rt.shutdown().await;
    assert!(std::fs::read_dir(pods.join(".spare")).map(|mut d| d.next().is_none()).unwrap_or(true));
    let deadline = Instant::now() + Duration::from_secs(30);
    // (The moved pod's own processes still name its old place; only the replacements must be gone.)
    while replacements.iter().any(|p| !sandbox_processes(*p).is_empty()) {
        assert!(Instant::now() < deadline, "spare sandboxes still alive after shutdown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(e.rt.observe(pod).await.unwrap(), PodObservation::Running);
    e.rt.remove(pod).await.unwrap();
    assert_no_leak(&e.rt, pod).await;
}
