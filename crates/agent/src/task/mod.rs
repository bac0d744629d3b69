//! Tasks inside the pod: the routes of `evershell_core::agent_wire` (deliver, status, cancel, events, session),
//! one task at a time, each run by [`runner::Runner`] in its own tokio task while the agent keeps serving.

pub mod bash;
pub mod compaction;
pub mod events;
pub mod model;
pub mod runner;
pub mod session;
pub mod stop;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evershell_core::agent_wire::{AgentTaskState, AgentTaskStatus, TaskDelivery};
use evershell_core::ids::TaskId;
use evershell_core::time::Timestamp;
use serde_json::json;
use tracing::Instrument;

pub use model::client::ModelConfig;

use self::events::EventBuffer;
use self::model::ModelClient;
use self::session::Session;
use self::stop::{Stop, StopKind, StopTx};

/// Task statuses remembered by one agent process.
const MAX_REMEMBERED: usize = 1024;

/// Tuning of the loop (production defaults; tests shorten them).
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub model: ModelConfig,
    pub max_compactions: u32,
    pub max_events: usize,
    pub max_event_bytes: usize,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            model: ModelConfig::default(),
            max_compactions: compaction::MAX_PER_TASK,
            max_events: events::MAX_EVENTS,
            max_event_bytes: events::MAX_BYTES,
        }
    }
}

/// The model call's first retry wait, in ms (the server's `agent.model_retry_base_ms` puts it into pods).
pub const ENV_MODEL_RETRY_BASE_MS: &str = "EVERSHELL_AGENT_MODEL_RETRY_BASE_MS";
/// The wait for a model answer's headers, in ms (`agent.model_response_timeout_ms`).
pub const ENV_MODEL_RESPONSE_TIMEOUT_MS: &str = "EVERSHELL_AGENT_MODEL_RESPONSE_TIMEOUT_MS";
/// The longest silence inside a streamed answer, in ms (`agent.model_idle_timeout_ms`).
pub const ENV_MODEL_IDLE_TIMEOUT_MS: &str = "EVERSHELL_AGENT_MODEL_IDLE_TIMEOUT_MS";

impl LoopConfig {
    /// Defaults, with [`ENV_MODEL_RETRY_BASE_MS`], [`ENV_MODEL_IDLE_TIMEOUT_MS`] and
    /// [`ENV_MODEL_RESPONSE_TIMEOUT_MS`] overriding the model call's tuning.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let mut c = LoopConfig::default();
        let ms = |k: &str| var(k).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
        if let Some(d) = ms(ENV_MODEL_RETRY_BASE_MS) {
            c.model.retry_base = d;
        }
        if let Some(d) = ms(ENV_MODEL_IDLE_TIMEOUT_MS) {
            c.model.idle_timeout = d;
        }
        if let Some(d) = ms(ENV_MODEL_RESPONSE_TIMEOUT_MS) {
            c.model.response_timeout = d;
        }
        c
    }
}

#[cfg(test)]
mod env_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_pods_allowed_agent_settings_are_the_ones_the_agent_reads() {
        let mut read = vec![ENV_MODEL_RETRY_BASE_MS, ENV_MODEL_RESPONSE_TIMEOUT_MS, ENV_MODEL_IDLE_TIMEOUT_MS];
        let mut allowed = evershell_runtime::local::AGENT_ENV_NAMES.to_vec();
        read.sort();
        allowed.sort();
        assert_eq!(read, allowed);
        let c = LoopConfig::from_vars(|k| match k {
            ENV_MODEL_RETRY_BASE_MS => Some("10".into()),
            ENV_MODEL_RESPONSE_TIMEOUT_MS => Some("2000".into()),
            ENV_MODEL_IDLE_TIMEOUT_MS => Some("3000".into()),
            _ => None,
        });
        assert_eq!(
            (c.model.retry_base, c.model.response_timeout, c.model.idle_timeout),
            (Duration::from_millis(10), Duration::from_secs(2), Duration::from_secs(3))
        );
        let d = LoopConfig::from_vars(|_| None);
        assert_eq!(d.model.retry_base, ModelConfig::default().retry_base);
    }
}

struct Current {
    task_id: TaskId,
    stop: StopTx,
    grace: Duration,
    cancel_requested: bool,
}

#[derive(Default)]
struct Inner {
    current: Option<Current>,
    statuses: HashMap<TaskId, Arc<Mutex<AgentTaskStatus>>>,
    order: VecDeque<TaskId>,
}

pub struct Tasks {
    pub root: PathBuf,
    pub events: Arc<EventBuffer>,
    pub cfg: LoopConfig,
    client: ModelClient,
    session: Arc<Mutex<Option<Session>>>,
    inner: Mutex<Inner>,
}

/// Why a delivery was refused.
#[derive(Debug)]
pub enum DeliverError {
    Busy(TaskId),
}

impl Tasks {
    pub fn new(root: PathBuf, cfg: LoopConfig) -> anyhow::Result<Arc<Self>> {
        let client = ModelClient::new(cfg.model.clone())?;
        Ok(Arc::new(Tasks {
            root,
            events: Arc::new(EventBuffer::new(cfg.max_events, cfg.max_event_bytes)),
            cfg,
            client,
            session: Arc::new(Mutex::new(None)),
            inner: Mutex::new(Inner::default()),
        }))
    }

    /// Start a task (202), or answer the status of the one already delivered under that id.
    pub fn deliver(self: &Arc<Self>, d: TaskDelivery) -> Result<AgentTaskStatus, DeliverError> {
        let mut g = self.inner.lock().unwrap();
        if let Some(st) = g.statuses.get(&d.task_id) {
            return Ok(st.lock().unwrap().clone());
        }
        if let Some(cur) = &g.current {
            let running = g.statuses.get(&cur.task_id).is_some_and(|s| !s.lock().unwrap().state.is_terminal());
            if running {
                return Err(DeliverError::Busy(cur.task_id));
            }
        }
        let status = AgentTaskStatus {
            task_id: d.task_id,
            state: AgentTaskState::Running,
            reason: None,
            result: None,
            started_at: Timestamp::now(),
            ended_at: None,
            iterations: 0,
            tokens_in: 0,
            tokens_out: 0,
        };
        let shared = Arc::new(Mutex::new(status.clone()));
        g.statuses.insert(d.task_id, shared.clone());
        g.order.push_back(d.task_id);
        while g.order.len() > MAX_REMEMBERED {
            if let Some(old) = g.order.pop_front() {
                g.statuses.remove(&old);
            }
        }
        let (stop_tx, stop_rx) = stop::channel();
        let (local_tx, local_rx) = stop::channel();
        g.current = Some(Current {
            task_id: d.task_id,
            stop: stop_tx,
            grace: Duration::from_millis(d.cancel_grace_ms),
            cancel_requested: false,
        });
        drop(g);
        // The runner sees one stop signal: a cancel forwarded from the route, or the task's deadline.
        let timeout = d.timeout_seconds.map(Duration::from_secs);
        tokio::spawn(forward_stops(stop_rx, local_tx, timeout));
        let span = tracing::info_span!("task", task_id = %d.task_id);
        let this = self.clone();
        tokio::spawn(
            async move {
                tracing::info!(model = %d.model.model, "task started");
                let task_id = d.task_id;
                let runner = runner::Runner {
                    tasks: this.clone(),
                    d,
                    status: shared.clone(),
                    stop: local_rx,
                    cache: Default::default(),
                };
                let end = runner.run().await;
                let snapshot = {
                    let mut st = shared.lock().unwrap();
                    st.state = end.state;
                    st.reason = end.reason.clone();
                    st.result = end.result.clone();
                    st.ended_at = Some(Timestamp::now());
                    st.clone()
                };
                let kind = match end.state {
                    AgentTaskState::Completed => "task_completed",
                    AgentTaskState::Cancelled => "task_cancelled",
                    _ => "task_failed",
                };
                let duration_ms = snapshot.ended_at.map(|e| e.millis() - snapshot.started_at.millis()).unwrap_or(0);
                this.events.emit(
                    Some(&task_id),
                    kind,
                    json!({ "state": snapshot.state, "reason": snapshot.reason, "result": snapshot.result,
                            "iterations": snapshot.iterations, "tokens_in": snapshot.tokens_in,
                            "tokens_out": snapshot.tokens_out, "duration_ms": duration_ms }),
                );
                tracing::info!(state = ?snapshot.state, reason = ?snapshot.reason, iterations = snapshot.iterations, "task ended");
                let mut g = this.inner.lock().unwrap();
                if g.current.as_ref().is_some_and(|c| c.task_id == task_id) {
                    g.current = None;
                }
            }
            .instrument(span),
        );
        Ok(status)
    }

    pub fn status(&self, id: &TaskId) -> Option<AgentTaskStatus> {
        self.inner.lock().unwrap().statuses.get(id).map(|s| s.lock().unwrap().clone())
    }

    /// Ask the task to stop (cooperatively); None when this process never saw it.
    pub fn cancel(&self, id: &TaskId) -> Option<AgentTaskStatus> {
        let mut g = self.inner.lock().unwrap();
        let status = g.statuses.get(id)?.lock().unwrap().clone();
        if let Some(cur) = g.current.as_mut().filter(|c| &c.task_id == id)
            && !status.state.is_terminal()
            && !cur.cancel_requested
        {
            cur.cancel_requested = true;
            cur.stop.send_replace(Some(Stop { kind: StopKind::Cancelled, grace: cur.grace }));
            self.events.emit(Some(id), "task_cancel_requested", json!({ "grace_ms": cur.grace.as_millis() as u64 }));
            tracing::info!(task_id = %id, "cancel requested");
        }
        Some(status)
    }

    /// The session view: the task history in the log, counters and the context's size.
    pub fn session_view(&self) -> std::io::Result<serde_json::Value> {
        let mut g = self.session.lock().unwrap();
        if g.is_none() {
            let (s, report) = Session::open(&self.root, false)?;
            if report.resumed {
                self.events.emit(None, "session_resumed", json!({ "session_id": s.session_id, "load": report }));
            }
            *g = Some(s);
        }
        let s = g.as_ref().expect("opened above");
        let tool_calls = s.context.iter().map(|m| m.tool_uses().count()).sum::<usize>();
        Ok(json!({
            "session_id": s.session_id,
            "created_at": s.created_at,
            "log": format!("{}/{}", evershell_core::agent_wire::SESSION_DIR, session::LOG_NAME),
            "records": s.records,
            "messages": s.context.len(),
            "tool_calls_in_context": tool_calls,
            "context_tokens_estimate": model::estimate_tokens(&s.context),
            "compactions": s.compactions,
            "tasks": s.tasks.iter().rev().take(100).collect::<Vec<_>>(),
            "task_count": s.tasks.len(),
        }))
    }
}

async fn forward_stops(mut from: stop::StopRx, to: StopTx, timeout: Option<Duration>) {
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut cancelled = false;
    loop {
        tokio::select! {
            _ = &mut deadline => {
                to.send_replace(Some(Stop { kind: StopKind::Timeout, grace: Duration::ZERO }));
                return;
            }
            s = stop::requested(&mut from), if !cancelled => {
                cancelled = true;
                to.send_replace(Some(s));
            }
            _ = to.closed() => return,
        }
    }
}
