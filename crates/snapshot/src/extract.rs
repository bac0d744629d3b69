//! Safe extraction of tar entries into a restore root. Refuses (`Unsafe`) absolute paths, `..` components, entries
//! whose parent path passes through a symlink (checked with `symlink_metadata` on every ancestor, never followed),
//! symlinks whose target is absolute or escapes the root (lexically at once, then resolved through the restored tree
//! at the end), and hardlinks to anything but a regular file inside the root. Files are created with `O_EXCL`, so
//! nothing is ever written through a link. Keeps modes (without setuid/setgid), symlinks, empty directories and
//! mtimes; directory modes and mtimes are applied last, deepest first. Sparse entries are written segment by segment
//! at their offsets and then given their real length, so holes stay holes. The archive's owners are not restored;
//! with an `owner`, every entry extracted (the root too) is given that uid/gid as it is created: `fchown` on the
//! file or directory descriptor (directories opened `O_NOFOLLOW`), `lchown` for symlinks. The content and data
//! bytes the manifest announced are a budget: an entry that would pass either is `Corrupt`, refused before it is
//! written, so a manifest cannot understate what a restore writes.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use crate::confine::{self, join};
use crate::error::SnapshotError;
use crate::error::corrupt;
use crate::sparse::{read_map, sparse_size};
use crate::tarmeta::{entry_mode, entry_mtime, is_regular};

const COPY_BUF: usize = 256 * 1024;
/// Mode bits restored: permissions and sticky, never setuid/setgid.
const MODE_MASK: u32 = 0o1777;

fn io_err(err: io::Error, what: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Io(anyhow::Error::new(err).context(what.to_string()))
}

/// What the manifest announced: an extraction never writes more.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Apparent bytes of regular files.
    pub content_bytes: u64,
    /// Bytes of file data written (holes not counted).
    pub data_bytes: u64,
}

pub(crate) struct Extractor {
    root: PathBuf,
    owner: Option<(u32, u32)>,
    /// What is left of the budget.
    left: Budget,
    /// Directories to finish: (path, mode, mtime).
    dirs: Vec<(PathBuf, u32, FileTime)>,
    /// Symlinks to resolve once the whole tree exists (relative paths).
    links: Vec<PathBuf>,
    /// The last parent directory checked to be a real directory (entries come grouped by directory).
    checked_parent: Option<PathBuf>,
    buf: Vec<u8>,
    /// Entries extracted: files, directories, symlinks, hardlinks.
    pub(crate) entries: u64,
}

impl Extractor {
    pub(crate) fn new(root: &Path, owner: Option<(u32, u32)>, budget: Budget) -> Result<Self, SnapshotError> {
        let meta = fs::symlink_metadata(root).map_err(|e| io_err(e, format!("restore root `{}`", root.display())))?;
        if !meta.is_dir() {
            return Err(SnapshotError::Io(anyhow::anyhow!("restore root `{}` is not a directory", root.display())));
        }
        chown_dir(root, owner)?;
        Ok(Self {
            root: root.to_path_buf(),
            owner,
            left: budget,
            dirs: Vec::new(),
            links: Vec::new(),
            checked_parent: None,
            buf: vec![0; COPY_BUF],
            entries: 0,
        })
    }

    /// Extract one entry. Root entries, PAX globals, devices and fifos are skipped (and not counted).
    pub(crate) fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), SnapshotError> {
        let path = entry.path().map_err(|e| corrupt("reading an entry path", e))?.into_owned();
        let comps = confine::entry_components(&path).map_err(SnapshotError::Unsafe)?;
        let kind = entry.header().entry_type();
        if comps.is_empty() {
            if kind.is_dir() {
                return Ok(());
            }
            return Err(SnapshotError::Unsafe(format!("entry `{}` would replace the restore root", path.display())));
        }
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let mode = entry_mode(entry)? & MODE_MASK;
        let mtime = entry_mtime(entry)?;
        self.prepare_parents(&comps)?;
        let rel = join(&comps);
        let dest = self.root.join(&rel);
        if is_regular(kind) {
            self.file(entry, &rel, &dest, mode, mtime)?;
        } else if kind.is_dir() {
            self.dir(&rel, dest, mode, mtime)?;
        } else if kind.is_symlink() {
            self.symlink(entry, &comps, &dest, mtime)?;
        } else if kind.is_hard_link() {
            self.hardlink(entry, &rel, &dest)?;
        } else {
            tracing::warn!(path = %rel.display(), kind = ?kind, "skipping an entry of an unsupported kind");
            return Ok(());
        }
        self.entries += 1;
        Ok(())
    }

    /// Every ancestor of the entry must be a real directory inside the root; missing ones are created.
    fn prepare_parents(&mut self, comps: &[&OsStr]) -> Result<(), SnapshotError> {
        let parent = join(&comps[..comps.len() - 1]);
        if self.checked_parent.as_deref() == Some(parent.as_path()) {
            return Ok(());
        }
        let mut cur = self.root.clone();
        for (depth, name) in comps[..comps.len() - 1].iter().enumerate() {
            cur.push(name);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(SnapshotError::Unsafe(format!(
                        "entry `{}` passes through the symlink `{}`",
                        join(comps).display(),
                        join(&comps[..=depth]).display()
                    )));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(SnapshotError::Corrupt(format!(
                        "entry `{}`: `{}` is not a directory",
                        join(comps).display(),
                        join(&comps[..=depth]).display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(|e| io_err(e, format!("creating `{}`", cur.display())))?;
                    chown_dir(&cur, self.owner)?;
                }
                Err(e) => return Err(io_err(e, format!("checking `{}`", cur.display()))),
            }
        }
        // Sound to cache: a directory is never replaced later (see `clear`).
        self.checked_parent = Some(parent);
        Ok(())
    }

    /// Make room for a non-directory entry at `dest`: an existing file or link is removed (never written through);
    /// an existing directory means the archive names the same path twice.
    fn clear(&self, rel: &Path, dest: &Path) -> Result<(), SnapshotError> {
        match fs::symlink_metadata(dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Ok(m) if m.is_dir() => Err(SnapshotError::Corrupt(format!(
                "`{}` is in the archive both as a directory and not",
                rel.display()
            ))),
            Ok(_) => fs::remove_file(dest).map_err(|e| io_err(e, format!("replacing `{}`", dest.display()))),
            Err(e) => Err(io_err(e, format!("checking `{}`", dest.display()))),
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        dest: &Path,
        mode: u32,
        mtime: FileTime,
    ) -> Result<(), SnapshotError> {
        let stored = entry.size();
        let (real, map) = match sparse_size(entry)? {
            Some(real) => (real, Some(read_map(entry, stored, real, &rel.to_string_lossy())?)),
            None => (stored, None),
        };
        let data = map.as_ref().map_or(stored, |m| m.data_bytes);
        self.charge(rel, real, data)?;
        self.clear(rel, dest)?;
        let write_err = |e| io_err(e, format!("writing `{}`", dest.display()));
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dest).map_err(write_err)?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(write_err)?;
        }
        match map {
            None => self.copy(entry, &file, 0, stored, rel, dest)?,
            Some(map) => {
                for seg in &map.segments {
                    self.copy(entry, &file, seg.offset, seg.len, rel, dest)?;
                }
                file.set_len(real).map_err(write_err)?;
            }
        }
        file.set_permissions(Permissions::from_mode(mode)).map_err(write_err)?;
        filetime::set_file_handle_times(&file, None, Some(mtime)).map_err(write_err)?;
        Ok(())
    }

    /// Take a file's apparent and data bytes from the budget, or refuse it before anything is written.
    fn charge(&mut self, rel: &Path, content: u64, data: u64) -> Result<(), SnapshotError> {
        let over = |what: &str, left: u64, want: u64| {
            SnapshotError::Corrupt(format!(
                "the archive holds more {what} than its manifest says: `{}` needs {want} bytes, {left} are left",
                rel.display()
            ))
        };
        if content > self.left.content_bytes {
            return Err(over("file content", self.left.content_bytes, content));
        }
        if data > self.left.data_bytes {
            return Err(over("file data", self.left.data_bytes, data));
        }
        self.left.content_bytes -= content;
        self.left.data_bytes -= data;
        Ok(())
    }

    /// Copy the next `len` bytes of the entry to `file` at `offset`.
    fn copy<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &File,
        offset: u64,
        len: u64,
        rel: &Path,
        dest: &Path,
    ) -> Result<(), SnapshotError> {
        let mut done = 0u64;
        while done < len {
            let want = self.buf.len().min(usize::try_from(len - done).unwrap_or(usize::MAX));
            let n = match entry.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(SnapshotError::Corrupt(format!(
                        "`{}` is cut short in the archive ({done} of {len} bytes at offset {offset})",
                        rel.display()
                    )));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(&format!("reading `{}` from the archive", rel.display()), e)),
            };
            file.write_all_at(&self.buf[..n], offset + done)
                .map_err(|e| io_err(e, format!("writing `{}`", dest.display())))?;
            done += n as u64;
        }
        Ok(())
    }

    fn dir(&mut self, rel: &Path, dest: PathBuf, mode: u32, mtime: FileTime) -> Result<(), SnapshotError> {
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&dest).map_err(|e| io_err(e, format!("replacing `{}`", dest.display())))?;
                fs::create_dir(&dest).map_err(|e| io_err(e, format!("creating `{}`", dest.display())))?;
                chown_dir(&dest, self.owner)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dest).map_err(|e| io_err(e, format!("creating `{}`", dest.display())))?;
                chown_dir(&dest, self.owner)?;
            }
            Err(e) => return Err(io_err(e, format!("checking `{}`", rel.display()))),
        }
        self.dirs.push((dest, mode, mtime));
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        comps: &[&OsStr],
        dest: &Path,
        mtime: FileTime,
    ) -> Result<(), SnapshotError> {
        let rel = join(comps);
        let target = entry
            .link_name()
            .map_err(|e| corrupt("reading a symlink target", e))?
            .ok_or_else(|| SnapshotError::Corrupt(format!("symlink `{}` has no target", rel.display())))?
            .into_owned();
        confine::check_link_lexical(comps, &target).map_err(SnapshotError::Unsafe)?;
        self.clear(&rel, dest)?;
        std::os::unix::fs::symlink(&target, dest).map_err(|e| io_err(e, format!("creating `{}`", dest.display())))?;
        if let Some((uid, gid)) = self.owner {
            // lchown: the link itself, never what it points at.
            std::os::unix::fs::lchown(dest, Some(uid), Some(gid))
                .map_err(|e| io_err(e, format!("setting the owner of `{}`", dest.display())))?;
        }
        filetime::set_symlink_file_times(dest, mtime, mtime)
            .map_err(|e| io_err(e, format!("setting times of `{}`", dest.display())))?;
        self.links.push(rel);
        Ok(())
    }

    fn hardlink<R: Read>(&mut self, entry: &tar::Entry<'_, R>, rel: &Path, dest: &Path) -> Result<(), SnapshotError> {
        let target = entry
            .link_name()
            .map_err(|e| corrupt("reading a hardlink target", e))?
            .ok_or_else(|| SnapshotError::Corrupt(format!("hardlink `{}` has no target", rel.display())))?
            .into_owned();
        let unsafe_link =
            |why: &str| SnapshotError::Unsafe(format!("hardlink `{}` -> `{}` {why}", rel.display(), target.display()));
        let comps = confine::entry_components(&target).map_err(|why| unsafe_link(&format!("is refused: {why}")))?;
        if comps.is_empty() {
            return Err(unsafe_link("points at the root"));
        }
        let mut cur = self.root.clone();
        for name in &comps {
            cur.push(name);
            let meta = fs::symlink_metadata(&cur).map_err(|_| unsafe_link("does not point at an earlier file"))?;
            if meta.file_type().is_symlink() {
                return Err(unsafe_link("passes through a symlink"));
            }
        }
        if !fs::symlink_metadata(&cur).map(|m| m.is_file()).unwrap_or(false) {
            return Err(unsafe_link("does not point at a regular file"));
        }
        self.clear(rel, dest)?;
        fs::hard_link(&cur, dest).map_err(|e| io_err(e, format!("linking `{}`", dest.display())))
    }

    /// Resolve every restored symlink through the final tree, then apply directory modes and mtimes deepest first.
    pub(crate) fn finish(mut self) -> Result<(), SnapshotError> {
        for link in &self.links {
            let still_a_link = fs::symlink_metadata(self.root.join(link)).is_ok_and(|m| m.file_type().is_symlink());
            if !still_a_link {
                continue; // replaced by a later entry
            }
            let comps = confine::entry_components(link).map_err(SnapshotError::Unsafe)?;
            confine::check_link_resolved(&self.root, &comps).map_err(SnapshotError::Unsafe)?;
        }
        self.dirs.sort_by_key(|(path, _, _)| std::cmp::Reverse(path.components().count()));
        for (path, mode, mtime) in &self.dirs {
            fs::set_permissions(path, Permissions::from_mode(*mode))
                .map_err(|e| io_err(e, format!("setting mode of `{}`", path.display())))?;
            filetime::set_file_mtime(path, *mtime)
                .map_err(|e| io_err(e, format!("setting mtime of `{}`", path.display())))?;
        }
        Ok(())
    }
}

/// Give the directory at `path` the owner, through a descriptor opened without following a link.
fn chown_dir(path: &Path, owner: Option<(u32, u32)>) -> Result<(), SnapshotError> {
    let Some((uid, gid)) = owner else { return Ok(()) };
    let err = |e| io_err(e, format!("setting the owner of `{}`", path.display()));
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(err)?;
    std::os::unix::fs::fchown(&dir, Some(uid), Some(gid)).map_err(err)
}
