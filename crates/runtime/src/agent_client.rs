//! `AgentClient`: HTTP/1.1 to the `evershell agent` service inside a pod (over a Unix socket for local pods).
//!
//! One connection per call (a Unix-socket connect costs microseconds, and it keeps no state to go stale across
//! sandbox restarts). Timeouts: connect 1 s, health 500 ms end to end, listing 60 s; downloads and uploads are
//! bounded only while waiting for the response head, since their bodies may legitimately take long.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use evershell_core::files::{FileEntry, RelPath};
use evershell_snapshot::ByteStream;
use futures::{StreamExt, TryStreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::net::UnixStream;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent did not answer (socket missing, connection refused, timeout, broken response).
    #[error("agent unreachable: {0:#}")]
    Unreachable(anyhow::Error),
    /// The path does not exist in the pod.
    #[error("no such file: {0}")]
    NotFound(String),
    /// The agent refused the request (a directory where a file was expected, …).
    #[error("{0}")]
    Rejected(String),
}

/// A streamed file download.
pub struct Download {
    pub entry: FileEntry,
    pub body: ByteStream,
}

/// Header in which the agent sends a downloaded file's `FileEntry` (JSON).
const ENTRY_HEADER: &str = "x-evershell-entry";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest error body read from the agent.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Everything but RFC 3986 unreserved characters is escaped inside a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

type ReqBody = UnsyncBoxBody<Bytes, std::io::Error>;

#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

#[derive(serde::Deserialize)]
struct ListBody {
    entries: Vec<FileEntry>,
    #[serde(default)]
    truncated: bool,
}

impl AgentClient {
    /// A client for an agent listening on a Unix socket.
    pub fn unix(socket: PathBuf) -> Self {
        Self { socket }
    }

    /// `GET /healthz`: `Ok` when the agent answers 200.
    pub async fn health(&self) -> Result<(), AgentError> {
        let call = async {
            let res = self.send(Method::GET, "/healthz".into(), empty()).await?;
            if res.status() != StatusCode::OK {
                return Err(self.failure(res).await);
            }
            Ok(())
        };
        tokio::time::timeout(HEALTH_TIMEOUT, call)
            .await
            .map_err(|_| AgentError::Unreachable(anyhow!("health check timed out after {HEALTH_TIMEOUT:?}")))?
    }

    /// `GET /v1/info`: what the agent sees of its sandbox (hostname, uid, gid, pid, network interfaces).
    pub async fn info(&self) -> Result<serde_json::Value, AgentError> {
        let call = async {
            let res = self.send(Method::GET, "/v1/info".into(), empty()).await?;
            self.json(res).await
        };
        tokio::time::timeout(HEAD_TIMEOUT, call)
            .await
            .map_err(|_| AgentError::Unreachable(anyhow!("info timed out after {HEAD_TIMEOUT:?}")))?
    }

    /// Every entry under `/workspace`.
    pub async fn list_files(&self) -> Result<Vec<FileEntry>, AgentError> {
        let call = async {
            let res = self.send(Method::GET, "/v1/files".into(), empty()).await?;
            let body: ListBody = self.json(res).await?;
            if body.truncated {
                tracing::warn!(entries = body.entries.len(), "agent truncated the file listing");
            }
            Ok(body.entries)
        };
        tokio::time::timeout(LIST_TIMEOUT, call)
            .await
            .map_err(|_| AgentError::Unreachable(anyhow!("file listing timed out after {LIST_TIMEOUT:?}")))?
    }

    /// Stream one regular file out of `/workspace`.
    pub async fn download(&self, path: &RelPath) -> Result<Download, AgentError> {
        let head = tokio::time::timeout(HEAD_TIMEOUT, self.send(Method::GET, file_uri(path), empty()))
            .await
            .map_err(|_| AgentError::Unreachable(anyhow!("download timed out after {HEAD_TIMEOUT:?}")))??;
        if head.status() == StatusCode::NOT_FOUND {
            return Err(AgentError::NotFound(path.to_string()));
        }
        if head.status() != StatusCode::OK {
            return Err(self.failure(head).await);
        }
        let entry = head
            .headers()
            .get(ENTRY_HEADER)
            .and_then(|v| serde_json::from_slice::<FileEntry>(v.as_bytes()).ok())
            .ok_or_else(|| AgentError::Unreachable(anyhow!("agent response lacks a valid {ENTRY_HEADER} header")))?;
        let body = head.into_body().into_data_stream().map_err(std::io::Error::other).boxed();
        Ok(Download { entry, body })
    }

    /// Write `body` to `path` under `/workspace` (parents created, replaced atomically).
    pub async fn put_file(&self, path: &RelPath, body: ByteStream) -> Result<FileEntry, AgentError> {
        let body = BodyExt::boxed_unsync(StreamBody::new(body.map_ok(Frame::data)));
        let res = self.send(Method::PUT, file_uri(path), body).await?;
        tokio::time::timeout(HEAD_TIMEOUT, self.json(res))
            .await
            .map_err(|_| AgentError::Unreachable(anyhow!("upload response timed out after {HEAD_TIMEOUT:?}")))?
    }

    /// Connect, send one request, return the response head (body still streaming).
    async fn send(&self, method: Method, uri: String, body: ReqBody) -> Result<Response<Incoming>, AgentError> {
        let socket = &self.socket;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(socket))
            .await
            .map_err(|_| AgentError::Unreachable(anyhow!("connecting to {} timed out", socket.display())))?
            .map_err(|e| AgentError::Unreachable(anyhow!(e).context(format!("connecting to {}", socket.display()))))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, ReqBody>(TokioIo::new(stream))
            .await
            .map_err(|e| AgentError::Unreachable(anyhow!(e).context("HTTP handshake with the agent")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "agent connection ended with an error");
            }
        });
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "agent")
            .body(body)
            .map_err(|e| AgentError::Unreachable(anyhow!(e).context("building the request")))?;
        sender.send_request(req).await.map_err(|e| AgentError::Unreachable(anyhow!(e).context("request to the agent")))
    }

    /// Decode a 200 JSON body, or turn any other status into an error.
    async fn json<T: serde::de::DeserializeOwned>(&self, res: Response<Incoming>) -> Result<T, AgentError> {
        if res.status() != StatusCode::OK {
            return Err(self.failure(res).await);
        }
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| AgentError::Unreachable(anyhow!(e).context("reading the agent's response")))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| AgentError::Unreachable(anyhow!(e).context("decoding the agent's response")))
    }

    /// Map a non-200 answer: 404 → `NotFound`, other 4xx and 507 (workspace volume full) → `Rejected`, anything
    /// else → `Unreachable`.
    async fn failure(&self, res: Response<Incoming>) -> AgentError {
        let status = res.status();
        let limited = http_body_util::Limited::new(res.into_body(), MAX_ERROR_BODY);
        let message = match limited.collect().await {
            Ok(b) => error_message(&b.to_bytes()),
            Err(_) => None,
        }
        .unwrap_or_else(|| status.to_string());
        match status {
            StatusCode::NOT_FOUND => AgentError::NotFound(message),
            s if s.is_client_error() || s == StatusCode::INSUFFICIENT_STORAGE => AgentError::Rejected(message),
            s => AgentError::Unreachable(anyhow!("agent answered {s}: {message}")),
        }
    }
}

fn empty() -> ReqBody {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

fn file_uri(path: &RelPath) -> String {
    let mut uri = String::from("/v1/files");
    for comp in path.components() {
        uri.push('/');
        uri.extend(utf8_percent_encode(comp, SEGMENT));
    }
    uri
}

/// `error.message` of an agent error envelope.
fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("error")?.get("message")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_each_segment() {
        let p = RelPath::parse("dir with space/é?#%.txt").unwrap();
        assert_eq!(file_uri(&p), "/v1/files/dir%20with%20space/%C3%A9%3F%23%25.txt");
    }

    #[test]
    fn reads_error_envelopes() {
        assert_eq!(error_message(br#"{"error":{"code":"x","message":"m"}}"#).as_deref(), Some("m"));
        assert_eq!(error_message(b"nope"), None);
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let c = AgentClient::unix(dir.path().join("nope.sock"));
        assert!(matches!(c.health().await, Err(AgentError::Unreachable(_))));
    }
}
