//! Anthropic Messages (`POST {base_url}/v1/messages`, `stream: true`): the request body, and the assembly of a
//! streamed answer — text, thinking (with its signature) and tool calls whose arguments arrive as
//! `input_json_delta` fragments.

use evershell_core::agent_wire::ThinkingEffort;
use serde_json::{Value, json};

use super::stream::SseEvent;
use super::{Block, Message, ModelTurn, Role, TurnRequest, Usage};
use crate::task::model::client::StreamError;

pub const PATH: &str = "/v1/messages";
pub const VERSION: &str = "2023-06-01";
const MAX_TOKENS: u64 = 8192;

fn thinking_budget(e: Option<ThinkingEffort>) -> Option<u64> {
    match e? {
        ThinkingEffort::High => Some(24_576),
        ThinkingEffort::Medium => Some(8_192),
        ThinkingEffort::Low => Some(2_048),
        ThinkingEffort::Off => None,
    }
}

pub fn fragment(m: &Message) -> String {
    message(m).to_string()
}

pub fn body(req: &TurnRequest<'_>) -> String {
    let budget = thinking_budget(req.thinking);
    let mut b = json!({
        "model": req.model,
        "max_tokens": MAX_TOKENS + budget.unwrap_or(0),
        "stream": true,
    });
    if !req.system.is_empty() {
        b["system"] = json!(req.system);
    }
    if !req.tools.is_empty() {
        b["tools"] = req
            .tools
            .iter()
            .map(|t| json!({ "name": t.name, "description": t.description, "input_schema": t.schema }))
            .collect();
    }
    if let Some(budget) = budget {
        b["thinking"] = json!({ "type": "enabled", "budget_tokens": budget });
    }
    super::splice(&b, &super::messages_json(req, fragment))
}

fn message(m: &Message) -> Value {
    let mut blocks: Vec<&Block> = m.content.iter().collect();
    // Tool results lead a user turn.
    blocks.sort_by_key(|b| !matches!(b, Block::ToolResult { .. }));
    let content: Vec<Value> = blocks
        .into_iter()
        .filter_map(|b| match b {
            Block::Text { text } => Some(json!({ "type": "text", "text": text })),
            Block::Thinking { thinking, signature: Some(sig) } => {
                Some(json!({ "type": "thinking", "thinking": thinking, "signature": sig }))
            }
            Block::Thinking { signature: None, .. } => None,
            Block::ToolUse { id, name, input, .. } => {
                let input = if input.is_object() { input.clone() } else { json!({}) };
                Some(json!({ "type": "tool_use", "id": id, "name": name, "input": input }))
            }
            Block::ToolResult { tool_use_id, content, is_error } => Some(
                json!({ "type": "tool_result", "tool_use_id": tool_use_id, "content": content, "is_error": is_error }),
            ),
        })
        .collect();
    let role = match m.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    json!({ "role": role, "content": content })
}

enum Partial {
    Text(String),
    Thinking(String, String),
    Tool { id: String, name: String, json: String },
    Other,
}

/// Assembles one streamed answer.
#[derive(Default)]
pub struct Assembler {
    blocks: Vec<(usize, Partial)>,
    usage: Usage,
    saw_usage: bool,
    stop_reason: Option<String>,
    done: bool,
}

impl Assembler {
    /// Feed one event; `Ok(true)` once the answer is complete (`message_stop`).
    pub fn feed(&mut self, ev: &SseEvent) -> Result<bool, StreamError> {
        if ev.data.is_empty() {
            return Ok(self.done);
        }
        let v: Value =
            serde_json::from_str(&ev.data).map_err(|e| StreamError::Protocol(format!("an event is not JSON ({e})")))?;
        let kind = v["type"].as_str().unwrap_or(ev.event.as_str());
        match kind {
            "message_start" => {
                let u = &v["message"]["usage"];
                if let Some(n) = u["input_tokens"].as_u64() {
                    let cached = u["cache_read_input_tokens"].as_u64().unwrap_or(0)
                        + u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
                    self.usage.input_tokens = n + cached;
                    self.saw_usage = true;
                }
                if let Some(n) = u["output_tokens"].as_u64() {
                    self.usage.output_tokens = n;
                }
            }
            "content_block_start" => {
                let index = v["index"].as_u64().unwrap_or(self.blocks.len() as u64) as usize;
                let cb = &v["content_block"];
                let p = match cb["type"].as_str() {
                    Some("text") => Partial::Text(cb["text"].as_str().unwrap_or("").to_string()),
                    Some("thinking") => Partial::Thinking(
                        cb["thinking"].as_str().unwrap_or("").to_string(),
                        cb["signature"].as_str().unwrap_or("").to_string(),
                    ),
                    Some("tool_use") => {
                        let initial = match &cb["input"] {
                            Value::Object(o) if !o.is_empty() => cb["input"].to_string(),
                            _ => String::new(),
                        };
                        Partial::Tool {
                            id: cb["id"].as_str().unwrap_or("").to_string(),
                            name: cb["name"].as_str().unwrap_or("").to_string(),
                            json: initial,
                        }
                    }
                    _ => Partial::Other,
                };
                self.blocks.push((index, p));
            }
            "content_block_delta" => {
                let index = v["index"].as_u64().unwrap_or(0) as usize;
                let d = &v["delta"];
                let Some((_, p)) = self.blocks.iter_mut().rev().find(|(i, _)| *i == index) else {
                    return Err(StreamError::Protocol(format!("a delta for unknown block {index}")));
                };
                match (p, d["type"].as_str()) {
                    (Partial::Text(t), Some("text_delta")) => t.push_str(d["text"].as_str().unwrap_or("")),
                    (Partial::Thinking(t, _), Some("thinking_delta")) => {
                        t.push_str(d["thinking"].as_str().unwrap_or(""))
                    }
                    (Partial::Thinking(_, s), Some("signature_delta")) => {
                        s.push_str(d["signature"].as_str().unwrap_or(""))
                    }
                    (Partial::Tool { json, .. }, Some("input_json_delta")) => {
                        json.push_str(d["partial_json"].as_str().unwrap_or(""))
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(r.to_string());
                }
                if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                    self.usage.output_tokens = n;
                    self.saw_usage = true;
                }
                if let Some(n) = v["usage"]["input_tokens"].as_u64() {
                    self.usage.input_tokens = self.usage.input_tokens.max(n);
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                let kind = v["error"]["type"].as_str().unwrap_or("error").to_string();
                let msg = v["error"]["message"].as_str().unwrap_or("").to_string();
                let transient = matches!(kind.as_str(), "overloaded_error" | "api_error" | "rate_limit_error");
                return Err(StreamError::Remote { transient, message: format!("{kind}: {msg}") });
            }
            _ => {}
        }
        Ok(self.done)
    }

    pub fn finish(self) -> ModelTurn {
        let content = self
            .blocks
            .into_iter()
            .filter_map(|(_, p)| match p {
                Partial::Text(text) => Some(Block::Text { text }),
                Partial::Thinking(thinking, sig) => {
                    Some(Block::Thinking { thinking, signature: (!sig.is_empty()).then_some(sig) })
                }
                Partial::Tool { id, name, json } => Some(super::client::tool_use(id, name, &json)),
                Partial::Other => None,
            })
            .collect();
        ModelTurn {
            content,
            stop_reason: self.stop_reason,
            usage: self.saw_usage.then_some(self.usage),
            client_time: Default::default(),
        }
    }
}
