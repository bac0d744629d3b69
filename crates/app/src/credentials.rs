//! The credentials API (`auth:write` / `auth:write:own`): create with the secret fields each kind needs, list and get
//! narrowed to what the caller may see, delete (the record and its sealed material go at once), and the refusal of
//! the OAuth consent flow this deployment does not serve. `credential_for_use` is the decrypting side the egress
//! proxy's broker calls by name.

use std::collections::BTreeMap;
use std::fmt;

use evershell_core::audit::EventType;
use evershell_core::ids::{CredentialId, OrgId, UserId};
use evershell_core::model::{Credential, CredentialKind, CredentialStatus, NOT_MINTABLE_HERE};
use evershell_core::names;
use evershell_core::scope::{Reach, Scope};
use evershell_core::{Error, ErrorCode, FieldErrors, Result, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::App;
use crate::caller::Caller;
use crate::org_secrets::{MAX_VALUE_BYTES, aad, check_name};
use crate::sealing::SecretString;

/// `provider_config` keys that would carry secret material: refused, so a secret never lands in a readable column.
const SECRET_CONFIG_KEYS: &[&str] =
    &["client_secret", "password", "api_key", "service_account_json", "private_key", "refresh_token", "access_token"];

/// `POST /v1/credentials`. Which secret field is required depends on `kind` (see `docs/API.md`); a secret field the
/// kind does not use is refused, never ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    /// Referenced from caps transforms (`auth: <name>`). Unique among the org's credentials; a personal override
    /// carries the name of the org credential it overrides.
    pub name: String,
    /// e.g. `google`, `microsoft`, `github`.
    pub provider: String,
    pub kind: CredentialKind,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Non-secret settings: `client_id`, `tenant_id` (Microsoft), `subject`, `username`, `token_url`, …
    #[serde(default)]
    pub provider_config: BTreeMap<String, String>,
    /// The service-account key, as a JSON object or a string holding one.
    #[schema(value_type = Option<Object>)]
    pub service_account_json: Option<ServiceAccountJson>,
    #[schema(value_type = Option<String>)]
    pub client_secret: Option<SecretString>,
    #[schema(value_type = Option<String>)]
    pub api_key: Option<SecretString>,
    #[schema(value_type = Option<String>)]
    pub password: Option<SecretString>,
    /// A credential of the caller's own (`user_id` set), overriding the org credential of the same name for them.
    #[serde(default)]
    pub personal: bool,
    /// `oauth2_authorization_code` org credentials only: members may add personal overrides.
    #[serde(default)]
    pub allow_user_override: bool,
}

/// A service-account key given as a JSON object or as a string holding one. `Debug` is redacted.
#[derive(Clone)]
pub struct ServiceAccountJson(SecretString);

impl fmt::Debug for ServiceAccountJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for ServiceAccountJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Self(SecretString::new(s))),
            v @ serde_json::Value::Object(_) => Ok(Self(SecretString::new(v.to_string()))),
            _ => Err(serde::de::Error::custom("must be a JSON object (or a string holding one)")),
        }
    }
}

/// The sealed part of a credential, as the broker gets it back. `Debug` is redacted.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct CredentialSecret {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_json: Option<String>,
}

impl fmt::Debug for CredentialSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialSecret(<redacted>)")
    }
}

impl Drop for CredentialSecret {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for s in [&mut self.api_key, &mut self.password, &mut self.client_secret, &mut self.service_account_json] {
            s.zeroize();
        }
    }
}

/// What the broker gets for a credential name.
#[derive(Debug)]
pub enum CredentialUse {
    /// Inject or mint from this.
    Ready { credential: Box<Credential>, secret: CredentialSecret },
    /// No such credential (deleted, or never created): the audit row says `auth_failures.<name>: auth_unavailable`.
    Unavailable,
    /// The credential exists but cannot be used here: `reason` is its `last_minted_status` (or its status).
    NotUsable { credential: Box<Credential>, reason: String },
}

impl CredentialUse {
    /// The `auth_failures.<name>` value for an audit row, `None` when ready.
    pub fn failure(&self) -> Option<&str> {
        match self {
            CredentialUse::Ready { .. } => None,
            CredentialUse::Unavailable => Some("auth_unavailable"),
            CredentialUse::NotUsable { reason, .. } => Some(reason),
        }
    }
}

/// Which secret field each kind needs, and which `provider_config` keys.
fn requirements(kind: CredentialKind, provider: &str) -> (&'static str, Vec<&'static str>) {
    use CredentialKind::*;
    match kind {
        Oauth2JwtBearer => ("service_account_json", vec![]),
        Oauth2JwtBearerWithSubject => ("service_account_json", vec!["subject"]),
        Oauth2ClientAssertion => ("service_account_json", vec!["client_id"]),
        Oauth2ClientCredentials | Oauth2AuthorizationCode => {
            let mut cfg = vec!["client_id"];
            if provider == "microsoft" {
                cfg.push("tenant_id");
            }
            ("client_secret", cfg)
        }
        ApiKey | QueryApiKey => ("api_key", vec![]),
        BasicAuth => ("password", vec!["username"]),
    }
}

fn validate(req: &CreateCredential) -> Result<()> {
    let mut errs = FieldErrors::default();
    check_name(&mut errs, "name", &req.name);
    names::check_slug(&mut errs, "provider", &req.provider);
    if req.scopes.len() > 64 {
        errs.add("scopes", "must have at most 64 entries");
    }
    for (i, s) in req.scopes.iter().enumerate() {
        if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errs.add(format!("scopes[{i}]"), "must be 1-512 characters without whitespace");
        }
    }
    if req.provider_config.len() > 32 {
        errs.add("provider_config", "must have at most 32 keys");
    }
    for (k, v) in &req.provider_config {
        let field = format!("provider_config.{k}");
        if SECRET_CONFIG_KEYS.contains(&k.as_str()) {
            errs.add(field, "secret material goes in the top-level secret fields, never in provider_config");
        } else if k.is_empty()
            || k.len() > 64
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            errs.add(field, "keys must be 1-64 characters of letters, digits, '_', '-', '.'");
        } else if v.trim().is_empty() || v.chars().count() > 2048 {
            errs.add(field, "must be 1-2048 characters");
        }
    }
    let (needed, config) = requirements(req.kind, &req.provider);
    let given: [(&str, Option<&str>); 4] = [
        ("service_account_json", req.service_account_json.as_ref().map(|s| s.0.expose())),
        ("client_secret", req.client_secret.as_ref().map(SecretString::expose)),
        ("api_key", req.api_key.as_ref().map(SecretString::expose)),
        ("password", req.password.as_ref().map(SecretString::expose)),
    ];
    for (field, value) in given {
        match (field == needed, value) {
            (true, None) => errs.add(field, format!("is required for kind {}", req.kind.as_str())),
            (true, Some("")) => errs.add(field, "must not be empty"),
            (true, Some(v)) if v.len() > MAX_VALUE_BYTES => {
                errs.add(field, format!("must be at most {MAX_VALUE_BYTES} bytes"))
            }
            (false, Some(_)) => errs.add(field, format!("is not used by kind {}", req.kind.as_str())),
            _ => {}
        }
    }
    if let Some(sa) = &req.service_account_json
        && !matches!(serde_json::from_str::<serde_json::Value>(sa.0.expose()), Ok(serde_json::Value::Object(_)))
    {
        errs.add("service_account_json", "must be a JSON object (or a string holding one)");
    }
    for key in config {
        if !req.provider_config.contains_key(key) {
            errs.add(format!("provider_config.{key}"), format!("is required for kind {}", req.kind.as_str()));
        }
    }
    if req.allow_user_override && (req.kind != CredentialKind::Oauth2AuthorizationCode || req.personal) {
        errs.add("allow_user_override", "applies only to org-scoped oauth2_authorization_code credentials");
    }
    errs.into_result()
}

fn not_found() -> Error {
    Error::new(ErrorCode::CredentialNotFound, "no such credential in this organisation")
}

/// Whether the caller may see `c`: everyone sees the org's credentials and their own personal ones; unscoped
/// `auth:write` sees every member's.
fn visible(caller: &Caller, c: &Credential) -> bool {
    c.user_id.is_none() || c.user_id == caller.user_id() || caller.scopes.contains(Scope::AuthWrite)
}

impl App {
    pub async fn create_credential(&self, caller: &Caller, req: CreateCredential) -> Result<Credential> {
        validate(&req)?;
        let user_id = match (req.personal, caller.user_id()) {
            (false, _) => None,
            (true, Some(u)) => Some(u),
            (true, None) => {
                return Err(Error::invalid_field(
                    "personal",
                    "a personal credential needs a signed-in user; API keys have none",
                ));
            }
        };
        if caller.reach(Scope::AuthWrite)? == Reach::Own {
            if !req.personal || req.kind != CredentialKind::Oauth2AuthorizationCode {
                return Err(Error::permission_denied(
                    "with auth:write:own a member may only create personal oauth2_authorization_code overrides",
                ));
            }
            let base = self.store.get_org_credential_by_name(caller.org_id, &req.name).await?;
            if !base.is_some_and(|b| b.allow_user_override && b.kind == CredentialKind::Oauth2AuthorizationCode) {
                return Err(Error::permission_denied(format!(
                    "no org credential named `{}` allows personal overrides",
                    req.name
                )));
            }
        }
        self.ensure_billing(caller).await?;
        let now = Timestamp::now();
        let id = CredentialId::new();
        let (status, last_minted_status) = if req.kind.mintable_here() {
            (CredentialStatus::Active, None)
        } else {
            (CredentialStatus::Failed, Some(NOT_MINTABLE_HERE.to_string()))
        };
        let c = Credential {
            id,
            org_id: caller.org_id,
            user_id,
            name: req.name.clone(),
            provider: req.provider.clone(),
            kind: req.kind,
            scopes: req.scopes.clone(),
            durable_ref: format!("sealed:{id}"),
            provider_config: req.provider_config.clone(),
            last_minted_at: None,
            last_minted_status,
            allow_user_override: req.allow_user_override,
            status,
            created_by_user_id: caller.user_id(),
            created_at: now,
            updated_at: now,
        };
        let secret = CredentialSecret {
            api_key: req.api_key.as_ref().map(|s| s.expose().to_string()),
            password: req.password.as_ref().map(|s| s.expose().to_string()),
            client_secret: req.client_secret.as_ref().map(|s| s.expose().to_string()),
            service_account_json: req.service_account_json.as_ref().map(|s| s.0.expose().to_string()),
        };
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(&secret).map_err(Error::internal)?);
        let sealed = self.master_key()?.seal(&aad(c.org_id, c.id), &plain)?;
        let audit = caller.audit(EventType::CredentialCreated).target("credential", c.id).details(serde_json::json!({
            "name": c.name, "provider": c.provider, "kind": c.kind, "personal": c.user_id.is_some(),
        }));
        self.store.create_credential(&c, &sealed, &[audit]).await?;
        tracing::info!(credential_id = %c.id, org_id = %c.org_id, kind = c.kind.as_str(), "credential created");
        Ok(c)
    }

    pub async fn list_credentials(&self, caller: &Caller) -> Result<Vec<Credential>> {
        let all = self.store.list_credentials(caller.org_id).await?;
        Ok(all.into_iter().filter(|c| visible(caller, c)).collect())
    }

    /// Another member's personal credential is 404 to callers without unscoped `auth:write`.
    pub async fn get_credential(&self, caller: &Caller, id: &str) -> Result<Credential> {
        let id: CredentialId = id.parse().map_err(|_| not_found())?;
        let c = self.store.get_credential(caller.org_id, id).await?.ok_or_else(not_found)?;
        if visible(caller, &c) { Ok(c) } else { Err(not_found()) }
    }

    /// `:own` callers may only act on their own personal credentials.
    fn check_credential_write(caller: &Caller, c: &Credential) -> Result<()> {
        match caller.reach(Scope::AuthWrite)? {
            Reach::Org => Ok(()),
            Reach::Own if c.user_id.is_some() && c.user_id == caller.user_id() => Ok(()),
            Reach::Own => Err(Error::permission_denied(
                "with auth:write:own a member may only act on their own personal credentials",
            )),
        }
    }

    /// Delete the record and its sealed material: the next use by name finds nothing (`auth_unavailable`).
    /// Wind-down: allowed whatever the billing posture.
    pub async fn delete_credential(&self, caller: &Caller, id: &str) -> Result<()> {
        let c = self.get_credential(caller, id).await?;
        Self::check_credential_write(caller, &c)?;
        let audit = caller.audit(EventType::CredentialDeleted).target("credential", c.id).details(serde_json::json!({
            "name": c.name, "provider": c.provider, "kind": c.kind, "personal": c.user_id.is_some(),
        }));
        self.store.delete_credential(caller.org_id, c.id, &[audit]).await?;
        tracing::info!(credential_id = %c.id, org_id = %c.org_id, "credential deleted");
        Ok(())
    }

    /// `POST /v1/credentials/{id}/oauth/start`: this deployment serves no consent flow (no provider authorize URL,
    /// no `/oauth/callback`), so after the visibility and ownership checks the answer is `not_supported`.
    pub async fn start_oauth(&self, caller: &Caller, id: &str) -> Result<std::convert::Infallible> {
        let c = self.get_credential(caller, id).await?;
        Self::check_credential_write(caller, &c)?;
        if c.kind != CredentialKind::Oauth2AuthorizationCode {
            return Err(Error::invalid_field(
                "kind",
                "the consent flow applies only to oauth2_authorization_code credentials",
            ));
        }
        Err(Error::new(
            ErrorCode::NotSupported,
            "the OAuth authorization-code flow is not available in this deployment: it serves no consent redirect or \
             /oauth/callback, so oauth2_authorization_code credentials stay stored but not mintable",
        ))
    }

    /// The broker's lookup: the credential `name` as seen by `user` (their personal override first, else the
    /// org's), with its material opened. Never log or return what this gives.
    pub async fn credential_for_use(&self, org: OrgId, name: &str, user: Option<UserId>) -> Result<CredentialUse> {
        credential_for_use(self.store.as_ref(), self.master_key()?, org, name, user).await
    }

    /// The broker's bookkeeping after a mint: success sets `last_minted_at`; a terminal failure sets `needs_reauth`
    /// with the reason in `last_minted_status`.
    pub async fn record_credential_mint(&self, org: OrgId, id: CredentialId, outcome: Result<(), &str>) -> Result<()> {
        let now = Timestamp::now();
        match outcome {
            Ok(()) => self.store.record_credential_mint(org, id, CredentialStatus::Active, Some(now), None, now).await,
            Err(reason) => {
                self.store.record_credential_mint(org, id, CredentialStatus::NeedsReauth, None, Some(reason), now).await
            }
        }
    }
}

/// The decrypting side, for whoever holds the store and the master key (the app, the egress directory).
pub async fn credential_for_use(
    store: &dyn evershell_store::Store,
    key: &crate::sealing::MasterKey,
    org: OrgId,
    name: &str,
    user: Option<UserId>,
) -> Result<CredentialUse> {
    let Some((c, sealed)) = store.credential_material(org, name, user).await? else {
        tracing::debug!(org_id = %org, credential = name, "credential unavailable");
        return Ok(CredentialUse::Unavailable);
    };
    if c.status != CredentialStatus::Active {
        let reason = c.last_minted_status.clone().unwrap_or_else(|| c.status.as_str().to_string());
        return Ok(CredentialUse::NotUsable { credential: Box::new(c), reason });
    }
    let plain = key.open(&aad(org, c.id), &sealed)?;
    let secret: CredentialSecret = serde_json::from_slice(&plain)
        .map_err(|_| Error::internal(anyhow::anyhow!("credential {} material is not readable", c.id)))?;
    Ok(CredentialUse::Ready { credential: Box::new(c), secret })
}
