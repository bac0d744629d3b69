//! `Directory`: the narrow seam between the policy gate and the control plane's state. The gate asks it who a peer
//! address is (and under which merged policy and capability token), for a secret or a credential by name, to move
//! budget counters by compare-and-set, to note a credential mint, and to take a batch of audit rows. The control
//! plane implements it over its store; tests implement it in memory. Nothing else of the control plane is reachable
//! from the proxy.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use evershell_core::Result;
use evershell_core::Timestamp;
use evershell_core::audit::AuditEvent;
use evershell_core::ids::{OrgId, PodId, TaskId, UserId, WorkspaceId};
use evershell_core::lifecycle::WorkspaceStatus;
use evershell_core::policy::{CredentialMaterial, Policy};

/// Who is behind a pod address, as of the last pod start.
#[derive(Debug, Clone)]
pub struct PodIdentity {
    pub org_id: OrgId,
    pub workspace_id: WorkspaceId,
    pub workspace_status: WorkspaceStatus,
    pub pod_id: PodId,
    /// The task running on the pod: set while the control plane holds a live capability token for it (granted
    /// before the task is delivered, revoked when it ends). `None` between tasks: requests are then the pod's own
    /// (exec calls), allowed under the same policy, and their `per_task` budgets are counted per pod.
    pub task_id: Option<TaskId>,
    /// Role name (for audit rows).
    pub role: String,
    /// Provider name (for audit rows).
    pub provider: Option<String>,
    /// Whose personal credentials apply (the workspace's creator), if anyone's.
    pub user_id: Option<UserId>,
    /// The merged provider → role policy, or why it could not be built (then every request is denied).
    pub policy: std::result::Result<Arc<Policy>, String>,
    /// When the pod's capability token expires; `None` = the pod holds none (never minted, or revoked at stop).
    pub capability_expires_at: Option<Timestamp>,
}

impl PodIdentity {
    /// Why this pod may not send anything now, if it may not.
    pub fn refusal(&self, now: Timestamp) -> Option<&'static str> {
        if !matches!(self.workspace_status, WorkspaceStatus::Idle | WorkspaceStatus::Busy) {
            return Some("workspace_not_running");
        }
        match self.capability_expires_at {
            Some(t) if t > now => None,
            _ => Some("capability_invalid"),
        }
    }
}

/// An OAuth2 client-credentials grant the broker mints from. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentialsGrant {
    /// The credential's id: the broker's cache key.
    pub credential_id: String,
    /// Changes when the credential is replaced (a new id or material): a cached token of another version is dropped.
    pub version: String,
    /// `https://…` token endpoint (dialled like any upstream: `upstream_hosts` apply).
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
}

impl fmt::Debug for ClientCredentialsGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsGrant")
            .field("credential_id", &self.credential_id)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// What a credential name gives the broker.
#[derive(Debug, Clone)]
pub enum CredentialForUse {
    /// Material to stamp as is (`api_key`, `basic_auth`, `query_api_key`).
    Ready(CredentialMaterial),
    /// An `oauth2_client_credentials` credential: the broker mints (or reuses a cached token).
    ClientCredentials(ClientCredentialsGrant),
    /// Stored, but this deployment cannot use it (a kind it does not mint, `needs_reauth`, revoked, misconfigured):
    /// the reason goes into `auth_failures.<name>`.
    NotUsable { reason: String },
    /// No such credential (deleted, or never created).
    Unavailable,
}

/// How a mint attempt ended, for the credential's `last_minted_*` bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MintResult {
    Minted,
    /// The token endpoint refused the client (400/401 `invalid_client` and the like): the credential needs reauth.
    Terminal(String),
    /// The endpoint could not be reached or failed (5xx, timeout, garbage): retried on the next request.
    Transient(String),
}

/// One budget counter: `scope` is `ws_…` (per-workspace budgets), `task_…` (per-task budgets of a request made
/// while a task runs) or `pod_…` (per-task budgets of a request made between tasks: the pod's life is then the
/// unit); `name` is `<capability>.per_workspace` / `<capability>.per_task`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BudgetKey {
    pub scope: String,
    pub name: String,
}

/// One compare-and-set move of a counter: from `seen` (as read; a missing counter reads as zero) to `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetMove {
    pub key: BudgetKey,
    pub seen: evershell_core::policy::Counter,
    pub new: evershell_core::policy::Counter,
}

/// The control plane as the proxy sees it.
#[async_trait::async_trait]
pub trait Directory: Send + Sync + 'static {
    /// The pod whose address is `addr`, if one is recorded.
    async fn identity(&self, addr: IpAddr) -> Result<Option<PodIdentity>>;
    /// The org's secret `name` (for `${secrets["name"]}`).
    async fn secret(&self, org: OrgId, name: &str) -> Result<Option<String>>;
    /// The credential `name` for use on behalf of `user` (their personal one first, else the org's).
    async fn credential(&self, org: OrgId, name: &str, user: Option<UserId>) -> Result<CredentialForUse>;
    /// Note a mint attempt on the credential.
    async fn record_mint(&self, org: OrgId, credential_id: &str, result: &MintResult) -> Result<()>;
    /// The counters under `keys`, in order (zero when absent).
    async fn budget_counters(&self, keys: &[BudgetKey]) -> Result<Vec<evershell_core::policy::Counter>>;
    /// Apply every move, all or nothing, only if each counter still reads as `seen`. `false` (nothing written) when
    /// another request moved one first.
    async fn charge_budgets(&self, moves: &[BudgetMove]) -> Result<bool>;
    /// Add response bytes to a counter after the fact (never refused).
    async fn add_budget_bytes(&self, key: &BudgetKey, bytes: u64) -> Result<()>;
    /// Write a batch of audit rows.
    async fn write_audit(&self, rows: Vec<AuditEvent>) -> Result<()>;
}
