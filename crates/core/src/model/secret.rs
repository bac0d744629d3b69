//! Secrets and credentials as records (metadata only), and `Sealed`: encrypted material as the store keeps it. The
//! material itself never appears in these types' `Debug`, in API answers or in audit rows.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{CredentialId, OrgId, SecretId, UserId};
use crate::time::Timestamp;

/// Encrypted material (`nonce ‖ ciphertext ‖ tag`) exactly as stored. Opaque here: only the app's sealing module can
/// open it, with the master key and the owning row's id as associated data. Its `Debug` says how long it is, nothing
/// more.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed(<{} bytes redacted>)", self.0.len())
    }
}

/// An opaque named value, referenced from caps transforms as `secrets["name"]`. The value is never part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Secret {
    pub id: SecretId,
    #[serde(skip)]
    pub org_id: OrgId,
    /// Unique in the org.
    pub name: String,
    pub description: Option<String>,
    pub created_at: Timestamp,
    /// When the value was last set (creation or rotation).
    pub updated_at: Timestamp,
}

/// How the platform authenticates to an upstream with a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    Oauth2AuthorizationCode,
    Oauth2ClientCredentials,
    Oauth2JwtBearer,
    Oauth2JwtBearerWithSubject,
    Oauth2ClientAssertion,
    ApiKey,
    BasicAuth,
    QueryApiKey,
}

impl CredentialKind {
    pub const ALL: &[CredentialKind] = &[
        CredentialKind::Oauth2AuthorizationCode,
        CredentialKind::Oauth2ClientCredentials,
        CredentialKind::Oauth2JwtBearer,
        CredentialKind::Oauth2JwtBearerWithSubject,
        CredentialKind::Oauth2ClientAssertion,
        CredentialKind::ApiKey,
        CredentialKind::BasicAuth,
        CredentialKind::QueryApiKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Oauth2AuthorizationCode => "oauth2_authorization_code",
            CredentialKind::Oauth2ClientCredentials => "oauth2_client_credentials",
            CredentialKind::Oauth2JwtBearer => "oauth2_jwt_bearer",
            CredentialKind::Oauth2JwtBearerWithSubject => "oauth2_jwt_bearer_with_subject",
            CredentialKind::Oauth2ClientAssertion => "oauth2_client_assertion",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::BasicAuth => "basic_auth",
            CredentialKind::QueryApiKey => "query_api_key",
        }
    }

    /// Whether this deployment's broker can produce a header or query value from the kind: static keys, HTTP Basic
    /// and the client-credentials grant. The other kinds are stored but not mintable here.
    pub fn mintable_here(self) -> bool {
        matches!(
            self,
            CredentialKind::ApiKey
                | CredentialKind::BasicAuth
                | CredentialKind::QueryApiKey
                | CredentialKind::Oauth2ClientCredentials
        )
    }
}

/// `last_minted_status` of a credential whose kind this deployment cannot mint.
pub const NOT_MINTABLE_HERE: &str = "kind_not_mintable_here";

/// A credential's state (see the credential state machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStatus {
    /// Usable: the broker can mint (or inject) it.
    Active,
    /// The broker's last mint failed terminally (`last_minted_status` says why); a person must fix it.
    NeedsReauth,
    /// Not usable in this deployment (`last_minted_status` says why).
    Failed,
    /// Revoked.
    Revoked,
}

impl CredentialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStatus::Active => "active",
            CredentialStatus::NeedsReauth => "needs_reauth",
            CredentialStatus::Failed => "failed",
            CredentialStatus::Revoked => "revoked",
        }
    }
}

/// Authentication to an upstream, referenced by name from caps transforms (`auth: <name>`). The secret part
/// (`api_key`, `password`, `client_secret`, `service_account_json`) is sealed apart and never returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Credential {
    pub id: CredentialId,
    pub org_id: OrgId,
    /// Set only for a personal (per-user) credential.
    pub user_id: Option<UserId>,
    pub name: String,
    /// e.g. `google`, `microsoft`, `github`.
    pub provider: String,
    pub kind: CredentialKind,
    pub scopes: Vec<String>,
    /// Where the durable secret lives; in this deployment `sealed:<credential id>` (the encrypted column).
    pub durable_ref: String,
    /// Non-secret settings: `client_id`, `tenant_id`, `subject`, `username`, `token_url`, …
    pub provider_config: BTreeMap<String, String>,
    pub last_minted_at: Option<Timestamp>,
    pub last_minted_status: Option<String>,
    pub allow_user_override: bool,
    pub status: CredentialStatus,
    pub created_by_user_id: Option<UserId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}
