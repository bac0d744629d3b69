//! Early writeback for local stores. While an archive is uploaded to a `LocalFileSystem`, the kernel is asked every
//! few MiB to start writing the staged file to disk (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait),
//! so the fsync that completes the upload waits for the tail of the archive, not for all of it. Best effort and
//! never what durability rests on (the upload's own fsync is): the staged file is found by the name
//! `LocalFileSystem` gives it, `<object>#<n>` (the convention `sweep` relies on too); when none is found, nothing
//! happens.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Start writeback after this many new bytes.
const STEP: u64 = 8 << 20;

pub(crate) struct EarlyWriteback {
    dir: PathBuf,
    /// `<object file name>#`
    prefix: String,
    /// Bytes handed to the upload since the last writeback request.
    pending: u64,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    file: Mutex<Option<File>>,
    busy: AtomicBool,
}

impl EarlyWriteback {
    /// For an object stored at `object_file` (its path under the local store's root).
    pub(crate) fn new(object_file: &Path) -> Option<Self> {
        let dir = object_file.parent()?.to_path_buf();
        let prefix = format!("{}#", object_file.file_name()?.to_str()?);
        Some(Self { dir, prefix, pending: 0, shared: Arc::default() })
    }

    /// `n` more bytes went to the upload; every [`STEP`] bytes, ask for writeback in the background.
    pub(crate) fn advance(&mut self, n: usize) {
        self.pending += n as u64;
        if self.pending < STEP || self.shared.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        self.pending = 0;
        let (shared, dir, prefix) = (self.shared.clone(), self.dir.clone(), self.prefix.clone());
        tokio::task::spawn_blocking(move || {
            let mut file = shared.file.lock().unwrap_or_else(|p| p.into_inner());
            if file.is_none() {
                *file = staged_file(&dir, &prefix).and_then(|p| File::open(p).ok());
            }
            if let Some(f) = file.as_ref() {
                // SAFETY: a valid descriptor; SYNC_FILE_RANGE_WRITE only starts writeback of dirty pages.
                unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
            }
            shared.busy.store(false, Ordering::Release);
        });
    }
}

/// The newest staged upload for the object (`<name>#<n>` with the largest `n`).
fn staged_file(dir: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u64 = name.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_staged_upload_of_its_object_only() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["a.tar.zst#1", "a.tar.zst#3", "a.tar.zst#x", "b.tar.zst#9", "a.tar.zst"] {
            std::fs::write(tmp.path().join(name), b"").unwrap();
        }
        assert_eq!(staged_file(tmp.path(), "a.tar.zst#"), Some(tmp.path().join("a.tar.zst#3")));
        assert_eq!(staged_file(tmp.path(), "c.tar.zst#"), None);
    }

    #[tokio::test]
    async fn asks_for_writeback_of_the_staged_file_and_tolerates_its_absence() {
        let tmp = tempfile::tempdir().unwrap();
        let mut wb = EarlyWriteback::new(&tmp.path().join("a.tar.zst")).unwrap();
        wb.advance(STEP as usize); // nothing staged yet: nothing happens
        while wb.shared.busy.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        assert!(wb.shared.file.lock().unwrap().is_none());
        std::fs::write(tmp.path().join("a.tar.zst#1"), vec![7u8; 4096]).unwrap();
        wb.advance(STEP as usize - 1);
        assert_eq!(wb.pending, STEP - 1, "below the step nothing is asked");
        wb.advance(1);
        while wb.shared.busy.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        assert!(wb.shared.file.lock().unwrap().is_some(), "the staged file was found and opened");
    }
}
