//! Reading tar entry metadata the way this crate writes it: normalised paths, mtimes with the PAX sub-second
//! refinement, and the `FileEntry` shape the snapshot file routes return.

use std::io::Read;
use std::path::Path;

use evershell_core::files::FileEntry;
use filetime::FileTime;
use tar::EntryType;

use crate::confine;
use crate::error::{SnapshotError, corrupt};
use crate::sparse::sparse_size;

/// PAX record carrying a sub-second mtime (`<secs>.<fraction>`).
pub(crate) const PAX_MTIME: &str = "mtime";

/// The entry's path as safe components joined with `/` (no `./`, no trailing `/`); `None` for the root entry.
/// Absolute paths and `..` are `Unsafe`.
pub(crate) fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<Option<String>, SnapshotError> {
    let path = entry.path().map_err(|e| corrupt("reading an entry path", e))?;
    let comps = confine::entry_components(&path).map_err(SnapshotError::Unsafe)?;
    if comps.is_empty() {
        return Ok(None);
    }
    let parts: Vec<_> = comps.iter().map(|c| c.to_string_lossy()).collect();
    Ok(Some(parts.join("/")))
}

/// Modification time: the header's whole seconds, refined by a PAX `mtime` record when present.
pub(crate) fn entry_mtime<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<FileTime, SnapshotError> {
    let secs = entry.header().mtime().map_err(|e| corrupt("reading an entry mtime", e))?;
    let base = FileTime::from_unix_time(i64::try_from(secs).unwrap_or(i64::MAX), 0);
    let Some(exts) = entry.pax_extensions().map_err(|e| corrupt("reading PAX records", e))? else {
        return Ok(base);
    };
    for ext in exts {
        let ext = ext.map_err(|e| corrupt("reading PAX records", e))?;
        if ext.key() == Ok(PAX_MTIME) {
            return Ok(ext.value().ok().and_then(parse_pax_time).unwrap_or(base));
        }
    }
    Ok(base)
}

/// `1700000000.123456789` → FileTime (fraction of up to 9 digits; negative times are not written by this crate).
fn parse_pax_time(value: &str) -> Option<FileTime> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    Some(FileTime::from_unix_time(secs, nanos))
}

/// Permission bits of the entry (`0o7777` at most).
pub(crate) fn entry_mode<R: Read>(entry: &tar::Entry<'_, R>) -> Result<u32, SnapshotError> {
    Ok(entry.header().mode().map_err(|e| corrupt("reading an entry mode", e))? & 0o7777)
}

/// Regular-file entry types (plain, contiguous, GNU sparse).
pub(crate) fn is_regular(kind: EntryType) -> bool {
    kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse()
}

/// The `FileEntry` for an entry (a sparse file with its real size); `None` for the root entry and for kinds a workspace never holds (devices, fifos).
pub(crate) fn file_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<FileEntry>, SnapshotError> {
    let Some(path) = entry_path(entry)? else { return Ok(None) };
    let kind = entry.header().entry_type();
    let mode = entry_mode(entry)?;
    let mtime = entry_mtime(entry)?;
    let (size, is_dir, mime) = if kind.is_dir() {
        (0, true, Some("inode/directory".to_string()))
    } else if kind.is_symlink() {
        let target_len = entry.link_name_bytes().map(|t| t.len()).unwrap_or(0);
        (target_len as u64, false, Some("inode/symlink".to_string()))
    } else if is_regular(kind) || kind.is_hard_link() {
        let size = if kind.is_hard_link() { 0 } else { sparse_size(entry)?.unwrap_or(entry.size()) };
        (size, false, mime_guess::from_path(Path::new(&path)).first().map(|m| m.essence_str().to_string()))
    } else {
        return Ok(None);
    };
    let millis = mtime.unix_seconds() as f64 + f64::from(mtime.nanoseconds() / 1_000_000) / 1000.0;
    Ok(Some(FileEntry {
        path,
        size: i64::try_from(size).unwrap_or(i64::MAX),
        is_dir,
        mtime: millis,
        readonly: mode & 0o200 == 0,
        mime_type: mime,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("12.5"), Some(FileTime::from_unix_time(12, 500_000_000)));
        assert_eq!(parse_pax_time("12.123456789123"), Some(FileTime::from_unix_time(12, 123_456_789)));
        assert_eq!(parse_pax_time("12"), Some(FileTime::from_unix_time(12, 0)));
        assert_eq!(parse_pax_time("x.1"), None);
        assert_eq!(parse_pax_time("1.x"), None);
    }
}
