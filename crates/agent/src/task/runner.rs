//! One task's loop: open (or resume, or reset) the session, add the task's message, then model call → tool calls →
//! repeat until the model answers without a tool call, compacting the context when it nears the limit, and ending
//! on cancel, the deadline, `max_continuations`, a model failure or the compaction limit. Every tool call gets a
//! result in the log before the next model call, whatever happens.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evershell_core::agent_wire::{AgentTaskState, AgentTaskStatus, ModelWire, TaskDelivery};
use evershell_core::time::Timestamp;
use serde_json::{Value, json};

use super::Tasks;
use super::bash::{self, BashCall};
use super::compaction;
use super::model::{self, Block, Message, ModelError, ModelTurn, Role, ToolSpec, TurnRequest};
use super::session::{Record, Session};
use super::stop::{self, Stop, StopKind, StopRx};

/// Tool calls run per model turn; further ones get an error result.
const MAX_CALLS_PER_TURN: usize = 64;
/// Bytes of the final answer kept in the task's status.
const MAX_RESULT_BYTES: usize = 64 * 1024;

pub struct End {
    pub state: AgentTaskState,
    pub reason: Option<String>,
    /// The answer on completion; the cause on failure.
    pub result: Option<String>,
}

impl End {
    fn failed(reason: &str, cause: impl Into<String>) -> Self {
        End { state: AgentTaskState::Failed, reason: Some(reason.to_string()), result: Some(cause.into()) }
    }
    fn stopped(s: Stop) -> Self {
        match s.kind {
            StopKind::Cancelled => {
                End { state: AgentTaskState::Cancelled, reason: Some("cancelled".into()), result: None }
            }
            StopKind::Timeout => End::failed("task_timeout", "the task ran out of time"),
        }
    }
}

fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

pub struct Runner {
    pub tasks: Arc<Tasks>,
    pub d: TaskDelivery,
    pub status: Arc<Mutex<AgentTaskStatus>>,
    pub stop: StopRx,
    pub cache: WireCache,
}

/// The wire JSON of the context's final messages (all but the last), kept between turns: a turn serialises only
/// the messages added since, so a long session costs the same per turn as a short one.
#[derive(Default)]
pub struct WireCache {
    key: Option<(ModelWire, String, u64)>,
    len: usize,
    joined: String,
}

impl WireCache {
    /// The comma-joined wire messages of `s.context`.
    fn messages_json(&mut self, wire: ModelWire, s: &Session) -> String {
        let key = (wire, s.session_id.clone(), s.generation);
        let n = s.context.len();
        if self.key.as_ref() != Some(&key) || self.len > n.saturating_sub(1) {
            *self = WireCache { key: Some(key), len: 0, joined: String::new() };
        }
        for m in &s.context[self.len..n.saturating_sub(1)] {
            model::join_into(&mut self.joined, &model::fragment(wire, m));
        }
        self.len = n.saturating_sub(1);
        let mut out = self.joined.clone();
        if let Some(last) = s.context.last() {
            model::join_into(&mut out, &model::fragment(wire, last));
        }
        out
    }
}

impl Runner {
    fn emit(&self, event_type: &str, data: Value) {
        self.tasks.events.emit(Some(&self.d.task_id), event_type, data);
    }

    fn with_session<T>(&self, f: impl FnOnce(&mut Session) -> std::io::Result<T>) -> Result<T, End> {
        let mut g = self.tasks.session.lock().unwrap();
        let s = g.as_mut().ok_or_else(|| End::failed("internal_error", "the session is not open"))?;
        f(s).map_err(|e| End::failed("internal_error", format!("writing the session log failed: {e}")))
    }

    fn set_state(&self, state: AgentTaskState) {
        self.status.lock().unwrap().state = state;
    }

    pub async fn run(mut self) -> End {
        let end = match self.drive().await {
            Ok(end) | Err(end) => end,
        };
        let iterations = self.status.lock().unwrap().iterations;
        let state = serde_json::to_value(end.state).ok().and_then(|v| v.as_str().map(str::to_string));
        let flush = {
            let mut g = self.tasks.session.lock().unwrap();
            g.as_mut().map(|s| {
                if let Err(e) = s.append(Record::TaskEnded {
                    task_id: self.d.task_id,
                    state: state.clone().unwrap_or_default(),
                    reason: end.reason.clone(),
                    iterations,
                    at: Timestamp::now(),
                }) {
                    tracing::error!(error = %e, "writing the task's end to the session failed");
                }
                s.flush()
            })
        };
        if let Some(f) = flush {
            f.await;
        }
        let _ = &mut self.stop;
        end
    }

    async fn drive(&mut self) -> Result<End, End> {
        let d = self.d.clone();
        // The session: opened once per agent process, reopened fresh on `reset_session`.
        let report = {
            let mut g = self.tasks.session.lock().unwrap();
            if g.is_none() || d.reset_session {
                *g = None;
                let (s, report) = Session::open(&self.tasks.root, d.reset_session)
                    .map_err(|e| End::failed("internal_error", format!("opening the session failed: {e}")))?;
                let id = s.session_id.clone();
                *g = Some(s);
                Some((id, report))
            } else {
                None
            }
        };
        if let Some((id, r)) = report {
            let kind = if r.resumed { "session_resumed" } else { "session_started" };
            self.emit(kind, json!({ "session_id": id, "reset": d.reset_session, "load": r }));
        }
        self.with_session(|s| {
            s.repair()?;
            s.append(Record::TaskStarted { task_id: d.task_id, at: Timestamp::now() })?;
            let mut text = d.description.clone();
            if !d.uploads.is_empty() {
                text.push_str(&format!(
                    "\n\nFiles uploaded for this task are in /data/uploads/{}/: {}",
                    d.task_id,
                    d.uploads.join(", ")
                ));
            }
            s.push_message(Message::user_text(text))
        })?;
        self.emit(
            "task_started",
            json!({ "model": d.model.model, "wire": d.model.wire, "max_continuations": d.max_continuations,
                    "max_context_tokens": d.max_context_tokens, "timeout_seconds": d.timeout_seconds }),
        );
        let limits = &d.limits;
        let max_timeout = limits.bash_max_timeout_s.max(1);
        let tools = [model::bash_tool(
            limits.bash_default_timeout_s.min(max_timeout),
            max_timeout,
            limits.output_to_model_bytes,
        )];
        let mut model_calls: u32 = 0;
        let mut compactions: u32 = 0;
        // The context's size as the model last reported it (plus the results added since); an estimate otherwise.
        // A compaction is always followed by a model call before the next check: at most one per overflow.
        let mut measured: Option<u64> = None;
        loop {
            if let Some(s) = stop::current(&self.stop) {
                return Ok(End::stopped(s));
            }
            if let Some(max) = d.max_context_tokens {
                let tokens = measured.unwrap_or_else(|| self.context_estimate());
                if tokens >= compaction::threshold(max) {
                    if compactions >= self.tasks.cfg.max_compactions {
                        return Ok(End::failed(
                            "compaction_limit",
                            format!("the context needed compacting more than {} times", self.tasks.cfg.max_compactions),
                        ));
                    }
                    compactions += 1;
                    if let Some(end) = self.compact(&d, &tools, tokens, max, compactions).await? {
                        return Ok(end);
                    }
                    let after = self.context_estimate();
                    if after >= compaction::threshold(max) {
                        return Ok(End::failed(
                            "context_overflow",
                            format!("the context ({after} tokens) is over the limit even after compaction"),
                        ));
                    }
                }
            }
            if model_calls > d.max_continuations {
                return Ok(End::failed(
                    "max_continuations",
                    format!("the model was still calling tools after {} continuations", d.max_continuations),
                ));
            }
            let iter_started = Instant::now();
            let wire = d.model.wire;
            let messages = {
                let g = self.tasks.session.lock().unwrap();
                let s = g.as_ref().ok_or_else(|| End::failed("internal_error", "the session is not open"))?;
                self.cache.messages_json(wire, s)
            };
            let t_model = Instant::now();
            let turn = match self.model_turn(&d, &[], Some(&messages), &tools, d.thinking_effort).await {
                Ok(t) => t,
                Err(end) => return Ok(end),
            };
            // The model's share: the call's wall time less what the client itself spent building and parsing.
            let model_ms = (t_model.elapsed().saturating_sub(turn.client_time)).as_secs_f64() * 1000.0;
            model_calls += 1;
            let usage = turn.usage.unwrap_or_default();
            {
                let mut st = self.status.lock().unwrap();
                st.iterations = model_calls;
                st.tokens_in += usage.input_tokens;
                st.tokens_out += usage.output_tokens;
            }
            let assistant = Message { role: Role::Assistant, content: turn.content.clone() };
            let calls: Vec<(String, String, Value, Option<String>)> = assistant
                .tool_uses()
                .map(|(id, n, i, raw)| (id.to_string(), n.to_string(), i.clone(), raw.map(str::to_string)))
                .collect();
            let answer = assistant.text();
            self.with_session(|s| s.push_message(assistant))?;
            let mut tool_ms = 0.0;
            let mut tool_summaries = Vec::new();
            let mut results_tokens = 0;
            for (n, (id, name, input, raw)) in calls.iter().enumerate() {
                let t_tool = Instant::now();
                let (content, is_error, summary) = if n < MAX_CALLS_PER_TURN {
                    self.tool_call(&d, id, name, input, raw.as_deref()).await
                } else {
                    let why = format!("[not run: at most {MAX_CALLS_PER_TURN} tool calls are run per turn]");
                    (why.clone(), true, json!({ "tool": name, "error": why }))
                };
                tool_ms += t_tool.elapsed().as_secs_f64() * 1000.0;
                results_tokens += (content.len() as u64).div_ceil(4);
                self.with_session(|s| s.push_message(Message::tool_result(id, content, is_error)))?;
                tool_summaries.push(summary);
            }
            measured =
                turn.usage.filter(|u| u.input_tokens > 0).map(|u| u.input_tokens + u.output_tokens + results_tokens);
            let overhead_ms = (iter_started.elapsed().as_secs_f64() * 1000.0 - model_ms - tool_ms).max(0.0);
            self.emit(
                "iteration_completed",
                json!({ "iteration": model_calls, "model_ms": round(model_ms), "tool_ms": round(tool_ms),
                        "overhead_ms": (overhead_ms * 1000.0).round() / 1000.0,
                        "tokens_in": usage.input_tokens, "tokens_out": usage.output_tokens,
                        "usage_reported": turn.usage.is_some(), "stop_reason": turn.stop_reason,
                        "tools": tool_summaries }),
            );
            if calls.is_empty() {
                return Ok(End {
                    state: AgentTaskState::Completed,
                    reason: None,
                    result: Some(bounded(answer, MAX_RESULT_BYTES)),
                });
            }
        }
    }

    fn context_estimate(&self) -> u64 {
        self.tasks.session.lock().unwrap().as_ref().map(|s| model::estimate_tokens(&s.context)).unwrap_or(0)
    }

    /// One model call; a deadline aborts it, a cancel lets it finish.
    async fn model_turn(
        &mut self,
        d: &TaskDelivery,
        messages: &[Message],
        prebuilt: Option<&str>,
        tools: &[ToolSpec],
        thinking: Option<evershell_core::agent_wire::ThinkingEffort>,
    ) -> Result<ModelTurn, End> {
        let req = TurnRequest { model: &d.model.model, system: &d.system_prompt, messages, tools, thinking, prebuilt };
        let events = self.tasks.events.clone();
        let task_id = d.task_id;
        let mut stop_for_call = self.stop.clone();
        let mut deadline = self.stop.clone();
        let call = self.tasks.client.turn(&d.model, &req, &mut stop_for_call, |n| {
            events.emit(
                Some(&task_id),
                "model_retry",
                json!({ "attempt": n.attempt, "error": n.error, "delay_ms": n.delay.as_millis() as u64 }),
            );
        });
        tokio::select! {
            r = call => match r {
                Ok(t) => Ok(t),
                Err(ModelError::Stopped) => Err(End::stopped(stop::current(&self.stop).unwrap_or(Stop { kind: StopKind::Cancelled, grace: Duration::ZERO }))),
                Err(ModelError::Failed(cause)) => Err(End::failed("model_error", cause)),
            },
            _ = stop::deadline_passed(&mut deadline) => Err(End::failed("task_timeout", "the task ran out of time during a model call")),
        }
    }

    /// Run one tool call (or refuse it); (result for the model, is_error, summary for the iteration event).
    async fn tool_call(
        &mut self,
        d: &TaskDelivery,
        id: &str,
        name: &str,
        input: &Value,
        raw: Option<&str>,
    ) -> (String, bool, Value) {
        let refuse = |this: &Self, why: String| {
            this.emit("tool_call_completed", json!({ "tool_use_id": id, "tool": name, "error": why }));
            (why.clone(), true, json!({ "tool": name, "error": why }))
        };
        if let Some(s) = stop::current(&self.stop) {
            return refuse(
                self,
                format!(
                    "[not run: the task was {}]",
                    if s.kind == StopKind::Cancelled { "cancelled" } else { "out of time" }
                ),
            );
        }
        if name != model::BASH {
            return refuse(
                self,
                format!("error: unknown tool `{}`; the only tool is `bash`", bounded(name.to_string(), 200)),
            );
        }
        if let Some(raw) = raw {
            return refuse(
                self,
                format!(
                    "error: the arguments are not a JSON object ({}); expected {{\"command\": string, \"timeout_seconds\"?: integer}}",
                    bounded(raw.to_string(), 200)
                ),
            );
        }
        let Some(command) = input.get("command").and_then(Value::as_str) else {
            return refuse(self, "error: `command` (a string) is required".to_string());
        };
        let max = d.limits.bash_max_timeout_s.max(1);
        let default = d.limits.bash_default_timeout_s.clamp(1, max);
        let asked = input.get("timeout_seconds").and_then(|v| v.as_f64().map(|f| f.ceil() as u64));
        let timeout_s = asked.unwrap_or(default).clamp(1, max);
        let mut note = String::new();
        if asked.is_some_and(|a| a > max) {
            note = format!("[timeout_seconds capped at {max}]\n");
        }
        let call = BashCall {
            root: &self.tasks.root,
            command,
            timeout: Duration::from_secs(timeout_s),
            to_model_bytes: d.limits.output_to_model_bytes.max(256) as usize,
            kept_bytes: d.limits.output_kept_bytes as usize,
        };
        self.emit(
            "tool_call_started",
            json!({ "tool_use_id": id, "tool": "bash", "timeout_seconds": timeout_s,
                                               "command": bounded(command.to_string(), 16 * 1024) }),
        );
        let mut stop_rx = self.stop.clone();
        match bash::run(call, &mut stop_rx).await {
            Err(e) => refuse(self, format!("error: the shell could not be started: {e}")),
            Ok(o) => {
                self.emit(
                    "tool_call_completed",
                    json!({ "tool_use_id": id, "tool": "bash", "command": bounded(command.to_string(), 16 * 1024),
                            "timeout_seconds": timeout_s, "exit_code": o.exit_code, "signal": o.signal,
                            "timed_out": o.timed_out, "interrupted": o.interrupted, "duration_ms": o.duration_ms,
                            "output_bytes": o.output_bytes, "output": o.kept, "output_truncated": o.kept_truncated }),
                );
                let summary = json!({ "tool": "bash", "exit_code": o.exit_code, "duration_ms": o.duration_ms,
                                      "timed_out": o.timed_out, "interrupted": o.interrupted });
                (format!("{note}{}", o.to_model), o.is_error(), summary)
            }
        }
    }

    /// Summarise the older part of the context; Some(end) when the task must end instead.
    async fn compact(
        &mut self,
        d: &TaskDelivery,
        tools: &[ToolSpec],
        tokens: u64,
        max: u64,
        n: u32,
    ) -> Result<Option<End>, End> {
        self.set_state(AgentTaskState::Compacting);
        self.emit(
            "compaction_started",
            json!({ "context_tokens": tokens, "max_context_tokens": max, "compaction": n }),
        );
        let context = self.with_session(|s| Ok(s.context.clone()))?;
        let keep = (max as f64 * compaction::KEEP_RATIO) as u64;
        let Some(split) = compaction::split_point(&context, keep) else {
            self.set_state(AgentTaskState::Running);
            return Ok(Some(End::failed(
                "context_overflow",
                "the context is over the limit and nothing can be summarised",
            )));
        };
        let request = compaction::summary_request(&context, split);
        let turn = match self.model_turn(d, &request, None, tools, None).await {
            Ok(t) => t,
            Err(end) => return Ok(Some(end)),
        };
        if let Some(u) = turn.usage {
            let mut st = self.status.lock().unwrap();
            st.tokens_in += u.input_tokens;
            st.tokens_out += u.output_tokens;
        }
        let summary: String = turn
            .content
            .iter()
            .filter_map(|b| match b {
                Block::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let summary = if summary.trim().is_empty() { "(the model gave no summary)".to_string() } else { summary };
        let instructions = format!("The current task: {}", d.description);
        let new = compaction::compacted(&context, split, &instructions, &summary);
        let after = model::estimate_tokens(&new);
        self.with_session(|s| s.append(Record::Context { messages: new, compaction: true, at: Timestamp::now() }))?;
        self.emit(
            "compaction_completed",
            json!({ "compaction": n, "context_tokens_before": tokens, "context_tokens_after_estimate": after,
                    "summarised_messages": split, "kept_messages": context.len() - split }),
        );
        self.set_state(AgentTaskState::Running);
        Ok(None)
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::model::{Block, anthropic, openai};

    /// The kept wire JSON, extended turn by turn, is exactly what serialising the whole context gives.
    #[test]
    fn the_wire_cache_matches_a_full_serialisation() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, _) = Session::open(tmp.path(), false).unwrap();
        let mut caches = [WireCache::default(), WireCache::default()];
        let call = |id: &str| Message {
            role: Role::Assistant,
            content: vec![
                Block::Text { text: "thinking aloud".into() },
                Block::ToolUse {
                    id: id.into(),
                    name: "bash".into(),
                    input: json!({"command": "ls"}),
                    invalid_arguments: None,
                },
            ],
        };
        let steps = vec![
            Message::user_text("task one"),
            call("a"),
            Message::tool_result("a", "out a", false),
            Message::user_text(""),
            call("b"),
            Message::tool_result("b", "out b", true),
            Message { role: Role::Assistant, content: vec![Block::Text { text: "done".into() }] },
            Message::user_text("task two"),
        ];
        for (i, m) in steps.into_iter().enumerate() {
            s.push_message(m).unwrap();
            if i == 5 {
                let ctx = s.context.clone();
                s.append(Record::Context { messages: ctx, compaction: true, at: Timestamp::now() }).unwrap();
            }
            for (wire, cache) in
                [ModelWire::AnthropicMessages, ModelWire::OpenaiChat].into_iter().zip(caches.iter_mut())
            {
                let cached = cache.messages_json(wire, &s);
                let base = |prebuilt| TurnRequest {
                    model: "m",
                    system: "sys",
                    messages: &s.context,
                    tools: &[],
                    thinking: None,
                    prebuilt,
                };
                let (full, fast) = match wire {
                    ModelWire::AnthropicMessages => {
                        (anthropic::body(&base(None)), anthropic::body(&base(Some(&cached))))
                    }
                    ModelWire::OpenaiChat => (openai::body(&base(None)), openai::body(&base(Some(&cached)))),
                };
                assert_eq!(full, fast, "step {i}, {wire:?}");
                let v: Value = serde_json::from_str(&full).unwrap();
                assert!(v["messages"].is_array());
            }
        }
    }
}
