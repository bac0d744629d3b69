//! `PUT /v1/files/{path}`: stream a request body into a temporary file beside the target, then rename it over the
//! target (an atomic replace), creating missing parent directories. Parents must be real directories: a symlink or
//! a file on the way is refused rather than followed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use evershell_core::files::{FileEntry, RelPath};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::error::AgentErr;
use crate::fsops::entry_for;

/// Mode of a newly created file (an existing file's mode is kept).
const NEW_FILE_MODE: u32 = 0o644;

/// Write `body` to `rel` under `root` and return the new entry.
pub async fn put_file(root: &Path, rel: &RelPath, body: Body) -> Result<FileEntry, AgentErr> {
    let (root2, rel2) = (root.to_path_buf(), rel.clone());
    let (parent, target, mode) = tokio::task::spawn_blocking(move || prepare_parents(&root2, &rel2))
        .await
        .map_err(|e| AgentErr::Io(std::io::Error::other(e)))??;

    let tmp = parent.join(temp_name());
    let result = write_temp(&tmp, mode, body, rel).await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    if let Err(e) = tokio::fs::rename(&tmp, &target).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(AgentErr::from_io(e, rel));
    }
    let meta = tokio::fs::symlink_metadata(&target).await.map_err(|e| AgentErr::from_io(e, rel))?;
    Ok(entry_for(rel.as_str(), &meta))
}

/// Check (and create) the parent directories; return the parent, the target and the mode the file should get.
fn prepare_parents(root: &Path, rel: &RelPath) -> Result<(PathBuf, PathBuf, u32), AgentErr> {
    let comps: Vec<&str> = rel.components().collect();
    let (last, parents) = comps.split_last().expect("a RelPath has at least one component");
    let mut dir = root.to_path_buf();
    let mut walked = String::new();
    for comp in parents {
        dir.push(comp);
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(comp);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(AgentErr::InvalidPath(format!("parent `{walked}` is a symbolic link")));
            }
            Ok(_) => return Err(AgentErr::NotADirectory(walked)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&dir) {
                Ok(()) => {}
                // Created concurrently: check what it is on the next pass.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !std::fs::symlink_metadata(&dir).map(|m| m.is_dir()).unwrap_or(false) {
                        return Err(AgentErr::NotADirectory(walked));
                    }
                }
                Err(e) => return Err(AgentErr::from_io(e, rel)),
            },
            Err(e) => return Err(AgentErr::from_io(e, rel)),
        }
    }
    let target = dir.join(last);
    let mode = match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => return Err(AgentErr::IsDirectory(rel.to_string())),
        Ok(m) if m.is_file() => m.mode() & 0o7777,
        Ok(_) => NEW_FILE_MODE,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NEW_FILE_MODE,
        Err(e) => return Err(AgentErr::from_io(e, rel)),
    };
    Ok((dir, target, mode))
}

async fn write_temp(tmp: &Path, mode: u32, body: Body, rel: &RelPath) -> Result<(), AgentErr> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .await
        .map_err(|e| AgentErr::from_io(e, rel))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AgentErr::BadBody(e.to_string()))?;
        file.write_all(&chunk).await.map_err(|e| AgentErr::from_io(e, rel))?;
    }
    file.flush().await.map_err(|e| AgentErr::from_io(e, rel))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).await.map_err(|e| AgentErr::from_io(e, rel))?;
    file.sync_all().await.map_err(|e| AgentErr::from_io(e, rel))?;
    Ok(())
}

/// A name no other writer uses: dot-prefixed, short (independent of the target's name length).
fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!(".evershell-put-{}-{n}-{nanos}.tmp", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[tokio::test]
    async fn creates_parents_and_replaces_atomically_keeping_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let e = put_file(root, &rel("a/b/c.txt"), Body::from("one")).await.unwrap();
        assert_eq!((e.path.as_str(), e.size, e.readonly), ("a/b/c.txt", 3, false));
        std::fs::set_permissions(root.join("a/b/c.txt"), std::fs::Permissions::from_mode(0o755)).unwrap();
        put_file(root, &rel("a/b/c.txt"), Body::from("second")).await.unwrap();
        assert_eq!(std::fs::read(root.join("a/b/c.txt")).unwrap(), b"second");
        assert_eq!(std::fs::metadata(root.join("a/b/c.txt")).unwrap().mode() & 0o777, 0o755);
        let names: Vec<_> = std::fs::read_dir(root.join("a/b")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    }

    #[tokio::test]
    async fn refuses_directories_and_symlinked_or_file_parents() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("f"), b"").unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("l")).unwrap();
        assert!(matches!(put_file(root, &rel("d"), Body::from("x")).await, Err(AgentErr::IsDirectory(_))));
        assert!(matches!(put_file(root, &rel("f/x"), Body::from("x")).await, Err(AgentErr::NotADirectory(_))));
        assert!(matches!(put_file(root, &rel("l/x"), Body::from("x")).await, Err(AgentErr::InvalidPath(_))));
    }
}
