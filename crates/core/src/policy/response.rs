//! The bodies the proxy answers an agent with: `403 egress_denied` for a denied request and `429 budget_exceeded`
//! for one that would cross a budget, in the API's error envelope. Built from names and reasons only: never a
//! secret, a credential value or a header value.

use serde_json::{Value, json};

use super::budget::BudgetExceeded;
use super::evaluate::Denied;

/// `403`, `{"error":{"code":"egress_denied","message","details":{"reason","capability"?,"rule"?}}}`.
pub fn denied_body(d: &Denied) -> (u16, Value) {
    let mut details = serde_json::Map::new();
    details.insert("reason".into(), json!(d.reason.as_str()));
    if let Some(c) = &d.capability {
        details.insert("capability".into(), json!(c));
    }
    if let Some(r) = &d.rule {
        details.insert("rule".into(), json!(r));
    }
    let mut message = format!("egress denied: {}", d.reason.describe());
    if let Some(detail) = &d.detail {
        message.push_str(&format!(" ({detail})"));
    }
    (403, json!({"error": {"code": "egress_denied", "message": message, "details": details}}))
}

/// `429`, `{"error":{"code":"budget_exceeded","message","details":{"budget","limit","ceiling"}}}`.
pub fn budget_body(e: &BudgetExceeded) -> (u16, Value) {
    let message = format!("budget {} is spent: its {} ceiling is {}", e.name, e.limit.as_str(), e.ceiling);
    (
        429,
        json!({"error": {"code": "budget_exceeded", "message": message, "details": {
            "budget": e.name, "limit": e.limit.as_str(), "ceiling": e.ceiling,
        }}}),
    )
}
