//! The secrets API (`secrets:write`): create, list, rotate and delete named values, sealed at rest; and
//! `secret_value`, the decrypting side the egress proxy calls by name for `secrets["name"]` transforms.

use evershell_core::audit::EventType;
use evershell_core::ids::{OrgId, SecretId};
use evershell_core::model::Secret;
use evershell_core::names::{self, MAX_TEXT};
use evershell_core::{Error, ErrorCode, FieldErrors, Result, Timestamp};
use serde::Deserialize;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::App;
use crate::caller::Caller;
use crate::sealing::{MasterKey, SecretString};

/// Longest secret or credential name.
pub const MAX_NAME: usize = 128;
/// Largest secret value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// `POST /v1/secrets`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecret {
    /// Unique in the org; referenced from caps transforms as `secrets["name"]`. 1-128 characters of letters, digits,
    /// `_`, `-`, `.`, starting with a letter or digit.
    pub name: String,
    /// The value (1 byte to 64 KiB). Stored sealed; never returned.
    #[schema(value_type = String)]
    pub value: SecretString,
    pub description: Option<String>,
}

/// `PUT /v1/secrets/{id}`: rotate the value.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    #[schema(value_type = String)]
    pub value: SecretString,
}

/// A name a caps transform can reference (secrets and credentials).
pub fn check_name(errs: &mut FieldErrors, field: &str, value: &str) {
    if value.is_empty() {
        errs.add(field, "must not be empty");
    } else if value.len() > MAX_NAME {
        errs.add(field, format!("must be at most {MAX_NAME} characters"));
    } else if !value.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        errs.add(field, "must be letters, digits, '_', '-' and '.', starting with a letter or digit");
    }
}

fn check_value(errs: &mut FieldErrors, value: &SecretString) {
    let v = value.expose();
    if v.is_empty() {
        errs.add("value", "must not be empty");
    } else if v.len() > MAX_VALUE_BYTES {
        errs.add("value", format!("must be at most {MAX_VALUE_BYTES} bytes"));
    }
}

fn not_found() -> Error {
    Error::new(ErrorCode::SecretNotFound, "no such secret in this organisation")
}

/// The associated data binding a sealed value to its row.
pub(crate) fn aad(org: OrgId, id: impl std::fmt::Display) -> String {
    format!("{org}/{id}")
}

impl App {
    /// The master key, or an internal error when the server was built without one.
    pub(crate) fn master_key(&self) -> Result<&MasterKey> {
        self.master_key
            .as_ref()
            .ok_or_else(|| Error::internal(anyhow::anyhow!("this server was started without a master key")))
    }

    pub async fn create_secret(&self, caller: &Caller, req: CreateSecret) -> Result<Secret> {
        let mut errs = FieldErrors::default();
        check_name(&mut errs, "name", &req.name);
        check_value(&mut errs, &req.value);
        names::check_opt_text(&mut errs, "description", req.description.as_deref(), MAX_TEXT);
        errs.into_result()?;
        self.ensure_billing(caller).await?;
        let now = Timestamp::now();
        let secret = Secret {
            id: SecretId::new(),
            org_id: caller.org_id,
            name: req.name,
            description: req.description,
            created_at: now,
            updated_at: now,
        };
        let sealed = self.master_key()?.seal(&aad(secret.org_id, secret.id), req.value.expose().as_bytes())?;
        let audit = caller
            .audit(EventType::SecretCreated)
            .target("secret", secret.id)
            .details(serde_json::json!({ "name": secret.name }));
        self.store.create_secret(&secret, &sealed, &[audit]).await?;
        tracing::info!(secret_id = %secret.id, org_id = %secret.org_id, "secret created");
        Ok(secret)
    }

    pub async fn list_secrets(&self, caller: &Caller) -> Result<Vec<Secret>> {
        self.store.list_secrets(caller.org_id).await
    }

    async fn find_secret(&self, caller: &Caller, id: &str) -> Result<Secret> {
        let id: SecretId = id.parse().map_err(|_| not_found())?;
        self.store.get_secret(caller.org_id, id).await?.ok_or_else(not_found)
    }

    /// Replace the value; the name and id stay, so transforms referring to it pick up the new value.
    pub async fn rotate_secret(&self, caller: &Caller, id: &str, req: RotateSecret) -> Result<Secret> {
        let secret = self.find_secret(caller, id).await?;
        let mut errs = FieldErrors::default();
        check_value(&mut errs, &req.value);
        errs.into_result()?;
        self.ensure_billing(caller).await?;
        let sealed = self.master_key()?.seal(&aad(secret.org_id, secret.id), req.value.expose().as_bytes())?;
        let audit = caller
            .audit(EventType::SecretRotated)
            .target("secret", secret.id)
            .details(serde_json::json!({ "name": secret.name }));
        let updated = self.store.rotate_secret(caller.org_id, secret.id, &sealed, Timestamp::now(), &[audit]).await?;
        tracing::info!(secret_id = %secret.id, org_id = %secret.org_id, "secret rotated");
        Ok(updated)
    }

    /// Delete a secret (wind-down: allowed whatever the billing posture). The sealed value goes with the row.
    pub async fn delete_secret(&self, caller: &Caller, id: &str) -> Result<()> {
        let secret = self.find_secret(caller, id).await?;
        let audit = caller
            .audit(EventType::SecretDeleted)
            .target("secret", secret.id)
            .details(serde_json::json!({ "name": secret.name }));
        self.store.delete_secret(caller.org_id, secret.id, &[audit]).await?;
        tracing::info!(secret_id = %secret.id, org_id = %secret.org_id, "secret deleted");
        Ok(())
    }

    /// The plaintext of the org's secret `name`, for the egress proxy's `secrets["name"]` transforms; `None` when no
    /// such secret exists (any more). Never log or return what this gives.
    pub async fn secret_value(&self, org: OrgId, name: &str) -> Result<Option<Zeroizing<String>>> {
        secret_value(self.store.as_ref(), self.master_key()?, org, name).await
    }
}

/// The decrypting side, for whoever holds the store and the master key (the app, the egress directory).
pub async fn secret_value(
    store: &dyn evershell_store::Store,
    key: &MasterKey,
    org: OrgId,
    name: &str,
) -> Result<Option<Zeroizing<String>>> {
    let Some((secret, sealed)) = store.secret_material(org, name).await? else { return Ok(None) };
    let plain = key.open(&aad(org, secret.id), &sealed)?;
    let text = String::from_utf8(plain.to_vec())
        .map_err(|_| Error::internal(anyhow::anyhow!("secret {} is not UTF-8", secret.id)))?;
    Ok(Some(Zeroizing::new(text)))
}
