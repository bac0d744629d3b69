//! Row structs (one per table, `#[derive(sqlx::FromRow)]`, identical on both backends) and their conversion into
//! domain types. Columns are TEXT, BIGINT millis and JSON-as-TEXT; anything that does not parse back is a corrupt
//! row and becomes `Error::internal`.

use std::fmt::Display;
use std::str::FromStr;

use anyhow::anyhow;
use evershell_core::audit::AuditEvent;
use evershell_core::model::{
    AgentRole, ApiKey, Credential, Intent, Membership, Observation, Org, Provider, Request, Sealed, Secret, Session,
    SnapshotRecord, TaskRecord, User, WorkspaceRecord,
};
use evershell_core::model::{CheckpointRecord, ForkOrigin};
use evershell_core::{Error, Result, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A typed id (or any `FromStr`) read back from a TEXT column.
fn parse<T: FromStr>(s: &str, what: &str) -> Result<T>
where
    T::Err: Display,
{
    s.parse().map_err(|e| Error::internal(anyhow!("corrupt {what} `{s}` in the database: {e}")))
}

fn parse_opt<T: FromStr>(s: Option<&str>, what: &str) -> Result<Option<T>>
where
    T::Err: Display,
{
    s.map(|s| parse(s, what)).transpose()
}

/// A closed enum stored as its wire string (every enum's serde name is its column value).
fn enum_of<T: DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|e| Error::internal(anyhow!("corrupt {what} `{s}` in the database: {e}")))
}

fn json_of<T: DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::internal(anyhow!("corrupt {what} JSON in the database: {e}")))
}

/// A value written to a JSON (TEXT) column.
pub(crate) fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(Error::internal)
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn ts_opt(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_millis)
}

/// Millis of an optional timestamp, for binding.
pub(crate) fn millis(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::millis)
}

/// The string form of an optional id or enum, for binding.
pub(crate) fn text<T: ToString>(v: Option<&T>) -> Option<String> {
    v.map(ToString::to_string)
}

/// Lowercase hex, for key material in a TEXT column.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[derive(sqlx::FromRow)]
pub(crate) struct OrgRow {
    id: String,
    slug: String,
    billing_status: String,
    trial_ends_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<OrgRow> for Org {
    type Error = Error;
    fn try_from(r: OrgRow) -> Result<Self> {
        Ok(Org {
            id: parse(&r.id, "org id")?,
            slug: r.slug,
            billing_status: enum_of(&r.billing_status, "billing status")?,
            trial_ends_at: ts_opt(r.trial_ends_at),
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: String,
    email: String,
    password_hash: Option<String>,
    created_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = Error;
    fn try_from(r: UserRow) -> Result<Self> {
        Ok(User {
            id: parse(&r.id, "user id")?,
            email: r.email,
            password_hash: r.password_hash,
            created_at: ts(r.created_at),
        })
    }
}

/// A membership joined with its user's email.
#[derive(sqlx::FromRow)]
pub(crate) struct MembershipRow {
    org_id: String,
    user_id: String,
    email: String,
    role: String,
    status: String,
    accepted_at: Option<i64>,
    invited_by_user_id: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<MembershipRow> for Membership {
    type Error = Error;
    fn try_from(r: MembershipRow) -> Result<Self> {
        Ok(Membership {
            org_id: parse(&r.org_id, "org id")?,
            user_id: parse(&r.user_id, "user id")?,
            email: r.email,
            role: enum_of(&r.role, "member role")?,
            status: enum_of(&r.status, "membership status")?,
            accepted_at: ts_opt(r.accepted_at),
            invited_by_user_id: parse_opt(r.invited_by_user_id.as_deref(), "user id")?,
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
        })
    }
}

/// A membership with its org's columns, prefixed `org_`.
#[derive(sqlx::FromRow)]
pub(crate) struct MembershipOrgRow {
    #[sqlx(flatten)]
    membership: MembershipRow,
    org_slug: String,
    org_billing_status: String,
    org_trial_ends_at: Option<i64>,
    org_created_at: i64,
    org_updated_at: i64,
}

impl TryFrom<MembershipOrgRow> for (Membership, Org) {
    type Error = Error;
    fn try_from(r: MembershipOrgRow) -> Result<Self> {
        let org = OrgRow {
            id: r.membership.org_id.clone(),
            slug: r.org_slug,
            billing_status: r.org_billing_status,
            trial_ends_at: r.org_trial_ends_at,
            created_at: r.org_created_at,
            updated_at: r.org_updated_at,
        };
        Ok((r.membership.try_into()?, org.try_into()?))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    id: String,
    org_id: String,
    label: String,
    prefix: String,
    permission_set: String,
    permissions: String,
    created_by_user_id: Option<String>,
    created_at: i64,
}

impl TryFrom<ApiKeyRow> for ApiKey {
    type Error = Error;
    fn try_from(r: ApiKeyRow) -> Result<Self> {
        Ok(ApiKey {
            id: parse(&r.id, "API key id")?,
            org_id: parse(&r.org_id, "org id")?,
            label: r.label,
            prefix: r.prefix,
            permission_set: enum_of(&r.permission_set, "permission set")?,
            permissions: json_of(&r.permissions, "API key permissions")?,
            created_by_user_id: parse_opt(r.created_by_user_id.as_deref(), "user id")?,
            created_at: ts(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    id: String,
    user_id: String,
    org_id: String,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
}

impl TryFrom<SessionRow> for Session {
    type Error = Error;
    fn try_from(r: SessionRow) -> Result<Self> {
        Ok(Session {
            id: parse(&r.id, "session id")?,
            user_id: parse(&r.user_id, "user id")?,
            org_id: parse(&r.org_id, "org id")?,
            created_at: ts(r.created_at),
            expires_at: ts(r.expires_at),
            revoked_at: ts_opt(r.revoked_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ProviderRow {
    id: String,
    org_id: String,
    name: String,
    kind: String,
    display_name: Option<String>,
    domain: String,
    credential_name: Option<String>,
    default_model: Option<String>,
    capabilities: Option<String>,
    config: String,
    created_at: i64,
    updated_at: i64,
    archived_at: Option<i64>,
}

impl TryFrom<ProviderRow> for Provider {
    type Error = Error;
    fn try_from(r: ProviderRow) -> Result<Self> {
        Ok(Provider {
            id: parse(&r.id, "provider id")?,
            org_id: parse(&r.org_id, "org id")?,
            name: r.name,
            kind: enum_of(&r.kind, "provider kind")?,
            display_name: r.display_name,
            domain: r.domain,
            credential_name: r.credential_name,
            default_model: r.default_model,
            capabilities: r.capabilities,
            config: json_of(&r.config, "provider config")?,
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
            archived_at: ts_opt(r.archived_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RoleRow {
    id: String,
    org_id: String,
    name: String,
    display_name: Option<String>,
    description: Option<String>,
    provider_id: String,
    model: Option<String>,
    capabilities: Option<String>,
    environment: String,
    environment_description: Option<String>,
    task_timeout_seconds: Option<i64>,
    idle_timeout_seconds: Option<i64>,
    thinking_effort: Option<String>,
    max_continuations: Option<i64>,
    max_context_tokens: Option<i64>,
    memory_limit_bytes: Option<i64>,
    pids_limit: Option<i64>,
    cpu_limit_millis: Option<i64>,
    pool_policy: String,
    pool_size: Option<i64>,
    pool_max_size: Option<i64>,
    pack_ids: String,
    created_at: i64,
    updated_at: i64,
    archived_at: Option<i64>,
}

impl TryFrom<RoleRow> for AgentRole {
    type Error = Error;
    fn try_from(r: RoleRow) -> Result<Self> {
        Ok(AgentRole {
            id: parse(&r.id, "role id")?,
            org_id: parse(&r.org_id, "org id")?,
            name: r.name,
            display_name: r.display_name,
            description: r.description,
            provider_id: parse(&r.provider_id, "provider id")?,
            model: r.model,
            capabilities: r.capabilities,
            environment: enum_of(&r.environment, "environment")?,
            environment_description: r.environment_description,
            task_timeout_seconds: r.task_timeout_seconds,
            idle_timeout_seconds: r.idle_timeout_seconds,
            thinking_effort: r.thinking_effort.as_deref().map(|t| enum_of(t, "thinking effort")).transpose()?,
            max_continuations: r.max_continuations,
            max_context_tokens: r.max_context_tokens,
            memory_limit_bytes: r.memory_limit_bytes,
            pids_limit: r.pids_limit,
            cpu_limit_millis: r.cpu_limit_millis,
            pool_policy: enum_of(&r.pool_policy, "pool policy")?,
            pool_size: r.pool_size,
            pool_max_size: r.pool_max_size,
            pack_ids: json_of(&r.pack_ids, "role pack ids")?,
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
            archived_at: ts_opt(r.archived_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct WorkspaceRow {
    id: String,
    org_id: String,
    role_id: String,
    environment: Option<String>,
    created_by_user_id: Option<String>,
    status: String,
    status_reason: Option<String>,
    last_error: Option<String>,
    desired: String,
    generation: i64,
    pod_id: Option<String>,
    pod_pack_ids: Option<String>,
    snapshot_id: Option<String>,
    last_snapshot_error: Option<String>,
    adopted_seq: i64,
    intent_generation: i64,
    request_seq: i64,
    request_status: Option<String>,
    request_reason: Option<String>,
    created_at: i64,
    updated_at: i64,
    archived_at: Option<i64>,
}

impl TryFrom<WorkspaceRow> for WorkspaceRecord {
    type Error = Error;
    fn try_from(r: WorkspaceRow) -> Result<Self> {
        let request = match (r.request_seq, r.request_status.as_deref(), r.request_reason.as_deref()) {
            (0, _, _) => None,
            (seq, Some(status), Some(reason)) => Some(Request {
                seq,
                status: enum_of(status, "request status")?,
                reason: enum_of(reason, "request reason")?,
            }),
            _ => return Err(Error::internal(anyhow!("workspace {} has a request without its status", r.id))),
        };
        Ok(WorkspaceRecord {
            id: parse(&r.id, "workspace id")?,
            org_id: parse(&r.org_id, "org id")?,
            role_id: parse(&r.role_id, "role id")?,
            environment: r.environment,
            created_by_user_id: parse_opt(r.created_by_user_id.as_deref(), "user id")?,
            intent: Intent { desired: enum_of(&r.desired, "desired state")?, request, generation: r.intent_generation },
            observed: Observation {
                status: enum_of(&r.status, "workspace status")?,
                status_reason: r.status_reason.as_deref().map(|s| enum_of(s, "status reason")).transpose()?,
                last_error: r.last_error,
                pod_id: parse_opt(r.pod_id.as_deref(), "pod id")?,
                pod_pack_ids: r.pod_pack_ids.as_deref().map(|p| json_of(p, "pod pack ids")).transpose()?,
                snapshot_id: parse_opt(r.snapshot_id.as_deref(), "snapshot id")?,
                last_snapshot_error: r.last_snapshot_error,
                adopted: r.adopted_seq,
                generation: r.generation,
            },
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
            archived_at: ts_opt(r.archived_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    id: String,
    org_id: String,
    workspace_id: String,
    pod_id: Option<String>,
    state: String,
    archive_key: String,
    manifest_key: String,
    sha256: Option<String>,
    size_bytes: Option<i64>,
    file_count: Option<i64>,
    created_at: i64,
}

impl TryFrom<SnapshotRow> for SnapshotRecord {
    type Error = Error;
    fn try_from(r: SnapshotRow) -> Result<Self> {
        Ok(SnapshotRecord {
            id: parse(&r.id, "snapshot id")?,
            org_id: parse(&r.org_id, "org id")?,
            workspace_id: parse(&r.workspace_id, "workspace id")?,
            pod_id: parse_opt(r.pod_id.as_deref(), "pod id")?,
            state: enum_of(&r.state, "snapshot state")?,
            archive_key: r.archive_key,
            manifest_key: r.manifest_key,
            sha256: r.sha256,
            size_bytes: r.size_bytes,
            file_count: r.file_count,
            created_at: ts(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    id: String,
    org_id: String,
    user_id: String,
    timestamp: i64,
    event_type: String,
    category: String,
    actor: String,
    workspace_id: Option<String>,
    task_id: Option<String>,
    agent_role: Option<String>,
    agent_provider: Option<String>,
    target_type: Option<String>,
    target_id: Option<String>,
    destination: Option<String>,
    method: Option<String>,
    path: Option<String>,
    decision: Option<String>,
    reason: Option<String>,
    latency_ms: Option<i64>,
    request_id: Option<String>,
    details: Option<String>,
}

impl TryFrom<AuditRow> for AuditEvent {
    type Error = Error;
    fn try_from(r: AuditRow) -> Result<Self> {
        Ok(AuditEvent {
            id: parse(&r.id, "audit event id")?,
            org_id: parse(&r.org_id, "org id")?,
            user_id: r.user_id,
            timestamp: ts(r.timestamp),
            event_type: enum_of(&r.event_type, "event type")?,
            category: enum_of(&r.category, "category")?,
            actor: enum_of(&r.actor, "actor")?,
            workspace_id: parse_opt(r.workspace_id.as_deref(), "workspace id")?,
            task_id: parse_opt(r.task_id.as_deref(), "task id")?,
            agent_role: r.agent_role,
            agent_provider: r.agent_provider,
            target_type: r.target_type,
            target_id: r.target_id,
            destination: r.destination,
            method: r.method,
            path: r.path,
            decision: r.decision,
            reason: r.reason,
            latency_ms: r.latency_ms,
            request_id: r.request_id,
            details: r.details.as_deref().map(|d| json_of(d, "audit details")).transpose()?,
        })
    }
}

/// An idempotency key as `idempotency_begin` reads it.
#[derive(sqlx::FromRow)]
pub(crate) struct IdempotencyRow {
    pub fingerprint: String,
    pub state: String,
    pub status_code: Option<i64>,
    pub response_body: Option<String>,
    pub expires_at: i64,
    pub lease_expires_at: Option<i64>,
}

/// Sealed material read back from its hex column.
fn sealed_of(s: &str, what: &str) -> Result<Sealed> {
    hex_decode(s).map(Sealed).ok_or_else(|| Error::internal(anyhow!("corrupt {what} material in the database")))
}

#[derive(sqlx::FromRow)]
pub(crate) struct SecretRow {
    id: String,
    org_id: String,
    name: String,
    description: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<SecretRow> for Secret {
    type Error = Error;
    fn try_from(r: SecretRow) -> Result<Self> {
        Ok(Secret {
            id: parse(&r.id, "secret id")?,
            org_id: parse(&r.org_id, "org id")?,
            name: r.name,
            description: r.description,
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
        })
    }
}

/// A secret with its sealed value.
#[derive(sqlx::FromRow)]
pub(crate) struct SecretMaterialRow {
    #[sqlx(flatten)]
    secret: SecretRow,
    material: String,
}

impl SecretMaterialRow {
    pub(crate) fn into_parts(self) -> Result<(Secret, Sealed)> {
        let sealed = sealed_of(&self.material, "secret")?;
        Ok((self.secret.try_into()?, sealed))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct CredentialRow {
    id: String,
    org_id: String,
    user_id: Option<String>,
    name: String,
    provider: String,
    kind: String,
    scopes: String,
    provider_config: String,
    allow_user_override: i64,
    status: String,
    last_minted_at: Option<i64>,
    last_minted_status: Option<String>,
    created_by_user_id: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<CredentialRow> for Credential {
    type Error = Error;
    fn try_from(r: CredentialRow) -> Result<Self> {
        Ok(Credential {
            durable_ref: format!("sealed:{}", r.id),
            id: parse(&r.id, "credential id")?,
            org_id: parse(&r.org_id, "org id")?,
            user_id: parse_opt(r.user_id.as_deref(), "user id")?,
            name: r.name,
            provider: r.provider,
            kind: enum_of(&r.kind, "credential kind")?,
            scopes: json_of(&r.scopes, "credential scopes")?,
            provider_config: json_of(&r.provider_config, "credential provider_config")?,
            allow_user_override: r.allow_user_override != 0,
            status: enum_of(&r.status, "credential status")?,
            last_minted_at: ts_opt(r.last_minted_at),
            last_minted_status: r.last_minted_status,
            created_by_user_id: parse_opt(r.created_by_user_id.as_deref(), "user id")?,
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
        })
    }
}

/// A credential with its sealed material.
#[derive(sqlx::FromRow)]
pub(crate) struct CredentialMaterialRow {
    #[sqlx(flatten)]
    credential: CredentialRow,
    material: String,
}

impl CredentialMaterialRow {
    pub(crate) fn into_parts(self) -> Result<(Credential, Sealed)> {
        let sealed = sealed_of(&self.material, "credential")?;
        Ok((self.credential.try_into()?, sealed))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TaskRow {
    id: String,
    org_id: String,
    workspace_id: String,
    created_by_user_id: Option<String>,
    description: String,
    status: String,
    reason: Option<String>,
    options: String,
    queue_seq: i64,
    result: Option<String>,
    created_at: i64,
    delivered_at: Option<i64>,
    started_at: Option<i64>,
    completed_at: Option<i64>,
}

impl TryFrom<TaskRow> for TaskRecord {
    type Error = Error;
    fn try_from(r: TaskRow) -> Result<Self> {
        Ok(TaskRecord {
            id: parse(&r.id, "task id")?,
            org_id: parse(&r.org_id, "org id")?,
            workspace_id: parse(&r.workspace_id, "workspace id")?,
            created_by_user_id: parse_opt(r.created_by_user_id.as_deref(), "user id")?,
            description: r.description,
            status: enum_of(&r.status, "task status")?,
            reason: r.reason.as_deref().map(|s| enum_of(s, "task reason")).transpose()?,
            options: json_of(&r.options, "task options")?,
            queue_seq: r.queue_seq,
            result: r.result,
            created_at: ts(r.created_at),
            delivered_at: ts_opt(r.delivered_at),
            started_at: ts_opt(r.started_at),
            completed_at: ts_opt(r.completed_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct CheckpointRow {
    workspace_id: String,
    task_count: i64,
    task_id: Option<String>,
    snapshot_id: Option<String>,
    error: Option<String>,
    created_at: i64,
}

impl TryFrom<CheckpointRow> for CheckpointRecord {
    type Error = Error;
    fn try_from(r: CheckpointRow) -> Result<Self> {
        Ok(CheckpointRecord {
            workspace_id: parse(&r.workspace_id, "workspace id")?,
            task_count: r.task_count,
            task_id: parse_opt(r.task_id.as_deref(), "task id")?,
            snapshot_id: parse_opt(r.snapshot_id.as_deref(), "snapshot id")?,
            error: r.error,
            created_at: ts(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ForkRow {
    workspace_id: String,
    parent_workspace_id: String,
    source_snapshot_id: Option<String>,
    fork_point_task_count: i64,
}

impl ForkRow {
    pub(crate) fn parse(self) -> Result<(evershell_core::ids::WorkspaceId, ForkOrigin)> {
        Ok((
            parse(&self.workspace_id, "workspace id")?,
            ForkOrigin {
                parent_workspace_id: parse(&self.parent_workspace_id, "workspace id")?,
                source_snapshot_id: parse_opt(self.source_snapshot_id.as_deref(), "snapshot id")?,
                fork_point_task_count: self.fork_point_task_count,
            },
        ))
    }
}
