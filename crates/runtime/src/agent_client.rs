//! `AgentClient`: HTTP/1.1 to the `evershell agent` service inside a pod (over a Unix socket for local pods).
//!
//! One connection per call (a Unix-socket connect costs microseconds, and it keeps no state to go stale across
//! sandbox restarts).
//!
//! The agent is untrusted: pod code can replace or impersonate it. So the socket is connected without following a
//! link (opened `O_PATH | O_NOFOLLOW`, checked to be a socket, connected through `/proc/self/fd`), every answer is
//! bounded in size (JSON bodies, error bodies, entry counts, a download never longer than the size it announced)
//! and in time: connect 1 s, health 500 ms end to end, info and JSON answers 30 s including the body, listing 60 s
//! including the body; a download must keep delivering (10 s at most between chunks, and the whole body within
//! 30 s + 1 s per MiB announced), and an upload the agent stops reading for 30 s is abandoned.

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
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between two chunks of a download, and longest an upload may go unread.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
const UPLOAD_STALL: Duration = Duration::from_secs(30);
/// Largest error body read from the agent.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest JSON answer other than a listing.
pub(crate) const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest file listing (the agent's own cap of 100,000 entries fits well inside).
const MAX_LIST_BODY: usize = 64 * 1024 * 1024;
/// Entries of a listing beyond this are dropped (and the listing reported truncated).
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Everything but RFC 3986 unreserved characters is escaped inside a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

pub(crate) type ReqBody = UnsyncBoxBody<Bytes, std::io::Error>;

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

    /// Every entry under `/workspace` (at most `MAX_LIST_ENTRIES`).
    pub async fn list_files(&self) -> Result<Vec<FileEntry>, AgentError> {
        let call = async {
            let res = self.send(Method::GET, "/v1/files".into(), empty()).await?;
            let mut body: ListBody = self.json_limited(res, MAX_LIST_BODY).await?;
            if body.entries.len() > MAX_LIST_ENTRIES {
                body.entries.truncate(MAX_LIST_ENTRIES);
                body.truncated = true;
            }
            if body.truncated {
                tracing::warn!(entries = body.entries.len(), "agent truncated the file listing");
            }
            Ok(body.entries)
        };
        tokio::time::timeout(LIST_TIMEOUT, call)
            .await
            .map_err(|_| AgentError::Unreachable(anyhow!("file listing timed out after {LIST_TIMEOUT:?}")))?
    }

    /// Run a command in the pod (see `evershell_core::exec`). Bounded by the request's own deadline plus a margin.
    pub async fn exec(
        &self,
        req: &evershell_core::exec::ExecRequest,
    ) -> Result<evershell_core::exec::ExecResult, AgentError> {
        let limit = req.timeout() + Duration::from_secs(5);
        let body = serde_json::to_vec(req).map_err(|e| AgentError::Rejected(e.to_string()))?;
        let call = async {
            let body = http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
            let res = self.send(Method::POST, "/v1/exec".into(), body).await?;
            // Output is capped at 1 MiB a stream; JSON escaping can grow it at most sixfold.
            self.json_limited(res, 16 * evershell_core::exec::MAX_OUTPUT_BYTES).await
        };
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| AgentError::Unreachable(anyhow!("exec did not answer within {limit:?}")))?
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
        let body = bounded_download(head.into_body(), entry.size.max(0) as u64);
        Ok(Download { entry, body })
    }

    /// Write `body` to `path` under `/workspace` (parents created, replaced atomically).
    pub async fn put_file(&self, path: &RelPath, body: ByteStream) -> Result<FileEntry, AgentError> {
        // The time the agent last took a chunk: an agent that stops reading is given up on.
        let pulled = std::sync::Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
        let seen = pulled.clone();
        let body = body.inspect(move |_| *seen.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now());
        let body = BodyExt::boxed_unsync(StreamBody::new(body.map_ok(Frame::data)));
        let send = self.send(Method::PUT, file_uri(path), body);
        let watchdog = async {
            loop {
                let last = *pulled.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= UPLOAD_STALL {
                    return;
                }
                tokio::time::sleep_until(last + UPLOAD_STALL).await;
            }
        };
        let res = tokio::select! {
            r = send => r?,
            () = watchdog => {
                return Err(AgentError::Unreachable(anyhow!("the agent stopped reading the upload for {UPLOAD_STALL:?}")));
            }
        };
        tokio::time::timeout(HEAD_TIMEOUT, self.json(res))
            .await
            .map_err(|_| AgentError::Unreachable(anyhow!("upload response timed out after {HEAD_TIMEOUT:?}")))?
    }

    /// Connect, send one request, return the response head (body still streaming).
    pub(crate) async fn send(
        &self,
        method: Method,
        uri: String,
        body: ReqBody,
    ) -> Result<Response<Incoming>, AgentError> {
        let socket = &self.socket;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect_nofollow(socket))
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
        let json = method == Method::POST;
        let mut req = Request::builder().method(method).uri(uri).header(header::HOST, "agent");
        if json {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(body).map_err(|e| AgentError::Unreachable(anyhow!(e).context("building the request")))?;
        sender.send_request(req).await.map_err(|e| AgentError::Unreachable(anyhow!(e).context("request to the agent")))
    }

    /// Decode a 200 JSON body (at most `MAX_JSON_BODY`), or turn any other status into an error.
    async fn json<T: serde::de::DeserializeOwned>(&self, res: Response<Incoming>) -> Result<T, AgentError> {
        self.json_limited(res, MAX_JSON_BODY).await
    }

    pub(crate) async fn json_limited<T: serde::de::DeserializeOwned>(
        &self,
        res: Response<Incoming>,
        limit: usize,
    ) -> Result<T, AgentError> {
        if res.status() != StatusCode::OK {
            return Err(self.failure(res).await);
        }
        let bytes = http_body_util::Limited::new(res.into_body(), limit)
            .collect()
            .await
            .map_err(|e| AgentError::Unreachable(anyhow!("reading the agent's response (at most {limit} bytes): {e}")))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| AgentError::Unreachable(anyhow!(e).context("decoding the agent's response")))
    }

    /// Map a non-200 answer: 404 → `NotFound`, other 4xx and 507 (workspace volume full) → `Rejected`, anything
    /// else → `Unreachable`.
    pub(crate) async fn failure(&self, res: Response<Incoming>) -> AgentError {
        let status = res.status();
        let limited = http_body_util::Limited::new(res.into_body(), MAX_ERROR_BODY);
        let message = match tokio::time::timeout(CONNECT_TIMEOUT * 5, limited.collect()).await {
            Ok(Ok(b)) => error_message(&b.to_bytes()),
            _ => None,
        }
        .map(|m| cap_message(&m))
        .unwrap_or_else(|| status.to_string());
        match status {
            StatusCode::NOT_FOUND => AgentError::NotFound(message),
            s if s.is_client_error() || s == StatusCode::INSUFFICIENT_STORAGE => AgentError::Rejected(message),
            s => AgentError::Unreachable(anyhow!("agent answered {s}: {message}")),
        }
    }
}

/// Connect to the socket at `path` without following a link there: the pod can write the directory the socket
/// lives in, and a planted link must not send the control plane's request to a host-side socket.
async fn connect_nofollow(path: &std::path::Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: plain open(2); the descriptor is owned at once.
    let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a zeroed stat buffer.
    if unsafe { libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut st) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(std::io::Error::other("not a socket (a link or another file stands in its place)"));
    }
    // Connecting through the descriptor reaches exactly the inode just checked.
    let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let stream = UnixStream::connect(via).await;
    drop(fd);
    stream
}

/// A download body that must keep coming and never exceed what the agent announced.
fn bounded_download(body: Incoming, announced: u64) -> ByteStream {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT + Duration::from_secs(announced / (1024 * 1024));
    let state = (body.into_data_stream(), 0u64);
    futures::stream::unfold(Some(state), move |st| async move {
        let (mut body, got) = st?;
        let until = (tokio::time::Instant::now() + STALL_TIMEOUT).min(deadline);
        match tokio::time::timeout_at(until, body.next()).await {
            Err(_) => Some((Err(std::io::Error::other("the agent stalled or dripped the download")), None)),
            Ok(None) => None,
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
            Ok(Some(Ok(chunk))) => {
                let got = got + chunk.len() as u64;
                if got > announced {
                    return Some((Err(std::io::Error::other("the agent sent more than the file's size")), None));
                }
                Some((Ok(chunk), Some((body, got))))
            }
        }
    })
    .boxed()
}

/// What of an agent's error message is shown: one line, at most 500 bytes, marked as the pod's words.
fn cap_message(m: &str) -> String {
    let mut line: String = m.chars().filter(|c| !c.is_control()).collect();
    if line.len() > 500 {
        let mut cut = 500;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

pub(crate) fn empty() -> ReqBody {
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

    /// A fake agent: answers every connection with `head`, then `body` chunks every `every` (pod code can stand in
    /// for the agent, so the client must survive whatever this sends).
    fn fake_agent(dir: &std::path::Path, head: String, chunk: Vec<u8>, chunks: usize, every: Duration) -> PathBuf {
        let path = dir.join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (head, chunk) = (head.clone(), chunk.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(head.as_bytes()).await;
                    for _ in 0..chunks {
                        if s.write_all(&chunk).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(every).await;
                    }
                });
            }
        });
        path
    }

    #[tokio::test]
    async fn an_endless_listing_is_cut_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n".to_string();
        // 4 GiB announced by sheer volume: the client stops at its cap instead of buffering it.
        let chunk =
            br#"{"entries":[{"path":"a","size":1,"is_dir":false,"mtime":0.0,"readonly":false,"mime_type":null},"#
                .repeat(1000);
        let sock = fake_agent(dir.path(), head, chunk, 100_000, Duration::ZERO);
        let err = AgentClient::unix(sock).list_files().await.unwrap_err();
        assert!(matches!(err, AgentError::Unreachable(_)), "{err}");
        assert!(err.to_string().contains("at most"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dripping_download_is_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let entry = r#"{"path":"f","size":1000,"is_dir":false,"mtime":0.0,"readonly":false,"mime_type":null}"#;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n{ENTRY_HEADER}: {entry}\r\n\r\n");
        // One byte a second: never stalled for 10 s, but far slower than the 30 s the size allows.
        let sock = fake_agent(dir.path(), head, b"x".to_vec(), 1000, Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        let dl = AgentClient::unix(sock).download(&RelPath::parse("f").unwrap()).await.unwrap();
        let res: Result<Vec<Bytes>, _> = dl.body.try_collect().await;
        assert!(res.is_err(), "the drip was accepted");
        assert!(started.elapsed() < Duration::from_secs(40), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_download_longer_than_announced_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let entry = r#"{"path":"f","size":3,"is_dir":false,"mtime":0.0,"readonly":false,"mime_type":null}"#;
        let head = format!("HTTP/1.1 200 OK\r\n{ENTRY_HEADER}: {entry}\r\n\r\n");
        let sock = fake_agent(dir.path(), head, b"more than three".to_vec(), 3, Duration::ZERO);
        let dl = AgentClient::unix(sock).download(&RelPath::parse("f").unwrap()).await.unwrap();
        let res: Result<Vec<Bytes>, _> = dl.body.try_collect().await;
        assert!(res.unwrap_err().to_string().contains("more than the file's size"));
    }

    #[tokio::test]
    async fn a_socket_replaced_by_a_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        std::fs::create_dir(&host).unwrap();
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string();
        let victim = fake_agent(&host, head, vec![], 0, Duration::ZERO);
        let planted = dir.path().join("agent.sock");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = AgentClient::unix(planted).health().await.unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        // The real socket itself still works.
        AgentClient::unix(victim).health().await.unwrap();
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let c = AgentClient::unix(dir.path().join("nope.sock"));
        assert!(matches!(c.health().await, Err(AgentError::Unreachable(_))));
    }
}
