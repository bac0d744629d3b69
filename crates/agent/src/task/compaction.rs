//! Compaction of the context when it nears `max_context_tokens`: the older part is summarised by the model, and
//! the new context is the task's instructions with that summary, then the recent turns kept verbatim. The split
//! never falls between a tool call and its result. How often it may run is the runner's business (once per
//! overflow, a bounded number per task).

use super::model::{Message, Role, estimate_tokens};

/// The context is compacted when it reaches this share of `max_context_tokens`.
pub const TRIGGER_RATIO: f64 = 0.8;
/// The recent turns kept verbatim take at most this share of `max_context_tokens`.
pub const KEEP_RATIO: f64 = 0.3;
/// Compactions allowed in one task; the next overflow ends it with `compaction_limit`.
pub const MAX_PER_TASK: u32 = 3;

pub const SUMMARY_PROMPT: &str = "The conversation so far is about to be cut for length. Do not call any tool. \
Write a concise summary of it for yourself: the goal, what has been done and found (files, commands, results), \
what remains, and anything you must not forget. Answer with the summary only.";

pub fn threshold(max_context_tokens: u64) -> u64 {
    (max_context_tokens as f64 * TRIGGER_RATIO) as u64
}

/// Where the kept suffix starts: the earliest point that keeps the recent turns within `keep_tokens`, never a user
/// message carrying tool results (its call is in the message before). None when there is nothing to summarise.
pub fn split_point(context: &[Message], keep_tokens: u64) -> Option<usize> {
    let valid = |i: usize| !(context[i].role == Role::User && context[i].has_tool_results());
    let mut best_fitting = None;
    let mut latest_valid = None;
    for s in (1..context.len()).rev() {
        if !valid(s) {
            continue;
        }
        latest_valid.get_or_insert(s);
        if estimate_tokens(&context[s..]) <= keep_tokens {
            best_fitting = Some(s);
        } else {
            break;
        }
    }
    best_fitting.or(latest_valid)
}

/// The messages the summary call sees: the part to summarise, then the request.
pub fn summary_request(context: &[Message], split: usize) -> Vec<Message> {
    let mut m = context[..split].to_vec();
    m.push(Message::user_text(SUMMARY_PROMPT));
    m
}

/// The context after compaction.
pub fn compacted(context: &[Message], split: usize, instructions: &str, summary: &str) -> Vec<Message> {
    let head = format!(
        "{instructions}\n\n[The earlier part of this conversation was compacted. Summary of it:]\n{}",
        summary.trim()
    );
    let mut out = vec![Message::user_text(head)];
    out.extend_from_slice(&context[split..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::model::Block;
    use crate::task::session::with_results;

    fn call(id: &str) -> Message {
        Message {
            role: Role::Assistant,
            content: vec![Block::ToolUse {
                id: id.into(),
                name: "bash".into(),
                input: serde_json::json!({"command": "x".repeat(400)}),
                invalid_arguments: None,
            }],
        }
    }

    #[test]
    fn the_split_never_separates_a_call_from_its_result() {
        let mut ctx = vec![Message::user_text("task")];
        for i in 0..10 {
            ctx.push(call(&format!("t{i}")));
            ctx.push(Message::tool_result(&format!("t{i}"), "y".repeat(400), false));
        }
        for keep in [0, 50, 200, 400, 1000, 10_000] {
            let s = split_point(&ctx, keep).unwrap();
            assert!(!ctx[s].has_tool_results(), "keep {keep}: split {s}");
            let new = compacted(&ctx, s, "task", "sum");
            let (_, added, _) = with_results(&new);
            assert_eq!(added, 0, "keep {keep}: every kept call has its result");
            let (_, added, _) = with_results(&summary_request(&ctx, s));
            assert_eq!(added, 0, "keep {keep}: the summarised part is whole too");
        }
        assert_eq!(split_point(&ctx, 0), Some(19), "keeps at least the last turn");
        assert_eq!(split_point(&ctx[..1], 100), None);
    }
}
