//! Pod resource limits through cgroups: one cgroup per pod (memory, process count, CPU quota), on cgroup v1 or v2,
//! whichever the host has (detected at start-up from `/proc/self/mountinfo` and `/proc/self/cgroup`).
//!
//! Pods' cgroups live under a base of this runtime's own, `evershell-<hash of the pods directory>`, so two control
//! planes (or two test servers) on one host never touch each other's. On v1 the base sits in the control plane's own
//! cgroup of each controller (nesting keeps whatever limits the host put on the control plane around its pods); on
//! v2 it is a sibling of the control plane's cgroup (a v2 cgroup that holds processes cannot hand controllers to
//! children), or under the root when the control plane runs in the root cgroup.
//!
//! A sandbox enters its pod's cgroup before bubblewrap runs: the spawn opens the `cgroup.procs` files beforehand and
//! the forked child writes `0` (itself) into each before exec (`enter`), so nothing in a pod ever runs outside its
//! limits and a spare pod carries its limits from the start. The limits a pod got are recorded in `<pod>/limits`
//! (root's), so a cgroup lost with a reboot is made again with the same values.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long removing a cgroup waits for its last processes to exit.
const REMOVE_WAIT: Duration = Duration::from_secs(5);
/// How long a freeze may take before it is given up.
pub const FREEZE_WAIT: Duration = Duration::from_secs(5);
/// The CFS period the CPU quota is expressed in.
const CPU_PERIOD_US: u64 = 100_000;

pub use crate::pod::PodLimits as Limits;

/// Where the hierarchy is and how it is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One base per controller (`cpu` and `freezer` may be missing).
    V1 { memory: PathBuf, pids: PathBuf, cpu: Option<PathBuf>, freezer: Option<PathBuf> },
    /// The unified hierarchy: one base.
    V2 { base: PathBuf },
}

impl Layout {
    pub fn version(&self) -> u8 {
        match self {
            Layout::V1 { .. } => 1,
            Layout::V2 { .. } => 2,
        }
    }

    fn bases(&self) -> Vec<&Path> {
        match self {
            Layout::V1 { memory, pids, cpu, freezer } => {
                let mut v = vec![memory.as_path(), pids.as_path()];
                v.extend(cpu.as_deref());
                v.extend(freezer.as_deref());
                v
            }
            Layout::V2 { base } => vec![base.as_path()],
        }
    }
}

/// The base's name for a pods directory.
pub fn base_name(pods_dir: &Path) -> String {
    // FNV-1a: stable across builds and runs (the name must be found again after a restart).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pods_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("evershell-{:08x}", h as u32 ^ (h >> 32) as u32)
}

/// The hierarchy this process may put pods in, from the text of `/proc/self/mountinfo` and `/proc/self/cgroup`.
/// v1 needs the `memory` and `pids` controllers mounted; v2 needs both in the unified mount's `cgroup.controllers`
/// (read from the file system, so a test can stand a temp dir in for the mount).
pub fn detect(mountinfo: &str, self_cgroup: &str, base: &str) -> Option<Layout> {
    let mut v1: Vec<(Vec<String>, PathBuf)> = Vec::new();
    let mut v2: Option<PathBuf> = None;
    for line in mountinfo.lines() {
        // `id parent maj:min root mountpoint options [optional…] - fstype source superoptions`
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let (Some(mountpoint), Some(fstype)) = (pre.get(4), post.first()) else { continue };
        let mountpoint = PathBuf::from(unescape(mountpoint));
        match *fstype {
            "cgroup" => {
                let opts = post.get(2).copied().unwrap_or_default();
                v1.push((opts.split(',').map(str::to_string).collect(), mountpoint));
            }
            "cgroup2" if v2.is_none() => v2 = Some(mountpoint),
            _ => {}
        }
    }
    // `hierarchy-id:controllers:path`; v2's line is `0::path`.
    let own = |controller: &str| {
        self_cgroup.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
            if controller.is_empty() { ctrls.is_empty() } else { ctrls.split(',').any(|c| c == controller) }
                .then(|| path.trim_start_matches('/').to_string())
        })
    };
    let v1_base = |controller: &str| {
        let (_, mp) = v1.iter().find(|(opts, _)| opts.iter().any(|o| o == controller))?;
        Some(mp.join(own(controller).unwrap_or_default()).join(base))
    };
    if let (Some(memory), Some(pids)) = (v1_base("memory"), v1_base("pids")) {
        return Some(Layout::V1 { memory, pids, cpu: v1_base("cpu"), freezer: v1_base("freezer") });
    }
    let mount = v2?;
    let ctrls = fs::read_to_string(mount.join("cgroup.controllers")).ok()?;
    let has = |c: &str| ctrls.split_whitespace().any(|x| x == c);
    if !(has("memory") && has("pids")) {
        return None;
    }
    let own = PathBuf::from(own("").unwrap_or_default());
    // A sibling of this process's cgroup (its parent already hands it the controllers), or under the root.
    let parent = own.parent().map(Path::to_path_buf).unwrap_or_default();
    Some(Layout::V2 { base: mount.join(parent).join(base) })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the kernel counted against a pod's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Processes the OOM killer ended because of the memory limit.
    pub oom_kills: u64,
    /// Forks refused at the process limit.
    pub pids_max: u64,
}

/// Pods' cgroups of one runtime.
#[derive(Debug)]
pub struct Cgroups {
    pub layout: Layout,
    pub defaults: Limits,
}

impl Cgroups {
    /// Detect the host's hierarchy for `pods_dir` and make the base(s). `None` (with a warning) when there is no
    /// usable hierarchy or it is not writable: pods then run without cgroup limits.
    pub fn for_host(pods_dir: &Path, defaults: Limits) -> Option<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(layout) = detect(&mountinfo, &own, &base_name(pods_dir)) else {
            tracing::warn!("no cgroup hierarchy with the memory and pids controllers: pods run without limits");
            return None;
        };
        let cg = Self { layout, defaults };
        match cg.make_bases() {
            Ok(()) => {
                tracing::info!(version = cg.layout.version(), bases = ?cg.layout.bases(), "pod cgroups");
                Some(cg)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the pods' cgroups: pods run without limits");
                None
            }
        }
    }

    fn make_bases(&self) -> io::Result<()> {
        for b in self.layout.bases() {
            fs::create_dir_all(b)?;
        }
        if let Layout::V2 { base } = &self.layout {
            // The base's parent hands it the controllers, the base hands them to the pods.
            for dir in [base.parent(), Some(base.as_path())].into_iter().flatten() {
                enable_controllers(dir);
            }
        }
        Ok(())
    }

    /// The pod's cgroup directories.
    pub fn dirs(&self, pod: &str) -> Vec<PathBuf> {
        self.layout.bases().iter().map(|b| b.join(pod)).collect()
    }

    /// Create the pod's cgroup (if missing) with `limits` written, and open its `cgroup.procs` files for `enter`.
    pub fn prepare(&self, pod: &str, limits: &Limits) -> io::Result<Vec<OwnedFd>> {
        for d in self.dirs(pod) {
            match fs::create_dir(&d) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        self.apply(pod, limits)?;
        self.dirs(pod)
            .iter()
            .map(|d| Ok(fs::OpenOptions::new().write(true).open(d.join("cgroup.procs"))?.into()))
            .collect()
    }

    /// Write `limits` into the pod's existing cgroup.
    pub fn apply(&self, pod: &str, l: &Limits) -> io::Result<()> {
        let num = |v: Option<u64>, none: &str| v.map_or_else(|| none.to_string(), |v| v.to_string());
        match &self.layout {
            Layout::V1 { memory, pids, cpu, .. } => {
                let m = memory.join(pod);
                let bytes = num(l.memory_bytes, "-1");
                // memsw (memory + swap) must stay ≥ the memory limit: whichever order fails first is retried.
                let memsw = m.join("memory.memsw.limit_in_bytes");
                let first = write(&m.join("memory.limit_in_bytes"), &bytes);
                if memsw.exists() {
                    write(&memsw, &bytes)?;
                }
                if first.is_err() {
                    write(&m.join("memory.limit_in_bytes"), &bytes)?;
                }
                write(&pids.join(pod).join("pids.max"), &num(l.pids, "max"))?;
                if let Some(cpu) = cpu {
                    let c = cpu.join(pod);
                    write(&c.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    let quota = l.cpu_millis.map(|m| (m * CPU_PERIOD_US / 1000).max(1000));
                    write(&c.join("cpu.cfs_quota_us"), &num(quota, "-1"))?;
                }
            }
            Layout::V2 { base } => {
                let d = base.join(pod);
                write(&d.join("memory.max"), &num(l.memory_bytes, "max"))?;
                let swap = d.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, if l.memory_bytes.is_some() { "0" } else { "max" })?;
                }
                write(&d.join("pids.max"), &num(l.pids, "max"))?;
                let cpu = d.join("cpu.max");
                if cpu.exists() {
                    let quota = l.cpu_millis.map(|m| (m * CPU_PERIOD_US / 1000).max(1000));
                    write(&cpu, &format!("{} {CPU_PERIOD_US}", num(quota, "max")))?;
                } else if l.cpu_millis.is_some() {
                    tracing::debug!("the cpu controller is not enabled: no CPU quota");
                }
            }
        }
        Ok(())
    }

    /// What the kernel counted against the pod's limits (zeros when its cgroup is gone).
    pub fn events(&self, pod: &str) -> Events {
        let (mem, pids) = match &self.layout {
            Layout::V1 { memory, pids, .. } => (memory.join(pod).join("memory.oom_control"), pids.join(pod)),
            Layout::V2 { base } => (base.join(pod).join("memory.events"), base.join(pod)),
        };
        Events {
            oom_kills: keyed(&mem, "oom_kill").unwrap_or(0),
            pids_max: keyed(&pids.join("pids.events"), "max").unwrap_or(0),
        }
    }

    /// Freeze every process of the pod (v1: the `freezer` controller's `freezer.state`; v2: `cgroup.freeze`) and
    /// wait until the kernel reports the whole cgroup frozen (at most [`FREEZE_WAIT`]; past it the pod is thawed
    /// again and the call fails). `Ok(false)`: this host has no freezer for the pod (v1 without the controller, or a
    /// cgroup made before it was used), so nothing was frozen.
    pub fn freeze(&self, pod: &str) -> io::Result<bool> {
        let (file, frozen_value, done): (PathBuf, &str, Box<dyn Fn() -> bool>) = match &self.layout {
            Layout::V1 { freezer: Some(f), .. } => {
                let state = f.join(pod).join("freezer.state");
                let check = state.clone();
                (state, "FROZEN", Box::new(move || fs::read_to_string(&check).is_ok_and(|s| s.trim() == "FROZEN")))
            }
            Layout::V1 { freezer: None, .. } => return Ok(false),
            Layout::V2 { base } => {
                let events = base.join(pod).join("cgroup.events");
                (base.join(pod).join("cgroup.freeze"), "1", Box::new(move || keyed(&events, "frozen") == Some(1)))
            }
        };
        if !file.exists() {
            return Ok(false);
        }
        write(&file, frozen_value)?;
        let deadline = Instant::now() + FREEZE_WAIT;
        let mut pause = Duration::from_micros(200);
        while !done() {
            if Instant::now() >= deadline {
                let _ = self.thaw(pod);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the pod did not freeze within {FREEZE_WAIT:?}"),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        Ok(true)
    }

    /// Let the pod's processes run again (no-op when it has no freezer or is not frozen).
    pub fn thaw(&self, pod: &str) -> io::Result<()> {
        let (file, value) = match &self.layout {
            Layout::V1 { freezer: Some(f), .. } => (f.join(pod).join("freezer.state"), "THAWED"),
            Layout::V1 { freezer: None, .. } => return Ok(()),
            Layout::V2 { base } => (base.join(pod).join("cgroup.freeze"), "0"),
        };
        match write(&file, value) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Kill whatever still runs in the pod's cgroup and delete it. Absent is success.
    pub fn remove(&self, pod: &str) {
        for d in self.dirs(pod) {
            if let Err(e) = remove_dir(&d) {
                tracing::warn!(error = %e, path = %d.display(), "removing a pod's cgroup failed");
            }
        }
    }

    /// Remove every pod cgroup `keep` does not name (start-up recovery: pods removed before a crash, spares).
    pub fn sweep(&self, keep: impl Fn(&str) -> bool) -> usize {
        let mut removed = 0;
        for b in self.layout.bases() {
            for e in fs::read_dir(b).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().is_ok_and(|t| t.is_dir()) && !keep(&name) {
                    match remove_dir(&e.path()) {
                        Ok(()) => removed += 1,
                        Err(err) => tracing::warn!(error = %err, cgroup = name, "removing a leftover cgroup failed"),
                    }
                }
            }
        }
        removed
    }

    /// Remove the bases if no pod cgroup is left in them.
    pub fn remove_bases_if_empty(&self) {
        for b in self.layout.bases() {
            let _ = fs::remove_dir(b);
        }
    }
}

/// Kill and remove every pod cgroup of `pods_dir`'s runtime and its bases, if they exist (test and benchmark
/// guards; nothing is created).
pub fn remove_all_for(pods_dir: &Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(layout) = detect(&mountinfo, &own, &base_name(pods_dir)) else { return };
    if layout.bases().iter().all(|b| !b.exists()) {
        return;
    }
    let cg = Cgroups { layout, defaults: Limits::default() };
    cg.sweep(|_| false);
    cg.remove_bases_if_empty();
}

/// A sentence for `last_error` when the kernel enforced a limit on the pod (`None`: none was hit).
pub fn describe(ev: Events, limits: &Limits) -> Option<String> {
    let mut parts = Vec::new();
    if ev.oom_kills > 0 {
        let limit = limits.memory_bytes.map_or_else(String::new, |b| format!(" ({b} bytes)"));
        parts.push(format!(
            "the pod hit its memory limit{limit}: the OOM killer ended {} process(es) in it",
            ev.oom_kills
        ));
    }
    if ev.pids_max > 0 {
        let limit = limits.pids.map_or_else(String::new, |n| format!(" ({n})"));
        parts.push(format!("the pod hit its process limit{limit}: {} fork(s) refused", ev.pids_max));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// In the forked child, before exec: move this process into each cgroup whose `cgroup.procs` is open as `fds`.
/// Only async-signal-safe calls.
pub fn enter(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: write(2) of a static buffer to a descriptor open in the parent.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn raw(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}

fn write(p: &Path, v: &str) -> io::Result<()> {
    // Truncating, as a shell's `>` does: cgroupfs ignores it, a stand-in directory's plain files need it.
    let mut f = fs::OpenOptions::new().write(true).truncate(true).open(p)?;
    f.write_all(v.as_bytes()).map_err(|e| io::Error::new(e.kind(), format!("writing {v} to {}: {e}", p.display())))
}

/// `key N` from a flat-keyed cgroup file.
fn keyed(p: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(p).ok()?.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `+memory +pids +cpu` in `dir`'s `cgroup.subtree_control`, one at a time (cpu may be missing).
fn enable_controllers(dir: &Path) {
    for c in ["memory", "pids", "cpu"] {
        if let Err(e) = write(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
            tracing::debug!(error = %e, controller = c, "enabling a cgroup controller failed");
        }
    }
}

/// SIGKILL every process in the cgroup (and its children's), then rmdir them, waiting for the processes to go.
fn remove_dir(d: &Path) -> io::Result<()> {
    let deadline = Instant::now() + REMOVE_WAIT;
    loop {
        let mut children: Vec<PathBuf> = Vec::new();
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                children.push(e.path());
            }
        }
        for c in &children {
            remove_dir(c)?;
        }
        // A frozen process acts on SIGKILL only once thawed (a checkpoint's freeze a crash left in place).
        for (file, thawed) in [("freezer.state", "THAWED"), ("cgroup.freeze", "0")] {
            if d.join(file).exists() {
                let _ = write(&d.join(file), thawed);
            }
        }
        for pid in fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                super::procfs::kill(pid, libc::SIGKILL);
            }
        }
        match fs::remove_dir(d) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `<pod>/limits`: the limits the pod's cgroup is (re)made with.
pub fn record_path(pod_dir: &Path) -> PathBuf {
    pod_dir.join("limits")
}

pub fn read_record(pod_dir: &Path) -> Option<Limits> {
    serde_json::from_slice(&fs::read(record_path(pod_dir)).ok()?).ok()
}

pub fn write_record(pod_dir: &Path, l: &Limits) -> io::Result<()> {
    super::layout::write_atomic(&record_path(pod_dir), &serde_json::to_vec(l).expect("Limits serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTS: &str = "\
25 1 253:0 / / rw,relatime - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V1_SELF: &str = "8:pids:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";

    #[test]
    fn detects_v1_nested_in_the_own_cgroup_of_each_controller() {
        let got = detect(V1_MOUNTS, V1_SELF, "evershell-x").unwrap();
        assert_eq!(
            got,
            Layout::V1 {
                memory: "/sys/fs/cgroup/memory/process_api/abc/evershell-x".into(),
                pids: "/sys/fs/cgroup/pids/evershell-x".into(),
                cpu: Some("/sys/fs/cgroup/cpu/evershell-x".into()),
                freezer: None,
            }
        );
        // Without a pids controller v1 does not do, and the (controller-less) unified mount neither.
        let no_pids: String = V1_MOUNTS.lines().filter(|l| !l.contains(",pids")).map(|l| format!("{l}\n")).collect();
        assert_eq!(detect(&no_pids, V1_SELF, "evershell-x"), None);
    }

    /// A temp dir standing in for a v2 mount (this host has v1): detection and the files written.
    fn fake_v2(controllers: &str) -> (tempfile::TempDir, String) {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cgroup.controllers"), controllers).unwrap();
        let mounts = format!("40 25 0:31 / {} rw,relatime - cgroup2 cgroup2 rw\n", tmp.path().display());
        (tmp, mounts)
    }

    #[test]
    fn detects_v2_beside_the_own_cgroup_or_under_the_root() {
        let (tmp, mounts) = fake_v2("cpuset cpu io memory pids\n");
        let got = detect(&mounts, "0::/system.slice/evershell.service\n", "evershell-x").unwrap();
        assert_eq!(got, Layout::V2 { base: tmp.path().join("system.slice/evershell-x") });
        let got = detect(&mounts, "0::/\n", "evershell-x").unwrap();
        assert_eq!(got, Layout::V2 { base: tmp.path().join("evershell-x") });
        let (_t, mounts) = fake_v2("cpu io\n");
        assert_eq!(detect(&mounts, "0::/\n", "evershell-x"), None);
    }

    #[test]
    fn writes_v2_limit_files_and_reads_events() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("evershell-x");
        let cg = Cgroups { layout: Layout::V2 { base: base.clone() }, defaults: Limits::default() };
        fs::create_dir_all(&base).unwrap();
        let pod = base.join("pod_1");
        fs::create_dir(&pod).unwrap();
        // What the kernel would show in a fresh cgroup.
        for f in ["memory.max", "memory.swap.max", "pids.max", "cpu.max", "cgroup.procs"] {
            fs::write(pod.join(f), "").unwrap();
        }
        let l = Limits { memory_bytes: Some(256 << 20), pids: Some(128), cpu_millis: Some(1500) };
        let fds = cg.prepare("pod_1", &l).unwrap();
        assert_eq!(fds.len(), 1);
        let read = |f: &str| fs::read_to_string(pod.join(f)).unwrap();
        assert_eq!(read("memory.max"), "268435456");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "128");
        assert_eq!(read("cpu.max"), "150000 100000");
        cg.apply("pod_1", &Limits::default()).unwrap();
        assert_eq!(
            (read("memory.max"), read("pids.max"), read("cpu.max")),
            ("max".into(), "max".into(), "max 100000".into())
        );

        fs::write(pod.join("memory.events"), "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n").unwrap();
        fs::write(pod.join("pids.events"), "max 31\n").unwrap();
        assert_eq!(cg.events("pod_1"), Events { oom_kills: 2, pids_max: 31 });
        assert_eq!(cg.events("pod_gone"), Events::default());
    }

    #[test]
    fn writes_v1_limit_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (m, p, c) = (tmp.path().join("memory/b"), tmp.path().join("pids/b"), tmp.path().join("cpu/b"));
        for d in [&m, &p, &c] {
            fs::create_dir_all(d.join("pod_1")).unwrap();
        }
        for f in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "cgroup.procs"] {
            fs::write(m.join("pod_1").join(f), "").unwrap();
        }
        for f in ["pids.max", "cgroup.procs"] {
            fs::write(p.join("pod_1").join(f), "").unwrap();
        }
        for f in ["cpu.cfs_period_us", "cpu.cfs_quota_us", "cgroup.procs"] {
            fs::write(c.join("pod_1").join(f), "").unwrap();
        }
        let cg = Cgroups {
            layout: Layout::V1 { memory: m.clone(), pids: p.clone(), cpu: Some(c.clone()), freezer: None },
            defaults: Limits::default(),
        };
        let l = Limits { memory_bytes: Some(1 << 30), pids: Some(64), cpu_millis: Some(500) };
        assert_eq!(cg.prepare("pod_1", &l).unwrap().len(), 3);
        let read = |d: &Path, f: &str| fs::read_to_string(d.join("pod_1").join(f)).unwrap();
        assert_eq!(read(&m, "memory.limit_in_bytes"), "1073741824");
        assert_eq!(read(&m, "memory.memsw.limit_in_bytes"), "1073741824");
        assert_eq!(read(&p, "pids.max"), "64");
        assert_eq!(read(&c, "cpu.cfs_quota_us"), "50000");
        fs::write(m.join("pod_1/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(cg.events("pod_1").oom_kills, 3);
    }

    #[test]
    fn describes_the_limits_hit() {
        let l = Limits { memory_bytes: Some(64 << 20), pids: Some(50), cpu_millis: None };
        assert_eq!(describe(Events::default(), &l), None);
        let s = describe(Events { oom_kills: 1, pids_max: 0 }, &l).unwrap();
        assert_eq!(s, "the pod hit its memory limit (67108864 bytes): the OOM killer ended 1 process(es) in it");
        let s = describe(Events { oom_kills: 0, pids_max: 3 }, &l).unwrap();
        assert_eq!(s, "the pod hit its process limit (50): 3 fork(s) refused");
    }

    #[test]
    fn overrides_take_only_what_they_set() {
        let d = Limits { memory_bytes: Some(1), pids: Some(2), cpu_millis: None };
        let o = Limits { pids: Some(9), cpu_millis: Some(3), ..Limits::default() };
        assert_eq!(d.overridden_by(o), Limits { memory_bytes: Some(1), pids: Some(9), cpu_millis: Some(3) });
    }

    #[test]
    fn base_names_are_stable_and_differ_per_pods_dir() {
        assert_eq!(base_name(Path::new("/a/pods")), base_name(Path::new("/a/pods")));
        assert_ne!(base_name(Path::new("/a/pods")), base_name(Path::new("/b/pods")));
        assert!(base_name(Path::new("/a")).starts_with("evershell-"));
    }
}
