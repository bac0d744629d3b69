//! Files uploaded with a task: the name rules, the bounds (count, bytes per file, bytes in all), and where the files
//! wait between the request and the delivery.
//!
//! A submission streams its files into a fresh `<staging>/.incoming-<uuid>/` (each file synced as it ends); a
//! refused submission drops it (the directory goes with it). An accepted one renames it to
//! `<staging>/<workspace_id>/<task_id>/` before the task row is written, so a queued task's files are on disk, in
//! the data dir, whatever happens to the control plane. Before handing the task to its agent the dispatcher copies
//! them into the pod (`PodRuntime::place_uploads`, at `/data/uploads/<task_id>/`); once the task leaves
//! `submitted` (delivered, cancelled, delivery failed, interrupted) the staged copy is removed. Start-up removes
//! what a crash left: every `.incoming-*` and every staged directory whose task is not queued any more (or gone,
//! with its workspace).

use std::path::{Path, PathBuf};

use evershell_core::ids::{TaskId, WorkspaceId};
use evershell_core::model::TaskFile;
use evershell_core::task::TaskStatus;
use evershell_core::{Error, ErrorCode, Result};
use evershell_store::Store;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// Longest file name (bytes).
pub const MAX_NAME: usize = 255;
const INCOMING: &str = ".incoming-";

/// Bounds of one submission's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadLimits {
    /// Most files in one submission.
    pub max_files: usize,
    /// Largest file (bytes).
    pub max_file_bytes: u64,
    /// Most bytes of all the files of one submission.
    pub max_total_bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self { max_files: 64, max_file_bytes: 100 << 20, max_total_bytes: 100 << 20 }
    }
}

/// Why a file name is refused (`None`: accepted). A name is one path component that the pod's filesystem can hold.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a file name must not be empty")
    } else if name.len() > MAX_NAME {
        Some("a file name must be at most 255 bytes")
    } else if name.contains('/') || name.contains('\\') {
        Some("a file name must not contain `/` or `\\`")
    } else if name.contains('\0') {
        Some("a file name must not contain NUL")
    } else if name == "." || name == ".." || name.contains("..") {
        Some("a file name must not contain `..`")
    } else if name.chars().any(char::is_control) {
        Some("a file name must not contain control characters")
    } else {
        None
    }
}

/// The 400 for a refused name (`file` is the form field).
pub fn check_name(name: &str) -> Result<()> {
    match name_problem(name) {
        None => Ok(()),
        Some(problem) => {
            let shown: String = name.chars().take(64).flat_map(char::escape_debug).collect();
            Err(Error::invalid_field("file", format!("`{shown}`: {problem}")))
        }
    }
}

fn too_large(what: String) -> Error {
    Error::new(ErrorCode::PayloadTooLarge, what)
}

fn io_error(e: std::io::Error, what: &str) -> Error {
    Error::internal(anyhow::anyhow!("{what}: {e}"))
}

/// Where uploaded files wait for their delivery (`root` `None`: this server accepts no files).
#[derive(Debug, Clone, Default)]
pub struct Staging {
    root: Option<PathBuf>,
    limits: UploadLimits,
}

impl Staging {
    pub fn new(root: Option<PathBuf>, limits: UploadLimits) -> Self {
        Self { root, limits }
    }

    pub fn limits(&self) -> UploadLimits {
        self.limits
    }

    /// A fresh directory for one submission's files.
    pub async fn begin(&self) -> Result<Incoming> {
        let root = self
            .root
            .clone()
            .ok_or_else(|| Error::invalid_field("file", "this server does not accept files with tasks"))?;
        let dir = root.join(format!("{INCOMING}{}", uuid::Uuid::now_v7().simple()));
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&root)?;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
            Ok::<_, std::io::Error>(dir)
        })
        .await
        .map_err(|e| Error::internal(anyhow::anyhow!(e)))?
        .map(|dir| Incoming { dir, limits: self.limits, files: vec![], total: 0, current: None, kept: false })
        .map_err(|e| io_error(e, "creating the upload staging directory"))
    }

    /// Where the files of `task` wait.
    pub fn task_dir(&self, ws: WorkspaceId, task: TaskId) -> Option<PathBuf> {
        Some(self.root.as_ref()?.join(ws.to_string()).join(task.to_string()))
    }

    /// The staged copies of `files` (name, host path), each checked to be there with its size; an error when the
    /// staged copy is gone or differs (the task cannot be delivered as submitted).
    pub async fn staged(&self, ws: WorkspaceId, task: TaskId, files: &[TaskFile]) -> Result<Vec<(String, PathBuf)>> {
        let dir = self
            .task_dir(ws, task)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("this server keeps no uploaded files")))?;
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let p = dir.join(&f.name);
            let m = tokio::fs::symlink_metadata(&p).await.map_err(|e| io_error(e, "reading a staged upload"))?;
            if !m.is_file() || m.len() != f.size {
                return Err(Error::internal(anyhow::anyhow!("the staged copy of `{}` is not as uploaded", f.name)));
            }
            out.push((f.name.clone(), p));
        }
        Ok(out)
    }

    /// Remove the staged files of `task` (no-op when there are none), and its workspace's directory once empty.
    pub async fn discard(&self, ws: WorkspaceId, task: TaskId) {
        let Some(dir) = self.task_dir(ws, task) else { return };
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {
                tracing::debug!(task_id = %task, "removed the task's staged uploads");
                if let Some(parent) = dir.parent() {
                    let _ = tokio::fs::remove_dir(parent).await; // fails while other tasks' files wait: fine
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(task_id = %task, error = %e, "removing staged uploads failed"),
        }
    }

    /// Start-up cleanup (no submission is in flight): remove every half-received submission and every staged
    /// directory whose task is not queued (`submitted`) any more. Returns how many directories went.
    pub async fn sweep(&self, store: &dyn Store) -> Result<usize> {
        let Some(root) = &self.root else { return Ok(0) };
        let mut removed = 0;
        let mut entries = match tokio::fs::read_dir(root).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error(e, "listing staged uploads")),
        };
        while let Some(e) = entries.next_entry().await.map_err(|e| io_error(e, "listing staged uploads"))? {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ws) = name.parse::<WorkspaceId>() else {
                removed += usize::from(remove_any(&e.path()).await);
                continue;
            };
            let queued: Vec<TaskId> = store
                .open_tasks(ws)
                .await?
                .into_iter()
                .filter(|t| t.status == TaskStatus::Submitted)
                .map(|t| t.id)
                .collect();
            let mut tasks = tokio::fs::read_dir(e.path()).await.map_err(|e| io_error(e, "listing staged uploads"))?;
            while let Some(t) = tasks.next_entry().await.map_err(|e| io_error(e, "listing staged uploads"))? {
                let keep = t.file_name().to_string_lossy().parse::<TaskId>().is_ok_and(|id| queued.contains(&id));
                if !keep {
                    removed += usize::from(remove_any(&t.path()).await);
                }
            }
            let _ = tokio::fs::remove_dir(e.path()).await;
        }
        Ok(removed)
    }
}

async fn remove_any(p: &Path) -> bool {
    let r = match tokio::fs::symlink_metadata(p).await {
        Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(p).await,
        Ok(_) => tokio::fs::remove_file(p).await,
        Err(e) => Err(e),
    };
    r.is_ok()
}

/// One submission's files while they arrive. Dropped before [`Incoming::commit`], it removes what it holds.
#[derive(Debug)]
pub struct Incoming {
    dir: PathBuf,
    limits: UploadLimits,
    files: Vec<TaskFile>,
    total: u64,
    current: Option<tokio::fs::File>,
    kept: bool,
}

impl Incoming {
    /// Begin the next file: 400 for a refused or repeated name, 413 past the file count.
    pub async fn start_file(&mut self, name: &str) -> Result<()> {
        self.end_file().await?;
        check_name(name)?;
        if self.files.iter().any(|f| f.name == name) {
            return Err(Error::invalid_field("file", format!("`{name}` is sent twice (file names must be unique)")));
        }
        if self.files.len() >= self.limits.max_files {
            return Err(too_large(format!("a task takes at most {} files", self.limits.max_files)));
        }
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(name))
            .await
            .map_err(|e| io_error(e, "staging an uploaded file"))?;
        self.files.push(TaskFile { name: name.to_string(), size: 0 });
        self.current = Some(f);
        Ok(())
    }

    /// Append to the current file: 413 past the per-file or the total limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let (Some(f), Some(meta)) = (self.current.as_mut(), self.files.last_mut()) else {
            return Err(Error::internal(anyhow::anyhow!("file data outside a file part")));
        };
        let n = chunk.len() as u64;
        if meta.size + n > self.limits.max_file_bytes {
            return Err(too_large(format!("`{}` is larger than {} bytes", meta.name, self.limits.max_file_bytes)));
        }
        if self.total + n > self.limits.max_total_bytes {
            return Err(too_large(format!("the files are larger than {} bytes in all", self.limits.max_total_bytes)));
        }
        f.write_all(chunk).await.map_err(|e| io_error(e, "staging an uploaded file"))?;
        meta.size += n;
        self.total += n;
        Ok(())
    }

    /// End the current file (synced to disk); no-op when none is open.
    pub async fn end_file(&mut self) -> Result<()> {
        if let Some(mut f) = self.current.take() {
            f.flush().await.map_err(|e| io_error(e, "staging an uploaded file"))?;
            f.sync_all().await.map_err(|e| io_error(e, "staging an uploaded file"))?;
        }
        Ok(())
    }

    /// The files received so far.
    pub fn files(&self) -> &[TaskFile] {
        &self.files
    }

    /// Keep the files as `task`'s: move them to `staging.task_dir(ws, task)`.
    pub(crate) async fn commit(mut self, staging: &Staging, ws: WorkspaceId, task: TaskId) -> Result<()> {
        self.end_file().await?;
        let target = staging.task_dir(ws, task).ok_or_else(|| Error::internal(anyhow::anyhow!("no staging")))?;
        let from = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::DirBuilderExt;
            let parent = target.parent().expect("a task dir has a parent");
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
            std::fs::rename(&from, &target)?;
            std::fs::File::open(parent)?.sync_all()
        })
        .await
        .map_err(|e| Error::internal(anyhow::anyhow!(e)))?
        .map_err(|e| io_error(e, "keeping the uploaded files"))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.kept {
            self.current = None;
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components() {
        for ok in ["a.txt", "report 2024.pdf", ".hidden", "ünïcødé.md", &"x".repeat(255)] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        let long = "y".repeat(256);
        for bad in ["", "a/b", "/abs", "a\\b", "..", ".", "../x", "a..b", "nul\0", "line\nbreak", &long] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationError, "{bad:?}");
            let details = serde_json::to_string(&e.details).unwrap();
            assert!(details.contains("\"file\""), "the field is named: {details}");
        }
    }

    fn staging(limits: UploadLimits) -> (tempfile::TempDir, Staging) {
        let t = tempfile::tempdir().unwrap();
        let s = Staging::new(Some(t.path().join("stage")), limits);
        (t, s)
    }

    #[tokio::test]
    async fn bounds_count_file_and_total_sizes_and_refused_submissions_leave_nothing() {
        let limits = UploadLimits { max_files: 2, max_file_bytes: 10, max_total_bytes: 15 };
        let (_t, s) = staging(limits);
        let root = s.root.clone().unwrap();
        let count = || std::fs::read_dir(&root).map(|d| d.count()).unwrap_or(0);

        let mut inc = s.begin().await.unwrap();
        inc.start_file("a").await.unwrap();
        inc.write(b"0123456789").await.unwrap();
        assert_eq!(inc.write(b"x").await.unwrap_err().code, ErrorCode::PayloadTooLarge, "per file");
        inc.start_file("b").await.unwrap();
        inc.write(b"01234").await.unwrap();
        assert_eq!(inc.write(b"5").await.unwrap_err().code, ErrorCode::PayloadTooLarge, "in all");
        assert_eq!(inc.start_file("c").await.unwrap_err().code, ErrorCode::PayloadTooLarge, "count");
        assert_eq!(inc.start_file("a").await.unwrap_err().code, ErrorCode::ValidationError, "duplicate");
        assert_eq!(count(), 1);
        drop(inc);
        assert_eq!(count(), 0, "a refused submission leaves nothing");

        let mut inc = s.begin().await.unwrap();
        inc.start_file("one.txt").await.unwrap();
        inc.write(b"hello").await.unwrap();
        let files = inc.files().to_vec();
        let (ws, task) = (WorkspaceId::new(), TaskId::new());
        inc.commit(&s, ws, task).await.unwrap();
        let staged = s.staged(ws, task, &files).await.unwrap();
        assert_eq!(std::fs::read(&staged[0].1).unwrap(), b"hello");
        let wrong = [TaskFile { name: "one.txt".into(), size: 4 }];
        assert!(s.staged(ws, task, &wrong).await.is_err(), "a size mismatch is caught");
        s.discard(ws, task).await;
        assert_eq!(count(), 0, "the task's and the workspace's directories are gone");
    }

    #[tokio::test]
    async fn without_a_directory_files_are_refused() {
        let s = Staging::default();
        assert_eq!(s.begin().await.unwrap_err().code, ErrorCode::ValidationError);
    }
}
