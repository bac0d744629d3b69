//! Checking an archive against its manifest: reading the manifest, digesting the stored archive, and the precise
//! `Missing` / `Corrupt` messages a workspace's `last_error` shows.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::bridge::{open_object, run_blocking, store_error};
use crate::error::SnapshotError;
use crate::hashing::{Digest, drain};
use crate::keys::SnapshotKeys;
use crate::manifest::OLDEST_FORMAT_VERSION;
use crate::manifest::{FORMAT_VERSION, Manifest};

/// The manifest at `path`: `Missing` when absent, `Corrupt` when unparseable or of a format version this build does
/// not read (newer than [`FORMAT_VERSION`]).
pub(crate) async fn read_manifest(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Manifest, SnapshotError> {
    let got = store.get(path).await.map_err(|e| store_error(e, path, "manifest"))?;
    let raw = got.bytes().await.map_err(|e| store_error(e, path, "manifest"))?;
    let invalid = |e: serde_json::Error| {
        SnapshotError::Corrupt(format!("manifest `{path}` is not valid JSON for a manifest: {e}"))
    };
    let mut json: serde_json::Value = serde_json::from_slice(&raw).map_err(invalid)?;
    let version = json.get("format_version").and_then(serde_json::Value::as_u64);
    match version {
        Some(v) if (u64::from(OLDEST_FORMAT_VERSION)..=u64::from(FORMAT_VERSION)).contains(&v) => {}
        Some(v) => {
            return Err(SnapshotError::Corrupt(format!(
                "manifest `{path}` has format version {v}, this build reads versions {OLDEST_FORMAT_VERSION} to \
                 {FORMAT_VERSION}"
            )));
        }
        None => return Err(SnapshotError::Corrupt(format!("manifest `{path}` has no format version"))),
    }
    // Format 1 stored every byte of every file: what a restore writes is the content itself.
    if version == Some(1)
        && let Some(obj) = json.as_object_mut()
        && !obj.contains_key("data_bytes")
    {
        let content = obj.get("content_bytes").cloned().unwrap_or(serde_json::Value::Null);
        obj.insert("data_bytes".into(), content);
    }
    serde_json::from_value(json).map_err(invalid)
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
