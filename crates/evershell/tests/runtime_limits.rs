//! Pod resource limits against real sandboxes: a fork bomb, a memory hog and a disk filler inside one pod fail
//! inside that pod while its agent and the other pods carry on; the limits are in place from a spare's set-up on
//! and a role's overrides reach the cgroup before the agent is released; cgroups and workspace mounts go with their
//! pods (and leftovers at start-up). Needs root and a writable cgroup hierarchy (v1 here; v2 is unit-tested on its
//! file layout in `crates/runtime/src/local/cgroup.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use evershell_core::exec::{ExecRequest, ExecResult};
use evershell_core::ids::{OrgId, PodId, SnapshotId, WorkspaceId};
use evershell_core::lifecycle::PodObservation;
use evershell_runtime::{LocalRuntime, LocalRuntimeConfig, PodLimits, PodRuntime, PodSpec};
use evershell_snapshot::{SnapshotKeys, SnapshotStore};

const MEMORY: u64 = 128 << 20;
const PIDS: u64 = 96;
const DISK: u64 = 48 << 20;

struct Env {
    _tmp: tempfile::TempDir,
    cfg: LocalRuntimeConfig,
    rt: LocalRuntime,
}

/// A failed test leaves no sandbox, cgroup or mount behind.
impl Drop for Env {
    fn drop(&mut self) {
        evershell_runtime::local::kill_all_sandboxes(self.rt.pods_dir());
    }
}

fn env_with(spares: usize) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::local(&tmp.path().join("snapshots")).unwrap();
    let mut cfg =
        LocalRuntimeConfig::new(tmp.path().join("pods"), PathBuf::from(env!("CARGO_BIN_EXE_evershell")), snapshots);
    cfg.limits = PodLimits { memory_bytes: Some(MEMORY), pids: Some(PIDS), cpu_millis: Some(500) };
    cfg.disk_limit_bytes = Some(DISK);
    cfg.spare_pods = spares;
    let rt = LocalRuntime::new(cfg.clone()).expect("bubblewrap must work on this machine");
    assert!(rt.cgroup_version().is_some(), "this host has a writable cgroup hierarchy");
    assert!(rt.disk_limited(), "this host can loop-mount workspace images");
    Env { _tmp: tmp, cfg, rt }
}

fn spec() -> PodSpec {
    PodSpec {
        pod_id: PodId::new(),
        org_id: OrgId::new(),
        workspace_id: WorkspaceId::new(),
        limits: PodLimits::default(),
    }
}

async fn wait_for(rt: &LocalRuntime, pod: PodId, want: PodObservation) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = rt.observe(pod).await.unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "pod {pod} still {got:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn running(rt: &LocalRuntime, s: &PodSpec) {
    rt.prepare(s, None).await.unwrap();
    rt.start(s).await.unwrap();
    wait_for(rt, s.pod_id, PodObservation::Running).await;
}

fn sh_req(script: &str, timeout_ms: u64) -> ExecRequest {
    ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdin: None,
        env: BTreeMap::new(),
        timeout_ms: Some(timeout_ms),
    }
}

async fn sh(rt: &LocalRuntime, pod: PodId, script: &str) -> ExecResult {
    rt.agent(pod).exec(&sh_req(script, 60_000)).await.unwrap()
}

/// The pod's cgroup directory of `controller` (v1: `…/memory/…/<pod>`).
fn cgroup_of(rt: &LocalRuntime, pod: PodId, controller: &str) -> PathBuf {
    let dirs = rt.pod_cgroups(pod);
    dirs.iter()
        .find(|d| d.to_string_lossy().contains(&format!("/{controller}/")))
        .or(dirs.first().filter(|_| rt.cgroup_version() == Some(2)))
        .cloned()
        .unwrap_or_else(|| panic!("no {controller} cgroup among {dirs:?}"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().to_string()
}

fn keyed(p: &Path, key: &str) -> u64 {
    read(p).lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

/// Whether anything is mounted at a path naming `pod`.
fn mounted(pod: PodId) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&pod.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_hits_the_process_limit_and_the_agent_and_other_pods_answer() {
    let e = env_with(0);
    let (a, b) = (spec(), spec());
    running(&e.rt, &a).await;
    running(&e.rt, &b).await;
    assert_eq!(read(&cgroup_of(&e.rt, a.pod_id, "pids").join("pids.max")), PIDS.to_string());

    // The classic one, bounded by the exec's deadline (which kills its whole process group).
    let bomb = {
        let agent = e.rt.agent(a.pod_id);
        tokio::spawn(async move { agent.exec(&sh_req("bomb() { bomb | bomb & }; bomb; sleep 60", 8_000)).await })
    };
    let events = cgroup_of(&e.rt, a.pod_id, "pids").join("pids.events");
    let deadline = Instant::now() + Duration::from_secs(20);
    while keyed(&events, "max") == 0 {
        assert!(Instant::now() < deadline, "the fork bomb never reached the process limit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While it runs at the limit: the bombed pod's agent still answers, the other pod works normally.
    assert!(!bomb.is_finished());
    e.rt.agent(a.pod_id).health().await.expect("the bombed pod's agent answers");
    e.rt.agent(b.pod_id).health().await.unwrap();
    let r = sh(&e.rt, b.pod_id, "echo fine").await;
    assert_eq!((r.exit_code, r.stdout.trim()), (Some(0), "fine"));
    let current: u64 = read(&cgroup_of(&e.rt, a.pod_id, "pids").join("pids.current")).parse().unwrap();
    assert!(current <= PIDS, "{current} tasks over the limit of {PIDS}");

    bomb.await.unwrap().expect("the agent answers the bomb's exec at its deadline");
    let diag = e.rt.diagnostics(a.pod_id).await.unwrap_or_default();
    assert!(diag.contains(&format!("the pod hit its process limit ({PIDS})")), "{diag}");
    // Once the bomb's processes are gone (killing its group races its last forks: wait for the count to fall back)
    // the pod is usable again.
    let pids_current = cgroup_of(&e.rt, a.pod_id, "pids").join("pids.current");
    let deadline = Instant::now() + Duration::from_secs(20);
    while read(&pids_current).parse::<u64>().unwrap() >= PIDS / 2 {
        assert!(Instant::now() < deadline, "the fork bomb's processes never went away: {}", read(&pids_current));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = sh(&e.rt, a.pod_id, "echo recovered").await;
    assert_eq!((r.exit_code, r.stdout.trim()), (Some(0), "recovered"));
    for s in [&a, &b] {
        e.rt.remove(s.pod_id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_oom_killed_inside_and_the_agent_survives() {
    let e = env_with(0);
    let (a, b) = (spec(), spec());
    running(&e.rt, &a).await;
    running(&e.rt, &b).await;
    let mem = cgroup_of(&e.rt, a.pod_id, "memory");
    if e.rt.cgroup_version() == Some(1) {
        assert_eq!(read(&mem.join("memory.limit_in_bytes")), MEMORY.to_string());
    }
    let agent_before = agent_host_pid(&e.rt, a.pod_id);

    // `tail` keeps the whole of a line in memory, and /dev/zero has no newline: it grows until it is killed.
    let r = sh(&e.rt, a.pod_id, "head -c 1G /dev/zero | tail > /dev/null; echo \"tail status $?\"").await;
    assert!(r.stdout.contains("tail status 137"), "the hog was SIGKILLed: {r:?}");
    let oom = if e.rt.cgroup_version() == Some(1) {
        keyed(&mem.join("memory.oom_control"), "oom_kill")
    } else {
        keyed(&mem.join("memory.events"), "oom_kill")
    };
    assert!(oom >= 1, "the kernel counted the OOM kill");
    // The agent (the sandbox's main process) is the same process and answers; the other pod never noticed.
    assert_eq!(e.rt.observe(a.pod_id).await.unwrap(), PodObservation::Running);
    assert_eq!(agent_host_pid(&e.rt, a.pod_id), agent_before);
    let r = sh(&e.rt, a.pod_id, "echo alive").await;
    assert_eq!(r.stdout.trim(), "alive");
    assert_eq!(sh(&e.rt, b.pod_id, "echo fine").await.stdout.trim(), "fine");
    let diag = e.rt.diagnostics(a.pod_id).await.unwrap_or_default();
    assert!(diag.contains(&format!("the pod hit its memory limit ({MEMORY} bytes): the OOM killer ended")), "{diag}");
    for s in [&a, &b] {
        e.rt.remove(s.pod_id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filler_gets_enospc_at_the_limit_and_a_stop_still_snapshots_it() {
    let e = env_with(0);
    let a = spec();
    running(&e.rt, &a).await;
    let free_before = free_bytes(e.rt.pods_dir());
    let r = sh(
        &e.rt,
        a.pod_id,
        "echo kept > note.txt; dd if=/dev/zero of=fill bs=1M count=1000 2>&1; echo \"dd status $?\"; \
         df -B1 --output=size /workspace | tail -1",
    )
    .await;
    assert!(r.stdout.contains("No space left on device"), "{r:?}");
    assert!(r.stdout.contains("dd status 1"), "{r:?}");
    let size: u64 = r.stdout.lines().last().unwrap().trim().parse().unwrap();
    assert!(size <= DISK && size > DISK / 2, "the workspace file system is the limit's size: {size}");
    let filled = std::fs::metadata(e.rt.pod_dir(a.pod_id).join("workspace/fill")).unwrap().len();
    assert!(filled > DISK / 2 && filled <= DISK, "filled {filled} of {DISK}");
    // The host lost at most the image's size, not a gigabyte (other helpers share the disk: a generous margin).
    assert!(free_before.saturating_sub(free_bytes(e.rt.pods_dir())) < DISK + (200 << 20));
    // The pod carries on (writes fail, everything else works).
    e.rt.agent(a.pod_id).health().await.unwrap();
    assert_eq!(sh(&e.rt, a.pod_id, "cat note.txt").await.stdout.trim(), "kept");

    // A stop snapshots what is there; a new pod restores it into its own (equally limited) workspace.
    e.rt.stop(a.pod_id).await.unwrap();
    let snap = SnapshotId::new();
    let keys = SnapshotKeys::new(a.org_id, a.workspace_id, snap);
    let m = e.rt.capture(a.pod_id, &keys, (a.org_id, a.workspace_id, snap)).await.unwrap();
    assert_eq!(m.content_bytes, filled + 5);
    let b = PodSpec { pod_id: PodId::new(), ..a.clone() };
    e.rt.prepare(&b, Some(&keys)).await.unwrap();
    let ws = e.rt.pod_dir(b.pod_id).join("workspace");
    assert_eq!(std::fs::read_to_string(ws.join("note.txt")).unwrap(), "kept\n");
    assert_eq!(std::fs::metadata(ws.join("fill")).unwrap().len(), filled);
    assert!(!ws.join("lost+found").exists(), "the file system's own lost+found is no workspace file");
    for s in [&a, &b] {
        e.rt.remove(s.pod_id).await.unwrap();
        assert!(!mounted(s.pod_id), "the workspace image of {} is unmounted with its pod", s.pod_id);
    }
}

/// The host pid of the agent: bwrap → namespace init → agent.
fn agent_host_pid(rt: &LocalRuntime, pod: PodId) -> i32 {
    let children = |pid: i32| -> Vec<i32> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    };
    let bwrap = rt.sandbox_pid(pod).expect("sandbox runs");
    let init = *children(bwrap).first().expect("bwrap has its init");
    *children(init).first().expect("init runs the agent")
}

fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_runs_under_its_limits_and_the_role_overrides_them_before_release() {
    let e = env_with(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let spare = loop {
        if let Some(p) = e.rt.ready_spares().first() {
            break *p;
        }
        assert!(Instant::now() < deadline, "no spare became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Set up ahead of need: the spare's bwrap, its init and the held agent already run in the pod's cgroups (one
    // per controller), and its workspace is mounted.
    let dirs = e.rt.pod_cgroups(spare);
    // v1: memory and pids always, cpu and freezer where the host mounts them; v2: one unified directory.
    let v1 = 2 + ["cpu", "freezer"].iter().filter(|c| Path::new("/sys/fs/cgroup").join(c).exists()).count();
    assert_eq!(dirs.len(), if e.rt.cgroup_version() == Some(1) { v1 } else { 1 }, "{dirs:?}");
    for d in &dirs {
        let procs: Vec<String> = read(&d.join("cgroup.procs")).lines().map(str::to_string).collect();
        let cmdlines: Vec<String> = procs
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default()).into())
            .collect();
        assert!(cmdlines.iter().any(|c| c.contains("bwrap") && c.contains(&spare.to_string())), "{cmdlines:?}");
        assert!(cmdlines.iter().any(|c| c.contains("agent") && c.contains("--hold")), "{cmdlines:?}");
    }
    assert!(mounted(spare), "the spare's workspace is mounted ahead of need");

    let pod = e.rt.reserve_pod();
    assert_eq!(pod, spare);
    let s = PodSpec {
        pod_id: pod,
        limits: PodLimits { memory_bytes: Some(MEMORY / 2), pids: Some(PIDS + 10), cpu_millis: None },
        ..spec()
    };
    e.rt.prepare(&s, None).await.unwrap();
    if e.rt.cgroup_version() == Some(1) {
        let mem = cgroup_of(&e.rt, pod, "memory");
        assert_eq!(read(&mem.join("memory.limit_in_bytes")), (MEMORY / 2).to_string());
        let cpu = cgroup_of(&e.rt, pod, "cpu");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000", "the default CPU quota stays");
    }
    assert_eq!(read(&cgroup_of(&e.rt, pod, "pids").join("pids.max")), (PIDS + 10).to_string());
    e.rt.start(&s).await.unwrap();
    wait_for(&e.rt, pod, PodObservation::Running).await;
    assert_eq!(sh(&e.rt, pod, "echo up").await.stdout.trim(), "up");

    // Stopped and started again (a new bwrap): the role's limits are the pod's, not the defaults.
    e.rt.stop(pod).await.unwrap();
    e.rt.start(&s).await.unwrap();
    wait_for(&e.rt, pod, PodObservation::Running).await;
    assert_eq!(read(&cgroup_of(&e.rt, pod, "pids").join("pids.max")), (PIDS + 10).to_string());

    let dirs = e.rt.pod_cgroups(pod);
    e.rt.remove(pod).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dirs.iter().any(|d| d.exists()) {
        assert!(Instant::now() < deadline, "the pod's cgroups outlived it: {dirs:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!mounted(pod));
    e.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_cgroups_and_mounts_are_cleaned_up_at_start_up() {
    let e = env_with(0);
    let a = spec();
    running(&e.rt, &a).await;
    // A cgroup of a pod whose files are gone (removed before a crash).
    let base = e.rt.pod_cgroups(a.pod_id).into_iter().map(|d| d.parent().unwrap().to_path_buf()).collect::<Vec<_>>();
    let stale = PodId::new().to_string();
    for b in &base {
        std::fs::create_dir(b.join(&stale)).unwrap();
    }
    // A second runtime over the same pods directory (a restart) sweeps it and keeps the live pod's.
    let again = LocalRuntime::new(e.cfg.clone()).unwrap();
    for b in &base {
        assert!(!b.join(&stale).exists(), "{} swept", b.join(&stale).display());
    }
    assert!(again.pod_cgroups(a.pod_id).iter().all(|d| d.exists()));
    assert_eq!(again.observe(a.pod_id).await.unwrap(), PodObservation::Running);
    let dirs = again.pod_cgroups(a.pod_id);
    again.remove(a.pod_id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dirs.iter().any(|d| d.exists()) {
        assert!(Instant::now() < deadline, "the pod's cgroups outlived it: {dirs:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing of this runtime is left in the hierarchy once its last pod is gone and it shuts down.
    again.shutdown().await;
    assert!(base.iter().all(|b| !b.exists()), "cgroup bases left: {base:?}");
}
