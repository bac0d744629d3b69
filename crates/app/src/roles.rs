//! Agent roles: create, list, get, patch (`pack_ids` replaces the list), archive (refused while workspaces run),
//! unarchive (refused while the provider is archived).

use evershell_core::audit::EventType;
use evershell_core::ids::{PackId, ProviderId, RoleId};
use evershell_core::model::{AgentRole, Environment, PoolPolicy, ThinkingEffort};
use evershell_core::names::schema as sch;
use evershell_core::names::{self, MAX_LABEL, MAX_TEXT};
use evershell_core::{Error, ErrorCode, FieldErrors, Result, Timestamp, caps};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::App;
use crate::caller::Caller;
use crate::input::{double_option, patch};

const MAX_PACKS: usize = 64;

/// Allowed ranges of the numeric fields (`check_fields`), also published in the OpenAPI document.
const TASK_TIMEOUT_SECONDS: (i64, i64) = (1, 7 * 24 * 3600);
const IDLE_TIMEOUT_SECONDS: (i64, i64) = (1, 30 * 24 * 3600);
const MAX_CONTINUATIONS: (i64, i64) = (0, 10_000);
const MAX_CONTEXT_TOKENS: (i64, i64) = (1, 100_000_000);
const POOL_SIZE: (i64, i64) = (0, 1_000);
/// Pod limits a role may set: 16 MiB to 1 TiB of memory, 16 to a million processes, 1% of a CPU to 1,000 CPUs.
const MEMORY_LIMIT_BYTES: (i64, i64) = (16 << 20, 1 << 40);
const PIDS_LIMIT: (i64, i64) = (16, 1_000_000);
const CPU_LIMIT_MILLIS: (i64, i64) = (10, 1_000_000);

mod schemas {
    //! The request fields' schemas, from the limits `check_fields` applies.
    use evershell_core::names::schema as sch;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder};

    pub fn task_timeout() -> ObjectBuilder {
        sch::opt_int(super::TASK_TIMEOUT_SECONDS.0, super::TASK_TIMEOUT_SECONDS.1)
    }
    pub fn idle_timeout() -> ObjectBuilder {
        sch::opt_int(super::IDLE_TIMEOUT_SECONDS.0, super::IDLE_TIMEOUT_SECONDS.1)
    }
    pub fn continuations() -> ObjectBuilder {
        sch::opt_int(super::MAX_CONTINUATIONS.0, super::MAX_CONTINUATIONS.1)
    }
    pub fn context_tokens() -> ObjectBuilder {
        sch::opt_int(super::MAX_CONTEXT_TOKENS.0, super::MAX_CONTEXT_TOKENS.1)
    }
    pub fn pool_size() -> ObjectBuilder {
        sch::opt_int(super::POOL_SIZE.0, super::POOL_SIZE.1)
    }
    pub fn memory_limit() -> ObjectBuilder {
        sch::opt_int(super::MEMORY_LIMIT_BYTES.0, super::MEMORY_LIMIT_BYTES.1)
            .description(Some("The pod's memory limit in bytes (no swap on top); unset: the server's default."))
    }
    pub fn pids_limit() -> ObjectBuilder {
        sch::opt_int(super::PIDS_LIMIT.0, super::PIDS_LIMIT.1)
            .description(Some("The pod's limit of processes and threads at once; unset: the server's default."))
    }
    pub fn cpu_limit() -> ObjectBuilder {
        sch::opt_int(super::CPU_LIMIT_MILLIS.0, super::CPU_LIMIT_MILLIS.1).description(Some(
            "The pod's CPU quota in thousandths of a CPU (1000 = one core); unset: the server's default.",
        ))
    }
    fn pack() -> RefOr<utoipa::openapi::Schema> {
        RefOr::Ref(utoipa::openapi::Ref::from_schema_name("PackId"))
    }
    pub fn pack_ids() -> ArrayBuilder {
        sch::distinct(pack(), super::MAX_PACKS, false)
    }
    pub fn opt_pack_ids() -> ArrayBuilder {
        sch::distinct(pack(), super::MAX_PACKS, true)
    }
    pub fn model() -> ObjectBuilder {
        sch::opt_short()
    }
}

/// `POST /v1/agent-roles`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    /// Slug, unique in the org.
    #[schema(schema_with = sch::slug)]
    pub name: String,
    #[schema(schema_with = sch::opt_label)]
    pub display_name: Option<String>,
    #[schema(schema_with = sch::opt_text)]
    pub description: Option<String>,
    #[schema(value_type = ProviderId)]
    pub provider_id: String,
    #[schema(schema_with = schemas::model)]
    pub model: Option<String>,
    #[schema(schema_with = sch::opt_caps)]
    pub capabilities: Option<String>,
    #[serde(default)]
    pub environment: Environment,
    #[schema(schema_with = sch::opt_text)]
    pub environment_description: Option<String>,
    #[schema(schema_with = schemas::task_timeout)]
    pub task_timeout_seconds: Option<i64>,
    #[schema(schema_with = schemas::idle_timeout)]
    pub idle_timeout_seconds: Option<i64>,
    pub thinking_effort: Option<ThinkingEffort>,
    #[schema(schema_with = schemas::continuations)]
    pub max_continuations: Option<i64>,
    #[schema(schema_with = schemas::context_tokens)]
    pub max_context_tokens: Option<i64>,
    #[schema(schema_with = schemas::memory_limit)]
    pub memory_limit_bytes: Option<i64>,
    #[schema(schema_with = schemas::pids_limit)]
    pub pids_limit: Option<i64>,
    #[schema(schema_with = schemas::cpu_limit)]
    pub cpu_limit_millis: Option<i64>,
    #[serde(default)]
    pub pool_policy: PoolPolicy,
    #[schema(schema_with = schemas::pool_size)]
    pub pool_size: Option<i64>,
    /// At least `pool_size`.
    #[schema(schema_with = schemas::pool_size)]
    pub pool_max_size: Option<i64>,
    /// Distinct `pack_…` ids.
    #[serde(default)]
    #[schema(schema_with = schemas::pack_ids)]
    pub pack_ids: Vec<String>,
}

/// `PATCH /v1/agent-roles/{id}`: only fields present change; `null` clears an optional field; `pack_ids` replaces
/// the whole list.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRole {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = sch::opt_label)]
    pub display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = sch::opt_text)]
    pub description: Option<Option<String>>,
    #[schema(value_type = Option<ProviderId>)]
    pub provider_id: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = schemas::model)]
    pub model: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = sch::opt_caps)]
    pub capabilities: Option<Option<String>>,
    pub environment: Option<Environment>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = sch::opt_text)]
    pub environment_description: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = schemas::task_timeout)]
    pub task_timeout_seconds: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = schemas::idle_timeout)]
    pub idle_timeout_seconds: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<ThinkingEffort>)]
    pub thinking_effort: Option<Option<ThinkingEffort>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = schemas::continuations)]
    pub max_continuations: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = schemas::context_tokens)]
    pub max_context_tokens: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = schemas::memory_limit)]
    pub memory_limit_bytes: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = schemas::pids_limit)]
    pub pids_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = schemas::cpu_limit)]
    pub cpu_limit_millis: Option<Option<i64>>,
    pub pool_policy: Option<PoolPolicy>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = schemas::pool_size)]
    pub pool_size: Option<Option<i64>>,
    /// At least `pool_size` (as it is after the patch).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = schemas::pool_size)]
    pub pool_max_size: Option<Option<i64>>,
    #[schema(schema_with = schemas::opt_pack_ids)]
    pub pack_ids: Option<Vec<String>>,
}

fn not_found() -> Error {
    Error::new(ErrorCode::RoleNotFound, "no such agent role in this organisation")
}

fn parse_packs(errs: &mut FieldErrors, raw: &[String]) -> Vec<PackId> {
    if raw.len() > MAX_PACKS {
        errs.add("pack_ids", format!("must hold at most {MAX_PACKS} packs"));
    }
    let mut out: Vec<PackId> = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        match s.parse::<PackId>() {
            Ok(id) if out.contains(&id) => errs.add(format!("pack_ids[{i}]"), "is listed twice"),
            Ok(id) => out.push(id),
            Err(e) => errs.add(format!("pack_ids[{i}]"), e.to_string()),
        }
    }
    out
}

fn check_fields(errs: &mut FieldErrors, r: &AgentRole) {
    names::check_opt_text(errs, "display_name", r.display_name.as_deref(), MAX_LABEL);
    names::check_opt_text(errs, "description", r.description.as_deref(), MAX_TEXT);
    names::check_opt_text(errs, "model", r.model.as_deref(), names::MAX_SHORT);
    names::check_opt_text(errs, "environment_description", r.environment_description.as_deref(), MAX_TEXT);
    if let Some(c) = &r.capabilities {
        caps::validate(errs, "capabilities", c);
    }
    let range = |errs: &mut FieldErrors, field: &str, v: Option<i64>, (min, max): (i64, i64)| {
        names::check_range(errs, field, v, min, max)
    };
    range(errs, "task_timeout_seconds", r.task_timeout_seconds, TASK_TIMEOUT_SECONDS);
    range(errs, "idle_timeout_seconds", r.idle_timeout_seconds, IDLE_TIMEOUT_SECONDS);
    range(errs, "max_continuations", r.max_continuations, MAX_CONTINUATIONS);
    range(errs, "max_context_tokens", r.max_context_tokens, MAX_CONTEXT_TOKENS);
    range(errs, "memory_limit_bytes", r.memory_limit_bytes, MEMORY_LIMIT_BYTES);
    range(errs, "pids_limit", r.pids_limit, PIDS_LIMIT);
    range(errs, "cpu_limit_millis", r.cpu_limit_millis, CPU_LIMIT_MILLIS);
    range(errs, "pool_size", r.pool_size, POOL_SIZE);
    range(errs, "pool_max_size", r.pool_max_size, POOL_SIZE);
    if let (Some(size), Some(max)) = (r.pool_size, r.pool_max_size)
        && max < size
    {
        errs.add("pool_max_size", "must be at least pool_size");
    }
}

impl App {
    /// Resolve and check the provider a role points at: 404 when unknown, 409 when archived.
    async fn role_provider(&self, caller: &Caller, raw: &str) -> Result<ProviderId> {
        let nf = || Error::new(ErrorCode::ProviderNotFound, "no such provider in this organisation");
        let id: ProviderId = raw.parse().map_err(|_| nf())?;
        let p = self.store.get_provider(caller.org_id, id).await?.ok_or_else(nf)?;
        if p.archived_at.is_some() {
            return Err(Error::conflict(ErrorCode::ProviderArchived, "the provider is archived; unarchive it first"));
        }
        Ok(p.id)
    }

    pub async fn create_role(&self, caller: &Caller, req: CreateRole) -> Result<AgentRole> {
        let mut errs = FieldErrors::default();
        names::check_slug(&mut errs, "name", &req.name);
        let pack_ids = parse_packs(&mut errs, &req.pack_ids);
        let now = Timestamp::now();
        let mut r = AgentRole {
            id: RoleId::new(),
            org_id: caller.org_id,
            name: req.name,
            display_name: req.display_name,
            description: req.description,
            provider_id: ProviderId::new(), // resolved below
            model: req.model,
            capabilities: req.capabilities,
            environment: req.environment,
            environment_description: req.environment_description,
            task_timeout_seconds: req.task_timeout_seconds,
            idle_timeout_seconds: req.idle_timeout_seconds,
            thinking_effort: req.thinking_effort,
            max_continuations: req.max_continuations,
            max_context_tokens: req.max_context_tokens,
            memory_limit_bytes: req.memory_limit_bytes,
            pids_limit: req.pids_limit,
            cpu_limit_millis: req.cpu_limit_millis,
            pool_policy: req.pool_policy,
            pool_size: req.pool_size,
            pool_max_size: req.pool_max_size,
            pack_ids,
            created_at: now,
            updated_at: now,
            archived_at: None,
        };
        check_fields(&mut errs, &r);
        errs.into_result()?;
        r.provider_id = self.role_provider(caller, &req.provider_id).await?;
        self.ensure_billing(caller).await?;
        let audit = caller.audit(EventType::AgentRoleCreated).target("agent_role", r.id).details(serde_json::json!({
            "name": r.name, "provider_id": r.provider_id,
        }));
        self.store.create_role(&r, &[audit]).await?;
        Ok(r)
    }

    pub async fn list_roles(&self, caller: &Caller, include_archived: bool) -> Result<Vec<AgentRole>> {
        self.store.list_roles(caller.org_id, include_archived).await
    }

    pub async fn get_role(&self, caller: &Caller, id: &str) -> Result<AgentRole> {
        let id: RoleId = id.parse().map_err(|_| not_found())?;
        self.store.get_role(caller.org_id, id).await?.ok_or_else(not_found)
    }

    pub async fn patch_role(&self, caller: &Caller, id: &str, req: PatchRole) -> Result<AgentRole> {
        let mut r = self.get_role(caller, id).await?;
        let mut errs = FieldErrors::default();
        r.display_name = patch(&r.display_name, &req.display_name);
        r.description = patch(&r.description, &req.description);
        r.model = patch(&r.model, &req.model);
        r.capabilities = patch(&r.capabilities, &req.capabilities);
        if let Some(e) = req.environment {
            r.environment = e;
        }
        r.environment_description = patch(&r.environment_description, &req.environment_description);
        r.task_timeout_seconds = patch(&r.task_timeout_seconds, &req.task_timeout_seconds);
        r.idle_timeout_seconds = patch(&r.idle_timeout_seconds, &req.idle_timeout_seconds);
        r.thinking_effort = patch(&r.thinking_effort, &req.thinking_effort);
        r.max_continuations = patch(&r.max_continuations, &req.max_continuations);
        r.max_context_tokens = patch(&r.max_context_tokens, &req.max_context_tokens);
        r.memory_limit_bytes = patch(&r.memory_limit_bytes, &req.memory_limit_bytes);
        r.pids_limit = patch(&r.pids_limit, &req.pids_limit);
        r.cpu_limit_millis = patch(&r.cpu_limit_millis, &req.cpu_limit_millis);
        if let Some(p) = req.pool_policy {
            r.pool_policy = p;
        }
        r.pool_size = patch(&r.pool_size, &req.pool_size);
        r.pool_max_size = patch(&r.pool_max_size, &req.pool_max_size);
        if let Some(packs) = &req.pack_ids {
            r.pack_ids = parse_packs(&mut errs, packs);
        }
        check_fields(&mut errs, &r);
        errs.into_result()?;
        if let Some(p) = &req.provider_id {
            r.provider_id = self.role_provider(caller, p).await?;
        }
        self.ensure_billing(caller).await?;
        r.updated_at = Timestamp::now();
        let value = serde_json::to_value(req_fields(&req)).unwrap_or_default();
        let audit = caller
            .audit(EventType::AgentRoleUpdated)
            .target("agent_role", r.id)
            .details(serde_json::json!({ "changed": value }));
        self.store.update_role(&r, &[audit]).await?;
        Ok(r)
    }

    /// Archive a role; refused with `workspaces_active` while any of its workspaces has a pod. Wind-down: no 423.
    pub async fn archive_role(&self, caller: &Caller, id: &str) -> Result<()> {
        let r = self.get_role(caller, id).await?;
        let audit = caller.audit(EventType::AgentRoleArchived).target("agent_role", r.id);
        self.store.archive_role(caller.org_id, r.id, Timestamp::now(), &[audit]).await
    }

    pub async fn unarchive_role(&self, caller: &Caller, id: &str) -> Result<()> {
        let r = self.get_role(caller, id).await?;
        self.ensure_billing(caller).await?;
        if r.archived_at.is_none() {
            return Err(Error::conflict(ErrorCode::NotArchived, "the agent role is not archived"));
        }
        let audit = caller.audit(EventType::AgentRoleUnarchived).target("agent_role", r.id);
        self.store.unarchive_role(caller.org_id, r.id, Timestamp::now(), &[audit]).await
    }
}

/// Names of the fields a PATCH set.
fn req_fields(req: &PatchRole) -> Vec<&'static str> {
    [
        ("display_name", req.display_name.is_some()),
        ("description", req.description.is_some()),
        ("provider_id", req.provider_id.is_some()),
        ("model", req.model.is_some()),
        ("capabilities", req.capabilities.is_some()),
        ("environment", req.environment.is_some()),
        ("environment_description", req.environment_description.is_some()),
        ("task_timeout_seconds", req.task_timeout_seconds.is_some()),
        ("idle_timeout_seconds", req.idle_timeout_seconds.is_some()),
        ("thinking_effort", req.thinking_effort.is_some()),
        ("max_continuations", req.max_continuations.is_some()),
        ("max_context_tokens", req.max_context_tokens.is_some()),
        ("memory_limit_bytes", req.memory_limit_bytes.is_some()),
        ("pids_limit", req.pids_limit.is_some()),
        ("cpu_limit_millis", req.cpu_limit_millis.is_some()),
        ("pool_policy", req.pool_policy.is_some()),
        ("pool_size", req.pool_size.is_some()),
        ("pool_max_size", req.pool_max_size.is_some()),
        ("pack_ids", req.pack_ids.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, set)| set.then_some(f))
    .collect()
}
