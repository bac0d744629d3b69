//! The crate's one error type, [`SnapshotError`], and the helper that turns a tar/zstd decode failure into one. A
//! leaf: it depends on no other module of the crate.

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

/// A tar read failure: the archive does not decode.
pub(crate) fn corrupt(what: &str, err: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Corrupt(format!("{what}: {err}"))
}
