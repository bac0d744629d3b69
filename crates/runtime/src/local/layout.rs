//! The pod directory `<pods_dir>/<pod_id>/` and what lives in it: the directories bound into the sandbox, the
//! generated `/etc` files, the `complete` marker, and the bookkeeping files of the sandbox process.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::identity::PodIdentity;

/// Uid and gid of the sandbox's user (mapped to the control plane's own uid outside).
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_USER: &str = "evershell";

/// Paths of one pod's directory.
#[derive(Debug, Clone)]
pub struct PodDir {
    pub root: PathBuf,
}

impl PodDir {
    pub fn new(pods_dir: &Path, pod: &str) -> Self {
        Self { root: pods_dir.join(pod) }
    }

    /// Bound read-write at `/workspace`.
    pub fn workspace(&self) -> PathBuf {
        self.root.join("workspace")
    }
    /// Bound at `/run/evershell`; holds the agent's socket.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.run().join("agent.sock")
    }
    /// Bound read-only at `/run/evershell-ctl`: what the control plane tells the agent. Root's directory (the pod
    /// can read it, never write it), so nothing planted by pod code can redirect a host-side write there.
    pub fn ctl(&self) -> PathBuf {
        self.root.join("ctl")
    }
    /// Lets the held agent start (`--hold`): created by `start`, never by `prepare`.
    pub fn release(&self) -> PathBuf {
        self.ctl().join("release")
    }
    /// Written by a held agent once it runs, that is once bubblewrap has finished setting the sandbox up.
    pub fn held(&self) -> PathBuf {
        self.run().join("held")
    }
    /// Bound at `/data/uploads`.
    pub fn uploads(&self) -> PathBuf {
        self.root.join("uploads")
    }
    /// Generated `passwd`, `group`, `hosts`, `hostname`, bound read-only into `/etc`.
    pub fn etc(&self) -> PathBuf {
        self.root.join("etc")
    }
    /// stdout + stderr of the sandbox.
    pub fn log(&self) -> PathBuf {
        self.root.join("sandbox.log")
    }
    /// `PidRecord` of the running sandbox.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("sandbox.pid")
    }
    /// bwrap's own JSON status lines (`child-pid`, later `exit-code`), written by bwrap itself.
    pub fn bwrap_status(&self) -> PathBuf {
        self.root.join("sandbox.status")
    }
    /// How the sandbox ended, written by the reaper.
    pub fn exit_status(&self) -> PathBuf {
        self.root.join("exit_status")
    }
    /// Present while a stop requested by the control plane is (or was) in progress.
    pub fn stop_requested(&self) -> PathBuf {
        self.root.join("stop_requested")
    }
    /// Written (and fsynced) once `prepare` finished; without it the files are `Partial`.
    pub fn complete(&self) -> PathBuf {
        self.root.join("complete")
    }

    pub fn exists(&self) -> io::Result<bool> {
        exists(&self.root)
    }

    pub fn is_complete(&self) -> io::Result<bool> {
        exists(&self.complete())
    }
}

pub fn exists(p: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Who a pod's directories belong to: `None` when the control plane is not root (everything is its own).
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    pub pod: PodIdentity,
    /// The traversal group (search-only access to the pod directory for bubblewrap).
    pub group: u32,
}

/// Create the directory layout and the generated `/etc` files. The pod directory must not exist. With `owner`, the
/// identity is recorded first; the pod directory itself, `etc/` and `ctl/` are root's, and only `workspace/`,
/// `uploads/` and `run/` (the directories bound writable) belong to the pod's uid.
pub fn create(dir: &PodDir, pod_id: &str, owner: Option<Ownership>) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(&dir.root)?;
    let chown = |p: &Path, uid: u32, gid: u32| std::os::unix::fs::lchown(p, Some(uid), Some(gid));
    let chmod = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
    };
    if let Some(o) = owner {
        super::identity::record(&dir.root, o.pod)?;
        chown(&dir.root, 0, o.group)?;
        chmod(&dir.root, 0o710)?;
    }
    for d in [dir.workspace(), dir.run(), dir.uploads()] {
        std::fs::DirBuilder::new().mode(if owner.is_some() { 0o700 } else { 0o755 }).create(&d)?;
        if let Some(o) = owner {
            chown(&d, o.pod.uid, o.pod.gid)?;
        }
    }
    std::fs::DirBuilder::new().mode(0o755).create(dir.etc())?;
    std::fs::DirBuilder::new().mode(0o750).create(dir.ctl())?;
    if let Some(o) = owner {
        chown(&dir.ctl(), 0, o.pod.gid)?;
    }
    let shell = if Path::new("/usr/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
    let files = [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                 {SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}:{SANDBOX_USER}:/workspace:{shell}\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        ("group", format!("root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_UID}:\nnogroup:x:65534:\n")),
        ("hosts", format!("127.0.0.1\tlocalhost\n127.0.1.1\t{pod_id}\n::1\tlocalhost ip6-localhost ip6-loopback\n")),
        ("hostname", format!("{pod_id}\n")),
    ];
    for (name, text) in files {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(dir.etc().join(name))?
            .write_all(text.as_bytes())?;
    }
    Ok(())
}

/// Bring an older pod directory up to date (no sandbox runs on it): create `ctl/`, and with `owner` and
/// `record_identity`, record the identity and hand the writable directories to the pod's uid.
pub fn upgrade(dir: &PodDir, owner: Option<Ownership>, record_identity: bool) -> io::Result<()> {
    if !exists(&dir.ctl())? {
        std::fs::DirBuilder::new().mode(0o750).create(dir.ctl())?;
        if let Some(o) = owner {
            std::os::unix::fs::lchown(dir.ctl(), Some(0), Some(o.pod.gid))?;
        }
    }
    if let (Some(o), true) = (owner, record_identity) {
        super::identity::record(&dir.root, o.pod)?;
        std::os::unix::fs::lchown(&dir.root, Some(0), Some(o.group))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.root, std::fs::Permissions::from_mode(0o710))?;
        for d in [dir.workspace(), dir.run(), dir.uploads()] {
            super::identity::chown_tree(&d, o.pod.uid, o.pod.gid)?;
        }
    }
    Ok(())
}

/// Whether `p` is a Unix socket itself (a link to one does not count).
pub fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
}

/// Write `path` (created or truncated; a link there is never followed) with `bytes`.
pub fn write_nofollow(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(bytes)
}

/// Write the `complete` marker durably: the file, then the directory entry.
pub fn mark_complete(dir: &PodDir) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(dir.complete())?;
    f.write_all(b"complete\n")?;
    f.sync_all()?;
    sync_dir(&dir.root)
}

/// Remove the `complete` marker durably (first step of deleting a pod: a crash later leaves `Partial` files).
pub fn unmark_complete(dir: &PodDir) -> io::Result<()> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    match std::fs::remove_file(dir.complete()).and_then(|()| sync_dir(&dir.root)) {
        Err(e) if gone(&e) => Ok(()),
        other => other,
    }
}

pub fn sync_dir(p: &Path) -> io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

/// Write `bytes` to `path` via a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Where removed pods' files wait to be deleted: `<pods_dir>/.trash` (not a pod name, so never listed as a pod).
pub fn trash_root(pods_dir: &Path) -> PathBuf {
    pods_dir.join(".trash")
}

/// A fresh place in the trash for `pod`'s files.
pub fn trash_dir(pods_dir: &Path, pod: evershell_core::ids::PodId) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    trash_root(pods_dir).join(format!("{pod}-{nanos}"))
}

/// Remove a file, treating "already gone" as success.
pub fn remove_if_exists(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Delete a directory tree that may hold read-only directories (made writable as the walk meets them). Symlinks
/// are removed, never followed. Absent is success.
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(first) => {
            make_dirs_writable(p);
            match std::fs::remove_dir_all(p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(_) => Err(first),
            }
        }
    }
}

fn make_dirs_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![p.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_layout_and_removes_read_only_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PodDir::new(tmp.path(), "pod_x");
        create(&dir, "pod_x", None).unwrap();
        assert_eq!(std::fs::read_to_string(dir.etc().join("hostname")).unwrap(), "pod_x\n");
        assert!(std::fs::read_to_string(dir.etc().join("passwd")).unwrap().contains(":1000:1000:"));
        assert!(!dir.is_complete().unwrap());
        mark_complete(&dir).unwrap();
        assert!(dir.is_complete().unwrap());

        let ro = dir.workspace().join("ro/inner");
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::write(ro.join("f"), b"x").unwrap();
        std::fs::set_permissions(ro.join("f"), std::fs::Permissions::from_mode(0o444)).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::set_permissions(dir.workspace().join("ro"), std::fs::Permissions::from_mode(0o500)).unwrap();
        // A symlink out of the tree must not be followed.
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(&outside, dir.workspace().join("link")).unwrap();

        unmark_complete(&dir).unwrap();
        remove_tree(&dir.root).unwrap();
        assert!(!dir.exists().unwrap());
        assert!(outside.join("keep").exists());
        remove_tree(&dir.root).unwrap();
    }
}
