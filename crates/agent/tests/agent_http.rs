//! The agent served in-process on a Unix socket over a temporary root, driven through the control plane's
//! `AgentClient` (and raw HTTP where the client would refuse to send the request).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use evershell_core::files::RelPath;
use evershell_runtime::{AgentClient, AgentError};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

struct TestAgent {
    _dir: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestAgent {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("workspace");
        std::fs::create_dir(&root).unwrap();
        let socket = dir.path().join("run/agent.sock");
        // A stale socket file from an earlier run must not stop the agent from binding.
        std::fs::create_dir(dir.path().join("run")).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let listener = evershell_agent::bind(&socket).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(evershell_agent::serve(listener, root.clone(), Some("pod_test".into()), async {
            let _ = rx.await;
        }));
        Self { _dir: dir, root, socket, stop: Some(tx), task }
    }

    fn client(&self) -> AgentClient {
        AgentClient::unix(self.socket.clone())
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn rel(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

fn stream_of(chunks: Vec<&'static [u8]>) -> futures::stream::BoxStream<'static, std::io::Result<Bytes>> {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))).boxed()
}

async fn raw(socket: &Path, request: &str) -> (u16, String) {
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    (status, out)
}

#[tokio::test]
async fn health_and_info() {
    let agent = TestAgent::start().await;
    agent.client().health().await.unwrap();
    let (status, body) = raw(&agent.socket, "GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""pod_id":"pod_test""#), "{body}");
    let info = agent.client().info().await.unwrap();
    assert_eq!(info["pod_id"], "pod_test");
    assert!(info["interfaces"].as_array().unwrap().iter().any(|i| i == "lo"), "{info}");
    agent.shutdown().await;
}

#[tokio::test]
async fn put_list_download_round_trip() {
    let agent = TestAgent::start().await;
    let c = agent.client();
    let entry = c.put_file(&rel("src/deep/main.rs"), stream_of(vec![b"fn main() {", b" }\n"])).await.unwrap();
    assert_eq!(entry.path, "src/deep/main.rs");
    assert_eq!(entry.size, 14);
    assert!(!entry.is_dir);
    assert_eq!(std::fs::read(agent.root.join("src/deep/main.rs")).unwrap(), b"fn main() { }\n");

    // A name that needs escaping, and an empty file.
    c.put_file(&rel("odd name #1?.txt"), stream_of(vec![b"x"])).await.unwrap();
    c.put_file(&rel("empty"), stream_of(vec![])).await.unwrap();

    let listed = c.list_files().await.unwrap();
    let paths: Vec<_> = listed.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["empty", "odd name #1?.txt", "src", "src/deep", "src/deep/main.rs"]);
    let src = listed.iter().find(|e| e.path == "src").unwrap();
    assert!(src.is_dir);
    assert_eq!(src.mime_type.as_deref(), Some("inode/directory"));

    let dl = c.download(&rel("src/deep/main.rs")).await.unwrap();
    assert_eq!(dl.entry.size, 14);
    let bytes: Vec<Bytes> = dl.body.try_collect().await.unwrap();
    assert_eq!(bytes.concat(), b"fn main() { }\n");
    let dl = c.download(&rel("odd name #1?.txt")).await.unwrap();
    assert_eq!(dl.entry.path, "odd name #1?.txt");
    agent.shutdown().await;
}

#[tokio::test]
async fn large_upload_streams() {
    let agent = TestAgent::start().await;
    let chunk: &'static [u8] = Box::leak(vec![7u8; 1 << 20].into_boxed_slice());
    let body = futures::stream::iter((0..8).map(move |_| Ok(Bytes::from_static(chunk)))).boxed();
    let e = agent.client().put_file(&rel("big.bin"), body).await.unwrap();
    assert_eq!(e.size, 8 << 20);
    let dl = agent.client().download(&rel("big.bin")).await.unwrap();
    let total = dl.body.try_fold(0usize, |n, b| async move { Ok(n + b.len()) }).await.unwrap();
    assert_eq!(total, 8 << 20);
    agent.shutdown().await;
}

#[tokio::test]
async fn refusals() {
    let agent = TestAgent::start().await;
    let c = agent.client();
    std::fs::create_dir(agent.root.join("dir")).unwrap();
    std::fs::write(agent.root.join("file"), b"f").unwrap();
    std::os::unix::fs::symlink("/etc", agent.root.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", agent.root.join("passwd-link")).unwrap();

    match c.download(&rel("sub/missing")).await {
        Err(AgentError::NotFound(p)) => assert_eq!(p, "sub/missing"),
        other => panic!("{:?}", other.map(|d| d.entry)),
    }
    assert!(matches!(c.download(&rel("dir")).await, Err(AgentError::Rejected(_))));
    assert!(matches!(c.download(&rel("passwd-link")).await, Err(AgentError::Rejected(_))));
    assert!(matches!(c.download(&rel("etc-link/passwd")).await, Err(AgentError::Rejected(_))));
    assert!(matches!(c.put_file(&rel("dir"), stream_of(vec![b"x"])).await, Err(AgentError::Rejected(_))));
    assert!(matches!(c.put_file(&rel("file/x"), stream_of(vec![b"x"])).await, Err(AgentError::Rejected(_))));
    assert!(matches!(c.put_file(&rel("etc-link/x"), stream_of(vec![b"x"])).await, Err(AgentError::Rejected(_))));

    for path in ["../../etc/passwd", "%2E%2E/%2E%2E/etc/passwd", "a//b", "/etc/passwd"] {
        let req = format!("GET /v1/files/{path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
        let (status, body) = raw(&agent.socket, &req).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(r#""code":"invalid_path""#), "{body}");
        let req =
            format!("PUT /v1/files/{path} HTTP/1.1\r\nHost: agent\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx");
        assert_eq!(raw(&agent.socket, &req).await.0, 400, "PUT {path}");
    }
    assert!(!agent.root.parent().unwrap().join("etc").exists());
    let (status, body) = raw(&agent.socket, "GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 404);
    assert!(body.contains(r#""code":"not_found""#));
    agent.shutdown().await;
}

#[tokio::test]
async fn readonly_flag_and_permission_errors() {
    let agent = TestAgent::start().await;
    let c = agent.client();
    c.put_file(&rel("ro/file.txt"), stream_of(vec![b"x"])).await.unwrap();
    std::fs::set_permissions(agent.root.join("ro/file.txt"), std::fs::Permissions::from_mode(0o444)).unwrap();
    let listed = c.list_files().await.unwrap();
    assert!(listed.iter().find(|e| e.path == "ro/file.txt").unwrap().readonly);
    assert!(!listed.iter().find(|e| e.path == "ro").unwrap().readonly);
    agent.shutdown().await;
}
