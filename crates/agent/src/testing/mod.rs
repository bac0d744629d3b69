//! Test support (feature `testing`): a scripted model server — a real HTTP server on loopback speaking Anthropic
//! Messages and OpenAI Chat Completions, both streamed as SSE — answering each request with the next scripted
//! [`Reply`] (text, tool calls split across deltas, parallel calls, HTTP errors, a stream dropped mid-way, a hang,
//! malformed calls) and recording every request so tests can assert what the agent sent. Reusable by other crates'
//! integration tests (`evershell-agent = { features = ["testing"] }` as a dev-dependency).

mod encode;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// One tool call the model makes: `arguments` is sent verbatim (so it may be invalid JSON).
#[derive(Debug, Clone)]
pub struct ScriptedCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl ScriptedCall {
    /// A `bash` call running `command`.
    pub fn bash(id: &str, command: &str) -> Self {
        ScriptedCall {
            id: id.into(),
            name: "bash".into(),
            arguments: serde_json::json!({ "command": command }).to_string(),
        }
    }
    /// A `bash` call with a timeout.
    pub fn bash_with_timeout(id: &str, command: &str, timeout_seconds: u64) -> Self {
        ScriptedCall {
            id: id.into(),
            name: "bash".into(),
            arguments: serde_json::json!({ "command": command, "timeout_seconds": timeout_seconds }).to_string(),
        }
    }
    pub fn raw(id: &str, name: &str, arguments: &str) -> Self {
        ScriptedCall { id: id.into(), name: name.into(), arguments: arguments.into() }
    }
}

#[derive(Debug, Clone)]
pub enum ReplyKind {
    Text(String),
    Tools {
        text: Option<String>,
        calls: Vec<ScriptedCall>,
    },
    /// An HTTP error status with a body.
    Status(u16, String),
    /// The stream of `inner` cut after this many SSE events (the connection is aborted).
    Dropped {
        after_events: usize,
        inner: Box<ReplyKind>,
    },
    /// Never answer (not even headers).
    Hang,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: ReplyKind,
    /// `(input_tokens, output_tokens)` reported; None reports no usage.
    pub usage: Option<(u64, u64)>,
}

impl Reply {
    pub fn text(t: &str) -> Self {
        Reply { kind: ReplyKind::Text(t.into()), usage: Some((10, 5)) }
    }
    pub fn tools(calls: Vec<ScriptedCall>) -> Self {
        Reply { kind: ReplyKind::Tools { text: None, calls }, usage: Some((10, 5)) }
    }
    pub fn tools_with_text(text: &str, calls: Vec<ScriptedCall>) -> Self {
        Reply { kind: ReplyKind::Tools { text: Some(text.into()), calls }, usage: Some((10, 5)) }
    }
    pub fn status(code: u16, body: &str) -> Self {
        Reply { kind: ReplyKind::Status(code, body.into()), usage: None }
    }
    pub fn dropped(after_events: usize, inner: Reply) -> Self {
        Reply { kind: ReplyKind::Dropped { after_events, inner: Box::new(inner.kind) }, usage: inner.usage }
    }
    pub fn hang() -> Self {
        Reply { kind: ReplyKind::Hang, usage: None }
    }
    pub fn with_usage(mut self, input: u64, output: u64) -> Self {
        self.usage = Some((input, output));
        self
    }
    pub fn without_usage(mut self) -> Self {
        self.usage = None;
        self
    }
}

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When the server had read the whole request (this machine's wall clock).
    pub at: std::time::SystemTime,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every tool call in the request's history has a result (in either wire format); panics naming the one
    /// without.
    pub fn assert_every_tool_use_has_result(&self) {
        let (uses, results) = tool_ids(&self.body);
        for u in &uses {
            assert!(results.contains(u), "tool call {u} has no result in request {}", self.body);
        }
    }

    /// The tool results in the request, `(id, content, is_error)` (is_error false for OpenAI).
    pub fn tool_results(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for m in self.body["messages"].as_array().into_iter().flatten() {
            if m["role"] == "tool" {
                out.push((
                    m["tool_call_id"].as_str().unwrap_or("").into(),
                    m["content"].as_str().unwrap_or("").into(),
                    false,
                ));
            }
            for b in m["content"].as_array().into_iter().flatten() {
                if b["type"] == "tool_result" {
                    out.push((
                        b["tool_use_id"].as_str().unwrap_or("").into(),
                        b["content"].as_str().unwrap_or("").into(),
                        b["is_error"].as_bool().unwrap_or(false),
                    ));
                }
            }
        }
        out
    }

    /// All text of the request's messages, concatenated (for "did the agent send X" checks).
    pub fn all_text(&self) -> String {
        self.body["messages"].to_string()
    }
}

fn tool_ids(body: &Value) -> (Vec<String>, Vec<String>) {
    let mut uses = Vec::new();
    let mut results = Vec::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            uses.push(c["id"].as_str().unwrap_or("").to_string());
        }
        if m["role"] == "tool" {
            results.push(m["tool_call_id"].as_str().unwrap_or("").to_string());
        }
        for b in m["content"].as_array().into_iter().flatten() {
            match b["type"].as_str() {
                Some("tool_use") => uses.push(b["id"].as_str().unwrap_or("").to_string()),
                Some("tool_result") => results.push(b["tool_use_id"].as_str().unwrap_or("").to_string()),
                _ => {}
            }
        }
    }
    (uses, results)
}

struct Shared {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    recorded: Mutex<Vec<Recorded>>,
    count: tokio::sync::watch::Sender<usize>,
}

/// The scripted model server; stops when dropped.
pub struct ScriptedModel {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ScriptedModel {
    /// Serve on `127.0.0.1:0`. When the script runs out, every request gets the default reply (`Reply::text("done")`
    /// unless [`ScriptedModel::set_default`]).
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::text("done")),
            recorded: Mutex::new(Vec::new()),
            count: tokio::sync::watch::channel(0).0,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the scripted model");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        ScriptedModel { addr, shared, _stop: tx }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push(&self, r: Reply) -> &Self {
        self.shared.script.lock().unwrap().push_back(r);
        self
    }

    pub fn set_default(&self, r: Reply) {
        *self.shared.default.lock().unwrap() = r;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap().clone()
    }

    /// Wait until at least `n` requests have arrived.
    pub async fn wait_requests(&self, n: usize) {
        let mut rx = self.shared.count.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }
}

async fn handle(State(s): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let recorded = Recorded {
        at: std::time::SystemTime::now(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let anthropic = match recorded.path.as_str() {
        "/v1/messages" => true,
        "/v1/chat/completions" => false,
        _ => return (StatusCode::NOT_FOUND, "no such route").into_response(),
    };
    let reply = {
        let next = s.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| s.default.lock().unwrap().clone())
    };
    s.recorded.lock().unwrap().push(recorded);
    s.count.send_modify(|c| *c += 1);
    respond(anthropic, reply).await
}

async fn respond(anthropic: bool, reply: Reply) -> Response {
    let (events, cut) = match reply.kind {
        ReplyKind::Status(code, body) => {
            return (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body).into_response();
        }
        ReplyKind::Hang => std::future::pending().await,
        ReplyKind::Dropped { after_events, inner } => {
            (encode::events(anthropic, &inner, reply.usage), Some(after_events))
        }
        kind => (encode::events(anthropic, &kind, reply.usage), None),
    };
    use futures::StreamExt;
    let n = cut.unwrap_or(usize::MAX);
    let head = futures::stream::iter(events.into_iter().take(n).map(|e| Ok::<_, std::io::Error>(Bytes::from(e))));
    let body = match cut {
        None => head.boxed(),
        // Let the events sent so far reach the client, then abort the connection mid-body.
        Some(_) => head
            .chain(futures::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Err(std::io::Error::other("scripted drop"))
            }))
            .boxed(),
    };
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(body)).unwrap()
}
