//! OpenAI Chat Completions (`POST {base_url}/v1/chat/completions`, `stream: true`), as hosted and as served by
//! vLLM, llama.cpp and Ollama: the request body, and the assembly of a streamed answer whose parallel tool calls
//! arrive as deltas keyed by `index` (id and name in the first, arguments in fragments).

use evershell_core::agent_wire::ThinkingEffort;
use serde_json::{Value, json};

use super::stream::SseEvent;
use super::{Block, Message, ModelTurn, Role, TurnRequest, Usage};
use crate::task::model::client::StreamError;

pub const PATH: &str = "/v1/chat/completions";

pub fn fragment(m: &Message) -> String {
    let mut v = Vec::new();
    push_message(&mut v, m);
    let mut out = String::new();
    for x in v {
        super::join_into(&mut out, &x.to_string());
    }
    out
}

pub fn body(req: &TurnRequest<'_>) -> String {
    let mut messages = String::new();
    if !req.system.is_empty() {
        messages = json!({ "role": "system", "content": req.system }).to_string();
    }
    super::join_into(&mut messages, &super::messages_json(req, fragment));
    let mut b = json!({
        "model": req.model,
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    if !req.tools.is_empty() {
        b["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({ "type": "function",
                        "function": { "name": t.name, "description": t.description, "parameters": t.schema } })
            })
            .collect();
    }
    let effort = match req.thinking {
        Some(ThinkingEffort::High) => Some("high"),
        Some(ThinkingEffort::Medium) => Some("medium"),
        Some(ThinkingEffort::Low) => Some("low"),
        Some(ThinkingEffort::Off) | None => None,
    };
    if let Some(e) = effort {
        b["reasoning_effort"] = json!(e);
    }
    super::splice(&b, &messages)
}

fn push_message(out: &mut Vec<Value>, m: &Message) {
    match m.role {
        Role::User => {
            // Tool results first (they answer the assistant turn just before), then the user's text.
            let mut text = String::new();
            for b in &m.content {
                match b {
                    Block::ToolResult { tool_use_id, content, .. } => {
                        out.push(json!({ "role": "tool", "tool_call_id": tool_use_id, "content": content }))
                    }
                    Block::Text { text: t } => {
                        if !text.is_empty() {
                            text.push_str("\n\n");
                        }
                        text.push_str(t);
                    }
                    _ => {}
                }
            }
            if !text.is_empty() {
                out.push(json!({ "role": "user", "content": text }));
            }
        }
        Role::Assistant => {
            let text = m.text();
            let calls: Vec<Value> = m
                .tool_uses()
                .map(|(id, name, input, raw)| {
                    let args = raw.map(str::to_string).unwrap_or_else(|| input.to_string());
                    json!({ "id": id, "type": "function", "function": { "name": name, "arguments": args } })
                })
                .collect();
            let mut msg =
                json!({ "role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) } });
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            out.push(msg);
        }
    }
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    args: String,
}

/// Assembles one streamed answer.
#[derive(Default)]
pub struct Assembler {
    text: String,
    reasoning: String,
    calls: Vec<(u64, PartialCall)>,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    done: bool,
}

impl Assembler {
    /// Feed one event; `Ok(true)` once `[DONE]` arrived.
    pub fn feed(&mut self, ev: &SseEvent) -> Result<bool, StreamError> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(self.done);
        }
        let v: Value =
            serde_json::from_str(data).map_err(|e| StreamError::Protocol(format!("an event is not JSON ({e})")))?;
        if let Some(err) = v.get("error") {
            let msg = err["message"].as_str().map(str::to_string).unwrap_or_else(|| err.to_string());
            return Err(StreamError::Remote { transient: true, message: msg });
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(Usage {
                input_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                output_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
            });
        }
        for choice in v["choices"].as_array().into_iter().flatten() {
            if choice["index"].as_u64().unwrap_or(0) != 0 {
                continue;
            }
            let d = &choice["delta"];
            if let Some(t) = d["content"].as_str() {
                self.text.push_str(t);
            }
            if let Some(t) = d["reasoning_content"].as_str().or(d["reasoning"].as_str()) {
                self.reasoning.push_str(t);
            }
            for (pos, tc) in d["tool_calls"].as_array().into_iter().flatten().enumerate() {
                let index = tc["index"].as_u64().unwrap_or(pos as u64);
                let slot = match self.calls.iter().position(|(i, _)| *i == index) {
                    Some(p) => p,
                    None => {
                        self.calls.push((index, PartialCall::default()));
                        self.calls.len() - 1
                    }
                };
                let c = &mut self.calls[slot].1;
                if let Some(id) = tc["id"].as_str().filter(|s| !s.is_empty()) {
                    c.id = id.to_string();
                }
                if let Some(n) = tc["function"]["name"].as_str() {
                    c.name.push_str(n);
                }
                if let Some(a) = tc["function"]["arguments"].as_str() {
                    c.args.push_str(a);
                }
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(r.to_string());
            }
        }
        Ok(self.done)
    }

    /// Whether the answer is complete enough to use when the stream ends without `[DONE]` (some servers omit it).
    pub fn finished(&self) -> bool {
        self.done || self.finish_reason.is_some()
    }

    pub fn finish(mut self) -> ModelTurn {
        let mut content = Vec::new();
        if !self.reasoning.is_empty() {
            content.push(Block::Thinking { thinking: self.reasoning, signature: None });
        }
        if !self.text.is_empty() {
            content.push(Block::Text { text: self.text });
        }
        self.calls.sort_by_key(|(i, _)| *i);
        for (i, c) in self.calls {
            // Some local servers send no id: make one up so the result can refer to it.
            let id = if c.id.is_empty() { format!("call_{i}") } else { c.id };
            content.push(super::client::tool_use(id, c.name, &c.args));
        }
        ModelTurn { content, stop_reason: self.finish_reason, usage: self.usage, client_time: Default::default() }
    }
}
