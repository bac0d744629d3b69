//! The disk limit on a pod's `/workspace`: a sparse ext4 image per pod (`<pod>/workspace.img`, root's) loop-mounted
//! at `<pod>/workspace`, so a pod that fills its workspace gets ENOSPC at the limit and nothing else on the host
//! runs out. Made (truncate + `mkfs.ext4` + mount, ≈ 20–40 ms) with the pod's files, so a spare pod has it ready; an
//! image costs what its files use (a few MiB of metadata when empty).
//!
//! Chosen over project quotas because the data directory's file system here (ext4 on `/`) is mounted without
//! `prjquota`, which cannot be turned on while it is mounted; with no root, no `mkfs.ext4` or no loop devices the
//! runtime says so at start-up and workspaces are limited only by `max_workspace_bytes` at stop.
//!
//! The mount outlives the sandbox (a stopped pod's files are captured from it) and is made again when missing (after
//! a reboot) before anything reads or runs on the workspace: `ensure_mounted`. It goes before the pod's files do.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::layout::PodDir;

/// The image beside the workspace it holds.
pub fn image(dir: &PodDir) -> PathBuf {
    dir.root.join("workspace.img")
}

/// How pods' workspaces are limited.
#[derive(Debug, Clone)]
pub struct DiskLimit {
    pub bytes: u64,
    mkfs: PathBuf,
    mount: PathBuf,
}

impl DiskLimit {
    /// Check that images can be made and mounted here (root, `mkfs.ext4`, `mount`, a loop device), by making one in
    /// `scratch` (a directory under the pods directory); `None`, with the reason logged, when they cannot.
    pub fn probe(bytes: u64, scratch: &Path) -> Option<Self> {
        let found = |name: &str| {
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
        };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let (Some(mkfs), Some(mount), true) = (found("mkfs.ext4"), found("mount"), root) else {
            tracing::warn!(root, "no disk limit on workspaces: it needs root, mkfs.ext4 and mount");
            return None;
        };
        let d = Self { bytes, mkfs, mount };
        let dir = PodDir { root: scratch.to_path_buf() };
        let tried = (|| {
            let _ = super::layout::remove_tree(scratch);
            std::fs::create_dir_all(dir.workspace())?;
            d.create(&dir, None)?;
            d.unmount(&dir)
        })();
        let _ = d.unmount(&dir);
        let _ = super::layout::remove_tree(scratch);
        match tried {
            Ok(()) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "no disk limit on workspaces: a loop-mounted image could not be made");
                None
            }
        }
    }

    /// Make the image and mount it over the (empty) `workspace/`, its root owned by `owner` with `mode` kept.
    pub fn create(&self, dir: &PodDir, owner: Option<(u32, u32)>) -> io::Result<()> {
        let img = image(dir);
        let f = std::fs::OpenOptions::new().write(true).create_new(true).open(&img)?;
        f.set_len(self.bytes)?;
        drop(f);
        let (uid, gid) = owner.unwrap_or((0, 0));
        let ws = dir.workspace();
        let mode = std::fs::metadata(&ws)?.mode() & 0o7777;
        // No reserved blocks (the pod gets all of it); lazy init keeps the image sparse and mkfs quick; a journal, so
        // a host crash does not leave a workspace to fsck.
        run(Command::new(&self.mkfs)
            .args(["-q", "-F", "-m", "0", "-E"])
            .arg(format!("root_owner={uid}:{gid},lazy_itable_init=1,lazy_journal_init=1,nodiscard"))
            .arg(&img))?;
        self.mount(dir)?;
        // A fresh file system's `lost+found` is not the pod's file: it would appear in every snapshot.
        let _ = std::fs::remove_dir(ws.join("lost+found"));
        std::fs::set_permissions(&ws, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(())
    }

    fn mount(&self, dir: &PodDir) -> io::Result<()> {
        run(Command::new(&self.mount)
            .args(["-t", "ext4", "-o", "loop,nodev,nosuid,noatime"])
            .arg(image(dir))
            .arg(dir.workspace()))
    }

    /// Mount the pod's image if it has one and it is not mounted (a reboot unmounted it).
    pub fn ensure_mounted(&self, dir: &PodDir) -> io::Result<()> {
        if image(dir).is_file() && !is_mountpoint(&dir.workspace())? {
            tracing::info!("mounting the workspace image again");
            self.mount(dir)?;
        }
        Ok(())
    }

    /// Unmount the pod's workspace if it is a mount (its loop device goes with it). No sandbox may run on it.
    pub fn unmount(&self, dir: &PodDir) -> io::Result<()> {
        unmount(&dir.workspace())
    }
}

/// Unmount `ws` if it is a mount point; lazily when something still holds it.
pub fn unmount(ws: &Path) -> io::Result<()> {
    if !is_mountpoint(ws).unwrap_or(false) {
        return Ok(());
    }
    let c = CString::new(ws.as_os_str().as_bytes())?;
    // SAFETY: umount2 with a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW) } == 0 {
        return Ok(());
    }
    let first = io::Error::last_os_error();
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } == 0 {
        tracing::warn!(error = %first, path = %ws.display(), "workspace busy: detached");
        return Ok(());
    }
    Err(io::Error::new(first.kind(), format!("unmounting {}: {first}", ws.display())))
}

/// Whether `p` is the root of a mount (another device than its parent's).
pub fn is_mountpoint(p: &Path) -> io::Result<bool> {
    let m = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let parent = std::fs::metadata(p.parent().unwrap_or(Path::new("/")))?;
    Ok(m.is_dir() && m.dev() != parent.dev())
}

/// Unmount every workspace image mounted under `root` (start-up recovery, test guards): pods whose files moved to
/// the trash, spares, or a whole pods directory. Deepest first.
pub fn unmount_all_under(root: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(root) && m.file_name().is_some_and(|n| n == "workspace"))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    let mut n = 0;
    for p in points {
        match unmount(&p) {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!(error = %e, "unmounting a leftover workspace failed"),
        }
    }
    n
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(io::Error::other(format!("{:?} failed ({}): {}", cmd.get_program(), out.status, stderr.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_no_mountpoint() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(tmp.path()).unwrap());
        assert!(!is_mountpoint(&tmp.path().join("absent")).unwrap());
        assert!(is_mountpoint(Path::new("/proc")).unwrap());
        unmount(tmp.path()).unwrap();
    }
}
