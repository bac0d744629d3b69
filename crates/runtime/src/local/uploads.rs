//! Host-side placement of a task's uploaded files into a pod's `uploads/` (bound at `/data/uploads`): each file is
//! copied into `<task_id>/` through directory descriptors (`openat` with `O_NOFOLLOW`, a fresh `O_EXCL` temporary
//! renamed over the target), so nothing pod code planted there (a symbolic link as `<task_id>` or as a file name, a
//! hard link, a directory in a file's place) is followed or written through. Files end owned by the pod's user, mode
//! 0644, in a 0755 directory.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of a placed file and of its task directory.
const FILE_MODE: libc::mode_t = 0o644;
const DIR_MODE: libc::mode_t = 0o755;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name holds a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Open `name` under `dir` as a directory, never through a symbolic link.
fn open_dir_at(dir: libc::c_int, name: &CString) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid C string and a descriptor we hold; the result is checked and owned at once.
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!(".evershell-upload-{}-{}-{nanos}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Copy `files` (name in the pod, host path of the staged copy) into `<uploads>/<task>/`. `owner` is the pod's
/// uid and gid when pods run as their own user (`None`: this process's uid is the pod's). Idempotent: a file
/// already placed is replaced. A `<task>` that is not a real directory is refused (`InvalidData`).
pub fn place(uploads: &Path, task: &str, files: &[(String, PathBuf)], owner: Option<(u32, u32)>) -> io::Result<()> {
    let root_path = cstr(&uploads.to_string_lossy())?;
    let root = open_dir_at(libc::AT_FDCWD, &root_path)?;
    let task_c = cstr(task)?;
    // SAFETY: valid descriptor and C string.
    match check(unsafe { libc::mkdirat(root.as_raw_fd(), task_c.as_ptr(), DIR_MODE) }) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let dir = open_dir_at(root.as_raw_fd(), &task_c).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/data/uploads/{task} exists in the pod and is not a directory (refused, not followed)"),
        ),
        _ => e,
    })?;
    if let Some((uid, gid)) = owner {
        // SAFETY: a descriptor we hold.
        check(unsafe { libc::fchown(dir.as_raw_fd(), uid, gid) })?;
    }
    // SAFETY: a descriptor we hold.
    check(unsafe { libc::fchmod(dir.as_raw_fd(), DIR_MODE) })?;
    for (name, source) in files {
        place_one(&dir, name, source, owner)?;
    }
    // SAFETY: a descriptor we hold.
    check(unsafe { libc::fsync(dir.as_raw_fd()) })?;
    Ok(())
}

fn place_one(dir: &OwnedFd, name: &str, source: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let target = cstr(name)?;
    let tmp = cstr(&temp_name())?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid descriptor and C string; the result is checked and owned at once.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), tmp.as_ptr(), flags, 0o600 as libc::c_uint) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    let mut out = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let unlink_tmp = || {
        // SAFETY: valid descriptor and C string.
        unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
    };
    let written = (|| -> io::Result<()> {
        let mut input = File::open(source)?;
        io::copy(&mut input, &mut out)?;
        if let Some((uid, gid)) = owner {
            // SAFETY: a descriptor we hold.
            check(unsafe { libc::fchown(out.as_raw_fd(), uid, gid) })?;
        }
        // SAFETY: a descriptor we hold.
        check(unsafe { libc::fchmod(out.as_raw_fd(), FILE_MODE) })?;
        out.sync_all()?;
        // renameat replaces whatever entry holds the name (a planted link is replaced, not followed); a directory
        // there fails the rename.
        // SAFETY: valid descriptors and C strings.
        check(unsafe { libc::renameat(dir.as_raw_fd(), tmp.as_ptr(), dir.as_raw_fd(), target.as_ptr()) })?;
        Ok(())
    })();
    if written.is_err() {
        unlink_tmp();
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn staged(dir: &Path, name: &str, body: &[u8]) -> (String, PathBuf) {
        let p = dir.join(format!("staged-{name}"));
        std::fs::write(&p, body).unwrap();
        (name.to_string(), p)
    }

    #[test]
    fn places_files_with_modes_and_replaces_planted_links() {
        let t = tempfile::tempdir().unwrap();
        let (uploads, stage) = (t.path().join("uploads"), t.path().join("stage"));
        std::fs::create_dir_all(&uploads).unwrap();
        std::fs::create_dir_all(&stage).unwrap();
        let outside = t.path().join("outside.txt");
        std::fs::write(&outside, b"keep").unwrap();
        // Pod code pre-created the task directory and planted a link under a file's name.
        std::fs::create_dir(uploads.join("task_1")).unwrap();
        std::os::unix::fs::symlink(&outside, uploads.join("task_1/a.txt")).unwrap();
        let files = vec![staged(&stage, "a.txt", b"alpha"), staged(&stage, "b.bin", &[0, 1, 2])];
        place(&uploads, "task_1", &files, None).unwrap();
        assert_eq!(std::fs::read(uploads.join("task_1/a.txt")).unwrap(), b"alpha");
        assert_eq!(std::fs::read(uploads.join("task_1/b.bin")).unwrap(), [0, 1, 2]);
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep", "the planted link was not followed");
        let m = std::fs::symlink_metadata(uploads.join("task_1/a.txt")).unwrap();
        assert!(m.is_file());
        assert_eq!(m.mode() & 0o7777, 0o644);
        assert_eq!(std::fs::metadata(uploads.join("task_1")).unwrap().mode() & 0o7777, 0o755);
        // Again (a retried delivery): the same result, no temporary left.
        place(&uploads, "task_1", &files, None).unwrap();
        let names: Vec<_> =
            std::fs::read_dir(uploads.join("task_1")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn refuses_a_planted_task_link_or_file() {
        let t = tempfile::tempdir().unwrap();
        let (uploads, stage, elsewhere) = (t.path().join("uploads"), t.path().join("stage"), t.path().join("else"));
        for d in [&uploads, &stage, &elsewhere] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::os::unix::fs::symlink(&elsewhere, uploads.join("task_2")).unwrap();
        std::fs::write(uploads.join("task_3"), b"").unwrap();
        let files = vec![staged(&stage, "a.txt", b"alpha")];
        for task in ["task_2", "task_3"] {
            let e = place(&uploads, task, &files, None).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{task}: {e}");
        }
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing written through the link");
        // A directory in a file's place fails that file.
        std::fs::create_dir_all(uploads.join("task_4/a.txt")).unwrap();
        assert!(place(&uploads, "task_4", &files, None).is_err());
        let left: Vec<_> = std::fs::read_dir(uploads.join("task_4")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "the temporary is removed: {left:?}");
    }
}
