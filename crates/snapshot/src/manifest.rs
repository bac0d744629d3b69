//! The manifest written beside each archive: what a restore verifies against.

use evershell_core::Timestamp;
use evershell_core::ids::{OrgId, SnapshotId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::index::IndexRef;

/// Current archive format: a tar stream (GNU/PAX headers) compressed as zstd with frame checksums.
/// - 1: every regular file stored whole, one zstd frame.
/// - 2: files with holes stored as GNU sparse 1.0 entries (data segments only; see `sparse`); the manifest gains
///   `data_bytes`.
/// - 3: the zstd stream is a run of independent frames closed at entry boundaries (`frames`), and an entry index
///   is stored beside the archive (`index`), named by the manifest's `index` (absent when the workspace had too
///   many entries to index).
///
/// Every older format is still read ([`OLDEST_FORMAT_VERSION`]); a snapshot without an index is browsed by
/// scanning its archive.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format this build restores.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub snapshot_id: SnapshotId,
    pub org_id: OrgId,
    pub workspace_id: WorkspaceId,
    /// sha256 of the compressed archive, hex.
    pub archive_sha256: String,
    /// Size of the compressed archive.
    pub archive_bytes: u64,
    /// Entries in the archive: files, directories and symlinks (the root itself not counted).
    pub file_count: u64,
    /// Sum of regular-file sizes before compression: apparent sizes, holes included.
    pub content_bytes: u64,
    /// Regular-file data stored in the archive, holes left out: the bytes a restore writes to disk. Format 1
    /// manifests have no such field; reading one sets it to `content_bytes`.
    pub data_bytes: u64,
    pub created_at: Timestamp,
    /// The entry index beside the archive (format 3), verified against this when read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexRef>,
}
