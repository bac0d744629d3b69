//! Object-store keys of a snapshot's archive, manifest and entry index.

use evershell_core::ids::{OrgId, SnapshotId, WorkspaceId};
use object_store::path::Path;

/// Where one snapshot lives in the object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotKeys {
    pub archive: Path,
    pub manifest: Path,
    /// The entry index (`….index.zst`), named after the archive: there only for format 3 snapshots.
    pub index: Path,
}

impl SnapshotKeys {
    pub fn new(org: OrgId, ws: WorkspaceId, snap: SnapshotId) -> Self {
        let base = format!("orgs/{org}/workspaces/{ws}/snapshots/{snap}");
        Self::from_strings(&format!("{base}.tar.zst"), &format!("{base}.manifest.json"))
    }

    /// Rebuild from stored key strings.
    pub fn from_strings(archive: &str, manifest: &str) -> Self {
        let base = archive.strip_suffix(".tar.zst").unwrap_or(archive);
        Self {
            archive: Path::from(archive),
            manifest: Path::from(manifest),
            index: Path::from(format!("{base}.index.zst")),
        }
    }
}
