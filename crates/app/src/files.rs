//! Files of a workspace: the live sandbox (through the agent in the pod) and the latest snapshot (read from the
//! archive without unpacking it).

use evershell_core::audit::EventType;
use evershell_core::files::{FileEntry, RelPath};
use evershell_core::model::WorkspaceRecord;
use evershell_core::scope::Scope;
use evershell_core::{Error, ErrorCode, Result};
use evershell_runtime::{AgentClient, AgentError, Download};
use evershell_snapshot::{ByteStream, FileRead, SnapshotError, SnapshotKeys};

use crate::App;
use crate::caller::Caller;

/// Default `max_bytes` of JSON file reads (512 KiB).
pub const DEFAULT_MAX_BYTES: u64 = 524_288;

/// A file read as JSON: UTF-8 text, or `null` content for binary files.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FileContent {
    pub entry: FileEntry,
    /// The text, or `null` when the file is not UTF-8 (binary).
    pub content: Option<String>,
    /// `true` when the file is longer than `max_bytes`.
    pub truncated: bool,
}

/// Listing answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FileList {
    pub entries: Vec<FileEntry>,
    /// `true` when the listing was cut at `limits.max_list_entries` (100,000 by default).
    #[serde(default)]
    pub truncated: bool,
}

/// Parse a path from a file route: 400 naming `path` for anything that could escape the root.
pub fn parse_path(raw: &str) -> Result<RelPath> {
    RelPath::parse(raw).map_err(|why| Error::invalid_field("path", why))
}

/// Text when the bytes are UTF-8 (a multi-byte character cut by truncation still counts), else `None`.
pub fn as_text(bytes: &[u8], truncated: bool) -> Option<String> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Some(s.to_string()),
        Err(e) if truncated && e.error_len().is_none() => {
            Some(String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into())
        }
        Err(_) => None,
    }
}

fn agent_error(e: AgentError) -> Error {
    match e {
        AgentError::Unreachable(cause) => Error::agent_unreachable(cause),
        AgentError::NotFound(p) => Error::new(ErrorCode::FileNotFound, format!("no such file in the workspace: {p}")),
        AgentError::Rejected(msg) => Error::invalid_field("path", msg),
    }
}

fn snapshot_error(e: SnapshotError) -> Error {
    match e {
        SnapshotError::FileNotFound(p) => {
            Error::new(ErrorCode::FileNotFound, format!("no such file in the snapshot: {p}"))
        }
        // A damaged archive or entry index: the envelope says so (the snapshot, not the server, is at fault).
        e @ (SnapshotError::Corrupt(_) | SnapshotError::Missing(_) | SnapshotError::Unsafe(_)) => {
            Error::new(ErrorCode::Internal, format!("the snapshot cannot be read: {e}"))
        }
        other => Error::internal(anyhow::anyhow!("reading snapshot: {other}")),
    }
}

impl App {
    /// The agent of a running workspace, or the 409 for its state.
    async fn live_agent(&self, ws: &WorkspaceRecord) -> Result<AgentClient> {
        if let Some(code) = ws.status().not_running_code() {
            return Err(Error::conflict(code, format!("the workspace is {}", ws.status().as_str())));
        }
        let pod = ws
            .observed
            .pod_id
            .ok_or_else(|| Error::conflict(ErrorCode::WorkspaceProvisioning, "the workspace has no pod"))?;
        Ok(self.runtime.agent(pod))
    }

    pub async fn sandbox_list(&self, caller: &Caller, id: &str) -> Result<FileList> {
        let ws = self.readable_workspace(caller, id).await?;
        let agent = self.live_agent(&ws).await?;
        let mut entries = agent.list_files().await.map_err(agent_error)?;
        // The agent stops at its own cap (100,000); a full answer means there may be more.
        let max = self.config.max_list_entries;
        let truncated = entries.len() > max || entries.len() >= evershell_snapshot::MAX_LIST_ENTRIES;
        entries.truncate(max);
        Ok(FileList { entries, truncated })
    }

    pub async fn sandbox_download(&self, caller: &Caller, id: &str, path: &str) -> Result<Download> {
        let path = parse_path(path)?;
        let ws = self.readable_workspace(caller, id).await?;
        self.live_agent(&ws).await?.download(&path).await.map_err(agent_error)
    }

    pub async fn sandbox_read(&self, caller: &Caller, id: &str, path: &str, max_bytes: u64) -> Result<FileContent> {
        use futures::StreamExt;
        let d = self.sandbox_download(caller, id, path).await?;
        let mut bytes = Vec::new();
        let mut body = d.body;
        let mut truncated = false;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::agent_unreachable(anyhow::anyhow!(e)))?;
            let room = (max_bytes as usize).saturating_sub(bytes.len());
            if chunk.len() > room {
                bytes.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        truncated |= (d.entry.size as u64) > max_bytes;
        Ok(FileContent { content: as_text(&bytes, truncated), entry: d.entry, truncated })
    }

    /// Write raw bytes into a running workspace (`workspace:write`, creator match on `:own`; create-class).
    pub async fn sandbox_put(&self, caller: &Caller, id: &str, path: &str, body: ByteStream) -> Result<FileEntry> {
        let path = parse_path(path)?;
        let ws = self.load_workspace(caller, id).await?;
        caller.check_owner(Scope::WorkspaceWrite, ws.created_by_user_id, ErrorCode::PermissionDenied)?;
        self.ensure_billing(caller).await?;
        let agent = self.live_agent(&ws).await?;
        let entry = agent.put_file(&path, body).await.map_err(agent_error)?;
        let audit =
            caller.audit(EventType::WorkspaceFileWritten).workspace(ws.id).path_detail(path.as_str(), entry.size);
        self.store.append_audit(&[audit]).await?;
        Ok(entry)
    }

    /// Run a command in the live sandbox, as the sandbox user in `/workspace` (see `evershell_core::exec`).
    pub async fn sandbox_exec(
        &self,
        caller: &Caller,
        id: &str,
        req: evershell_core::exec::ExecRequest,
    ) -> Result<evershell_core::exec::ExecResult> {
        let ws = self.load_workspace(caller, id).await?;
        caller.check_owner(Scope::WorkspaceWrite, ws.created_by_user_id, ErrorCode::PermissionDenied)?;
        self.ensure_billing(caller).await?;
        if let Err(why) = req.validate() {
            let (field, msg) = why.split_once(": ").unwrap_or(("argv", why.as_str()));
            return Err(Error::invalid_field(field, msg));
        }
        let agent = self.live_agent(&ws).await?;
        let program = req.argv[0].clone();
        let result = agent.exec(&req).await.map_err(|e| match e {
            AgentError::NotFound(_) => Error::invalid_field("argv", format!("no program `{program}` in the sandbox")),
            AgentError::Rejected(msg) => Error::invalid_field("argv", msg),
            AgentError::Unreachable(cause) => Error::agent_unreachable(cause),
        })?;
        // The program, never its arguments or environment (they may carry secrets typed by a person).
        let audit = caller.audit(EventType::WorkspaceExec).workspace(ws.id).details(serde_json::json!({
            "program": program,
            "args": req.argv.len() - 1,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "timed_out": result.timed_out,
            "duration_ms": result.duration_ms,
        }));
        self.store.append_audit(&[audit]).await?;
        Ok(result)
    }

    /// The keys of the workspace's latest verified snapshot, or 404 `snapshot_not_found`.
    async fn snapshot_keys(&self, ws: &WorkspaceRecord) -> Result<SnapshotKeys> {
        let none =
            || Error::new(ErrorCode::SnapshotNotFound, "the workspace has no snapshot yet (it was never stopped)");
        let snap = self.store.get_snapshot(ws.observed.snapshot_id.ok_or_else(none)?).await?.ok_or_else(none)?;
        Ok(SnapshotKeys::from_strings(&snap.archive_key, &snap.manifest_key))
    }

    pub async fn snapshot_list(&self, caller: &Caller, id: &str) -> Result<FileList> {
        let ws = self.readable_workspace(caller, id).await?;
        let keys = self.snapshot_keys(&ws).await?;
        let l = self.snapshots.list_files_capped(&keys, self.config.max_list_entries).await.map_err(snapshot_error)?;
        if l.truncated {
            tracing::warn!(workspace_id = %ws.id, entries = l.entries.len(), "snapshot file listing truncated");
        }
        Ok(FileList { entries: l.entries, truncated: l.truncated })
    }

    pub async fn snapshot_read(&self, caller: &Caller, id: &str, path: &str, max_bytes: u64) -> Result<FileContent> {
        let path = parse_path(path)?;
        let ws = self.readable_workspace(caller, id).await?;
        let keys = self.snapshot_keys(&ws).await?;
        let FileRead { entry, bytes, truncated } =
            self.snapshots.read_file(&keys, &path, max_bytes).await.map_err(snapshot_error)?;
        Ok(FileContent { content: as_text(&bytes, truncated), entry, truncated })
    }

    pub async fn snapshot_download(&self, caller: &Caller, id: &str, path: &str) -> Result<(FileEntry, ByteStream)> {
        let path = parse_path(path)?;
        let ws = self.readable_workspace(caller, id).await?;
        let keys = self.snapshot_keys(&ws).await?;
        self.snapshots.download(&keys, &path).await.map_err(snapshot_error)
    }
}

trait PathDetail {
    fn path_detail(self, path: &str, size: i64) -> Self;
}

impl PathDetail for evershell_core::audit::AuditEvent {
    fn path_detail(mut self, path: &str, size: i64) -> Self {
        self.path = Some(path.to_string());
        self.details = Some(serde_json::json!({ "size": size }));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_detection() {
        assert_eq!(as_text(b"hello", false).as_deref(), Some("hello"));
        assert_eq!(as_text(&[0xff, 0xfe, 0x00], false), None);
        // "é" is two bytes; cut after the first by truncation.
        assert_eq!(as_text(&[b'a', 0xc3], true).as_deref(), Some("a"));
        assert_eq!(as_text(&[b'a', 0xc3], false), None);
    }

    #[test]
    fn paths_that_escape_are_400() {
        assert_eq!(parse_path("../../etc/passwd").unwrap_err().code, ErrorCode::ValidationError);
        assert!(parse_path("src/lib.rs").is_ok());
    }
}
