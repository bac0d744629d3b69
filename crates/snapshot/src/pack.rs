//! Blocking half of capture: walk a workspace directory and write it as tar → zstd into a `Write`. Entries are
//! relative to the root (no root entry), children in byte order of their names. Regular files, directories (empty
//! ones too) and symlinks (stored, never followed) are kept with mode bits and mtimes (PAX record for sub-second
//! precision); hardlinks become copies; sockets, fifos and devices are skipped with a warning. A file with holes is
//! stored as a GNU sparse 1.0 entry holding only its data segments (`sparse`). With a content cap, packing stops
//! with `TooLarge` as soon as the files' apparent sizes pass it.
//!
//! The zstd stream is cut into independent frames at entry boundaries (`frames`), and every entry written is
//! recorded in the entry index (`index`) with the tar offset it starts at and the frame holding it.

use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use tar::{Builder, Header, HeaderMode};

use crate::confine;
use crate::error::SnapshotError;
use crate::frames::{FrameStart, FrameWriter};
use crate::index::{IndexBlob, IndexEntry, IndexWriter, Kind};
use crate::sparse::{self, Segment};
use crate::tarmeta::PAX_MTIME;

/// zstd level: the CLI default, a good speed/ratio point for source trees.
pub(crate) const ZSTD_LEVEL: i32 = 3;
/// zstd worker threads. Measured on the 2-core reference box (benches/snapshot.rs): 2 workers take the packer
/// from ~880 ms to ~650 ms on 100 MiB for the same total CPU, because reading/tar, compression and hashing (its own
/// stage) then overlap. Every frame has its own checksum.
const ZSTD_WORKERS: u32 = 2;
/// File read size.
const READ_BUF: usize = 256 * 1024;

/// What went into the archive.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PackStats {
    /// Files, directories and symlinks (the root not counted).
    pub entries: u64,
    /// Sum of regular-file sizes (apparent: holes count).
    pub content_bytes: u64,
    /// Sum of regular-file data actually stored (holes left out): what a restore writes.
    pub data_bytes: u64,
}

fn io_err(err: io::Error, what: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Io(anyhow::Error::new(err).context(what.to_string()))
}

/// What packing produced besides the archive bytes.
pub(crate) struct Packed<W> {
    pub stats: PackStats,
    /// The entry index, unless the workspace had too many entries for one.
    pub index: Option<IndexBlob>,
    pub frames: u64,
    pub out: W,
}

/// Archive `src` into `out`; returns the stats, the index and `out` once the last zstd frame is complete. With
/// `limit`, fails with `TooLarge` (its `found` the content seen so far) once the files' apparent sizes add up to
/// more.
/// Frames are closed at the first entry boundary after `frame_bytes` (`frames::FRAME_BYTES` by default).
pub(crate) fn pack_framed<W: Write>(
    src: &Path,
    out: W,
    limit: Option<u64>,
    frame_bytes: u64,
) -> Result<Packed<W>, SnapshotError> {
    let meta = fs::metadata(src).map_err(|e| io_err(e, format!("workspace directory `{}`", src.display())))?;
    if !meta.is_dir() {
        return Err(SnapshotError::Io(anyhow::anyhow!("workspace path `{}` is not a directory", src.display())));
    }
    let zstd_err = |e| io_err(e, "setting up zstd");
    let enc = FrameWriter::new(out, ZSTD_LEVEL, ZSTD_WORKERS).map_err(zstd_err)?;
    let mut packer = Packer {
        root: src,
        builder: Builder::new(enc),
        stats: PackStats::default(),
        limit,
        buf: vec![0; READ_BUF],
        index: IndexWriter::new(),
        frame_bytes,
    };
    packer.dir_children(Path::new(""))?;
    let Packer { stats, index, builder, .. } = packer;
    let enc = builder.into_inner().map_err(|e| io_err(e, "finishing the tar stream"))?;
    let (out, frames) = enc.finish().map_err(|e| io_err(e, "finishing the zstd stream"))?;
    Ok(Packed { stats, index: index.finish(), frames, out })
}

struct Packer<'a, W: Write> {
    root: &'a Path,
    builder: Builder<FrameWriter<W>>,
    stats: PackStats,
    limit: Option<u64>,
    buf: Vec<u8>,
    index: IndexWriter,
    frame_bytes: u64,
}

/// Where an entry starts, taken before anything of it is written.
#[derive(Clone, Copy)]
struct Start {
    frame: FrameStart,
    offset: u64,
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

    /// An entry boundary: maybe close the zstd frame, then say where the next entry starts.
    fn start(&mut self) -> Result<Start, SnapshotError> {
        let frames = self.builder.get_mut();
        frames.boundary(self.frame_bytes).map_err(|e| io_err(e, "writing the archive"))?;
        let (frame, offset) = frames.position();
        Ok(Start { frame, offset })
    }

    /// Record an entry written from `start`.
    fn indexed(&mut self, start: Start, rel: &Path, kind: Kind, meta: &Metadata, size: u64, link: Option<String>) {
        let (mtime, nanos) = if meta.mtime() < 0 { (0, 0) } else { (meta.mtime(), meta.mtime_nsec().max(0) as u32) };
        self.index.add(&IndexEntry {
            path: rel.to_string_lossy().into_owned(),
            kind,
            mode: meta.mode() & 0o7777,
            size,
            mtime,
            nanos,
            link,
            offset: start.offset,
            frame: start.frame,
        });
    }

    fn entry(&mut self, rel: &Path) -> Result<(), SnapshotError> {
        let start = self.start()?;
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
            let mut header = header_for(&meta, Header::new_gnu());
            self.pax(&mtime_record(&meta))?;
            self.builder.append_data(&mut header, rel, io::empty()).map_err(|e| self.write_err(e))?;
            self.stats.entries += 1;
            self.indexed(start, rel, Kind::Dir, &meta, 0, None);
            self.dir_children(rel)
        } else if kind.is_file() {
            self.file(rel, &abs, start)
        } else if kind.is_symlink() {
            self.symlink(rel, &abs, &meta, start)
        } else {
            tracing::warn!(path = %rel.display(), "skipping a socket, fifo or device file");
            Ok(())
        }
    }

    fn file(&mut self, rel: &Path, abs: &Path, start: Start) -> Result<(), SnapshotError> {
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
        let len = meta.len();
        let found = self.stats.content_bytes + len;
        if let Some(limit) = self.limit.filter(|&limit| found > limit) {
            return Err(SnapshotError::TooLarge { limit, found });
        }
        let mut records = mtime_record(&meta);
        // Only a file with fewer blocks than its length can have holes: dense files skip the lseeks.
        let holes = if meta.blocks().saturating_mul(512) < len {
            sparse::data_segments(&file, len)
                .map_err(|e| io_err(e, format!("finding the holes of `{}`", abs.display())))?
        } else {
            None
        };
        let (mut header, map, segments) = match holes {
            Some(segments) => {
                records.extend(sparse::pax_records(rel.as_os_str().as_bytes(), len));
                // GNU tar honours sparse PAX records only before a POSIX (ustar) header.
                (header_for(&meta, Header::new_ustar()), sparse::encode_map(&segments), segments)
            }
            None => (header_for(&meta, Header::new_gnu()), Vec::new(), vec![Segment { offset: 0, len }]),
        };
        let data: u64 = segments.iter().map(|s| s.len).sum();
        header.set_size(map.len() as u64 + data);
        self.pax(&records)?;
        let body = SegmentReader {
            file,
            segments: &segments,
            next: 0,
            at: 0,
            left: 0,
            path: abs,
            buf: &mut self.buf,
            pos: 0,
            filled: 0,
        };
        self.builder.append_data(&mut header, rel, io::Cursor::new(map).chain(body)).map_err(|e| self.write_err(e))?;
        self.stats.entries += 1;
        self.stats.content_bytes = found;
        self.stats.data_bytes += data;
        self.indexed(start, rel, Kind::File, &meta, len, None);
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, abs: &Path, meta: &Metadata, start: Start) -> Result<(), SnapshotError> {
        let target = fs::read_link(abs).map_err(|e| io_err(e, format!("reading symlink `{}`", abs.display())))?;
        let comps = confine::entry_components(rel).map_err(SnapshotError::Unsafe)?;
        confine::check_link_lexical(&comps, &target)
            .and_then(|()| confine::check_link_resolved(self.root, &comps))
            .map_err(|why| {
                SnapshotError::Unsafe(format!("{why}; a restore would refuse it, so no snapshot was taken"))
            })?;
        let mut header = header_for(meta, Header::new_gnu());
        self.pax(&mtime_record(meta))?;
        self.builder.append_link(&mut header, rel, &target).map_err(|e| self.write_err(e))?;
        self.stats.entries += 1;
        let shown = target.to_string_lossy().into_owned();
        self.indexed(start, rel, Kind::Symlink, meta, target.as_os_str().len() as u64, Some(shown));
        Ok(())
    }

    /// One PAX header with `records` before the entry (tar readers take one per entry), if there are any.
    fn pax(&mut self, records: &[(&str, Vec<u8>)]) -> Result<(), SnapshotError> {
        if records.is_empty() {
            return Ok(());
        }
        let records = records.iter().map(|(k, v)| (*k, v.as_slice()));
        self.builder.append_pax_extensions(records).map_err(|e| self.write_err(e))
    }

    fn write_err(&self, err: io::Error) -> SnapshotError {
        io_err(err, "writing the archive")
    }
}

/// A PAX `mtime` record when the mtime has a sub-second part.
fn mtime_record(meta: &Metadata) -> Vec<(&'static str, Vec<u8>)> {
    if meta.mtime() < 0 || meta.mtime_nsec() <= 0 {
        return Vec::new();
    }
    vec![(PAX_MTIME, format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()).into_bytes())]
}

/// `header` (a fresh GNU or ustar one) filled from lstat metadata: type, permission bits, mtime (whole seconds,
/// never negative), size.
fn header_for(meta: &Metadata, mut header: Header) -> Header {
    header.set_metadata_in_mode(meta, HeaderMode::Complete);
    header.set_mode(meta.mode() & 0o7777);
    header.set_mtime(meta.mtime().max(0) as u64);
    header
}

/// Exactly the bytes of `segments` of a file, back to back, read at their offsets in large blocks through a reused
/// buffer (tar copies in 8 KiB pieces; this keeps that to one syscall per [`READ_BUF`]). A file that shrank
/// mid-read is an error rather than a misaligned archive.
struct SegmentReader<'a> {
    file: File,
    segments: &'a [Segment],
    /// Next segment to start.
    next: usize,
    /// File offset of the next read, and bytes left in the current segment.
    at: u64,
    left: u64,
    path: &'a Path,
    buf: &'a mut [u8],
    pos: usize,
    filled: usize,
}

impl Read for SegmentReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled {
            while self.left == 0 {
                let Some(seg) = self.segments.get(self.next) else { return Ok(0) };
                (self.at, self.left) = (seg.offset, seg.len);
                self.next += 1;
            }
            let want = self.buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
            let n = self.file.read_at(&mut self.buf[..want], self.at)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("`{}` shrank while it was being captured", self.path.display()),
                ));
            }
            self.at += n as u64;
            self.left -= n as u64;
            (self.pos, self.filled) = (0, n);
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Apparent bytes of the regular files under `root` (links not followed): what a `TooLarge` capture reports.
pub(crate) fn content_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}
