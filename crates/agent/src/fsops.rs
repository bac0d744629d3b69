//! The filesystem side of the file routes: building `FileEntry`s, listing the tree under the root without following
//! symlinks, and resolving a requested path to a regular file that is strictly inside the root.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use evershell_core::files::{FileEntry, RelPath};

use crate::error::AgentErr;

/// Most entries one listing returns; beyond it the listing says `truncated`.
pub const MAX_ENTRIES: usize = 100_000;

/// The `FileEntry` for `rel` given its (not followed) metadata.
pub fn entry_for(rel: &str, meta: &Metadata) -> FileEntry {
    let ft = meta.file_type();
    let (size, mime_type) = if ft.is_dir() {
        (0, Some("inode/directory".to_string()))
    } else if ft.is_symlink() {
        (meta.len() as i64, Some("inode/symlink".to_string()))
    } else {
        (meta.len() as i64, mime_guess::from_path(rel).first_raw().map(str::to_string))
    };
    let millis = meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000;
    FileEntry {
        path: rel.to_string(),
        size,
        is_dir: ft.is_dir(),
        mtime: millis as f64 / 1000.0,
        readonly: meta.mode() & 0o200 == 0,
        mime_type,
    }
}

/// A listing of the tree.
pub struct Listing {
    pub entries: Vec<FileEntry>,
    pub truncated: bool,
}

/// Every directory, regular file and symlink under `root` (recursively, symlinks not followed), sorted by path, at
/// most `cap` of them. Sockets, FIFOs and devices are left out. Unreadable subdirectories are skipped with a warning.
pub fn list(root: &Path, cap: usize) -> io::Result<Listing> {
    let mut entries = Vec::new();
    let mut truncated = false;
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    'walk: while let Some((dir, prefix)) = stack.pop() {
        let read = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if prefix.is_empty() => return Err(e),
            Err(e) => {
                tracing::warn!(dir = %prefix, error = %e, "skipping unreadable directory");
                continue;
            }
        };
        let mut children: Vec<_> = read.filter_map(Result::ok).collect();
        children.sort_by_key(|c| c.file_name());
        // Push subdirectories in reverse so they are walked in name order.
        let mut subdirs = Vec::new();
        for child in children {
            let Ok(meta) = child.metadata() else { continue };
            let ft = meta.file_type();
            if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
                continue;
            }
            if entries.len() >= cap {
                truncated = true;
                break 'walk;
            }
            let name = child.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            entries.push(entry_for(&rel, &meta));
            if ft.is_dir() {
                subdirs.push((child.path(), rel));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Listing { entries, truncated })
}

/// Open the regular file at `rel` for reading. Symlinks are resolved, but the result must stay inside `root` (which
/// must be canonical). Returns the open file and its entry (named `rel`, describing what was opened).
pub fn open_for_read(root: &Path, rel: &RelPath) -> Result<(File, FileEntry), AgentErr> {
    let joined = root.join(rel.as_str());
    let resolved = joined.canonicalize().map_err(|e| AgentErr::from_io(e, rel))?;
    if !resolved.starts_with(root) {
        return Err(AgentErr::InvalidPath(format!("`{rel}` resolves to a location outside the workspace")));
    }
    let meta = std::fs::metadata(&resolved).map_err(|e| AgentErr::from_io(e, rel))?;
    if meta.is_dir() {
        return Err(AgentErr::IsDirectory(rel.to_string()));
    }
    if !meta.is_file() {
        return Err(AgentErr::InvalidPath(format!("`{rel}` is not a regular file")));
    }
    // `resolved` holds no symlinks; refuse one swapped in since.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&resolved)
        .map_err(|e| AgentErr::from_io(e, rel))?;
    let meta = file.metadata().map_err(|e| AgentErr::from_io(e, rel))?;
    Ok((file, entry_for(rel.as_str(), &meta)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_sorted_without_following_links_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/c.txt"), b"hello").unwrap();
        std::fs::write(root.join("a.txt"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let l = list(root, MAX_ENTRIES).unwrap();
        let paths: Vec<_> = l.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a.txt", "a/b", "a/b/c.txt", "link"]);
        assert!(!l.truncated);
        let link = &l.entries[4];
        assert_eq!(link.mime_type.as_deref(), Some("inode/symlink"));
        assert_eq!(link.size, 4);
        assert_eq!(l.entries[1].mime_type.as_deref(), Some("text/plain"));
        assert_eq!(l.entries[0].mime_type.as_deref(), Some("inode/directory"));
        let capped = list(root, 2).unwrap();
        assert_eq!(capped.entries.len(), 2);
        assert!(capped.truncated);
    }

    #[test]
    fn open_refuses_links_out_of_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("in.txt"), b"inside").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("out")).unwrap();
        std::os::unix::fs::symlink("in.txt", root.join("ok")).unwrap();
        let rel = |s: &str| RelPath::parse(s).unwrap();
        assert!(matches!(open_for_read(&root, &rel("out")), Err(AgentErr::InvalidPath(_))));
        let (_, entry) = open_for_read(&root, &rel("ok")).unwrap();
        assert_eq!((entry.path.as_str(), entry.size), ("ok", 6));
        assert!(matches!(open_for_read(&root, &rel("missing")), Err(AgentErr::NotFound(_))));
        assert!(matches!(open_for_read(&root, &rel("in.txt/x")), Err(AgentErr::NotFound(_))));
    }
}
