//! evershell-snapshot: a workspace's `/workspace` saved as a tar + zstd archive plus a JSON manifest (archive sha256,
//! bytes, entry count, format version) in an `object_store` (a local directory by default), read back and verified
//! before it counts; restored by streaming it back with verification and safe extraction; and browsed without
//! unpacking it to disk.
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
mod pack;
mod restore;
mod store;
mod sweep;
mod tarmeta;
mod verify;
mod writeback;

pub use browse::{Listing, MAX_LIST_ENTRIES};
pub use keys::SnapshotKeys;
pub use manifest::{FORMAT_VERSION, Manifest};
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
    /// A path asked for inside the snapshot does not exist.
    #[error("no such file in the snapshot: {0}")]
    FileNotFound(String),
    /// Anything else (I/O, object store).
    #[error("snapshot I/O failed: {0:#}")]
    Io(#[from] anyhow::Error),
}
