//! The bubblewrap command line of a pod's sandbox, finding `bwrap`, and the start-up probe that refuses to run
//! without working namespaces (there is no unsandboxed fallback).

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::layout::{PodDir, SANDBOX_UID, SANDBOX_USER};

/// Where the agent binary appears inside the sandbox.
pub const AGENT_PATH: &str = "/opt/evershell/bin/evershell";
/// The agent's socket inside the sandbox (`<pod>/run/agent.sock` outside).
pub const AGENT_SOCKET: &str = "/run/evershell/agent.sock";
/// The agent waits (`--hold`) until this file exists; `layout::PodDir::release` is its host side.
pub const AGENT_RELEASE: &str = "/run/evershell/release";
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
    let mut a = Vec::new();
    let uid = SANDBOX_UID.to_string();
    push(
        &mut a,
        &[
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-net",
            "--unshare-cgroup-try",
            "--uid",
            &uid,
            "--gid",
            &uid,
            "--cap-drop",
            "ALL",
        ],
    );
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
    push(&mut a, &["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
    a
}

/// The full argument list (after the `bwrap` program) for a pod's sandbox.
pub fn sandbox_args(
    dir: &PodDir,
    pod_id: &str,
    agent_binary: &Path,
    status_fd: RawFd,
    disable_userns: bool,
) -> Vec<OsString> {
    let mut a = base_args(disable_userns);
    for etc in HOST_ETC {
        push(&mut a, &["--ro-bind-try", etc, etc]);
    }
    for name in POD_ETC {
        push_path(&mut a, "--ro-bind", &dir.etc().join(name), &format!("/etc/{name}"));
    }
    push_path(&mut a, "--bind", &dir.workspace(), "/workspace");
    push_path(&mut a, "--bind", &dir.run(), "/run/evershell");
    push_path(&mut a, "--bind", &dir.uploads(), "/data/uploads");
    push_path(&mut a, "--ro-bind", agent_binary, AGENT_PATH);
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

/// Check that `bwrap` exists and can create every namespace the sandbox uses, by running `true` in one.
pub fn probe(bwrap: &Path) -> anyhow::Result<Capabilities> {
    if !is_executable(bwrap) {
        bail!("{INSTALL_HINT} (no executable at {})", bwrap.display());
    }
    let help = std::process::Command::new(bwrap)
        .arg("--help")
        .output()
        .with_context(|| format!("{INSTALL_HINT} (running {} failed)", bwrap.display()))?;
    let disable_userns = String::from_utf8_lossy(&help.stdout).contains("--disable-userns");
    let out = std::process::Command::new(bwrap)
        .args(base_args(disable_userns))
        .arg("true")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running the bubblewrap probe ({})", bwrap.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "bubblewrap ({}) cannot create the sandbox's namespaces on this host ({}): {}; unprivileged user \
             namespaces may be disabled (check `sysctl kernel.unprivileged_userns_clone` and \
             `kernel.apparmor_restrict_unprivileged_userns`). Refusing to run pods unsandboxed.",
            bwrap.display(),
            out.status,
            stderr.trim()
        );
    }
    Ok(Capabilities { disable_userns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_args_isolate_and_run_the_agent() {
        let dir = PodDir::new(Path::new("/pods"), "pod_x");
        let args: Vec<String> = sandbox_args(&dir, "pod_x", Path::new("/bin/evershell"), 7, true)
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
            "agent --socket /run/evershell/agent.sock --root /workspace --pod-id pod_x --hold /run/evershell/release"
        ));
    }

    #[test]
    fn missing_bwrap_names_the_package() {
        let err = probe(Path::new("/nonexistent/bwrap")).unwrap_err().to_string();
        assert!(err.contains("apt-get install bubblewrap"), "{err}");
    }
}
