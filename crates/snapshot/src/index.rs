//! The entry index written beside an archive at capture (`….index.zst`): zstd-compressed JSON lines, a header line
//! (`{"evershell_index":1}`) then one line per archive entry, in archive order, with what a listing shows (path,
//! kind, mode, size, mtime, link target) and where the entry starts: its first header's offset in the tar stream,
//! and the start of the zstd frame holding it (compressed offset and tar offset; see `frames`). The manifest
//! records the index's sha256, size and entry count ([`IndexRef`]).
//!
//! With it, a listing reads only the index, and reading one file fetches only the frame holding it (entries never
//! straddle a frame: frames are closed at entry boundaries). An index is data a pod influenced (every path in it is
//! a file name the pod chose), so reading one is bounded and checks everything before it is believed: its size
//! against the manifest and [`MAX_INDEX_BYTES`], its decoded size and line lengths, its entry count against the
//! manifest and [`MAX_INDEX_ENTRIES`], each path (relative, normal components), each kind, mode and time, offsets
//! in order and inside the archive; and, once read to the end, its sha256. Anything else is `Corrupt`.
//!
//! A workspace with more than [`MAX_INDEX_ENTRIES`] entries (or a longer index) gets no index: it is browsed by
//! scanning the archive, like a snapshot from before indexes.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::SnapshotError;
use crate::frames::FrameStart;
use crate::hashing::Digest;

/// Entries an index holds at most (a workspace with more is not indexed).
pub(crate) const MAX_INDEX_ENTRIES: u64 = 1_000_000;
/// Decoded index bytes at most (JSON lines).
pub(crate) const MAX_INDEX_DECODED: u64 = 256 << 20;
/// Stored (compressed) index bytes at most.
pub(crate) const MAX_INDEX_BYTES: u64 = 64 << 20;
/// One line at most: a path and a link target of up to 8 KiB each, JSON-escaped, and the numbers.
const MAX_LINE: usize = 6 * 16 * 1024 + 512;
/// Longest path or link target accepted.
const MAX_PATH: usize = 8 * 1024;
const HEADER: &str = "{\"evershell_index\":1}\n";
const INDEX_ZSTD_LEVEL: i32 = 3;

/// What the manifest says about the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRef {
    /// sha256 of the stored (compressed) index, hex.
    pub sha256: String,
    /// Size of the stored index.
    pub bytes: u64,
    /// Entries it lists.
    pub entries: u64,
}

/// What kind of entry a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    #[serde(rename = "f")]
    File,
    #[serde(rename = "d")]
    Dir,
    #[serde(rename = "l")]
    Symlink,
}

/// One entry of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IndexEntry {
    /// Relative path, components joined with `/`.
    #[serde(rename = "p")]
    pub path: String,
    #[serde(rename = "k")]
    pub kind: Kind,
    /// Permission bits.
    #[serde(rename = "m")]
    pub mode: u32,
    /// Apparent size of a file (holes included), length of a link target, 0 for a directory.
    #[serde(rename = "s")]
    pub size: u64,
    /// mtime: whole seconds and nanoseconds.
    #[serde(rename = "t")]
    pub mtime: i64,
    #[serde(rename = "n")]
    pub nanos: u32,
    /// A symlink's target.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Tar offset of the entry's first header (its PAX or long-name header when it has one).
    #[serde(rename = "o")]
    pub offset: u64,
    /// The frame holding the entry.
    #[serde(rename = "f")]
    pub frame: FrameStart,
}

/// Builds the index during packing, compressed as it goes (memory: the compressed index).
pub(crate) struct IndexWriter {
    enc: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    entries: u64,
    decoded: u64,
}

/// A finished index, ready to store.
pub(crate) struct IndexBlob {
    pub bytes: Vec<u8>,
    pub entries: u64,
}

impl IndexWriter {
    pub(crate) fn new() -> Self {
        let enc = zstd::stream::write::Encoder::new(Vec::new(), INDEX_ZSTD_LEVEL).ok().and_then(|mut enc| {
            enc.write_all(HEADER.as_bytes()).ok()?;
            Some(enc)
        });
        Self { enc, entries: 0, decoded: HEADER.len() as u64 }
    }

    /// Record one entry; past the caps the index is dropped (the snapshot is then browsed by scanning).
    pub(crate) fn add(&mut self, entry: &IndexEntry) {
        let Some(enc) = self.enc.as_mut() else { return };
        let mut line = match serde_json::to_vec(entry) {
            Ok(line) => line,
            Err(_) => return self.give_up("an entry does not encode"),
        };
        line.push(b'\n');
        self.entries += 1;
        self.decoded += line.len() as u64;
        if line.len() > MAX_LINE
            || entry.path.len() > MAX_PATH
            || entry.link.as_ref().is_some_and(|l| l.len() > MAX_PATH)
        {
            return self.give_up("an entry's path is too long");
        }
        if self.entries > MAX_INDEX_ENTRIES || self.decoded > MAX_INDEX_DECODED {
            return self.give_up("the workspace has too many entries");
        }
        if enc.write_all(&line).is_err() {
            self.give_up("compressing it failed");
        }
    }

    fn give_up(&mut self, why: &str) {
        if self.enc.take().is_some() {
            tracing::info!(why, "snapshot taken without an entry index; it will be browsed by scanning");
        }
    }

    /// The compressed index, or `None` when it was given up.
    pub(crate) fn finish(self) -> Option<IndexBlob> {
        let bytes = self.enc?.finish().ok()?;
        (bytes.len() as u64 <= MAX_INDEX_BYTES).then_some(IndexBlob { bytes, entries: self.entries })
    }
}

fn bad(why: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Corrupt(format!("the snapshot's file index is invalid: {why}"))
}

/// Checks `size` (the stored index's size) against the manifest and the cap, before anything is read.
pub(crate) fn check_size(iref: &IndexRef, size: u64) -> Result<(), SnapshotError> {
    if iref.bytes > MAX_INDEX_BYTES {
        return Err(bad(format!("it is {} bytes, more than the {MAX_INDEX_BYTES} accepted", iref.bytes)));
    }
    if iref.entries > MAX_INDEX_ENTRIES {
        return Err(bad(format!("it lists {} entries, more than the {MAX_INDEX_ENTRIES} accepted", iref.entries)));
    }
    if size != iref.bytes {
        return Err(bad(format!("it is {size} bytes but the manifest says {}", iref.bytes)));
    }
    Ok(())
}

/// A `Read` that digests what passes through it.
struct Digesting<R> {
    inner: R,
    digest: Digest,
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }
}

/// Read a whole index from `source` (the stored object, already size-checked with [`check_size`]), handing each
/// checked entry to `visit` in order; `archive_bytes` is the archive's size from the manifest. Only when this
/// returns `Ok` were the entries `visit` saw the ones the manifest vouches for: the caller keeps nothing from an
/// `Err`.
pub(crate) fn read_index(
    source: impl Read,
    iref: &IndexRef,
    archive_bytes: u64,
    mut visit: impl FnMut(IndexEntry) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let digesting = Digesting { inner: source, digest: Digest::default() };
    let decoder = zstd::stream::read::Decoder::new(digesting).map_err(|e| bad(format!("setting up zstd: {e}")))?;
    let mut lines = BufReader::new(decoder.take(MAX_INDEX_DECODED + 1));
    let mut line = Vec::new();
    let mut prev: Option<IndexEntry> = None;
    let (mut count, mut decoded) = (0u64, 0u64);
    let mut first = true;
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| bad(format!("it does not decode: {e}")))?;
        if n == 0 {
            break;
        }
        decoded += n as u64;
        if decoded > MAX_INDEX_DECODED {
            return Err(bad(format!("it decodes to more than {MAX_INDEX_DECODED} bytes")));
        }
        if n > MAX_LINE || line.last() != Some(&b'\n') {
            return Err(bad(format!("line {} is too long or cut short", count + 1)));
        }
        if std::mem::take(&mut first) {
            if line != HEADER.as_bytes() {
                return Err(bad("it does not start with the index header (`{\"evershell_index\":1}`)"));
            }
            continue;
        }
        count += 1;
        if count > iref.entries.min(MAX_INDEX_ENTRIES) {
            return Err(bad(format!("it lists more entries than the {} the manifest says", iref.entries)));
        }
        let entry: IndexEntry =
            serde_json::from_slice(&line).map_err(|e| bad(format!("entry {count} is not a valid record: {e}")))?;
        check_entry(&entry, prev.as_ref(), archive_bytes).map_err(|why| bad(format!("entry {count} {why}")))?;
        visit(entry.clone())?;
        prev = Some(entry);
    }
    if first {
        return Err(bad("it is empty"));
    }
    if count != iref.entries {
        return Err(bad(format!("it lists {count} entries but the manifest says {}", iref.entries)));
    }
    let mut rest = lines.into_inner().into_inner().finish();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| bad(format!("reading it failed: {e}")))?;
    let (sha, bytes) = rest.into_inner().digest.finish();
    if bytes != iref.bytes || sha != iref.sha256 {
        return Err(bad(format!(
            "its sha256 is {sha} ({bytes} bytes) but the manifest says {} ({} bytes)",
            iref.sha256, iref.bytes
        )));
    }
    Ok(())
}

/// The checks of one entry, given the one before it.
fn check_entry(e: &IndexEntry, prev: Option<&IndexEntry>, archive_bytes: u64) -> Result<(), String> {
    check_path(&e.path).map_err(|why| format!("has a path that {why}"))?;
    match (e.kind, &e.link) {
        // (`size` is the target's length in bytes on disk; `target` is shown lossily, so they may differ.)
        (Kind::Symlink, Some(target)) if target.is_empty() || target.len() > MAX_PATH || target.contains('\0') => {
            return Err("has an empty, overlong or NUL-holding link target".into());
        }
        (Kind::Symlink, Some(_)) => {}
        (Kind::Symlink, None) => return Err("is a symlink without a target".into()),
        (_, Some(_)) => return Err("has a link target but is not a symlink".into()),
        (Kind::Dir, None) if e.size != 0 => return Err("is a directory with a size".into()),
        _ => {}
    }
    if e.mode > 0o7777 {
        return Err(format!("has mode {:o}, beyond permission bits", e.mode));
    }
    if e.mtime < 0 || e.nanos >= 1_000_000_000 {
        return Err("has an invalid mtime".into());
    }
    if i64::try_from(e.size).is_err() {
        return Err("has a size out of range".into());
    }
    if !e.offset.is_multiple_of(512) {
        return Err("starts off a tar block boundary".into());
    }
    if e.frame.tar > e.offset || e.frame.compressed >= archive_bytes {
        return Err("lies outside its frame or past the end of the archive".into());
    }
    if let Some(p) = prev {
        let same_frame = e.frame.compressed == p.frame.compressed;
        let in_order = e.offset > p.offset
            && e.frame.compressed >= p.frame.compressed
            && e.frame.tar >= p.frame.tar
            && (!same_frame || e.frame.tar == p.frame.tar)
            && (same_frame || e.frame.tar > p.offset);
        if !in_order {
            return Err("is out of order with the entry before it".into());
        }
    }
    Ok(())
}

/// A path as this crate writes it: relative, non-empty, normal components joined by single `/`, no NUL.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > MAX_PATH {
        return Err("is empty or too long");
    }
    if path.contains('\0') {
        return Err("holds a NUL");
    }
    if path.split('/').any(|c| matches!(c, "" | "." | "..")) {
        return Err("is absolute, or has an empty, `.` or `..` component");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, offset: u64) -> IndexEntry {
        IndexEntry {
            path: path.into(),
            kind: Kind::File,
            mode: 0o644,
            size: 3,
            mtime: 1,
            nanos: 0,
            link: None,
            offset,
            frame: FrameStart::default(),
        }
    }

    fn blob(entries: &[IndexEntry]) -> (Vec<u8>, IndexRef) {
        let mut w = IndexWriter::new();
        entries.iter().for_each(|e| w.add(e));
        let b = w.finish().unwrap();
        let mut d = Digest::default();
        d.update(&b.bytes);
        let (sha256, bytes) = d.finish();
        (b.bytes, IndexRef { sha256, bytes, entries: b.entries })
    }

    fn read_all(bytes: &[u8], iref: &IndexRef) -> Result<Vec<IndexEntry>, SnapshotError> {
        let mut out = Vec::new();
        read_index(bytes, iref, 1 << 20, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    fn refused(bytes: &[u8], iref: &IndexRef, why: &str) {
        let err = read_all(bytes, iref).unwrap_err();
        assert!(matches!(&err, SnapshotError::Corrupt(m) if m.contains(why)), "{why}: {err}");
    }

    #[test]
    fn round_trips_and_checks_the_digest() {
        let entries = vec![entry("a", 0), entry("b/c", 1024)];
        let (bytes, iref) = blob(&entries);
        assert_eq!(read_all(&bytes, &iref).unwrap(), entries);
        refused(&bytes, &IndexRef { sha256: "00".repeat(32), ..iref.clone() }, "sha256");
        refused(&bytes, &IndexRef { entries: 1, ..iref.clone() }, "more entries");
        refused(&bytes, &IndexRef { entries: 3, ..iref.clone() }, "lists 2 entries");
    }

    #[test]
    fn hostile_entries_are_refused() {
        let cases: Vec<(IndexEntry, &str)> = vec![
            (entry("../etc/passwd", 0), "path"),
            (entry("/etc/passwd", 0), "path"),
            (entry("a//b", 0), "path"),
            (entry("a/./b", 0), "path"),
            (entry("a\0b", 0), "NUL"),
            (entry(&"x".repeat(MAX_PATH + 1), 0), "too long"),
            (IndexEntry { mode: 0o10644, ..entry("a", 0) }, "mode"),
            (IndexEntry { nanos: 1_000_000_000, ..entry("a", 0) }, "mtime"),
            (IndexEntry { size: u64::MAX, ..entry("a", 0) }, "size"),
            (IndexEntry { offset: 7, ..entry("a", 0) }, "block"),
            (IndexEntry { kind: Kind::Symlink, ..entry("a", 0) }, "without a target"),
            (IndexEntry { link: Some("t".into()), ..entry("a", 0) }, "not a symlink"),
            (IndexEntry { frame: FrameStart { compressed: 1 << 20, tar: 0 }, ..entry("a", 0) }, "past the end"),
        ];
        for (e, why) in cases {
            // Written by hand: the writer itself would refuse an overlong path.
            let mut raw = HEADER.as_bytes().to_vec();
            raw.extend(serde_json::to_vec(&e).unwrap());
            raw.push(b'\n');
            let bytes = zstd::encode_all(&raw[..], 1).unwrap();
            let mut d = Digest::default();
            d.update(&bytes);
            let (sha256, n) = d.finish();
            refused(&bytes, &IndexRef { sha256, bytes: n, entries: 1 }, why);
        }
        let (bytes, iref) = blob(&[entry("b", 512), entry("a", 0)]);
        refused(&bytes, &iref, "out of order");
    }

    #[test]
    fn garbage_and_oversized_indexes_are_refused() {
        let check = |raw: &[u8], why: &str| {
            let bytes = zstd::encode_all(raw, 1).unwrap();
            let mut d = Digest::default();
            d.update(&bytes);
            let (sha256, n) = d.finish();
            refused(&bytes, &IndexRef { sha256, bytes: n, entries: 1 }, why);
        };
        check(b"", "empty");
        check(b"{\"evershell_index\":2}\n", "header");
        check(format!("{HEADER}{{\"p\":\"a\"}}\n").as_bytes(), "not a valid record");
        check(format!("{HEADER}{}\n", " ".repeat(MAX_LINE + 10)).as_bytes(), "too long");
        refused(b"not zstd at all", &IndexRef { sha256: String::new(), bytes: 15, entries: 1 }, "decode");
        let big = IndexRef { sha256: String::new(), bytes: MAX_INDEX_BYTES + 1, entries: 1 };
        assert!(matches!(check_size(&big, big.bytes), Err(SnapshotError::Corrupt(m)) if m.contains("accepted")));
        let ok = IndexRef { sha256: String::new(), bytes: 10, entries: 1 };
        assert!(matches!(check_size(&ok, 11), Err(SnapshotError::Corrupt(m)) if m.contains("manifest says")));
    }
}
