//! `capture_running` against a real sandbox: a process writing in a loop inside the pod is frozen for the whole
//! capture (the pod's cgroup reads frozen and its counter does not move), the snapshot holds exactly the frozen
//! state, and the process carries on after the thaw. Needs root and a cgroup hierarchy with a freezer (v1
//! `freezer` here; v2 `cgroup.freeze` is unit-tested on its file layout in `crates/runtime/src/local/cgroup.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use evershell_core::exec::ExecRequest;
use evershell_core::files::RelPath;
use evershell_core::ids::{OrgId, PodId, SnapshotId, WorkspaceId};
use evershell_core::lifecycle::PodObservation;
use evershell_runtime::{LocalRuntime, LocalRuntimeConfig, PodError, PodLimits, PodRuntime, PodSpec};
use evershell_snapshot::{SnapshotKeys, SnapshotStore};

struct Env {
    _tmp: tempfile::TempDir,
    cfg: LocalRuntimeConfig,
    rt: LocalRuntime,
}

impl Drop for Env {
    fn drop(&mut self) {
        evershell_runtime::local::kill_all_sandboxes(self.rt.pods_dir());
    }
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::local(&tmp.path().join("snapshots")).unwrap();
    let mut cfg =
        LocalRuntimeConfig::new(tmp.path().join("pods"), PathBuf::from(env!("CARGO_BIN_EXE_evershell")), snapshots);
    cfg.spare_pods = 0;
    let rt = LocalRuntime::new(cfg.clone()).expect("bubblewrap must work on this machine");
    assert!(rt.cgroup_version().is_some(), "this host has a writable cgroup hierarchy");
    Env { _tmp: tmp, cfg, rt }
}

/// The file that says whether the pod is frozen, and the value it has then.
fn freezer_of(rt: &LocalRuntime, pod: PodId) -> (PathBuf, &'static str) {
    let dirs = rt.pod_cgroups(pod);
    if rt.cgroup_version() == Some(2) {
        return (dirs[0].join("cgroup.events"), "frozen 1");
    }
    let d = dirs.iter().find(|d| d.to_string_lossy().contains("/freezer/")).expect("the pod has a freezer cgroup");
    (d.join("freezer.state"), "FROZEN")
}

fn counter(ws: &Path) -> u64 {
    std::fs::read_to_string(ws.join("counter")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_pod_is_captured_frozen_and_carries_on_after() {
    let e = env();
    let s = PodSpec {
        pod_id: PodId::new(),
        org_id: OrgId::new(),
        workspace_id: WorkspaceId::new(),
        limits: PodLimits::default(),
    };
    e.rt.prepare(&s, None).await.unwrap();
    e.rt.start(&s).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while e.rt.observe(s.pod_id).await.unwrap() != PodObservation::Running {
        assert!(Instant::now() < deadline, "the pod did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ws = e.rt.pod_dir(s.pod_id).join("workspace");
    // Enough incompressible data that the capture takes a while, and a writer that never stops on its own.
    let noise: Vec<u8> = (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(ws.join("noise.bin"), &noise).unwrap();
    drop(noise);
    let agent = e.rt.agent(s.pod_id);
    let writer = tokio::spawn(async move {
        let script = "i=0; while [ ! -e /workspace/stop ]; do i=$((i+1)); echo $i > /workspace/c.tmp; \
                      mv /workspace/c.tmp /workspace/counter; done";
        let req = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            stdin: None,
            env: BTreeMap::new(),
            timeout_ms: Some(120_000),
        };
        agent.exec(&req).await
    });
    wait_until("the writer runs", || counter(&ws) > 10).await;

    let (state_file, frozen) = freezer_of(&e.rt, s.pod_id);
    let is_frozen = |f: &Path| std::fs::read_to_string(f).is_ok_and(|t| t.lines().any(|l| l.trim() == frozen));
    assert!(!is_frozen(&state_file));
    let snap = SnapshotId::new();
    let keys = SnapshotKeys::new(s.org_id, s.workspace_id, snap);
    let capture = e.rt.capture_running(s.pod_id, &keys, (s.org_id, s.workspace_id, snap));
    tokio::pin!(capture);
    // While the cgroup reads frozen, the counter stands still.
    let mut frozen_at: Option<u64> = None;
    let mut samples = 0;
    let manifest = loop {
        tokio::select! {
            r = &mut capture => break r.expect("the capture succeeds"),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {
                if is_frozen(&state_file) {
                    let c = counter(&ws);
                    if let Some(prev) = frozen_at {
                        assert_eq!(c, prev, "the counter moved while the pod was frozen");
                    }
                    frozen_at = Some(c);
                    samples += 1;
                }
            }
        }
    };
    let at = frozen_at.expect("the pod's cgroup was seen frozen during the capture");
    assert!(samples >= 2, "frozen for a while: {samples} samples");
    assert!(!is_frozen(&state_file), "thawed after the capture");
    // The snapshot holds exactly the frozen state.
    let read = e.cfg.snapshots.read_file(&keys, &RelPath::parse("counter").unwrap(), 64).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&read.bytes).trim(), at.to_string());
    assert!(manifest.file_count >= 2);
    // And the writer carries on.
    wait_until("the writer carries on after the thaw", || counter(&ws) > at + 10).await;

    // A pod whose sandbox does not run is refused, and nothing stays frozen.
    std::fs::write(ws.join("stop"), b"").unwrap();
    let done = writer.await.unwrap().expect("the writer's exec returns");
    assert_eq!(done.exit_code, Some(0));
    e.rt.stop(s.pod_id).await.unwrap();
    let again = SnapshotId::new();
    let k2 = SnapshotKeys::new(s.org_id, s.workspace_id, again);
    let r = e.rt.capture_running(s.pod_id, &k2, (s.org_id, s.workspace_id, again)).await;
    assert!(matches!(r, Err(PodError::Other(_))), "{r:?}");
    e.rt.remove(s.pod_id).await.unwrap();
}
