//! The audit view of one policy decision, a pure function: destination, method, the path with credential-carrying
//! query values redacted, decision, reason, capability, rule and the transforms applied (names only). The proxy
//! adds what only it knows (bytes, latency, phase, budget counters) and writes the row.

use serde::Serialize;

use super::evaluate::{Decision, DenyReason};
use super::normalise::NormalisedRequest;
use super::transform::{Applied, audit_target};

/// What the audit row says about a decision. Never holds a header value, a credential or a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionAudit {
    /// `host:port`.
    pub destination: String,
    pub scheme: &'static str,
    pub method: String,
    /// The normalised path and the query with credential values replaced by `REDACTED`.
    pub path: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    pub reason: Option<DenyReason>,
    pub capability: Option<String>,
    pub rule: Option<String>,
    /// `Transform::audit_name` of each transform applied.
    pub transforms: Vec<String>,
}

/// The audit view of `decision` on `req`; `applied` is what `apply_transforms` returned, when it ran. The query
/// shown is the one the agent sent (the stamped credential is never shown), with credential-looking and stamped
/// parameter values redacted.
pub fn decision_audit(req: &NormalisedRequest, decision: &Decision, applied: Option<&Applied>) -> DecisionAudit {
    let redact: &[String] = applied.map_or(&[], |a| &a.redact_params);
    let (decision, reason, capability, rule, transforms) = match decision {
        Decision::Allow(a) => (
            "allow",
            None,
            Some(a.capability.clone()),
            Some(a.rule.clone()),
            applied.map(|x| x.applied.clone()).unwrap_or_default(),
        ),
        Decision::Deny(d) => ("deny", Some(d.reason), d.capability.clone(), d.rule.clone(), Vec::new()),
    };
    DecisionAudit {
        destination: format!("{}:{}", req.host, req.port),
        scheme: if req.tls { "https" } else { "http" },
        method: req.method.clone(),
        path: audit_target(&req.path, req.query.as_deref(), redact),
        decision,
        reason,
        capability,
        rule,
        transforms,
    }
}
