//! evershell-snapshot: a workspace's `/workspace` saved as a tar + zstd archive plus a JSON manifest (archive sha256,
//! bytes, entry count, format version) in an `object_store` (a local directory by default), read back and verified
//! before it counts; restored by streaming it back with verification and safe extraction; and browsed without
//! unpacking it to disk. Files with holes keep them (GNU sparse entries: holes are neither read nor written), a
//! capture or restore can be capped in content size, a restore is refused when its data will not fit the
//! destination's free space, and a restore can give every entry an owner.
//!
//! Keys: `orgs/{org}/workspaces/{ws}/snapshots/{snap}.tar.zst` and `….manifest.json`.

mod bridge;
mod browse;
mod capture;
mod confine;
mod extract;
mod hashing;
mod keys;
mod manifest;
mod options;
mod pack;
mod restore;
mod space;
mod sparse;
mod store;
mod sweep;
mod tarmeta;
mod verify;
mod writeback;

pub use browse::{Listing, MAX_LIST_ENTRIES};
pub use keys::SnapshotKeys;
pub use manifest::{FORMAT_VERSION, Manifest, OLDEST_FORMAT_VERSION};
pub use options::{CaptureOptions, RestoreOptions};
pub use store::{ByteStream, FileRead, SnapshotStore};

/// Why a snapshot operation failed. The `Display` text is what a workspace's `last_error` shows.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The archive or its manifest is not in the object store.
    #[error("snapshot is missing: {0}")]
    Missing(String),
    /// The archive does not match its manifest, or cannot be decoded.
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    /// The archive holds an entry that would escape the restore root (absolute path, `..`, escaping link).
    #[error("snapshot holds an unsafe entry: {0}")]
    Unsafe(String),
    /// The workspace (at capture) or the snapshot's manifest (at restore) holds more content than allowed: `found`
    /// bytes of regular files (apparent sizes) against a `limit`.
    #[error("workspace content is {found} bytes, over the limit of {limit} bytes")]
    TooLarge { limit: u64, found: u64 },
    /// Restoring would need more of the destination filesystem than is free: `needed` (the manifest's figure plus a
    /// margin) against `available`, both counted in `unit` (bytes or inodes). Nothing was written.
    #[error(
        "snapshot will not fit the destination filesystem: it needs {needed} {unit} (with a margin) and {available} \
         are free"
    )]
    WontFit { needed: u64, available: u64, unit: SpaceUnit },
    /// A path asked for inside the snapshot does not exist.
    #[error("no such file in the snapshot: {0}")]
    FileNotFound(String),
    /// Anything else (I/O, object store).
    #[error("snapshot I/O failed: {0:#}")]
    Io(#[from] anyhow::Error),
}

/// What a [`SnapshotError::WontFit`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceUnit {
    Bytes,
    Inodes,
}

impl std::fmt::Display for SpaceUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bytes => "bytes",
            Self::Inodes => "inodes",
        })
    }
}
