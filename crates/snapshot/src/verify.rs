//! Checking an archive against its manifest: reading the manifest, digesting the stored archive, and the precise
//! `Missing` / `Corrupt` messages a workspace's `last_error` shows.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::bridge::{open_object, run_blocking, store_error};
use crate::hashing::{Digest, drain};
use crate::{FORMAT_VERSION, Manifest, SnapshotError, SnapshotKeys};

/// The manifest at `path`: `Missing` when absent, `Corrupt` when unparseable or of another format version.
pub(crate) async fn read_manifest(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Manifest, SnapshotError> {
    let got = store.get(path).await.map_err(|e| store_error(e, path, "manifest"))?;
    let raw = got.bytes().await.map_err(|e| store_error(e, path, "manifest"))?;
    let manifest: Manifest = serde_json::from_slice(&raw)
        .map_err(|e| SnapshotError::Corrupt(format!("manifest `{path}` is not valid JSON for a manifest: {e}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(SnapshotError::Corrupt(format!(
            "manifest `{path}` has format version {}, this build reads version {FORMAT_VERSION}",
            manifest.format_version
        )));
    }
    Ok(manifest)
}

/// sha256 (hex) and size of the object at `path`, read back from the store.
pub(crate) async fn digest_object(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<(String, u64), SnapshotError> {
    let source = open_object(store, path, "archive").await?;
    let shown = path.to_string();
    run_blocking(move || {
        let mut digest = Digest::default();
        drain(source, |chunk| digest.update(chunk))
            .map_err(|e| SnapshotError::Io(anyhow::Error::new(e).context(format!("reading archive `{shown}`"))))?;
        Ok(digest.finish())
    })
    .await
}

/// `Corrupt` unless the archive's actual size and sha256 are the expected ones.
pub(crate) fn check_digest(
    expected_sha: &str,
    expected_bytes: u64,
    actual_sha: &str,
    actual_bytes: u64,
) -> Result<(), SnapshotError> {
    if actual_bytes != expected_bytes {
        return Err(SnapshotError::Corrupt(format!(
            "archive is {actual_bytes} bytes but the manifest says {expected_bytes} (sha256 {actual_sha}, expected \
             {expected_sha})"
        )));
    }
    if actual_sha != expected_sha {
        return Err(SnapshotError::Corrupt(format!(
            "archive sha256 is {actual_sha} but the manifest says {expected_sha} ({actual_bytes} bytes)"
        )));
    }
    Ok(())
}

/// Manifest present and current, archive present, size and sha256 matching.
pub(crate) async fn verify(store: &Arc<dyn ObjectStore>, keys: &SnapshotKeys) -> Result<Manifest, SnapshotError> {
    let manifest = read_manifest(store, &keys.manifest).await?;
    let (sha, bytes) = digest_object(store, &keys.archive).await?;
    check_digest(&manifest.archive_sha256, manifest.archive_bytes, &sha, bytes)?;
    Ok(manifest)
}
