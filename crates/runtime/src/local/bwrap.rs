//! The bubblewrap command line of a pod's sandbox, finding `bwrap`, and the start-up probe that refuses to run
//! without working namespaces (there is no unsandboxed fallback).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::layout::{PodDir, SANDBOX_UID, SANDBOX_USER};
use super::seccomp;
use super::trust;

/// Where the agent binary appears inside the sandbox.
pub const AGENT_PATH: &str = "/opt/evershell/bin/evershell";
/// The agent's socket inside the sandbox (`<pod>/run/agent.sock` outside).
pub const AGENT_SOCKET: &str = "/run/evershell/agent.sock";
/// The control plane's read-only directory in the pod (`layout::PodDir::ctl`).
pub const AGENT_CTL: &str = "/run/evershell-ctl";
/// The agent waits (`--hold`) until this file exists; `layout::PodDir::release` is its host side.
pub const AGENT_RELEASE: &str = "/run/evershell-ctl/release";
/// Written by the held agent once it runs (`layout::PodDir::held`).
pub const AGENT_HELD: &str = "/run/evershell/held";
const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host directories a merged-/usr system replaces by symlinks; mirrored as symlinks or bound read-only.
const ROOT_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];
/// Read-only bits of the host's `/etc` that tools need, bound when present.
const HOST_ETC: &[&str] = &[
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/resolv.conf",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/ld.so.cache",
];
/// Generated per pod (in `<pod>/etc`).
const POD_ETC: &[&str] = &["passwd", "group", "hosts", "hostname"];
/// `/proc` entries that would let a pod change or read the host kernel: bound read-only over themselves (the host's
/// procfs is where bubblewrap finds them; the values are the same kernel's).
const PROC_READ_ONLY: &[&str] = &["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"];
/// `/proc` files masked with `/dev/null`, as container runtimes do.
const PROC_MASKED_FILES: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/kallsyms",
    "/proc/latency_stats",
    "/proc/kmsg",
    "/proc/kpagecount",
    "/proc/kpageflags",
    "/proc/kpagecgroup",
];
/// `/proc` directories masked with an empty read-only tmpfs.
const PROC_MASKED_DIRS: &[&str] = &["/proc/acpi", "/proc/scsi", "/proc/asound", "/proc/driver"];

const INSTALL_HINT: &str = "bubblewrap is not installed: install it with `apt-get install bubblewrap`";

/// `bwrap` on `PATH`, if any.
pub fn find_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("bwrap")).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

fn push_path(args: &mut Vec<OsString>, flag: &str, src: &Path, dest: &str) {
    args.push(flag.into());
    args.push(src.into());
    args.push(dest.into());
}

/// Namespaces, identity, and the read-only host system: shared by the probe and the real sandbox.
fn base_args(disable_userns: bool) -> Vec<OsString> {
    base_args_net(disable_userns, false)
}

/// `joined_netns`: the sandbox runs in a network namespace the control plane made (joined before exec), so
/// bubblewrap makes none of its own.
fn base_args_net(disable_userns: bool, joined_netns: bool) -> Vec<OsString> {
    let mut a = Vec::new();
    let uid = SANDBOX_UID.to_string();
    push(
        &mut a,
        &[
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--uid",
            &uid,
            "--gid",
            &uid,
            "--cap-drop",
            "ALL",
        ],
    );
    if !joined_netns {
        push(&mut a, &["--unshare-net"]);
    }
    if disable_userns {
        push(&mut a, &["--disable-userns"]);
    }
    push(&mut a, &["--ro-bind", "/usr", "/usr"]);
    for link in ROOT_LINKS {
        let p = Path::new(link);
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(p) {
                    a.push("--symlink".into());
                    a.push(target.into());
                    a.push(link.into());
                }
            }
            Ok(m) if m.is_dir() => push(&mut a, &["--ro-bind", link, link]),
            _ => {}
        }
    }
    push(&mut a, &["--proc", "/proc"]);
    for p in PROC_READ_ONLY {
        if Path::new(p).exists() {
            push(&mut a, &["--ro-bind", p, p]);
        }
    }
    for p in PROC_MASKED_FILES {
        if Path::new(p).is_file() {
            push(&mut a, &["--ro-bind", "/dev/null", p]);
        }
    }
    for p in PROC_MASKED_DIRS {
        if Path::new(p).is_dir() {
            push(&mut a, &["--perms", "0555", "--tmpfs", p, "--remount-ro", p]);
        }
    }
    push(&mut a, &["--dev", "/dev", "--tmpfs", "/tmp"]);
    a
}

/// Descriptors bubblewrap reads its seccomp programs from (see `seccomp.rs`).
#[derive(Debug, Clone, Copy)]
pub struct SeccompFds {
    pub deny: RawFd,
    pub guard: RawFd,
}

fn push_seccomp(a: &mut Vec<OsString>, fds: SeccompFds) {
    for fd in [fds.deny, fds.guard] {
        a.push("--add-seccomp-fd".into());
        a.push(fd.to_string().into());
    }
}

/// The full argument list (after the `bwrap` program) for a pod's sandbox.
#[allow(clippy::too_many_arguments)]
pub fn sandbox_args(
    dir: &PodDir,
    pod_id: &str,
    agent_binary: &Path,
    status_fd: RawFd,
    seccomp: SeccompFds,
    disable_userns: bool,
    joined_netns: bool,
    trust: Option<&trust::Binds>,
    resolv_conf: Option<&Path>,
    agent_env: &[(String, String)],
) -> Vec<OsString> {
    let mut a = base_args_net(disable_userns, joined_netns);
    push_seccomp(&mut a, seccomp);
    for etc in HOST_ETC {
        push(&mut a, &["--ro-bind-try", etc, etc]);
    }
    // A networked pod asks the DNS responder (through its gateway), not the host's resolvers (often on loopback).
    if let Some(r) = resolv_conf {
        push_path(&mut a, "--ro-bind", r, "/etc/resolv.conf");
    }
    // The CA bundle (system + platform CA) over the distro paths, after the host's `/etc/ssl` it lands in.
    if let Some(t) = trust {
        push_path(&mut a, "--ro-bind", &t.bundle, trust::POD_BUNDLE);
        push_path(&mut a, "--ro-bind", &t.platform_ca, trust::POD_PLATFORM_CA);
        for p in &t.over {
            push_path(&mut a, "--ro-bind", &t.bundle, p);
        }
    }
    for name in POD_ETC {
        push_path(&mut a, "--ro-bind", &dir.etc().join(name), &format!("/etc/{name}"));
    }
    push_path(&mut a, "--bind", &dir.workspace(), "/workspace");
    push_path(&mut a, "--bind", &dir.run(), "/run/evershell");
    push_path(&mut a, "--ro-bind", &dir.ctl(), AGENT_CTL);
    push_path(&mut a, "--bind", &dir.uploads(), "/data/uploads");
    push_path(&mut a, "--ro-bind", agent_binary, AGENT_PATH);
    // Last of the mounts: the sandbox's root itself becomes read-only (only its own mounts stay writable).
    push(&mut a, &["--remount-ro", "/"]);
    let fd = status_fd.to_string();
    push(
        &mut a,
        &[
            "--hostname",
            pod_id,
            "--chdir",
            "/workspace",
            "--clearenv",
            "--setenv",
            "PATH",
            SANDBOX_PATH,
            "--setenv",
            "HOME",
            "/workspace",
            "--setenv",
            "USER",
            SANDBOX_USER,
            "--setenv",
            "LANG",
            "C.UTF-8",
        ],
    );
    // After `--clearenv` (bubblewrap applies its options in order).
    if trust.is_some() {
        for (k, v) in trust::ENV {
            push(&mut a, &["--setenv", k, v]);
        }
    }
    // The agent's tuning from the server's configuration (`LocalRuntimeConfig::agent_env`, checked there).
    for (k, v) in agent_env {
        push(&mut a, &["--setenv", k, v]);
    }
    push(
        &mut a,
        &[
            "--new-session",
            "--json-status-fd",
            &fd,
            AGENT_PATH,
            "agent",
            "--socket",
            AGENT_SOCKET,
            "--root",
            "/workspace",
            "--pod-id",
            pod_id,
            "--hold",
            AGENT_RELEASE,
            "--held-marker",
            AGENT_HELD,
        ],
    );
    a
}

/// What the probe learnt about this host's bubblewrap.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// `--disable-userns` is supported (bubblewrap ≥ 0.8): nested user namespaces are refused inside.
    pub disable_userns: bool,
}

/// Check that `bwrap` exists and can create every namespace the sandbox uses, by running `true` in one with the
/// pods' own hardening: as an unprivileged pod uid (when `as_pod` is given), under the seccomp programs.
pub fn probe(
    bwrap: &Path,
    agent_binary: &Path,
    as_pod: Option<RunAs>,
    programs: &seccomp::Programs,
) -> anyhow::Result<Capabilities> {
    if !is_executable(bwrap) {
        bail!("{INSTALL_HINT} (no executable at {})", bwrap.display());
    }
    let help = std::process::Command::new(bwrap)
        .arg("--help")
        .output()
        .with_context(|| format!("{INSTALL_HINT} (running {} failed)", bwrap.display()))?;
    let help = String::from_utf8_lossy(&help.stdout);
    let disable_userns = help.contains("--disable-userns");
    anyhow::ensure!(
        help.contains("--add-seccomp-fd"),
        "bubblewrap ({}) is too old: it lacks --add-seccomp-fd (0.5 or later is needed)",
        bwrap.display()
    );
    let deny = seccomp::memfd("evershell-seccomp", &programs.deny)?;
    let guard = seccomp::memfd("evershell-seccomp-guard", &programs.guard)?;
    let fds = SeccompFds { deny: deny.as_raw_fd(), guard: guard.as_raw_fd() };
    let mut a = base_args(disable_userns);
    push_seccomp(&mut a, fds);
    // The agent binary must be reachable as the pod's uid, as every sandbox binds it.
    push_path(&mut a, "--ro-bind", agent_binary, AGENT_PATH);
    let mut cmd = std::process::Command::new(bwrap);
    cmd.args(a).arg("true").stdin(std::process::Stdio::null());
    let inherit = [fds.deny, fds.guard];
    // SAFETY: the closure only makes async-signal-safe system calls (fcntl, setgroups, setresgid, setresuid).
    unsafe {
        cmd.pre_exec(move || pre_exec(&inherit, as_pod, None));
    }
    let out = cmd.output().with_context(|| format!("running the bubblewrap probe ({})", bwrap.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "bubblewrap ({}) cannot create the sandbox's namespaces on this host ({}): {}; unprivileged user \
             namespaces may be disabled (check `sysctl kernel.unprivileged_userns_clone`, `user.max_user_namespaces` \
             and `kernel.apparmor_restrict_unprivileged_userns`). Refusing to run pods unsandboxed.",
            bwrap.display(),
            out.status,
            stderr.trim()
        );
    }
    Ok(Capabilities { disable_userns })
}

/// Who bubblewrap runs as: the pod's uid and gid, with the traversal group as its only supplementary group; and the
/// pod's index (its network interfaces and addresses), when pods get a network.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub group: u32,
    pub net_index: Option<u32>,
}

/// In the forked child, before exec: let bubblewrap inherit `inherit` (close-on-exec in the parent) and take the
/// pod's identity. Only async-signal-safe calls.
pub fn pre_exec(inherit: &[RawFd], run_as: Option<RunAs>, netns: Option<RawFd>) -> std::io::Result<()> {
    let check = |r: libc::c_int| if r == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
    for &fd in inherit {
        // SAFETY: fcntl on a descriptor open in the parent.
        check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
    }
    if let Some(fd) = netns {
        // SAFETY: setns(2) into the pod's network namespace, while still root.
        check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) })?;
    }
    if let Some(d) = run_as {
        let groups = [d.group as libc::gid_t];
        // SAFETY: plain system calls with valid arguments; order matters (groups and gid while still root).
        unsafe {
            check(libc::setgroups(1, groups.as_ptr()))?;
            check(libc::setresgid(d.gid, d.gid, d.gid))?;
            check(libc::setresuid(d.uid, d.uid, d.uid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_args_isolate_and_run_the_agent() {
        let dir = PodDir::new(Path::new("/pods"), "pod_x");
        let args: Vec<String> = sandbox_args(
            &dir,
            "pod_x",
            Path::new("/bin/evershell"),
            7,
            SeccompFds { deny: 8, guard: 9 },
            true,
            false,
            None,
            None,
            &[],
        )
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect();
        let joined = args.join(" ");
        for flag in ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"] {
            assert!(args.iter().any(|a| a == flag), "{flag}");
        }
        assert!(!joined.contains("--die-with-parent"));
        assert!(joined.contains("--ro-bind /usr /usr"));
        assert!(joined.contains("--bind /pods/pod_x/workspace /workspace"));
        assert!(joined.contains("--hostname pod_x"));
        assert!(joined.contains("--json-status-fd 7"));
        assert!(joined.ends_with(
            "agent --socket /run/evershell/agent.sock --root /workspace --pod-id pod_x --hold \
             /run/evershell-ctl/release --held-marker /run/evershell/held"
        ));
    }

    #[test]
    fn the_ca_bundle_is_bound_and_named_after_the_environment_is_cleared() {
        let dir = PodDir::new(Path::new("/pods"), "pod_x");
        let binds = trust::Binds {
            bundle: "/pods/.trust/ca-bundle.pem".into(),
            platform_ca: "/pods/.trust/platform-ca.pem".into(),
            over: vec!["/etc/ssl/certs/ca-certificates.crt"],
        };
        let args: Vec<String> = sandbox_args(
            &dir,
            "pod_x",
            Path::new("/bin/evershell"),
            7,
            SeccompFds { deny: 8, guard: 9 },
            true,
            true,
            Some(&binds),
            Some(Path::new("/pods/pod_x/etc/resolv.conf")),
            &[("EVERSHELL_AGENT_MODEL_RETRY_BASE_MS".into(), "10".into())],
        )
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--ro-bind /pods/.trust/ca-bundle.pem /etc/ssl/certs/ca-certificates.crt"));
        assert!(joined.contains("--ro-bind /pods/.trust/ca-bundle.pem /etc/evershell/ca-bundle.pem"));
        assert!(joined.contains("--ro-bind /pods/.trust/platform-ca.pem /etc/evershell/platform-ca.pem"));
        assert!(joined.contains("--ro-bind /pods/pod_x/etc/resolv.conf /etc/resolv.conf"));
        assert!(!args.iter().any(|a| a == "--unshare-net"), "the joined namespace is the pod's network");
        let clear = args.iter().position(|a| a == "--clearenv").unwrap();
        let tuning = [("EVERSHELL_AGENT_MODEL_RETRY_BASE_MS", "10")];
        for (k, v) in trust::ENV.iter().chain(&tuning) {
            let at = args.windows(3).position(|w| w[0] == "--setenv" && w[1] == *k && w[2] == *v).unwrap();
            assert!(at > clear, "{k} set before --clearenv");
        }
        // The bundle lands over the host's /etc/ssl, so it comes after it; the resolver config after the host's.
        let ssl = args.iter().position(|a| a == "/etc/ssl").unwrap();
        let bundle = args.iter().position(|a| a == "/etc/ssl/certs/ca-certificates.crt").unwrap();
        assert!(bundle > ssl);
        let host_resolv = args.iter().position(|a| a == "/etc/resolv.conf").unwrap();
        assert!(args.iter().rposition(|a| a == "/etc/resolv.conf").unwrap() > host_resolv);
    }

    #[test]
    fn missing_bwrap_names_the_package() {
        let err = probe(Path::new("/nonexistent/bwrap"), Path::new("/bin/true"), None, &seccomp::build().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install bubblewrap"), "{err}");
    }
}
