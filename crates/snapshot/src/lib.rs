//! evershell-snapshot: a workspace's `/workspace` saved as a tar + zstd archive plus a JSON manifest (archive sha256,
//! bytes, entry count, format version) in an `object_store` (a local directory by default), read back and verified
//! before it counts; restored by streaming it back with verification and safe extraction; and browsed without
//! unpacking it to disk. Files with holes keep them (GNU sparse entries: holes are neither read nor written), a
//! capture or restore can be capped in content size, a restore is refused when its data will not fit the
//! destination's free space, and a restore can give every entry an owner.
//!
//! Keys: `orgs/{org}/workspaces/{ws}/snapshots/{snap}.tar.zst`, `….manifest.json` and `….index.zst` (an entry
//! index: listing a snapshot reads only it, and reading one file only the zstd frame holding it).

mod bridge;
mod browse;
mod capture;
mod confine;
mod error;
mod extract;
mod frames;
mod hashing;
mod index;
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
mod types;
mod verify;
mod writeback;

pub use error::{SnapshotError, SpaceUnit};
pub use index::IndexRef;
pub use keys::SnapshotKeys;
pub use manifest::{FORMAT_VERSION, Manifest, OLDEST_FORMAT_VERSION};
pub use options::{CaptureOptions, RestoreOptions};
pub use store::SnapshotStore;
pub use types::{ByteStream, FileRead, Listing, MAX_LIST_ENTRIES};
