//! Blocking half of capture: walk a workspace directory and write it as tar → zstd into a `Write`. Entries are
//! relative to the root (no root entry), children in byte order of their names. Regular files, directories (empty
//! ones too) and symlinks (stored, never followed) are kept with mode bits and mtimes (PAX record for sub-second
//! precision); hardlinks become copies; sockets, fifos and devices are skipped with a warning.

use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use tar::{Builder, Header, HeaderMode};

use crate::SnapshotError;
use crate::confine;
use crate::tarmeta::PAX_MTIME;

/// zstd level: the CLI default, a good speed/ratio point for source trees.
pub(crate) const ZSTD_LEVEL: i32 = 3;
/// zstd worker threads. Measured on the 2-core reference box (benches/snapshot.rs): 2 workers take the packer
/// from ~880 ms to ~650 ms on 100 MiB for the same total CPU, because reading/tar, compression and hashing (its own
/// stage) then overlap. Still one zstd frame with one checksum.
const ZSTD_WORKERS: u32 = 2;
/// File read size.
const READ_BUF: usize = 256 * 1024;

/// What went into the archive.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PackStats {
    /// Files, directories and symlinks (the root not counted).
    pub entries: u64,
    /// Sum of regular-file sizes.
    pub content_bytes: u64,
}

fn io_err(err: io::Error, what: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Io(anyhow::Error::new(err).context(what.to_string()))
}

/// Archive `src` into `out`; returns the stats and `out` once the zstd frame is complete.
pub(crate) fn pack<W: Write>(src: &Path, out: W) -> Result<(PackStats, W), SnapshotError> {
    let meta = fs::metadata(src).map_err(|e| io_err(e, format!("workspace directory `{}`", src.display())))?;
    if !meta.is_dir() {
        return Err(SnapshotError::Io(anyhow::anyhow!("workspace path `{}` is not a directory", src.display())));
    }
    let zstd_err = |e| io_err(e, "setting up zstd");
    let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(zstd_err)?;
    enc.include_checksum(true).map_err(zstd_err)?;
    enc.multithread(ZSTD_WORKERS).map_err(zstd_err)?;
    let mut packer =
        Packer { root: src, builder: Builder::new(enc), stats: PackStats::default(), buf: vec![0; READ_BUF] };
    packer.dir_children(Path::new(""))?;
    let stats = packer.stats;
    let enc = packer.builder.into_inner().map_err(|e| io_err(e, "finishing the tar stream"))?;
    let out = enc.finish().map_err(|e| io_err(e, "finishing the zstd stream"))?;
    Ok((stats, out))
}

struct Packer<'a, W: Write> {
    root: &'a Path,
    builder: Builder<W>,
    stats: PackStats,
    buf: Vec<u8>,
}

impl<W: Write> Packer<'_, W> {
    fn dir_children(&mut self, rel: &Path) -> Result<(), SnapshotError> {
        let abs = self.root.join(rel);
        let mut names: Vec<OsString> = match fs::read_dir(&abs) {
            Ok(rd) => rd
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()
                .map_err(|e| io_err(e, format!("listing `{}`", abs.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => {
                tracing::warn!(path = %rel.display(), "directory vanished during capture; skipped");
                return Ok(());
            }
            Err(e) => return Err(io_err(e, format!("listing `{}`", abs.display()))),
        };
        names.sort();
        for name in names {
            self.entry(&rel.join(name))?;
        }
        Ok(())
    }

    fn entry(&mut self, rel: &Path) -> Result<(), SnapshotError> {
        let abs = self.root.join(rel);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(path = %rel.display(), "file vanished during capture; skipped");
                return Ok(());
            }
            Err(e) => return Err(io_err(e, format!("reading metadata of `{}`", abs.display()))),
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            let mut header = header_for(&meta);
            self.pax_mtime(&meta)?;
            self.builder.append_data(&mut header, rel, io::empty()).map_err(|e| self.write_err(e))?;
            self.stats.entries += 1;
            self.dir_children(rel)
        } else if kind.is_file() {
            self.file(rel, &abs)
        } else if kind.is_symlink() {
            self.symlink(rel, &abs, &meta)
        } else {
            tracing::warn!(path = %rel.display(), "skipping a socket, fifo or device file");
            Ok(())
        }
    }

    fn file(&mut self, rel: &Path, abs: &Path) -> Result<(), SnapshotError> {
        // O_NOFOLLOW: a file swapped for a symlink after the lstat is refused, never followed.
        let file = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(abs) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(path = %rel.display(), "file vanished during capture; skipped");
                return Ok(());
            }
            Err(e) => return Err(io_err(e, format!("opening `{}`", abs.display()))),
        };
        let meta = file.metadata().map_err(|e| io_err(e, format!("reading metadata of `{}`", abs.display())))?;
        if !meta.is_file() {
            return Err(SnapshotError::Io(anyhow::anyhow!("`{}` changed type during capture", abs.display())));
        }
        let mut header = header_for(&meta);
        self.pax_mtime(&meta)?;
        let body = ExactReader { file, remaining: meta.len(), path: abs, buf: &mut self.buf, pos: 0, filled: 0 };
        self.builder.append_data(&mut header, rel, body).map_err(|e| io_err(e, "writing the archive"))?;
        self.stats.entries += 1;
        self.stats.content_bytes += meta.len();
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, abs: &Path, meta: &Metadata) -> Result<(), SnapshotError> {
        let target = fs::read_link(abs).map_err(|e| io_err(e, format!("reading symlink `{}`", abs.display())))?;
        let comps = confine::entry_components(rel).map_err(SnapshotError::Unsafe)?;
        confine::check_link_lexical(&comps, &target)
            .and_then(|()| confine::check_link_resolved(self.root, &comps))
            .map_err(|why| {
                SnapshotError::Unsafe(format!("{why}; a restore would refuse it, so no snapshot was taken"))
            })?;
        let mut header = header_for(meta);
        self.pax_mtime(meta)?;
        self.builder.append_link(&mut header, rel, &target).map_err(|e| self.write_err(e))?;
        self.stats.entries += 1;
        Ok(())
    }

    /// A PAX `mtime` record before the entry when the mtime has a sub-second part.
    fn pax_mtime(&mut self, meta: &Metadata) -> Result<(), SnapshotError> {
        if meta.mtime() < 0 || meta.mtime_nsec() <= 0 {
            return Ok(());
        }
        let value = format!("{}.{:09}", meta.mtime(), meta.mtime_nsec());
        self.builder.append_pax_extensions([(PAX_MTIME, value.as_bytes())]).map_err(|e| self.write_err(e))
    }

    fn write_err(&self, err: io::Error) -> SnapshotError {
        io_err(err, "writing the archive")
    }
}

/// A GNU header from lstat metadata: type, permission bits, mtime (whole seconds, never negative), size.
fn header_for(meta: &Metadata) -> Header {
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(meta, HeaderMode::Complete);
    header.set_mode(meta.mode() & 0o7777);
    header.set_mtime(meta.mtime().max(0) as u64);
    header
}

/// Exactly `remaining` bytes of a file, read in large blocks through a reused buffer (tar copies in 8 KiB pieces;
/// this keeps that to one syscall per [`READ_BUF`]). A file that shrank mid-read is an error rather than a
/// misaligned archive.
struct ExactReader<'a> {
    file: File,
    remaining: u64,
    path: &'a Path,
    buf: &'a mut [u8],
    pos: usize,
    filled: usize,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled {
            if self.remaining == 0 {
                return Ok(0);
            }
            let want = self.buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            let n = self.file.read(&mut self.buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("`{}` shrank while it was being captured", self.path.display()),
                ));
            }
            self.remaining -= n as u64;
            (self.pos, self.filled) = (0, n);
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
