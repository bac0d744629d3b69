//! Object-store keys of a snapshot's archive and manifest.

use evershell_core::ids::{OrgId, SnapshotId, WorkspaceId};
use object_store::path::Path;

/// Where one snapshot lives in the object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotKeys {
    pub archive: Path,
    pub manifest: Path,
}

impl SnapshotKeys {
    pub fn new(org: OrgId, ws: WorkspaceId, snap: SnapshotId) -> Self {
        let base = format!("orgs/{org}/workspaces/{ws}/snapshots/{snap}");
        Self { archive: Path::from(format!("{base}.tar.zst")), manifest: Path::from(format!("{base}.manifest.json")) }
    }

    /// Rebuild from stored key strings.
    pub fn from_strings(archive: &str, manifest: &str) -> Self {
        Self { archive: Path::from(archive), manifest: Path::from(manifest) }
    }
}
