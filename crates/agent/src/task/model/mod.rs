//! The conversation as the loop keeps it (wire-neutral messages and blocks), what one model turn returns, and the
//! model client: one streamed call per turn over the task's wire format, retried on transient errors.

pub mod anthropic;
pub mod client;
pub mod openai;
pub mod stream;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use client::{ModelClient, ModelError};

/// Who said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    /// Anthropic extended thinking; sent back (with its signature) on later turns, dropped for OpenAI.
    Thinking {
        thinking: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    ToolUse {
        id: String,
        name: String,
        /// The parsed arguments (an empty object when they were not valid JSON).
        input: Value,
        /// The arguments exactly as streamed, kept when they did not parse (so the model sees what it sent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invalid_arguments: Option<String>,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

impl Message {
    pub fn user_text(text: impl Into<String>) -> Self {
        Message { role: Role::User, content: vec![Block::Text { text: text.into() }] }
    }

    pub fn tool_result(tool_use_id: &str, content: impl Into<String>, is_error: bool) -> Self {
        Message {
            role: Role::User,
            content: vec![Block::ToolResult {
                tool_use_id: tool_use_id.to_string(),
                content: content.into(),
                is_error,
            }],
        }
    }

    /// The tool calls of an assistant message.
    pub fn tool_uses(&self) -> impl Iterator<Item = (&str, &str, &Value, Option<&str>)> {
        self.content.iter().filter_map(|b| match b {
            Block::ToolUse { id, name, input, invalid_arguments } => {
                Some((id.as_str(), name.as_str(), input, invalid_arguments.as_deref()))
            }
            _ => None,
        })
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for b in &self.content {
            if let Block::Text { text } = b {
                out.push_str(text);
            }
        }
        out
    }

    /// True for a user message that carries tool results (it belongs to the assistant message before it).
    pub fn has_tool_results(&self) -> bool {
        self.content.iter().any(|b| matches!(b, Block::ToolResult { .. }))
    }
}

/// Merge consecutive messages of the same role (both wire formats want turns to alternate), dropping empty text.
pub fn merged(messages: &[Message]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for m in messages {
        let content: Vec<Block> =
            m.content.iter().filter(|b| !matches!(b, Block::Text { text } if text.is_empty())).cloned().collect();
        if content.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.role == m.role => last.content.extend(content),
            _ => out.push(Message { role: m.role, content }),
        }
    }
    out
}

/// Token counts one model call reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// What one model turn returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTurn {
    pub content: Vec<Block>,
    pub stop_reason: Option<String>,
    /// None when the server reported no usage.
    pub usage: Option<Usage>,
    /// Time the client itself spent on this turn (building the request, parsing and assembling the stream): the
    /// agent's overhead inside the model call.
    pub client_time: std::time::Duration,
}

/// A rough token estimate (4 bytes a token) for when the model reports no usage.
pub fn estimate_tokens(messages: &[Message]) -> u64 {
    let bytes: usize = messages
        .iter()
        .flat_map(|m| m.content.iter())
        .map(|b| match b {
            Block::Text { text } => text.len(),
            Block::Thinking { thinking, .. } => thinking.len(),
            Block::ToolUse { input, invalid_arguments, .. } => {
                invalid_arguments.as_ref().map(|s| s.len()).unwrap_or_else(|| input.to_string().len()) + 32
            }
            Block::ToolResult { content, .. } => content.len() + 16,
        })
        .sum();
    (bytes as u64).div_ceil(4)
}

/// The one tool: its name and JSON schema, with the timeout bounds told to the model.
pub struct ToolSpec {
    pub name: &'static str,
    pub description: String,
    pub schema: Value,
}

pub const BASH: &str = "bash";

pub fn bash_tool(default_timeout_s: u64, max_timeout_s: u64, output_bytes: u64) -> ToolSpec {
    ToolSpec {
        name: BASH,
        description: format!(
            "Run a bash command in the workspace (working directory /workspace), in its own process group with stdin \
             from /dev/null (interactive prompts get EOF). The call times out after `timeout_seconds` (default \
             {default_timeout_s}, at most {max_timeout_s}); on timeout the whole process group is killed. A \
             background child (`cmd &`) keeps running after the call returns. Combined stdout and stderr are shown, \
             cut to about {output_bytes} bytes (head and tail kept, the number of bytes left out noted); redirect \
             large output to a file and inspect it in pieces."
        ),
        schema: serde_json::json!({
            "type": "object",
            "properties": {
                "command": { "type": "string", "description": "The bash command to run." },
                "timeout_seconds": {
                    "type": "integer",
                    "description": format!("Timeout in seconds (default {default_timeout_s}, max {max_timeout_s})."),
                    "minimum": 1,
                    "maximum": max_timeout_s
                }
            },
            "required": ["command"]
        }),
    }
}

/// One call's inputs, wire-neutral.
pub struct TurnRequest<'a> {
    pub model: &'a str,
    pub system: &'a str,
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
    pub thinking: Option<evershell_core::agent_wire::ThinkingEffort>,
    /// The wire JSON of `messages` already built (their [`fragment`]s joined by commas); `messages` is then unused.
    /// The loop keeps the serialised history between turns, so a turn serialises only what is new.
    pub prebuilt: Option<&'a str>,
}

/// One message in the wire format's JSON (possibly several wire messages, comma-separated; empty for none).
/// Messages must be in [`merged`] form.
pub fn fragment(wire: evershell_core::agent_wire::ModelWire, m: &Message) -> String {
    match wire {
        evershell_core::agent_wire::ModelWire::AnthropicMessages => anthropic::fragment(m),
        evershell_core::agent_wire::ModelWire::OpenaiChat => openai::fragment(m),
    }
}

/// Append `fragment` to a comma-joined list.
pub fn join_into(list: &mut String, fragment: &str) {
    if fragment.is_empty() {
        return;
    }
    if !list.is_empty() {
        list.push(',');
    }
    list.push_str(fragment);
}

/// The request body: `head` (a JSON object) with `"messages": [messages]` added.
fn splice(head: &Value, messages: &str) -> String {
    let mut s = head.to_string();
    s.pop(); // the closing brace
    if s.len() > 1 {
        s.push(',');
    }
    s.push_str("\"messages\":[");
    s.push_str(messages);
    s.push_str("]}");
    s
}

/// The messages of `req` as a comma-joined wire list.
fn messages_json(req: &TurnRequest<'_>, fragment: impl Fn(&Message) -> String) -> String {
    if let Some(p) = req.prebuilt {
        return p.to_string();
    }
    let mut out = String::new();
    for m in merged(req.messages) {
        join_into(&mut out, &fragment(&m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_alternates_turns_and_drops_empty_text() {
        let m = merged(&[
            Message::user_text("a"),
            Message::tool_result("t1", "x", false),
            Message { role: Role::Assistant, content: vec![Block::Text { text: String::new() }] },
            Message::user_text("b"),
        ]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].content.len(), 3);
    }

    #[test]
    fn blocks_round_trip_through_json() {
        let b = Block::ToolUse {
            id: "x".into(),
            name: "bash".into(),
            input: serde_json::json!({}),
            invalid_arguments: None,
        };
        let s = serde_json::to_string(&b).unwrap();
        assert_eq!(s, r#"{"type":"tool_use","id":"x","name":"bash","input":{}}"#);
        assert_eq!(serde_json::from_str::<Block>(&s).unwrap(), b);
    }
}
