//! Sparse files, stored as GNU tar's sparse format 1.0 so holes are neither read at capture nor written at restore.
//!
//! On disk a file's data segments are found with `lseek(SEEK_DATA / SEEK_HOLE)` ([`data_segments`]). In the archive
//! such a file is a regular entry preceded by PAX records `GNU.sparse.major=1`, `GNU.sparse.minor=0`,
//! `GNU.sparse.name=<path>` and `GNU.sparse.realsize=<apparent size>`; its body is the segment map (decimal numbers,
//! one per line: the count, then `offset` and `length` of each segment), zero-padded to a 512-byte block, followed
//! by the segments' bytes back to back. The header carries the real path too (GNU tar writes a placeholder there;
//! GNU tar and bsdtar both honour `GNU.sparse.name`, so `tar -x` of a snapshot recreates the holes as well).
//!
//! Reading: [`sparse_size`] says whether an entry is sparse (and its real size), [`read_map`] parses and checks the
//! map against the entry, [`FileBody`] reads an entry as the file's apparent bytes (holes as zeros).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

use crate::error::{SnapshotError, corrupt};

pub(crate) const PAX_MAJOR: &str = "GNU.sparse.major";
pub(crate) const PAX_MINOR: &str = "GNU.sparse.minor";
pub(crate) const PAX_NAME: &str = "GNU.sparse.name";
pub(crate) const PAX_REALSIZE: &str = "GNU.sparse.realsize";
const PAX_PREFIX: &str = "GNU.sparse.";

/// Segments kept in one file's map at capture. A file with more is described more coarsely (the smallest holes
/// are stored as zeros), so the map stays under ~700 KiB whatever the file.
pub(crate) const MAX_SEGMENTS: usize = 1 << 14;
/// Map entries accepted when reading (archives from elsewhere may hold more than [`MAX_SEGMENTS`]).
const MAX_READ_SEGMENTS: u64 = 1 << 20;
/// Smallest gap merged when a map has to be made coarser (doubles until it fits).
const FIRST_MERGE_GAP: u64 = 4096;
const BLOCK: usize = 512;

/// A run of data at `offset`, `len` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub offset: u64,
    pub len: u64,
}

impl Segment {
    pub(crate) fn end(&self) -> u64 {
        self.offset + self.len
    }
}

fn seek(fd: i32, offset: u64, whence: i32) -> io::Result<u64> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: lseek on a valid descriptor only moves its offset (reads here are positional, so that is harmless).
    let got = unsafe { libc::lseek(fd, offset, whence) };
    if got < 0 { Err(io::Error::last_os_error()) } else { Ok(got as u64) }
}

/// The data segments of the first `len` bytes of `file`, or `None` when it has no hole (or its filesystem cannot
/// say). A file ending in a hole gets a zero-length segment at `len`, as GNU tar writes it. At most
/// [`MAX_SEGMENTS`] segments: beyond that, gaps are merged (their zeros stored), smallest first.
pub(crate) fn data_segments(file: &File, len: u64) -> io::Result<Option<Vec<Segment>>> {
    if len == 0 {
        return Ok(None);
    }
    let fd = file.as_raw_fd();
    let mut segs: Vec<Segment> = Vec::new();
    let mut merge_gap = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(fd, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // a hole to the end
            Err(e) if pos == 0 && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if data >= len {
            break;
        }
        let hole = seek(fd, data, libc::SEEK_HOLE)?.min(len).max(data + 1);
        push_merging(&mut segs, Segment { offset: data, len: hole - data }, merge_gap);
        if segs.len() > MAX_SEGMENTS {
            merge_gap = if merge_gap == 0 { FIRST_MERGE_GAP } else { merge_gap.saturating_mul(2) };
            segs = coarsen(segs, merge_gap);
        }
        pos = hole;
    }
    if let [only] = segs.as_slice()
        && only.offset == 0
        && only.len == len
    {
        return Ok(None);
    }
    if segs.last().is_none_or(|s| s.end() < len) {
        segs.push(Segment { offset: len, len: 0 });
    }
    Ok(Some(segs))
}

fn push_merging(segs: &mut Vec<Segment>, seg: Segment, merge_gap: u64) {
    match segs.last_mut() {
        Some(last) if seg.offset - last.end() < merge_gap => last.len = seg.end() - last.offset,
        _ => segs.push(seg),
    }
}

/// Merge every gap shorter than `gap` until at most half of [`MAX_SEGMENTS`] remain.
fn coarsen(mut segs: Vec<Segment>, mut gap: u64) -> Vec<Segment> {
    loop {
        let mut out = Vec::with_capacity(segs.len());
        for seg in segs {
            push_merging(&mut out, seg, gap);
        }
        if out.len() <= MAX_SEGMENTS / 2 {
            return out;
        }
        segs = out;
        gap = gap.saturating_mul(2);
    }
}

/// The map block written before the data: count, then offset and length per segment, zero-padded to 512 bytes.
pub(crate) fn encode_map(segs: &[Segment]) -> Vec<u8> {
    let mut out = format!("{}\n", segs.len());
    for s in segs {
        out.push_str(&format!("{}\n{}\n", s.offset, s.len));
    }
    let mut out = out.into_bytes();
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    out
}

/// The PAX records of a sparse entry.
pub(crate) fn pax_records(name: &[u8], real_size: u64) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (PAX_MAJOR, b"1".to_vec()),
        (PAX_MINOR, b"0".to_vec()),
        (PAX_NAME, name.to_vec()),
        (PAX_REALSIZE, real_size.to_string().into_bytes()),
    ]
}

/// The real (apparent) size of a sparse entry; `None` for a plain one. Sparse records of another format than 1.0
/// are `Corrupt` (they would otherwise be restored as their raw map and data).
pub(crate) fn sparse_size<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<u64>, SnapshotError> {
    let Some(exts) = entry.pax_extensions().map_err(|e| corrupt("reading PAX records", e))? else {
        return Ok(None);
    };
    let (mut major, mut minor, mut real, mut other) = (None, None, None, false);
    for ext in exts {
        let ext = ext.map_err(|e| corrupt("reading PAX records", e))?;
        let Ok(key) = ext.key() else { continue };
        let value = ext.value().ok().map(str::to_string);
        match key {
            PAX_MAJOR => major = value,
            PAX_MINOR => minor = value,
            PAX_REALSIZE => real = value,
            PAX_NAME => {}
            k if k.starts_with(PAX_PREFIX) => other = true,
            _ => {}
        }
    }
    if major.is_none() && minor.is_none() && real.is_none() && !other {
        return Ok(None);
    }
    if major.as_deref() != Some("1") || minor.as_deref() != Some("0") {
        return Err(SnapshotError::Corrupt(format!(
            "a sparse entry is in an unsupported format (GNU sparse {}.{}; this build reads 1.0)",
            major.as_deref().unwrap_or("?"),
            minor.as_deref().unwrap_or("?")
        )));
    }
    let real = real
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| SnapshotError::Corrupt("a sparse entry has no valid GNU.sparse.realsize".into()))?;
    Ok(Some(real))
}

/// A parsed, checked sparse map.
#[derive(Debug)]
pub(crate) struct SparseMap {
    pub segments: Vec<Segment>,
    pub real_size: u64,
    /// Sum of segment lengths: the bytes a restore writes.
    pub data_bytes: u64,
}

/// Read the map at the start of a sparse entry's body (`stored` bytes long in all) and check it: segments in order,
/// not overlapping, inside `real_size`, and map plus data exactly the entry's size. Leaves `body` at the first data
/// byte.
pub(crate) fn read_map(
    body: &mut impl Read,
    stored: u64,
    real_size: u64,
    rel: &str,
) -> Result<SparseMap, SnapshotError> {
    let bad = |why: String| SnapshotError::Corrupt(format!("sparse map of `{rel}` {why}"));
    let mut block = [0u8; BLOCK];
    let (mut filled, mut at) = (0usize, 0usize);
    let mut map_len = 0u64;
    let mut next = || -> Result<u64, SnapshotError> {
        let mut value: u64 = 0;
        let mut digits = 0;
        loop {
            if at == filled {
                if map_len + BLOCK as u64 > stored {
                    return Err(bad("runs past the entry".into()));
                }
                body.read_exact(&mut block).map_err(|e| corrupt(&format!("reading the sparse map of `{rel}`"), e))?;
                (filled, at) = (BLOCK, 0);
                map_len += BLOCK as u64;
            }
            let c = block[at];
            at += 1;
            match c {
                b'0'..=b'9' => {
                    value = value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(c - b'0')))
                        .ok_or_else(|| bad("holds a number too large".into()))?;
                    digits += 1;
                }
                b'\n' if digits > 0 => return Ok(value),
                _ => return Err(bad("is not a list of decimal numbers".into())),
            }
        }
    };
    let count = next()?;
    if count > MAX_READ_SEGMENTS {
        return Err(bad(format!("has {count} segments, more than the {MAX_READ_SEGMENTS} accepted")));
    }
    let mut segments = Vec::with_capacity(count as usize);
    let (mut prev_end, mut data_bytes) = (0u64, 0u64);
    for _ in 0..count {
        let (offset, len) = (next()?, next()?);
        let end = offset.checked_add(len).filter(|&e| e <= real_size);
        let Some(end) = end.filter(|_| offset >= prev_end) else {
            return Err(bad(format!(
                "has a segment {offset}+{len} out of order or outside the file's {real_size} bytes"
            )));
        };
        prev_end = end;
        data_bytes += len;
        segments.push(Segment { offset, len });
    }
    if map_len.checked_add(data_bytes) != Some(stored) {
        return Err(bad(format!(
            "lists {data_bytes} data bytes but the entry holds {}",
            stored.saturating_sub(map_len)
        )));
    }
    Ok(SparseMap { segments, real_size, data_bytes })
}

/// The body of a regular entry as the file's bytes (a sparse entry's map read and checked first).
pub(crate) fn file_body<'e, 'a, R: Read>(
    entry: &'e mut tar::Entry<'a, R>,
    rel: &str,
) -> Result<FileBody<'e, tar::Entry<'a, R>>, SnapshotError> {
    let stored = entry.size();
    let map = match sparse_size(entry)? {
        Some(real) => Some(read_map(entry, stored, real, rel)?),
        None => None,
    };
    Ok(FileBody::new(entry, map, stored))
}

/// A regular entry's body as the file's bytes: holes of a sparse entry read as zeros.
pub(crate) struct FileBody<'e, R: Read> {
    inner: &'e mut R,
    /// For a plain entry, one segment covering the file.
    segments: Vec<Segment>,
    real_size: u64,
    idx: usize,
    pos: u64,
}

impl<'e, R: Read> FileBody<'e, R> {
    /// `inner` must be positioned at the first data byte (after [`read_map`] for a sparse entry).
    pub(crate) fn new(inner: &'e mut R, map: Option<SparseMap>, plain_size: u64) -> Self {
        let (segments, real_size) = match map {
            Some(m) => (m.segments, m.real_size),
            None => (vec![Segment { offset: 0, len: plain_size }], plain_size),
        };
        Self { inner, segments, real_size, idx: 0, pos: 0 }
    }
}

impl<R: Read> Read for FileBody<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.real_size || buf.is_empty() {
            return Ok(0);
        }
        while self.idx < self.segments.len() && self.segments[self.idx].end() <= self.pos {
            self.idx += 1;
        }
        let room = |to: u64, pos: u64| usize::try_from(to - pos).unwrap_or(usize::MAX).min(buf.len());
        match self.segments.get(self.idx) {
            Some(seg) if seg.offset <= self.pos => {
                let want = room(seg.end(), self.pos);
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the entry's data is cut short"));
                }
                self.pos += n as u64;
                Ok(n)
            }
            next => {
                let to = next.map_or(self.real_size, |s| s.offset);
                let n = room(to, self.pos);
                buf[..n].fill(0);
                self.pos += n as u64;
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn seg(offset: u64, len: u64) -> Segment {
        Segment { offset, len }
    }

    #[test]
    fn map_round_trips_and_is_block_padded() {
        let segs = vec![seg(0, 10), seg(8192, 3), seg(1 << 33, 0)];
        let map = encode_map(&segs);
        assert_eq!(map.len(), 512);
        assert!(map.starts_with(b"3\n0\n10\n8192\n3\n8589934592\n0\n"));
        let mut body = map.clone();
        body.extend_from_slice(&[7u8; 13]);
        let parsed = read_map(&mut &body[..], body.len() as u64, 1 << 33, "f").unwrap();
        assert_eq!((parsed.segments, parsed.data_bytes), (segs, 13));
    }

    #[test]
    fn bad_maps_are_corrupt() {
        let check = |text: &[u8], stored: u64, real: u64, why: &str| {
            let mut body = text.to_vec();
            body.resize(body.len().div_ceil(512) * 512, 0);
            body.resize(stored.max(body.len() as u64) as usize, 1);
            let err = read_map(&mut &body[..], stored, real, "f").unwrap_err();
            assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains(why)), "{why}: {err}");
        };
        check(b"2\n0\n10\n5\n1\n", 523, 100, "out of order");
        check(b"1\n90\n20\n", 532, 100, "outside");
        check(b"1\n0\n10\n", 600, 100, "data bytes");
        check(b"1\nx\n", 512, 100, "decimal");
        check(b"1\n99999999999999999999999\n", 512, 100, "too large");
        check(format!("1000\n{}0", "0\n".repeat(253)).as_bytes(), 512, 100, "runs past");
    }

    #[test]
    fn file_body_reads_holes_as_zeros() {
        let map = SparseMap { segments: vec![seg(2, 3), seg(8, 1)], real_size: 12, data_bytes: 4 };
        let mut data: &[u8] = b"abcd";
        let mut out = Vec::new();
        FileBody::new(&mut data, Some(map), 0).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"\0\0abc\0\0\0d\0\0\0");
        let mut short: &[u8] = b"ab";
        let map = SparseMap { segments: vec![seg(0, 3)], real_size: 3, data_bytes: 3 };
        assert!(FileBody::new(&mut short, Some(map), 0).read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn finds_segments_and_merges_when_there_are_too_many() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::options().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        file.write_all_at(b"x", 1 << 20).unwrap();
        file.set_len(4 << 20).unwrap();
        let segs = data_segments(&file, 4 << 20).unwrap().unwrap();
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert!(segs[0].offset <= 1 << 20 && segs[0].end() > 1 << 20, "{segs:?}");
        assert_eq!(segs[1], seg(4 << 20, 0), "ends in a hole");
        let dense = dir.path().join("d");
        std::fs::write(&dense, vec![1u8; 10_000]).unwrap();
        assert_eq!(data_segments(&File::open(&dense).unwrap(), 10_000).unwrap(), None);

        let many: Vec<Segment> = (0..(MAX_SEGMENTS as u64 * 2)).map(|i| seg(i * 8192, 4096)).collect();
        let merged = coarsen(many, FIRST_MERGE_GAP);
        assert!(merged.len() <= MAX_SEGMENTS / 2 && !merged.is_empty());
        assert_eq!(merged[0].offset, 0);
        assert_eq!(merged.last().unwrap().end(), (MAX_SEGMENTS as u64 * 2 - 1) * 8192 + 4096);
    }
}
