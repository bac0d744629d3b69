//! `SnapshotStore`: the public face of the crate — capture, verify, restore, browse and delete snapshots in an
//! object store. Each method delegates to the module that owns the work (`capture`, `verify`, `restore`, `browse`,
//! `sweep`); nothing below imports this module.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use evershell_core::files::{FileEntry, RelPath};
use evershell_core::ids::{OrgId, SnapshotId, WorkspaceId};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

use crate::bridge::delete_object;
use crate::error::SnapshotError;
use crate::frames::FRAME_BYTES;
use crate::keys::SnapshotKeys;
use crate::manifest::Manifest;
use crate::options::{CaptureOptions, RestoreOptions};
use crate::types::{ByteStream, FileRead, Listing};
use crate::{browse, capture, restore, sweep, verify};

#[derive(Clone)]
pub struct SnapshotStore {
    store: Arc<dyn ObjectStore>,
    /// Set for [`SnapshotStore::local`]: the directory [`SnapshotStore::sweep_incomplete`] cleans.
    local_root: Option<PathBuf>,
    /// zstd frame size of captures (`frames::FRAME_BYTES` unless a test asks for small frames).
    frame_bytes: u64,
}

impl SnapshotStore {
    /// Snapshots under a local directory (created if missing). Writes are fsynced (file and directory) before they
    /// count, so a verified snapshot survives a power loss; emptied directories are removed on delete.
    pub fn local(root: &Path) -> anyhow::Result<Self> {
        // Private: archives hold whole workspaces (the data dir check refuses a wider mode at start-up).
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(root)
            .with_context(|| format!("creating snapshot directory `{}`", root.display()))?;
        let fs = LocalFileSystem::new_with_prefix(root)
            .with_context(|| format!("opening snapshot directory `{}`", root.display()))?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        let root = root.canonicalize().with_context(|| format!("resolving `{}`", root.display()))?;
        Ok(Self { store: Arc::new(fs), local_root: Some(root), frame_bytes: FRAME_BYTES })
    }

    /// Snapshots in any object store (S3, memory, …).
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store, local_root: None, frame_bytes: FRAME_BYTES }
    }

    /// Captures close a zstd frame at the first entry boundary after `bytes` of tar stream (16 MiB by default): what
    /// reading one file decompresses before reaching it. For tests of multi-frame archives.
    #[doc(hidden)]
    pub fn with_frame_bytes(mut self, bytes: u64) -> Self {
        self.frame_bytes = bytes.max(1);
        self
    }

    /// Save `src_dir` (the pod's `/workspace`) as a snapshot: tar → zstd → object store, sha256 computed on the way;
    /// read the archive back and check it; then write the manifest. Only a returned `Ok` means the snapshot is
    /// complete and verified. A symlink that a restore would refuse (absolute, or escaping the workspace) fails the
    /// capture with `Unsafe`, so every verified snapshot can be restored. Files with holes are stored without them.
    /// No content cap: [`SnapshotStore::capture_with`] with the default options.
    pub async fn capture(
        &self,
        src_dir: &Path,
        keys: &SnapshotKeys,
        ids: (OrgId, WorkspaceId, SnapshotId),
    ) -> Result<Manifest, SnapshotError> {
        self.capture_with(src_dir, keys, ids, &CaptureOptions::default()).await
    }

    /// [`SnapshotStore::capture`] with options: over `max_content_bytes` of (apparent) file content, the capture
    /// fails with `TooLarge` naming the limit and the workspace's size; nothing is stored and the workspace is
    /// only read.
    pub async fn capture_with(
        &self,
        src_dir: &Path,
        keys: &SnapshotKeys,
        ids: (OrgId, WorkspaceId, SnapshotId),
        opts: &CaptureOptions,
    ) -> Result<Manifest, SnapshotError> {
        let local = self.local_root.as_deref();
        let manifest = capture::capture(&self.store, local, src_dir, keys, ids, opts, self.frame_bytes).await?;
        self.make_private(keys)?;
        Ok(manifest)
    }

    /// A local store's archive, index and manifest files are `0600` (`LocalFileSystem` creates them with the umask).
    fn make_private(&self, keys: &SnapshotKeys) -> Result<(), SnapshotError> {
        use std::os::unix::fs::PermissionsExt;
        let Some(root) = &self.local_root else { return Ok(()) };
        for key in [&keys.archive, &keys.index, &keys.manifest] {
            let file = root.join(key.as_ref());
            if key == &keys.index && !file.exists() {
                continue; // not indexed
            }
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making `{}` private", file.display()))?;
        }
        Ok(())
    }

    /// Read the manifest and check the archive against it (size and sha256) without extracting.
    pub async fn verify(&self, keys: &SnapshotKeys) -> Result<Manifest, SnapshotError> {
        verify::verify(&self.store, keys).await
    }

    /// Restore into `dest_dir` (existing and empty), verifying while streaming; refuses unsafe entries. On error
    /// `dest_dir` may hold a partial tree, which the caller discards. Refuses (`WontFit`, before writing anything)
    /// a snapshot whose data will not fit the free space at `dest_dir`; holes are restored as holes. No content cap
    /// and no owner change: [`SnapshotStore::restore_with`] with the default options.
    pub async fn restore(&self, keys: &SnapshotKeys, dest_dir: &Path) -> Result<Manifest, SnapshotError> {
        self.restore_with(keys, dest_dir, &RestoreOptions::default()).await
    }

    /// [`SnapshotStore::restore`] with options: a manifest counting more than `max_content_bytes` is `TooLarge`
    /// before anything is written; with `owner`, every entry extracted (`dest_dir` itself included) gets that
    /// uid/gid, no link followed.
    pub async fn restore_with(
        &self,
        keys: &SnapshotKeys,
        dest_dir: &Path,
        opts: &RestoreOptions,
    ) -> Result<Manifest, SnapshotError> {
        restore::restore(&self.store, keys, dest_dir, opts).await
    }

    /// Every entry of the archive: from the entry index when the snapshot has one (the archive is not read), else
    /// read from the archive's stream without unpacking to disk. A damaged index is `Corrupt`.
    pub async fn list_files(&self, keys: &SnapshotKeys) -> Result<Vec<FileEntry>, SnapshotError> {
        Ok(browse::list_files(&self.store, keys, usize::MAX).await?.entries)
    }

    /// At most `max_entries` entries of the archive, and whether there are more.
    pub async fn list_files_capped(&self, keys: &SnapshotKeys, max_entries: usize) -> Result<Listing, SnapshotError> {
        browse::list_files(&self.store, keys, max_entries).await
    }

    /// One regular file's first `max_bytes` bytes. `FileNotFound` when absent (or not a regular file). With an entry
    /// index, only the zstd frame holding the file is fetched.
    pub async fn read_file(
        &self,
        keys: &SnapshotKeys,
        path: &RelPath,
        max_bytes: u64,
    ) -> Result<FileRead, SnapshotError> {
        browse::read_file(&self.store, keys, path, max_bytes).await
    }

    /// One regular file's bytes as a stream (no size cap). `FileNotFound` when absent.
    pub async fn download(
        &self,
        keys: &SnapshotKeys,
        path: &RelPath,
    ) -> Result<(FileEntry, ByteStream), SnapshotError> {
        browse::download(&self.store, keys, path).await
    }

    /// Delete the archive, its index and the manifest (the manifest first, so none is left vouching for a missing
    /// archive). Absent objects are not an error.
    pub async fn delete(&self, keys: &SnapshotKeys) -> Result<(), SnapshotError> {
        delete_object(&self.store, &keys.manifest).await?;
        delete_object(&self.store, &keys.index).await?;
        delete_object(&self.store, &keys.archive).await?;
        Ok(())
    }

    /// Remove uploads a crash left half-written: for a [`SnapshotStore::local`] store, `LocalFileSystem` multipart
    /// staging files (`<object>#<n>`) older than `min_age`; call it at server start-up. A server that is the only
    /// writer (one server per data directory) passes zero: every staging file is then a crash's leftover; otherwise
    /// pass a margin longer than any upload in flight. Does nothing for other stores (S3 incomplete multipart
    /// uploads are the bucket lifecycle rule's job). Returns how many were removed.
    pub async fn sweep_incomplete(&self, min_age: std::time::Duration) -> anyhow::Result<u64> {
        let Some(root) = self.local_root.clone() else { return Ok(0) };
        tokio::task::spawn_blocking(move || sweep::sweep_dir(&root, min_age))
            .await
            .context("snapshot sweep task failed")?
            .context("sweeping incomplete snapshot uploads")
    }
}
