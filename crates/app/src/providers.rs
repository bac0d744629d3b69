//! Providers: create, list, get, patch (config merged key by key), archive (cascading to roles), unarchive.

use std::collections::BTreeMap;

use evershell_core::audit::EventType;
use evershell_core::ids::ProviderId;
use evershell_core::model::{Provider, ProviderKind};
use evershell_core::names::schema as sch;
use evershell_core::names::{self, MAX_LABEL, MAX_SHORT};
use evershell_core::{Error, ErrorCode, FieldErrors, Result, Timestamp, caps};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::App;
use crate::caller::Caller;
use crate::input::{double_option, patch};

/// Most keys in a provider's `config`.
const MAX_CONFIG_KEYS: usize = 64;
/// A `config` key: 1-64 letters, digits, `_`, `-`, `.`.
const CONFIG_KEY_PATTERN: &str = "^[A-Za-z0-9_.-]{1,64}$";

fn config_key_ok(k: &str) -> bool {
    !k.is_empty() && k.len() <= 64 && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// `config` as `check_fields` takes it; in a PATCH a value may be `null` (remove the key).
fn config_schema(patch: bool) -> utoipa::openapi::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let value = if patch {
        sch::text(MAX_SHORT, true).min_length(None).pattern(None::<String>)
    } else {
        ObjectBuilder::new().schema_type(Type::String).max_length(Some(MAX_SHORT))
    };
    let t = if patch { SchemaType::from_iter([Type::Object, Type::Null]) } else { SchemaType::new(Type::Object) };
    ObjectBuilder::new()
        .schema_type(t)
        .max_properties(Some(MAX_CONFIG_KEYS))
        .property_names(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(CONFIG_KEY_PATTERN))))
        .additional_properties(Some(value))
}

fn create_config_schema() -> utoipa::openapi::ObjectBuilder {
    config_schema(false)
}

fn patch_config_schema() -> utoipa::openapi::ObjectBuilder {
    config_schema(true)
}

fn hostname() -> utoipa::openapi::ObjectBuilder {
    sch::hostname(false)
}

fn opt_hostname() -> utoipa::openapi::ObjectBuilder {
    sch::hostname(true)
}

/// `POST /v1/providers`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    /// Slug, unique in the org.
    #[schema(schema_with = sch::slug)]
    pub name: String,
    pub kind: ProviderKind,
    #[schema(schema_with = sch::opt_label)]
    pub display_name: Option<String>,
    /// Upstream hostname, e.g. `api.anthropic.com`.
    #[schema(schema_with = hostname)]
    pub domain: String,
    #[schema(schema_with = sch::opt_short)]
    pub credential_name: Option<String>,
    #[schema(schema_with = sch::opt_short)]
    pub default_model: Option<String>,
    /// caps.yaml (a YAML list of capabilities).
    #[schema(schema_with = sch::opt_caps)]
    pub capabilities: Option<String>,
    #[serde(default)]
    #[schema(schema_with = create_config_schema)]
    pub config: BTreeMap<String, String>,
}

/// `PATCH /v1/providers/{id}`: only fields present change; `null` clears an optional field. `config` is merged key by
/// key: a string sets the key, `null` removes it, absent keys are unchanged; the merged map holds at most 64 keys.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchProvider {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = sch::opt_label)]
    pub display_name: Option<Option<String>>,
    #[schema(schema_with = opt_hostname)]
    pub domain: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = sch::opt_short)]
    pub credential_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = sch::opt_short)]
    pub default_model: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = sch::opt_caps)]
    pub capabilities: Option<Option<String>>,
    #[schema(schema_with = patch_config_schema)]
    pub config: Option<BTreeMap<String, Option<String>>>,
}

/// Answer of a provider archive.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProviderArchived {
    /// `archived`.
    pub status: String,
    /// How many roles were archived with it.
    pub cascaded_roles: u64,
}

fn check_fields(errs: &mut FieldErrors, p: &Provider) {
    names::check_opt_text(errs, "display_name", p.display_name.as_deref(), MAX_LABEL);
    if let Some(problem) =
        caps::domain_problem(&p.domain).or_else(|| p.domain.contains('*').then(|| "must not be a glob".into()))
    {
        errs.add("domain", problem);
    }
    names::check_opt_text(errs, "credential_name", p.credential_name.as_deref(), MAX_SHORT);
    names::check_opt_text(errs, "default_model", p.default_model.as_deref(), MAX_SHORT);
    if let Some(c) = &p.capabilities {
        caps::validate(errs, "capabilities", c);
    }
    if p.config.len() > MAX_CONFIG_KEYS {
        errs.add("config", format!("must have at most {MAX_CONFIG_KEYS} keys"));
    }
    for (k, v) in &p.config {
        if !config_key_ok(k) {
            errs.add(format!("config.{k}"), "keys must be 1-64 characters of letters, digits, '_', '-', '.'");
        } else if v.chars().count() > MAX_SHORT {
            errs.add(format!("config.{k}"), format!("must be at most {MAX_SHORT} characters"));
        }
    }
}

fn not_found() -> Error {
    Error::new(ErrorCode::ProviderNotFound, "no such provider in this organisation")
}

impl App {
    pub async fn create_provider(&self, caller: &Caller, req: CreateProvider) -> Result<Provider> {
        let now = Timestamp::now();
        let p = Provider {
            id: ProviderId::new(),
            org_id: caller.org_id,
            name: req.name,
            kind: req.kind,
            display_name: req.display_name,
            domain: req.domain.trim().trim_end_matches('.').to_ascii_lowercase(),
            credential_name: req.credential_name,
            default_model: req.default_model,
            capabilities: req.capabilities,
            config: req.config,
            created_at: now,
            updated_at: now,
            archived_at: None,
        };
        let mut errs = FieldErrors::default();
        names::check_slug(&mut errs, "name", &p.name);
        check_fields(&mut errs, &p);
        errs.into_result()?;
        self.ensure_billing(caller).await?;
        let audit = caller.audit(EventType::ProviderCreated).target("provider", p.id).details(serde_json::json!({
            "name": p.name, "kind": p.kind,
        }));
        self.store.create_provider(&p, &[audit]).await?;
        Ok(p)
    }

    pub async fn list_providers(&self, caller: &Caller, include_archived: bool) -> Result<Vec<Provider>> {
        self.store.list_providers(caller.org_id, include_archived).await
    }

    pub async fn get_provider(&self, caller: &Caller, id: &str) -> Result<Provider> {
        let id: ProviderId = id.parse().map_err(|_| not_found())?;
        self.store.get_provider(caller.org_id, id).await?.ok_or_else(not_found)
    }

    pub async fn patch_provider(&self, caller: &Caller, id: &str, req: PatchProvider) -> Result<Provider> {
        let mut p = self.get_provider(caller, id).await?;
        let mut errs = FieldErrors::default();
        if matches!(req.domain.as_deref(), Some(d) if d.trim().is_empty()) {
            errs.add("domain", "must not be blank");
        }
        p.display_name = patch(&p.display_name, &req.display_name);
        if let Some(d) = &req.domain {
            p.domain = d.trim().trim_end_matches('.').to_ascii_lowercase();
        }
        p.credential_name = patch(&p.credential_name, &req.credential_name);
        p.default_model = patch(&p.default_model, &req.default_model);
        p.capabilities = patch(&p.capabilities, &req.capabilities);
        if let Some(changes) = &req.config {
            for (k, v) in changes {
                match v {
                    Some(v) => {
                        p.config.insert(k.clone(), v.clone());
                    }
                    None => {
                        p.config.remove(k);
                    }
                }
            }
        }
        check_fields(&mut errs, &p);
        errs.into_result()?;
        self.ensure_billing(caller).await?;
        p.updated_at = Timestamp::now();
        let changed: Vec<&str> = [
            ("display_name", req.display_name.is_some()),
            ("domain", req.domain.is_some()),
            ("credential_name", req.credential_name.is_some()),
            ("default_model", req.default_model.is_some()),
            ("capabilities", req.capabilities.is_some()),
            ("config", req.config.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
        let audit = caller
            .audit(EventType::ProviderUpdated)
            .target("provider", p.id)
            .details(serde_json::json!({ "changed": changed }));
        self.store.update_provider(&p, &[audit]).await?;
        Ok(p)
    }

    /// Archive a provider and every role that uses it (refused while their workspaces run). Wind-down: no 423.
    pub async fn archive_provider(&self, caller: &Caller, id: &str) -> Result<ProviderArchived> {
        let p = self.get_provider(caller, id).await?;
        let audit = caller.audit(EventType::ProviderArchived).target("provider", p.id);
        let role_audit = {
            let caller = caller.clone();
            let provider_id = p.id;
            move |r: &evershell_core::model::AgentRole| {
                caller
                    .audit(EventType::AgentRoleArchived)
                    .target("agent_role", r.id)
                    .reason("provider_archived")
                    .details(serde_json::json!({ "provider_id": provider_id }))
            }
        };
        let cascaded =
            self.store.archive_provider(caller.org_id, p.id, Timestamp::now(), &[audit], &role_audit).await?;
        Ok(ProviderArchived { status: "archived".into(), cascaded_roles: cascaded })
    }

    pub async fn unarchive_provider(&self, caller: &Caller, id: &str) -> Result<()> {
        let p = self.get_provider(caller, id).await?;
        self.ensure_billing(caller).await?;
        if p.archived_at.is_none() {
            return Err(Error::conflict(ErrorCode::NotArchived, "the provider is not archived"));
        }
        let audit = caller.audit(EventType::ProviderUnarchived).target("provider", p.id);
        self.store.unarchive_provider(caller.org_id, p.id, Timestamp::now(), &[audit]).await
    }
}
