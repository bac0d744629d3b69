//! Options of a capture and a restore: content caps and the owner of restored files. The defaults (no cap, files
//! owned by whoever restores) are what `SnapshotStore::capture` and `SnapshotStore::restore` use.

/// How to capture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Refuse (`SnapshotError::TooLarge`) a workspace whose regular files' apparent sizes add up to more.
    pub max_content_bytes: Option<u64>,
}

/// How to restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Refuse (`SnapshotError::TooLarge`), before writing anything, a snapshot whose manifest counts more content.
    pub max_content_bytes: Option<u64>,
    /// `(uid, gid)` given to every entry extracted, the restore root included (set on the descriptor created, or
    /// with `lchown` for symlinks; no link is followed). `None`: entries belong to the restoring process.
    pub owner: Option<(u32, u32)>,
    /// The destination is a file system of the workspace's own, sized to its disk limit: the free-space check (and
    /// its margin, which a workspace filled to its limit could never meet again) is skipped. A snapshot that does
    /// not fit fails with ENOSPC there, filling nothing else.
    pub own_filesystem: bool,
}
