//! The store test suite, run against both backends. Each test is written once as `async fn name(ctx: Ctx)`;
//! `store_tests!` turns a list of them into `sqlite::name` and `postgres::name` tests, each on a fresh database.
//!
//! PostgreSQL comes from `EVERSHELL_TEST_PG_URL` or a throwaway local cluster (see `src/testing.rs`); outside CI an
//! unavailable PostgreSQL skips those tests loudly, under `CI` it fails them.

use std::sync::Arc;

use evershell_core::audit::{AuditEvent, AuditQuery, Condition, EventType, FilterOp, Order};
use evershell_core::ids::{OrgId, PodId, ProviderId, RoleId, UserId, WorkspaceId};
use evershell_core::lifecycle::{Desired, StatusReason, WorkspaceStatus};
use evershell_core::model::{
    AgentRole, BillingStatus, Environment, Intent, Membership, MembershipStatus, Observation, Org, PoolPolicy,
    Provider, ProviderKind, Request, User, WorkspaceRecord,
};
use evershell_core::scope::MemberRole;
use evershell_core::{ErrorCode, Result, Timestamp};
use evershell_store::{Backend, Fence, ObservationWrite, Store};
use sqlx::Connection;

// The fixtures module is compiled into this test crate directly, so the suite needs no `testing` feature.
#[allow(dead_code)]
#[path = "../src/testing.rs"]
mod testing;

/// One test's store on its own fresh database.
pub struct Ctx {
    pub store: Arc<dyn Store>,
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl Ctx {
    pub async fn sqlite() -> Ctx {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = testing::fresh_sqlite_url(dir.path());
        let store = evershell_store::connect(&url).await.expect("open SQLite store");
        Ctx { store, url, backend: Backend::Sqlite, _dir: Some(dir) }
    }

    pub async fn postgres() -> Option<Ctx> {
        let url = testing::try_fresh_postgres_url().await?;
        let store = evershell_store::connect(&url).await.expect("open PostgreSQL store");
        Some(Ctx { store, url, backend: Backend::Postgres, _dir: None })
    }

    /// A second, independent store on the same database (another process, as far as the database can tell).
    pub async fn reopen(&self) -> Arc<dyn Store> {
        evershell_store::connect(&self.url).await.expect("reopen store")
    }

    /// Run one raw statement on a fresh connection, bypassing the store.
    pub async fn raw(&self, sql: String) -> std::result::Result<u64, String> {
        let q = sqlx::AssertSqlSafe(sql);
        let out = match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.expect("raw SQLite connection");
                sqlx::raw_sql(q).execute(&mut c).await.map(|r| r.rows_affected())
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.expect("raw PostgreSQL connection");
                sqlx::raw_sql(q).execute(&mut c).await.map(|r| r.rows_affected())
            }
        };
        out.map_err(|e| e.to_string())
    }
}

/// Generate a test per backend for each listed `async fn(Ctx)` of the calling module.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Ctx::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(ctx) = $crate::Ctx::postgres().await {
                        super::$name(ctx).await;
                    }
                }
            )*
        }
    };
}

#[path = "suite/audit.rs"]
mod audit;
#[path = "suite/catalog.rs"]
mod catalog;
#[path = "suite/checkpoints.rs"]
mod checkpoints;
#[path = "suite/concurrency.rs"]
mod concurrency;
#[path = "suite/egress.rs"]
mod egress;
#[path = "suite/identity.rs"]
mod identity;
#[path = "suite/idle.rs"]
mod idle;
#[path = "suite/secrets.rs"]
mod secrets;
#[path = "suite/task_capabilities.rs"]
mod task_capabilities;
#[path = "suite/tasks.rs"]
mod tasks;
#[path = "suite/throttle.rs"]
mod throttle;
#[path = "suite/workspaces.rs"]
mod workspaces;

// ---- fixtures --------------------------------------------------------------------------------------------------

pub fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

/// The error code of a failed call (panics on success).
pub fn code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
    r.expect_err("expected an error").code
}

pub fn event(org: OrgId, t: EventType) -> AuditEvent {
    AuditEvent::system(org, t)
}

pub fn org(slug: &str) -> Org {
    Org {
        id: OrgId::new(),
        slug: slug.to_string(),
        billing_status: BillingStatus::Active,
        trial_ends_at: None,
        created_at: ts(1_000),
        updated_at: ts(1_000),
    }
}

pub fn user(email: &str) -> User {
    User { id: UserId::new(), email: email.to_string(), password_hash: None, created_at: ts(1_000) }
}

pub fn membership(org: &Org, user: &User, role: MemberRole, status: MembershipStatus, at: i64) -> Membership {
    Membership {
        org_id: org.id,
        user_id: user.id,
        email: user.email.clone(),
        role,
        status,
        accepted_at: (status == MembershipStatus::Active).then(|| ts(at)),
        invited_by_user_id: None,
        created_at: ts(at),
        updated_at: ts(at),
    }
}

pub fn provider(org: OrgId, name: &str) -> Provider {
    Provider {
        id: ProviderId::new(),
        org_id: org,
        name: name.to_string(),
        kind: ProviderKind::Anthropic,
        display_name: Some(format!("{name} display")),
        domain: "api.anthropic.com".into(),
        credential_name: Some("anthropic-key".into()),
        default_model: Some("claude".into()),
        capabilities: Some("allow: []\n".into()),
        config: [("api_version".to_string(), "1".to_string())].into(),
        created_at: ts(1_000),
        updated_at: ts(1_000),
        archived_at: None,
    }
}

pub fn role(org: OrgId, provider: ProviderId, name: &str) -> AgentRole {
    AgentRole {
        id: RoleId::new(),
        org_id: org,
        name: name.to_string(),
        display_name: None,
        description: Some("does things".into()),
        provider_id: provider,
        model: None,
        capabilities: None,
        environment: Environment::Staging,
        environment_description: None,
        task_timeout_seconds: Some(600),
        idle_timeout_seconds: None,
        thinking_effort: None,
        max_continuations: Some(3),
        max_context_tokens: None,
        memory_limit_bytes: None,
        pids_limit: None,
        cpu_limit_millis: None,
        pool_policy: PoolPolicy::Off,
        pool_size: None,
        pool_max_size: None,
        pack_ids: vec![],
        created_at: ts(1_000),
        updated_at: ts(1_000),
        archived_at: None,
    }
}

pub fn workspace(org: OrgId, role: RoleId, status: WorkspaceStatus) -> WorkspaceRecord {
    WorkspaceRecord {
        id: WorkspaceId::new(),
        org_id: org,
        role_id: role,
        environment: None,
        created_by_user_id: None,
        intent: Intent { desired: Desired::Running, request: None, generation: 0 },
        observed: Observation {
            status,
            status_reason: Some(StatusReason::Created),
            last_error: None,
            pod_id: status.is_active().then(PodId::new),
            pod_pack_ids: None,
            snapshot_id: None,
            last_snapshot_error: None,
            adopted: 0,
            generation: 0,
        },
        created_at: ts(1_000),
        updated_at: ts(1_000),
        archived_at: None,
    }
}

/// The lease owner the suite's reconciler-side writes use.
pub const RECONCILER: &str = "test-reconciler";

/// Take (or keep) the suite reconciler's lease on `id`.
pub async fn fence(ctx: &Ctx, id: WorkspaceId) -> Fence {
    ctx.store.claim_workspace(id, RECONCILER, ts(0), ts(i64::MAX / 2)).await.unwrap().expect("the lease is free")
}

/// Write `ws`'s observation as the reconciler holding its lease would, and move `ws` to the new generation.
pub async fn observe(ctx: &Ctx, ws: &mut WorkspaceRecord) {
    let f = fence(ctx, ws.id).await;
    let outcome = ctx.store.record_observation(ws, ws.observed.generation, &f, &[]).await.unwrap();
    assert_eq!(outcome, ObservationWrite::Written);
    ws.observed.generation += 1;
}

/// An org with a provider and a role under it.
pub struct World {
    pub org: Org,
    pub provider: Provider,
    pub role: AgentRole,
}

pub async fn world(ctx: &Ctx, slug: &str) -> World {
    let org = org(slug);
    ctx.store.create_org(&org, &[]).await.unwrap();
    let provider = provider(org.id, "anthropic");
    ctx.store.create_provider(&provider, &[]).await.unwrap();
    let role = role(org.id, provider.id, "coder");
    ctx.store.create_role(&role, &[]).await.unwrap();
    World { org, provider, role }
}

/// Every audit row of `org`, oldest first.
pub async fn audit_rows(ctx: &Ctx, org: OrgId) -> Vec<AuditEvent> {
    ctx.store.query_audit(&query(org, Order::Asc)).await.unwrap()
}

/// How many audit rows of `org` have type `t`.
pub async fn audit_count(ctx: &Ctx, org: OrgId, t: EventType) -> usize {
    let mut q = query(org, Order::Asc);
    q.conditions.push(Condition { column: "event_type", op: FilterOp::In(vec![t.as_str().into()]) });
    ctx.store.query_audit(&q).await.unwrap().len()
}

pub fn query(org: OrgId, order: Order) -> AuditQuery {
    AuditQuery {
        org_id: org,
        conditions: vec![],
        workspace_id: None,
        user_id: None,
        from: None,
        to: None,
        order,
        limit: 10_000,
        after: None,
    }
}
