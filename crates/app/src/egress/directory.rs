//! `StoreDirectory`: the proxy's `Directory` over the store and the master key — the same code whether the proxy runs
//! inside `evershell serve` or as `evershell proxy`. Pod address → workspace (and its running task, while that task's
//! capability token is live: `egress::task_capability`) → role → provider → merged caps policy;
//! credentials decrypted and put in their wire form (OAuth2 client-credentials handed to the broker as a grant, kinds
//! this deployment cannot mint reported as such); budget counters by compare-and-set; audit rows in batches.

use std::net::IpAddr;
use std::sync::Arc;

use evershell_core::audit::AuditEvent;
use evershell_core::ids::{OrgId, UserId};
use evershell_core::model::{Credential, CredentialKind, CredentialStatus, NOT_MINTABLE_HERE};
use evershell_core::policy::{Counter, CredentialMaterial, Policy};
use evershell_core::{Result, Timestamp};
use evershell_proxy::{
    BudgetKey, BudgetMove, ClientCredentialsGrant, CredentialForUse, Directory, MintResult, PodIdentity,
};
use evershell_store::{BudgetCounterMove, Store};

use crate::credentials::{CredentialSecret, CredentialUse};
use crate::sealing::MasterKey;

pub struct StoreDirectory {
    store: Arc<dyn Store>,
    key: MasterKey,
}

impl StoreDirectory {
    pub fn new(store: Arc<dyn Store>, key: MasterKey) -> Self {
        Self { store, key }
    }
}

/// The token endpoint of a client-credentials credential: `provider_config.token_url`, else the provider's
/// well-known one.
fn token_url(c: &Credential) -> Option<String> {
    if let Some(u) = c.provider_config.get("token_url") {
        return Some(u.clone());
    }
    match c.provider.as_str() {
        "google" => Some("https://oauth2.googleapis.com/token".into()),
        "microsoft" => c
            .provider_config
            .get("tenant_id")
            .map(|t| format!("https://login.microsoftonline.com/{t}/oauth2/v2.0/token")),
        "github" => Some("https://github.com/login/oauth/access_token".into()),
        _ => None,
    }
}

fn for_use(c: &Credential, secret: &CredentialSecret) -> CredentialForUse {
    let missing = |what: &str| CredentialForUse::NotUsable { reason: format!("{what}_missing") };
    let cfg = |k: &str| c.provider_config.get(k).cloned();
    match c.kind {
        CredentialKind::ApiKey => match &secret.api_key {
            Some(key) => {
                CredentialForUse::Ready(CredentialMaterial::ApiKey { key: key.clone(), header: cfg("header") })
            }
            None => missing("api_key"),
        },
        CredentialKind::QueryApiKey => match &secret.api_key {
            Some(key) => {
                CredentialForUse::Ready(CredentialMaterial::QueryApiKey { key: key.clone(), param: cfg("param") })
            }
            None => missing("api_key"),
        },
        CredentialKind::BasicAuth => match (cfg("username"), &secret.password) {
            (Some(username), Some(password)) => {
                CredentialForUse::Ready(CredentialMaterial::BasicAuth { username, password: password.clone() })
            }
            _ => missing("password"),
        },
        CredentialKind::Oauth2ClientCredentials => match (token_url(c), cfg("client_id"), &secret.client_secret) {
            (Some(token_url), Some(client_id), Some(client_secret)) => {
                CredentialForUse::ClientCredentials(ClientCredentialsGrant {
                    credential_id: c.id.to_string(),
                    version: format!("{}:{}", c.id, c.updated_at.millis()),
                    token_url,
                    client_id,
                    client_secret: client_secret.clone(),
                    scopes: c.scopes.clone(),
                })
            }
            (None, _, _) => missing("token_url"),
            (_, None, _) => missing("client_id"),
            _ => missing("client_secret"),
        },
        CredentialKind::Oauth2AuthorizationCode
        | CredentialKind::Oauth2JwtBearer
        | CredentialKind::Oauth2JwtBearerWithSubject
        | CredentialKind::Oauth2ClientAssertion => CredentialForUse::NotUsable { reason: NOT_MINTABLE_HERE.into() },
    }
}

#[async_trait::async_trait]
impl Directory for StoreDirectory {
    async fn identity(&self, addr: IpAddr) -> Result<Option<PodIdentity>> {
        let Some((ws_id, pod, expires)) = self.store.workspace_by_pod_address(&addr.to_string()).await? else {
            return Ok(None);
        };
        let Some(ws) = self.store.get_workspace_by_id(ws_id).await? else { return Ok(None) };
        if ws.observed.pod_id != Some(pod) {
            return Ok(None);
        }
        let role = self.store.get_role(ws.org_id, ws.role_id).await?;
        let provider = match &role {
            Some(r) => self.store.get_provider(ws.org_id, r.provider_id).await?,
            None => None,
        };
        let policy = match (&role, &provider) {
            (Some(r), Some(p)) => Policy::for_role(p, r).map(Arc::new).map_err(|e| format!("{e:?}")),
            _ => Err("the workspace's role or provider is gone".to_string()),
        };
        // The running task, while its capability token is live (and the task open: the store joins its status).
        let task_id = match self.store.task_capability_of_pod(ws.id, pod).await? {
            Some((task, expires)) if expires > Timestamp::now() => Some(task),
            _ => None,
        };
        Ok(Some(PodIdentity {
            org_id: ws.org_id,
            workspace_id: ws.id,
            workspace_status: ws.status(),
            pod_id: pod,
            task_id,
            role: role.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
            provider: provider.map(|p| p.name),
            user_id: ws.created_by_user_id,
            policy,
            capability_expires_at: expires,
        }))
    }

    async fn secret(&self, org: OrgId, name: &str) -> Result<Option<String>> {
        Ok(crate::org_secrets::secret_value(self.store.as_ref(), &self.key, org, name).await?.map(|v| v.to_string()))
    }

    async fn credential(&self, org: OrgId, name: &str, user: Option<UserId>) -> Result<CredentialForUse> {
        Ok(match crate::credentials::credential_for_use(self.store.as_ref(), &self.key, org, name, user).await? {
            CredentialUse::Ready { credential, secret } => for_use(&credential, &secret),
            CredentialUse::Unavailable => CredentialForUse::Unavailable,
            CredentialUse::NotUsable { reason, .. } => CredentialForUse::NotUsable { reason },
        })
    }

    async fn record_mint(&self, org: OrgId, credential_id: &str, result: &MintResult) -> Result<()> {
        let Ok(id) = credential_id.parse() else { return Ok(()) };
        let now = Timestamp::now();
        let r = match result {
            MintResult::Minted => {
                self.store.record_credential_mint(org, id, CredentialStatus::Active, Some(now), Some("ok"), now).await
            }
            MintResult::Terminal(why) => {
                self.store.record_credential_mint(org, id, CredentialStatus::NeedsReauth, None, Some(why), now).await
            }
            // Worth another try: the credential stays usable, the status says what happened.
            MintResult::Transient(why) => {
                self.store.record_credential_mint(org, id, CredentialStatus::Active, None, Some(why), now).await
            }
        };
        match r {
            // Deleted meanwhile: nothing to note.
            Err(e) if e.code == evershell_core::ErrorCode::CredentialNotFound => Ok(()),
            other => other,
        }
    }

    async fn budget_counters(&self, keys: &[BudgetKey]) -> Result<Vec<Counter>> {
        let keys: Vec<(String, String)> = keys.iter().map(|k| (k.scope.clone(), k.name.clone())).collect();
        self.store.budget_counters(&keys).await
    }

    async fn charge_budgets(&self, moves: &[BudgetMove]) -> Result<bool> {
        let moves: Vec<BudgetCounterMove> = moves
            .iter()
            .map(|m| BudgetCounterMove {
                scope: m.key.scope.clone(),
                name: m.key.name.clone(),
                seen: m.seen,
                new: m.new,
            })
            .collect();
        self.store.charge_budgets(&moves, Timestamp::now()).await
    }

    async fn add_budget_bytes(&self, key: &BudgetKey, bytes: u64) -> Result<()> {
        self.store.add_budget_bytes(&key.scope, &key.name, bytes, Timestamp::now()).await
    }

    async fn write_audit(&self, rows: Vec<AuditEvent>) -> Result<()> {
        self.store.append_audit(&rows).await
    }
}
