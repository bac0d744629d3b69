//! The free-space check before a restore: the manifest's data bytes and entry count against what `statvfs` says
//! the destination filesystem has free for unprivileged use (`f_bavail`, `f_favail`: the blocks reserved for root
//! are not the pods' to fill), with a margin.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{SnapshotError, SpaceUnit};

/// Bytes kept free beyond the data itself (on top of one filesystem block per entry, for the rounding of every file
/// to whole blocks and for directory blocks).
const MARGIN_BYTES: u64 = 16 << 20;
/// Inodes kept free beyond one per entry.
const MARGIN_INODES: u64 = 64;

/// Free space of a filesystem.
#[derive(Debug, Clone, Copy)]
struct Free {
    bytes: u64,
    /// `None` when the filesystem does not count inodes (btrfs: it allocates them as needed).
    inodes: Option<u64>,
    block: u64,
}

fn free_space(path: &Path) -> io::Result<Free> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is NUL-terminated and `st` is a plain out-struct the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    let (frsize, bsize, bavail, favail, files) =
        (st.f_frsize as u64, st.f_bsize as u64, st.f_bavail as u64, st.f_favail as u64, st.f_files as u64);
    let block = if frsize > 0 { frsize } else { bsize };
    Ok(Free { bytes: bavail.saturating_mul(block), inodes: (files > 0).then_some(favail), block })
}

/// `WontFit` unless `data_bytes` in `entries` entries fit the free space at `dest` with the margin.
pub(crate) fn check_fits(dest: &Path, data_bytes: u64, entries: u64) -> Result<(), SnapshotError> {
    let free = free_space(dest).map_err(|e| {
        SnapshotError::Io(anyhow::Error::new(e).context(format!("reading the free space at `{}`", dest.display())))
    })?;
    fits(free, data_bytes, entries)?;
    tracing::debug!(data_bytes, entries, free_bytes = free.bytes, free_inodes = ?free.inodes, "restore fits");
    Ok(())
}

fn fits(free: Free, data_bytes: u64, entries: u64) -> Result<(), SnapshotError> {
    let needed = data_bytes.saturating_add(entries.saturating_mul(free.block)).saturating_add(MARGIN_BYTES);
    if needed > free.bytes {
        return Err(SnapshotError::WontFit { needed, available: free.bytes, unit: SpaceUnit::Bytes });
    }
    let needed = entries.saturating_add(MARGIN_INODES);
    match free.inodes {
        Some(available) if needed > available => {
            Err(SnapshotError::WontFit { needed, available, unit: SpaceUnit::Inodes })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_then_inodes_with_margins() {
        let free = Free { bytes: 100 << 20, inodes: Some(1000), block: 4096 };
        fits(free, 80 << 20, 100).unwrap();
        let err = fits(free, 84 << 20, 10).unwrap_err();
        let want = (84 << 20) + 10 * 4096 + MARGIN_BYTES;
        assert!(matches!(err, SnapshotError::WontFit { needed, available, unit: SpaceUnit::Bytes }
            if needed == want && available == 100 << 20));
        assert!(err.to_string().contains(&format!("needs {want} bytes")), "{err}");
        let err = fits(free, 0, 950).unwrap_err();
        assert!(matches!(err, SnapshotError::WontFit { needed: 1014, available: 1000, unit: SpaceUnit::Inodes }));
        assert!(err.to_string().contains("1014 inodes") && err.to_string().contains("1000 are free"), "{err}");
        fits(Free { inodes: None, ..free }, 0, 950).unwrap();
        let huge = fits(free, u64::MAX, u64::MAX).unwrap_err();
        assert!(matches!(huge, SnapshotError::WontFit { needed: u64::MAX, .. }), "saturates: {huge}");
    }
}
