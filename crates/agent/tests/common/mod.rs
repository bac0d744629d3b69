//! Shared by the task tests: the agent served in-process (or as a child process) on a temporary socket and
//! workspace, a minimal HTTP/1 client over its Unix socket, and waiting for events by long-polling `/v1/events`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use evershell_agent::task::LoopConfig;
use evershell_core::agent_wire::{
    AgentEvent, AgentTaskStatus, EventPage, ModelTarget, ModelWire, TaskDelivery, ToolLimits,
};
use evershell_core::ids::TaskId;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

pub fn fast_config() -> LoopConfig {
    let mut c = LoopConfig::default();
    c.model.retry_base = Duration::from_millis(5);
    c.model.retry_max = Duration::from_millis(50);
    c.model.response_timeout = Duration::from_millis(700);
    c.model.idle_timeout = Duration::from_millis(700);
    c
}

pub struct Agent {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub after: u64,
}

impl Agent {
    pub async fn start() -> Self {
        Self::start_with(fast_config()).await
    }

    pub async fn start_with(cfg: LoopConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("workspace");
        std::fs::create_dir(&root).unwrap();
        let mut a = Agent { socket: dir.path().join("agent.sock"), root, dir, stop: None, task: None, after: 0 };
        a.serve(cfg);
        a
    }

    /// (Re)start serving in-process over the same workspace.
    pub fn serve(&mut self, cfg: LoopConfig) {
        let listener = evershell_agent::bind(&self.socket).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.task = Some(tokio::spawn(evershell_agent::serve_with(listener, self.root.clone(), None, cfg, async {
            let _ = rx.await;
        })));
        self.stop = Some(tx);
        self.after = 0;
    }

    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        request(&self.socket, method, path, body).await
    }

    pub async fn deliver(&self, d: &TaskDelivery) -> (u16, Value) {
        self.request("POST", "/v1/tasks", Some(serde_json::to_value(d).unwrap())).await
    }

    pub async fn status(&self, id: &TaskId) -> AgentTaskStatus {
        let (code, v) = self.request("GET", &format!("/v1/tasks/{id}"), None).await;
        assert_eq!(code, 200, "{v}");
        serde_json::from_value(v).unwrap()
    }

    /// Long-poll the events until one of `types` arrives; returns it (events before it are skipped).
    pub async fn wait_event(&mut self, types: &[&str]) -> AgentEvent {
        loop {
            let (code, v) = self.request("GET", &format!("/v1/events?after={}&wait_ms=30000", self.after), None).await;
            assert_eq!(code, 200, "{v}");
            let page: EventPage = serde_json::from_value(v).unwrap();
            for e in page.events {
                self.after = e.seq;
                if types.contains(&e.event_type.as_str()) {
                    return e;
                }
            }
            self.after = self.after.max(page.next_after);
        }
    }

    /// Every event so far (from seq 1).
    pub async fn all_events(&self) -> Vec<AgentEvent> {
        let (_, v) = self.request("GET", "/v1/events?after=0", None).await;
        serde_json::from_value::<EventPage>(v).unwrap().events
    }

    /// Wait for the task's end event and answer its final status.
    pub async fn wait_end(&mut self, id: &TaskId) -> AgentTaskStatus {
        loop {
            let e = self.wait_event(&["task_completed", "task_failed", "task_cancelled"]).await;
            if e.task_id.as_ref() == Some(id) {
                return self.status(id).await;
            }
        }
    }

    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

pub fn delivery(model: &str, wire: ModelWire, description: &str) -> TaskDelivery {
    TaskDelivery {
        task_id: TaskId::new(),
        description: description.into(),
        uploads: vec![],
        model: ModelTarget { wire, base_url: model.into(), model: "test-model".into() },
        system_prompt: "You are a test agent.".into(),
        thinking_effort: None,
        max_continuations: 20,
        max_context_tokens: None,
        timeout_seconds: None,
        reset_session: false,
        limits: ToolLimits::default(),
        cancel_grace_ms: 10_000,
    }
}

pub async fn request(socket: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "agent")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

pub async fn wait_for_socket(socket: &Path, child: &mut std::process::Child) {
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the agent exited: {status}");
        }
        // The child binds the socket as its first act; there is no event to wait on across processes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Peak resident memory of this process (kB).
pub fn vm_hwm_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}
