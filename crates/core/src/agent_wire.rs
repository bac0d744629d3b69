//! The task wire between the control plane and the in-pod agent (over the pod's Unix socket): what a delivery
//! carries, what the agent reports about a task, and the events it emits. Both sides use these types; the agent
//! treats the control plane as trusted, the control plane treats every answer from the agent as hostile (bounded).
//!
//! Routes on the agent socket:
//! - `POST /v1/tasks` with a [`TaskDelivery`] → 202 [`AgentTaskStatus`]. Delivering the task id the agent already
//!   holds answers its current status (idempotent re-delivery); another task while one has not ended → 409
//!   `{"error":{"code":"agent_busy"}}`.
//! - `GET /v1/tasks/{task_id}` → 200 [`AgentTaskStatus`]; 404 when this agent process never saw the task (it
//!   restarted): the control plane then ends the task with reason `agent_restarted`.
//! - `POST /v1/tasks/{task_id}/cancel` → 202 [`AgentTaskStatus`] (cooperative: the current model call finishes, a
//!   running tool command is ended after `cancel_grace_ms`, its result recorded as interrupted).
//! - `GET /v1/events?after=<seq>&wait_ms=<ms>` → 200 [`EventPage`]: events with `seq > after`, long-polled up to
//!   `wait_ms` (at most [`MAX_EVENT_WAIT_MS`]) when there are none yet.
//! - `GET /v1/session` → 200 the session view (opaque JSON: task history, iteration counters, context usage).

use serde::{Deserialize, Serialize};

use crate::ids::TaskId;
use crate::time::Timestamp;

/// Longest long-poll the agent honours on `GET /v1/events`.
pub const MAX_EVENT_WAIT_MS: u64 = 30_000;
/// Most events one `GET /v1/events` page carries.
pub const MAX_EVENTS_PER_PAGE: usize = 500;
/// Where the agent keeps its append-only session log, relative to `/workspace` (so it is in every snapshot).
pub const SESSION_DIR: &str = ".evershell/session";

/// The wire format of the model endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelWire {
    /// Anthropic Messages (`POST {base_url}/v1/messages`, streamed).
    AnthropicMessages,
    /// OpenAI Chat Completions (`POST {base_url}/v1/chat/completions`, streamed); also vLLM, llama.cpp, Ollama.
    OpenaiChat,
}

/// Where and how the agent calls its model. The agent holds no key: the egress proxy injects the provider's
/// credential for requests to the provider's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelTarget {
    pub wire: ModelWire,
    /// e.g. `https://api.anthropic.com` (no trailing slash), or a provider's `config.base_url`.
    pub base_url: String,
    pub model: String,
}

/// `thinking_effort` of a role or task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingEffort {
    High,
    Medium,
    Low,
    Off,
}

/// Bounds of the bash tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolLimits {
    /// Per-call timeout when the model names none (seconds; default 120).
    pub bash_default_timeout_s: u64,
    /// Largest per-call timeout the model may ask for (seconds; default 600).
    pub bash_max_timeout_s: u64,
    /// Bytes of a command's output shown to the model (head and tail kept).
    pub output_to_model_bytes: u64,
    /// Bytes of a command's output kept in its activity event.
    pub output_kept_bytes: u64,
}

impl Default for ToolLimits {
    fn default() -> Self {
        ToolLimits {
            bash_default_timeout_s: 120,
            bash_max_timeout_s: 600,
            output_to_model_bytes: 30_000,
            output_kept_bytes: 1 << 20,
        }
    }
}

/// One task handed to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDelivery {
    pub task_id: TaskId,
    pub description: String,
    /// File names already placed under `/data/uploads/<task_id>/`.
    #[serde(default)]
    pub uploads: Vec<String>,
    pub model: ModelTarget,
    /// From the role's environment and description.
    pub system_prompt: String,
    pub thinking_effort: Option<ThinkingEffort>,
    /// Model turns allowed after the first before the task ends with reason `max_continuations`.
    pub max_continuations: u32,
    pub max_context_tokens: Option<u64>,
    /// Wall-clock limit of the task (reason `task_timeout`).
    pub timeout_seconds: Option<u64>,
    /// Start a fresh session instead of continuing the workspace's.
    #[serde(default)]
    pub reset_session: bool,
    #[serde(default)]
    pub limits: ToolLimits,
    /// Grace a running tool command gets after a cancel before its process group is killed (default 10 000).
    pub cancel_grace_ms: u64,
}

/// Where a task stands inside the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentTaskState {
    Running,
    Compacting,
    Completed,
    Failed,
    Cancelled,
}

impl AgentTaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, AgentTaskState::Completed | AgentTaskState::Failed | AgentTaskState::Cancelled)
    }
}

/// The agent's view of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTaskStatus {
    pub task_id: TaskId,
    pub state: AgentTaskState,
    /// Set on every non-completed end: `cancelled`, `max_continuations`, `task_timeout`, `model_error`,
    /// `context_overflow`, `compaction_limit`, `internal_error`, …
    pub reason: Option<String>,
    /// The model's final answer text on completion (bounded).
    pub result: Option<String>,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub iterations: u32,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

/// One event the agent emits; the control plane stores it as an `activity` audit row with actor `agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// Strictly increasing within one agent process (starts at 1).
    pub seq: u64,
    pub task_id: Option<TaskId>,
    /// `session_started`, `session_resumed`, `task_started`, `iteration_completed`, `tool_call_completed`,
    /// `compaction_started`, `compaction_completed`, `task_completed`, …
    pub event_type: String,
    pub at: Timestamp,
    pub data: serde_json::Value,
}

/// A page of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    /// Differs each time the agent process starts: a change means earlier events and in-memory tasks are gone.
    pub agent_instance: String,
    pub events: Vec<AgentEvent>,
    /// Pass as `after` next time.
    pub next_after: u64,
    /// Events older than the agent's buffer that were dropped before anyone read them.
    #[serde(default)]
    pub dropped: u64,
}
