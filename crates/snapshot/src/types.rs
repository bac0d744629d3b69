//! Plain data the browse API hands out ([`FileRead`], [`Listing`], [`ByteStream`]). A leaf: it depends on no other
//! module of the crate, so `store`, `browse` and `bridge` can all use it without depending on each other.

use bytes::Bytes;
use evershell_core::files::FileEntry;
use futures::stream::BoxStream;

/// A stream of file bytes.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// One file read from a snapshot as JSON-able content.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRead {
    pub entry: FileEntry,
    /// At most `max_bytes` bytes of the file.
    pub bytes: Vec<u8>,
    /// The file is longer than `max_bytes`.
    pub truncated: bool,
}

/// Most entries a listing returns by default (the live listing's cap).
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// A snapshot listing, cut at its cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub entries: Vec<FileEntry>,
    /// The snapshot holds more entries than were listed.
    pub truncated: bool,
}
