//! `sandbox.log`: what the sandbox's processes print. They get the write end of a pipe, never a host file, so pod
//! code cannot grow a host file without bound; the control plane relays the pipe into `sandbox.log`, rotating it to
//! `sandbox.log.1` each time it reaches the cap (so at most twice the cap is kept). The relay writes relative to a
//! descriptor of the pod directory, which follows a spare pod when it is moved into place, and never follows a link.
//!
//! A control plane that restarts re-opens the pipe through `/proc/<bwrap>/fd/1` (bwrap's own stdout, which pod code
//! cannot reach) and goes on relaying. While no control plane runs, what the sandbox prints is lost (the writers get
//! `EPIPE`; the agent ignores it).

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::AsyncReadExt;

/// Default cap of `sandbox.log` (and of `sandbox.log.1`).
pub const DEFAULT_CAP: u64 = 1024 * 1024;
pub const LOG: &str = "sandbox.log";
pub const ROTATED: &str = "sandbox.log.1";

/// A fresh pipe: `(read end, write end)`, both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Re-open the read side of a running sandbox's log pipe through its bwrap process (adoption after a restart).
pub fn reopen(bwrap_pid: i32) -> io::Result<OwnedFd> {
    let path = CString::new(format!("/proc/{bwrap_pid}/fd/1")).expect("no NUL");
    // SAFETY: plain open(2); the descriptor is owned at once.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let meta = std::fs::File::from(fd.try_clone()?).metadata()?;
    if !std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()) {
        return Err(io::Error::other("the sandbox's stdout is not its log pipe"));
    }
    Ok(fd)
}

/// Open `dir` as an anchor for relative, link-free file operations.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: plain open(2).
    let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The rotating log file, relative to the pod directory's descriptor.
pub struct Sink {
    dir: OwnedFd,
    file: Option<(std::fs::File, u64)>,
    cap: u64,
}

impl Sink {
    pub fn new(pod_root: &Path, cap: u64) -> io::Result<Self> {
        Ok(Self { dir: open_dir(pod_root)?, file: None, cap: cap.max(4096) })
    }

    fn open(&self) -> io::Result<(std::fs::File, u64)> {
        let name = CString::new(LOG).expect("no NUL");
        let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: openat(2) relative to our directory descriptor.
        let raw = unsafe { libc::openat(self.dir.as_raw_fd(), name.as_ptr(), flags, 0o600) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        let f = unsafe { std::fs::File::from_raw_fd(raw) };
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other("sandbox.log is not a regular file"));
        }
        Ok((f, meta.len()))
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let (from, to) = (CString::new(LOG).expect("no NUL"), CString::new(ROTATED).expect("no NUL"));
        let d = self.dir.as_raw_fd();
        // SAFETY: renameat(2) of two names inside our directory.
        if unsafe { libc::renameat(d, from.as_ptr(), d, to.as_ptr()) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Append `bytes`, rotating first when they would take the file past the cap (a chunk larger than the cap is
    /// cut to its last `cap` bytes).
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        if bytes.len() as u64 > self.cap {
            bytes = &bytes[bytes.len() - self.cap as usize..];
        }
        if self.file.is_none() {
            self.file = Some(self.open()?);
        }
        if self.file.as_ref().is_some_and(|(_, len)| len + bytes.len() as u64 > self.cap) {
            self.rotate()?;
            self.file = Some(self.open()?);
        }
        let (f, len) = self.file.as_mut().expect("opened above");
        f.write_all(bytes)?;
        *len += bytes.len() as u64;
        Ok(())
    }

    /// A line of the control plane's own, marked as such.
    pub fn note(&mut self, line: &str) {
        let _ = self.write(format!("--- evershell: {line}\n").as_bytes());
    }
}

/// Relay the pipe into the sink until every writer is gone (the sandbox ended).
pub async fn relay(read: OwnedFd, mut sink: Sink) {
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(read) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(error = %e, "cannot relay the sandbox's log pipe");
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = sink.write(&buf[..n]) {
                    tracing::warn!(error = %e, "writing sandbox.log failed; dropping the sandbox's output");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the sandbox's log pipe failed");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_cap_and_never_follows_links() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = Sink::new(tmp.path(), 4096).unwrap();
        for _ in 0..10 {
            sink.write(&[b'x'; 1000]).unwrap();
        }
        let len = |n: &str| std::fs::metadata(tmp.path().join(n)).unwrap().len();
        // Four writes fill a file; the fifth and the ninth rotate: the current file holds two, the rotated four.
        assert_eq!((len(LOG), len(ROTATED)), (2000, 4000));
        sink.write(&[b'y'; 100_000]).unwrap();
        assert!(len(LOG) <= 4096);

        // A planted link is refused, the target untouched.
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::remove_file(tmp.path().join(LOG)).unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join(LOG)).unwrap();
        let mut sink = Sink::new(tmp.path(), 4096).unwrap();
        assert!(sink.write(b"evil").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[tokio::test]
    async fn relays_until_the_writers_are_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let (r, w) = pipe().unwrap();
        let task = tokio::spawn(relay(r, Sink::new(tmp.path(), 1 << 20).unwrap()));
        let mut w = std::fs::File::from(w);
        w.write_all(b"hello\n").unwrap();
        drop(w);
        task.await.unwrap();
        assert_eq!(std::fs::read_to_string(tmp.path().join(LOG)).unwrap(), "hello\n");
    }
}
