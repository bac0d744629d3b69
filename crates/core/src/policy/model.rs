//! The typed caps.yaml model: capabilities, allow rules with their domain and path globs, transforms (credential
//! auth, header set/remove with `${secrets["name"]}` templates) and budgets. Parsed by `crate::caps::parse`.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::model::ProviderKind;

/// HTTP methods an allow rule may name. Closed: anything else is never allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Method {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "DELETE")]
    Delete,
    #[serde(rename = "PATCH")]
    Patch,
    #[serde(rename = "HEAD")]
    Head,
    #[serde(rename = "OPTIONS")]
    Options,
}

impl Method {
    pub const ALL: &[Method] =
        &[Method::Get, Method::Post, Method::Put, Method::Delete, Method::Patch, Method::Head, Method::Options];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
        }
    }

    /// Exact, case-sensitive (RFC 9110 §9.1): `get` is not `GET`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|m| m.as_str() == s)
    }
}

/// One capability (`- name: …` in caps.yaml).
#[derive(Debug, Clone, PartialEq)]
pub struct Capability {
    pub name: String,
    pub description: Option<String>,
    pub allow: Vec<AllowRule>,
    pub transforms: Vec<TransformRule>,
    pub budgets: Budgets,
}

/// One `allow` entry: the request is allowed when its host matches one of `domains`, its method one of `methods` and
/// its normalised path one of `paths` (none = any path).
#[derive(Debug, Clone, PartialEq)]
pub struct AllowRule {
    pub name: Option<String>,
    pub domains: Vec<DomainGlob>,
    pub methods: Vec<Method>,
    pub paths: Vec<PathGlob>,
    /// Plain `http://` to this rule's domains is allowed too.
    pub allow_insecure: bool,
    /// CEL predicates: accepted and stored but not evaluated yet, so a rule carrying any never allows (fail closed).
    pub predicates: Vec<String>,
    /// A request-body schema: likewise not evaluated yet, so the rule never allows.
    pub has_body_schema: bool,
}

impl AllowRule {
    /// How decisions and the 403 body name this rule: its `name`, else `allow[i]`.
    pub fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("allow[{index}]"))
    }
}

/// The host part of a domain glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `api.example.com` (lower-case, no trailing dot).
    Exact(String),
    /// `*.example.com`, stored as `example.com`: exactly one label in front of it.
    OneLabel(String),
    /// `10.0.0.5` or `[fd00::1]`: the only way a raw-IP destination is ever allowed.
    Ip(IpAddr),
}

/// A domain glob with an optional port; without one it matches the scheme's default port (443, or 80 for plain
/// HTTP) only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainGlob {
    pub host: HostPattern,
    pub port: Option<u16>,
}

impl fmt::Display for DomainGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Exact(h) => f.write_str(h)?,
            HostPattern::OneLabel(s) => write!(f, "*.{s}")?,
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            HostPattern::Ip(ip) => write!(f, "{ip}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// One segment of a path glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// `**`: any number of segments, zero included.
    AnyDepth,
    /// A segment in which each `*` matches any run of characters within the segment (`*` alone: one whole,
    /// non-empty segment).
    Glob(String),
}

/// A path glob such as `/v1/**` or `/webhook/*`, matched against the normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob {
    pub raw: String,
    pub segments: Vec<PathSegment>,
}

/// A transform and the allow rules (by name) it applies to; `None` = every rule of its capability.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformRule {
    pub transform: Transform,
    pub applies_to: Option<Vec<String>>,
}

impl TransformRule {
    pub fn applies_to_rule(&self, rule_name: Option<&str>) -> bool {
        match (&self.applies_to, rule_name) {
            (None, _) => true,
            (Some(names), Some(n)) => names.iter().any(|x| x == n),
            (Some(_), None) => false,
        }
    }
}

/// What a transform does to an allowed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// `auth: { credential: NAME }`: stamp the credential in its kind's wire format.
    Auth { credential: String },
    /// The platform's grant for a provider's own domain: the credential stamped in the provider kind's format
    /// (`anthropic` → `x-api-key`, the others → `Authorization: Bearer`). Never written in caps.yaml.
    ProviderAuth { credential: String, kind: ProviderKind },
    /// `headers: { set: {…}, remove: […] }`; `remove` runs first, then `set` (which replaces what the agent sent).
    Headers { set: Vec<(String, HeaderTemplate)>, remove: Vec<String> },
}

impl Transform {
    /// The audit name of this transform (never a value).
    pub fn audit_name(&self) -> String {
        match self {
            Transform::Auth { credential } => format!("auth:{credential}"),
            Transform::ProviderAuth { credential, kind } => format!("provider_auth:{}:{credential}", kind.as_str()),
            Transform::Headers { set, remove } => {
                let mut parts: Vec<String> = remove.iter().map(|h| format!("-{h}")).collect();
                parts.extend(set.iter().map(|(h, _)| format!("+{h}")));
                format!("headers:{}", parts.join(","))
            }
        }
    }
}

/// A header value with `${secrets["name"]}` references in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate {
    pub parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Secret(String),
}

impl HeaderTemplate {
    /// Parse a header value; `${` must open a `${secrets["name"]}` reference. The error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(at) = rest.find("${") {
            if at > 0 {
                parts.push(TemplatePart::Literal(rest[..at].to_string()));
            }
            let after = &rest[at + 2..];
            let inner = after
                .strip_prefix("secrets[\"")
                .ok_or_else(|| "`${` must open a reference like ${secrets[\"name\"]}".to_string())?;
            let end = inner.find("\"]}").ok_or_else(|| "an unclosed ${secrets[\"…\"]} reference".to_string())?;
            let name = &inner[..end];
            if let Some(problem) = crate::caps::secret_name_problem(name) {
                return Err(format!("secret reference `{name}`: {problem}"));
            }
            parts.push(TemplatePart::Secret(name.to_string()));
            rest = &inner[end + 3..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Literal(rest.to_string()));
        }
        Ok(HeaderTemplate { parts })
    }

    /// The secret names referenced, in order.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Secret(n) => Some(n.as_str()),
            TemplatePart::Literal(_) => None,
        })
    }
}

/// Ceilings of one budget scope; `None` = no ceiling on that counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Limits {
    pub requests: Option<u64>,
    pub bytes: Option<u64>,
}

/// `budgets:` of a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budgets {
    /// Counted over the workspace's life.
    pub per_workspace: Option<Limits>,
    /// Counted per task (once tasks exist).
    pub per_task: Option<Limits>,
}
