//! Agent roles: how a workspace's agent behaves (provider, model, capabilities, timeouts, packs).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{OrgId, PackId, ProviderId, RoleId};
use crate::time::Timestamp;

/// Which environment a role's work targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    #[default]
    Development,
    Staging,
    Production,
}

impl Environment {
    pub const ALL: &[Environment] = &[Environment::Development, Environment::Staging, Environment::Production];

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.as_str() == s)
    }
}

/// How hard the model thinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingEffort {
    High,
    Medium,
    Low,
    Off,
}

impl ThinkingEffort {
    pub const ALL: &[ThinkingEffort] =
        &[ThinkingEffort::High, ThinkingEffort::Medium, ThinkingEffort::Low, ThinkingEffort::Off];

    pub fn as_str(self) -> &'static str {
        match self {
            ThinkingEffort::High => "high",
            ThinkingEffort::Medium => "medium",
            ThinkingEffort::Low => "low",
            ThinkingEffort::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.as_str() == s)
    }
}

/// Warm-pool policy: `""` (off), `static` or `dynamic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PoolPolicy {
    #[default]
    #[serde(rename = "")]
    Off,
    #[serde(rename = "static")]
    Static,
    #[serde(rename = "dynamic")]
    Dynamic,
}

// Written by hand: the derive drops the empty `rename` and would publish `Off`.
impl utoipa::PartialSchema for PoolPolicy {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::names::schema::string_enum(
            "Warm-pool policy: `\"\"` (off), `static` or `dynamic`.",
            PoolPolicy::ALL.iter().map(|p| p.as_str()),
        )
    }
}

impl ToSchema for PoolPolicy {}

impl PoolPolicy {
    pub const ALL: &[PoolPolicy] = &[PoolPolicy::Off, PoolPolicy::Static, PoolPolicy::Dynamic];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolPolicy::Off => "",
            PoolPolicy::Static => "static",
            PoolPolicy::Dynamic => "dynamic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.as_str() == s)
    }
}

/// An agent role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentRole {
    pub id: RoleId,
    pub org_id: OrgId,
    /// Slug, unique in the org.
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub provider_id: ProviderId,
    /// Overrides the provider's `default_model`.
    pub model: Option<String>,
    /// Inline caps.yaml merged onto the provider's, stored exactly as given.
    pub capabilities: Option<String>,
    pub environment: Environment,
    pub environment_description: Option<String>,
    pub task_timeout_seconds: Option<i64>,
    pub idle_timeout_seconds: Option<i64>,
    pub thinking_effort: Option<ThinkingEffort>,
    pub max_continuations: Option<i64>,
    pub max_context_tokens: Option<i64>,
    /// The pod's memory limit in bytes, over the server's `runtime.limits.memory_bytes`.
    pub memory_limit_bytes: Option<i64>,
    /// The pod's process (and thread) limit, over `runtime.limits.pids`.
    pub pids_limit: Option<i64>,
    /// The pod's CPU quota in thousandths of a CPU (1000 = one core), over `runtime.limits.cpu_millis`.
    pub cpu_limit_millis: Option<i64>,
    pub pool_policy: PoolPolicy,
    pub pool_size: Option<i64>,
    pub pool_max_size: Option<i64>,
    pub pack_ids: Vec<PackId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}
