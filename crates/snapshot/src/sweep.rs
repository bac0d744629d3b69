//! Start-up cleanup of a local snapshot directory: `object_store`'s `LocalFileSystem` stages multipart uploads as
//! `<object>#<n>` files beside their destination and renames them on completion; a crash mid-upload leaves them
//! behind. Stores other than a local directory are not swept: an S3 bucket's incomplete multipart uploads are
//! aborted by its lifecycle rule (`AbortIncompleteMultipartUpload`).

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// `name` ends in `#<digits>`: a `LocalFileSystem` staging file (object names of that shape are refused by it).
fn is_staging_name(name: &str) -> bool {
    match name.rsplit_once('#') {
        Some((stem, digits)) => !stem.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// Remove staging files older than `min_age` under `dir` (symlinks are not followed). Returns how many.
pub(crate) fn sweep_dir(dir: &Path, min_age: Duration) -> io::Result<u64> {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            removed += sweep_dir(&entry.path(), min_age)?;
            continue;
        }
        if !kind.is_file() || !entry.file_name().to_str().is_some_and(is_staging_name) {
            continue;
        }
        let age = entry.metadata()?.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
        if age < min_age {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => {
                tracing::info!(path = %entry.path().display(), "removed an incomplete snapshot upload");
                removed += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names() {
        assert!(is_staging_name("snap_01.tar.zst#1"));
        assert!(is_staging_name("x#42"));
        assert!(!is_staging_name("x#"));
        assert!(!is_staging_name("#1"));
        assert!(!is_staging_name("snap_01.tar.zst"));
        assert!(!is_staging_name("a#b"));
    }

    #[test]
    fn sweeps_only_old_staging_files() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("orgs/o/snapshots");
        fs::create_dir_all(&nested).unwrap();
        for name in ["old.tar.zst#1", "new.tar.zst#1", "keep.tar.zst"] {
            fs::write(nested.join(name), b"x").unwrap();
        }
        let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
        filetime::set_file_mtime(nested.join("old.tar.zst#1"), old).unwrap();
        filetime::set_file_mtime(nested.join("keep.tar.zst"), old).unwrap();
        assert_eq!(sweep_dir(dir.path(), Duration::from_secs(60)).unwrap(), 1);
        assert!(!nested.join("old.tar.zst#1").exists());
        assert!(nested.join("new.tar.zst#1").exists());
        assert!(nested.join("keep.tar.zst").exists());
        // With no margin (the only writer, at start-up) every staging file goes; real objects never do.
        assert_eq!(sweep_dir(dir.path(), Duration::ZERO).unwrap(), 1);
        assert!(!nested.join("new.tar.zst#1").exists());
        assert!(nested.join("keep.tar.zst").exists());
    }
}
