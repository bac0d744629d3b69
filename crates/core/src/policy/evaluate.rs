//! Evaluation, a pure function: a merged `Policy` and a `NormalisedRequest` give `Allow` (which capability and rule,
//! the transforms and budgets to apply) or `Deny` with a closed reason. Deny by default.
//!
//! Order: TLS `Host` ≠ SNI → `domain_fronting`; then every rule whose domain glob admits the host and port is tried
//! in policy order and the first that passes every check allows. When none does, the deny names the rule that got
//! furthest through the checks (domain → scheme → method → path → predicates), the earliest such rule on a tie; no
//! rule for the host gives `raw_ip` for an IP-like host and `no_rule` otherwise.

use serde::Serialize;

use super::budget::BudgetRef;
use super::merge::Policy;
use super::model::{Method, Transform};
use super::normalise::{Malformed, NormalisedRequest, RawRequest, normalise};

/// Why a request was denied. Closed: each value is documented in `docs/API.md` § caps.yaml semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// No rule admits this host and port.
    NoRule,
    /// A rule admits the host but not this method.
    Method,
    /// A rule admits host and method but not this path.
    Path,
    /// TLS whose `Host`/`:authority` differs from SNI (or TLS without SNI to a name).
    DomainFronting,
    /// A raw IP (or a name a resolver would read as one) that no rule names.
    RawIp,
    /// Plain HTTP to a rule without `allow_insecure`.
    Insecure,
    /// The request could not be normalised (bad host, port, method or path).
    Malformed,
    /// The rule carries CEL predicates or a body schema, which are not evaluated yet: it never allows.
    Unsupported,
    /// A transform's credential or secret is missing or unusable.
    AuthUnavailable,
}

impl DenyReason {
    pub const ALL: &[DenyReason] = &[
        DenyReason::NoRule,
        DenyReason::Method,
        DenyReason::Path,
        DenyReason::DomainFronting,
        DenyReason::RawIp,
        DenyReason::Insecure,
        DenyReason::Malformed,
        DenyReason::Unsupported,
        DenyReason::AuthUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoRule => "no_rule",
            DenyReason::Method => "method",
            DenyReason::Path => "path",
            DenyReason::DomainFronting => "domain_fronting",
            DenyReason::RawIp => "raw_ip",
            DenyReason::Insecure => "insecure",
            DenyReason::Malformed => "malformed",
            DenyReason::Unsupported => "unsupported",
            DenyReason::AuthUnavailable => "auth_unavailable",
        }
    }

    /// A human sentence for the 403 message (never a secret).
    pub fn describe(self) -> &'static str {
        match self {
            DenyReason::NoRule => "no capability allows this destination",
            DenyReason::Method => "the rule for this destination does not allow this method",
            DenyReason::Path => "the rule for this destination does not allow this path",
            DenyReason::DomainFronting => "the Host header does not match the TLS server name",
            DenyReason::RawIp => "raw IP destinations are denied unless a rule names the address",
            DenyReason::Insecure => "plain HTTP is denied unless the rule sets allow_insecure",
            DenyReason::Malformed => "the request could not be normalised",
            DenyReason::Unsupported => "the rule uses predicates or a body schema, which are not evaluated yet",
            DenyReason::AuthUnavailable => "a credential or secret the request needs is unavailable",
        }
    }

    /// How far through the checks a rule got before failing with this reason (higher = further).
    fn depth(self) -> u8 {
        match self {
            DenyReason::Insecure => 1,
            DenyReason::Method => 2,
            DenyReason::Path => 3,
            DenyReason::Unsupported => 4,
            _ => 0,
        }
    }
}

/// An allowed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    pub capability: String,
    /// The rule's `name`, or `allow[i]`.
    pub rule: String,
    /// Whether the rule has a `name` (only named rules are targets of `applies_to`).
    pub rule_name: Option<String>,
    /// The capability's transforms that apply to this rule, in order.
    pub transforms: Vec<Transform>,
    /// The capability's budgets to charge.
    pub budgets: Vec<BudgetRef>,
}

/// A denied request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub reason: DenyReason,
    pub capability: Option<String>,
    pub rule: Option<String>,
    /// More words for the message and the audit row: a name or a fact, never a secret value.
    pub detail: Option<String>,
}

impl Denied {
    pub fn new(reason: DenyReason) -> Self {
        Denied { reason, capability: None, rule: None, detail: None }
    }

    pub fn with_detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denied),
}

/// Normalise, then evaluate; a request that does not normalise is denied `malformed`.
pub fn decide(policy: &Policy, raw: &RawRequest) -> (Option<NormalisedRequest>, Decision) {
    match normalise(raw) {
        Ok(n) => {
            let d = evaluate(policy, &n);
            (Some(n), d)
        }
        Err(Malformed(why)) => (None, Decision::Deny(Denied::new(DenyReason::Malformed).with_detail(why))),
    }
}

/// Evaluate a normalised request against a policy.
pub fn evaluate(policy: &Policy, req: &NormalisedRequest) -> Decision {
    if req.tls {
        match &req.sni {
            Some(sni) if *sni == req.host => {}
            Some(sni) => {
                return Decision::Deny(
                    Denied::new(DenyReason::DomainFronting)
                        .with_detail(format!("TLS server name {sni}, Host {}", req.host)),
                );
            }
            None if req.host.is_ip_like() => {}
            None => {
                return Decision::Deny(
                    Denied::new(DenyReason::DomainFronting)
                        .with_detail(format!("TLS without a server name to {}", req.host)),
                );
            }
        }
    }
    let method = Method::parse(&req.method);
    let mut best: Option<(DenyReason, &str, String)> = None;
    for cap in &policy.capabilities {
        for (i, rule) in cap.allow.iter().enumerate() {
            if !rule.domains.iter().any(|d| d.matches(&req.host, req.port, req.default_port())) {
                continue;
            }
            let failure = if !req.tls && !rule.allow_insecure {
                Some(DenyReason::Insecure)
            } else if !method.is_some_and(|m| rule.methods.contains(&m)) {
                Some(DenyReason::Method)
            } else if !rule.paths.is_empty() && !rule.paths.iter().any(|p| p.matches(&req.path)) {
                Some(DenyReason::Path)
            } else if !rule.predicates.is_empty() || rule.has_body_schema {
                Some(DenyReason::Unsupported)
            } else {
                None
            };
            match failure {
                None => {
                    let rule_name = rule.name.clone();
                    return Decision::Allow(Allowed {
                        capability: cap.name.clone(),
                        rule: rule.label(i),
                        transforms: cap
                            .transforms
                            .iter()
                            .filter(|t| t.applies_to_rule(rule_name.as_deref()))
                            .map(|t| t.transform.clone())
                            .collect(),
                        budgets: BudgetRef::of(&cap.name, &cap.budgets),
                        rule_name,
                    });
                }
                Some(r) => {
                    if best.as_ref().is_none_or(|(b, _, _)| r.depth() > b.depth()) {
                        best = Some((r, &cap.name, rule.label(i)));
                    }
                }
            }
        }
    }
    Decision::Deny(match best {
        Some((reason, cap, rule)) => {
            Denied { reason, capability: Some(cap.to_string()), rule: Some(rule), detail: None }
        }
        None if req.host.is_ip_like() => Denied::new(DenyReason::RawIp).with_detail(format!("{}", req.host)),
        None => Denied::new(DenyReason::NoRule).with_detail(format!("{}:{}", req.host, req.port)),
    })
}
