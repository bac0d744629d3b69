//! LLM providers: the upstream a role's agent talks to, with the base capabilities roles build on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{OrgId, ProviderId};
use crate::time::Timestamp;

/// The provider's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ProviderKind {
    #[serde(rename = "anthropic")]
    Anthropic,
    #[serde(rename = "openai")]
    Openai,
    #[serde(rename = "gemini")]
    Gemini,
    #[serde(rename = "vertex")]
    Vertex,
    #[serde(rename = "azure-openai")]
    AzureOpenai,
}

impl ProviderKind {
    pub const ALL: &[ProviderKind] = &[
        ProviderKind::Anthropic,
        ProviderKind::Openai,
        ProviderKind::Gemini,
        ProviderKind::Vertex,
        ProviderKind::AzureOpenai,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Openai => "openai",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Vertex => "vertex",
            ProviderKind::AzureOpenai => "azure-openai",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

/// An LLM backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Provider {
    pub id: ProviderId,
    pub org_id: OrgId,
    /// Slug, unique in the org; roles reference the provider by id.
    pub name: String,
    pub kind: ProviderKind,
    pub display_name: Option<String>,
    /// The upstream hostname the proxy lets through on the provider's behalf.
    pub domain: String,
    /// Name of the credential the proxy injects.
    pub credential_name: Option<String>,
    pub default_model: Option<String>,
    /// caps.yaml the role capabilities are merged onto, stored exactly as given.
    pub capabilities: Option<String>,
    /// Kind-specific extras (Azure `api_version`, Vertex `project`, …).
    pub config: BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub archived_at: Option<Timestamp>,
}
