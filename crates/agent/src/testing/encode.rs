//! The scripted server's SSE encodings of a reply: Anthropic events (text and `input_json_delta` split into small
//! pieces) and OpenAI chunks (indexed tool calls, parallel calls interleaved).

use serde_json::json;

use super::ReplyKind;

/// Pieces of at most 3 bytes, on character boundaries.
fn pieces(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in s.chars() {
        if cur.len() + ch.len_utf8() > 3 && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn sse(event: Option<&str>, data: &serde_json::Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

pub fn events(anthropic: bool, kind: &ReplyKind, usage: Option<(u64, u64)>) -> Vec<String> {
    let (text, calls) = match kind {
        ReplyKind::Text(t) => (Some(t.clone()), Vec::new()),
        ReplyKind::Tools { text, calls } => (text.clone(), calls.clone()),
        _ => (None, Vec::new()),
    };
    if anthropic {
        let mut out = Vec::new();
        let start_usage = match usage {
            Some((i, _)) => json!({ "input_tokens": i, "output_tokens": 1 }),
            None => json!({}),
        };
        out.push(sse(
            Some("message_start"),
            &json!({ "type": "message_start", "message": { "id": "msg_1", "type": "message", "role": "assistant",
                     "content": [], "usage": start_usage } }),
        ));
        out.push(sse(Some("ping"), &json!({ "type": "ping" })));
        let mut index = 0;
        if let Some(t) = &text {
            out.push(sse(
                Some("content_block_start"),
                &json!({ "type": "content_block_start", "index": index,
                "content_block": { "type": "text", "text": "" } }),
            ));
            for p in pieces(t) {
                out.push(sse(
                    Some("content_block_delta"),
                    &json!({ "type": "content_block_delta", "index": index,
                    "delta": { "type": "text_delta", "text": p } }),
                ));
            }
            out.push(sse(Some("content_block_stop"), &json!({ "type": "content_block_stop", "index": index })));
            index += 1;
        }
        for c in &calls {
            out.push(sse(
                Some("content_block_start"),
                &json!({ "type": "content_block_start", "index": index,
                "content_block": { "type": "tool_use", "id": c.id, "name": c.name, "input": {} } }),
            ));
            for p in pieces(&c.arguments) {
                out.push(sse(
                    Some("content_block_delta"),
                    &json!({ "type": "content_block_delta", "index": index,
                    "delta": { "type": "input_json_delta", "partial_json": p } }),
                ));
            }
            out.push(sse(Some("content_block_stop"), &json!({ "type": "content_block_stop", "index": index })));
            index += 1;
        }
        let stop = if calls.is_empty() { "end_turn" } else { "tool_use" };
        let mut delta = json!({ "type": "message_delta", "delta": { "stop_reason": stop } });
        if let Some((_, o)) = usage {
            delta["usage"] = json!({ "output_tokens": o });
        }
        out.push(sse(Some("message_delta"), &delta));
        out.push(sse(Some("message_stop"), &json!({ "type": "message_stop" })));
        out
    } else {
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            sse(
                None,
                &json!({ "id": "c1", "object": "chat.completion.chunk", "model": "m",
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] }),
            )
        };
        let mut out = vec![chunk(json!({ "role": "assistant", "content": "" }), None)];
        if let Some(t) = &text {
            for p in pieces(t) {
                out.push(chunk(json!({ "content": p }), None));
            }
        }
        for (i, c) in calls.iter().enumerate() {
            out.push(chunk(
                json!({ "tool_calls": [{ "index": i, "id": c.id, "type": "function",
                "function": { "name": c.name, "arguments": "" } }] }),
                None,
            ));
        }
        // Arguments of parallel calls interleaved, piece by piece.
        let split: Vec<Vec<String>> = calls.iter().map(|c| pieces(&c.arguments)).collect();
        let longest = split.iter().map(Vec::len).max().unwrap_or(0);
        for k in 0..longest {
            for (i, ps) in split.iter().enumerate() {
                if let Some(p) = ps.get(k) {
                    out.push(chunk(json!({ "tool_calls": [{ "index": i, "function": { "arguments": p } }] }), None));
                }
            }
        }
        out.push(chunk(json!({}), Some(if calls.is_empty() { "stop" } else { "tool_calls" })));
        if let Some((i, o)) = usage {
            out.push(sse(
                None,
                &json!({ "id": "c1", "object": "chat.completion.chunk", "choices": [],
                "usage": { "prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o } }),
            ));
        }
        out.push("data: [DONE]\n\n".to_string());
        out
    }
}
