//! `--hold`: the agent's wait before it serves. It first writes a `held` file beside the release file, which tells
//! the control plane that the sandbox is completely set up (the agent only runs once bubblewrap has finished), then
//! sleeps on inotify until the release file appears — no busy polling, as a spare pod may wait for hours.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the marker written beside the release file once the agent runs.
pub const HELD_MARKER: &str = "held";

/// Re-check the release file at least this often, whatever inotify says.
const RECHECK: Duration = Duration::from_secs(1);

/// Mark the pod held (at `marker`, default: `held` beside the release file), then wait until `release` exists.
/// In a pod the release file lives in a directory the pod can only read, the marker in one it can write.
pub async fn wait_for_release(release: &Path, marker: Option<&Path>) -> anyhow::Result<()> {
    let release = release.to_path_buf();
    let dir = release.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let marker = marker.map(Path::to_path_buf).unwrap_or_else(|| dir.join(HELD_MARKER));
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        // Watch before marking, so a release that follows the marker at once cannot be missed.
        let watch = Watch::new(&dir);
        std::fs::write(&marker, b"held\n")?;
        while !release.exists() {
            match &watch {
                Some(w) => w.wait(RECHECK),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        Ok(())
    })
    .await??;
    Ok(())
}

/// An inotify watch for entries created in (or moved into) one directory.
struct Watch {
    fd: OwnedFd,
}

impl Watch {
    /// `None` when inotify is unavailable; the caller then polls.
    fn new(dir: &Path) -> Option<Self> {
        let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: plain syscalls; the descriptor is owned by `OwnedFd` as soon as it is valid.
        unsafe {
            let raw = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
            if raw < 0 {
                return None;
            }
            let fd = OwnedFd::from_raw_fd(raw);
            if libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO) < 0 {
                return None;
            }
            Some(Self { fd })
        }
    }

    /// Sleep until an entry appears in the directory or `timeout` passes; drains the pending events.
    fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let mut buf = [0u8; 4096];
        // SAFETY: `pfd` and `buf` are valid for the calls; the fd is non-blocking, so the read never hangs.
        unsafe {
            if libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) > 0 {
                while libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0 {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_held_then_returns_once_released() {
        let tmp = tempfile::tempdir().unwrap();
        let release = tmp.path().join("release");
        let waiter = tokio::spawn({
            let release = release.clone();
            async move { wait_for_release(&release, None).await }
        });
        let held = tmp.path().join(HELD_MARKER);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !held.exists() {
            assert!(std::time::Instant::now() < deadline, "no held marker");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "returned before the release");
        let released_at = std::time::Instant::now();
        std::fs::write(&release, b"go").unwrap();
        waiter.await.unwrap().unwrap();
        // Woken by inotify, not by the once-a-second re-check.
        assert!(released_at.elapsed() < Duration::from_millis(500), "{:?}", released_at.elapsed());
    }

    #[tokio::test]
    async fn an_existing_release_file_returns_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("release"), b"go").unwrap();
        wait_for_release(&tmp.path().join("release"), None).await.unwrap();
        assert!(tmp.path().join(HELD_MARKER).exists());
    }
}
