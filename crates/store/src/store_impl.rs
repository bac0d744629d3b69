//! The `Store` trait implementation, written once: `impl_store!(Type, Backend::X)` wires every method to the
//! same-named function of the backend's expanded `ops` module (see `queries`).

macro_rules! impl_store {
    ($store:ty, $backend:expr) => {
        const _: () = {
            use evershell_core::Result;
            use evershell_core::Timestamp;
            use evershell_core::audit::{AuditEvent, AuditQuery, EventType};
            use evershell_core::ids::{
                ApiKeyId, CredentialId, OrgId, PodId, ProviderId, RoleId, SecretId, SessionId, SnapshotId, TaskId,
                UserId, WorkspaceId,
            };
            use evershell_core::model::{
                AgentRole, ApiKey, BillingStatus, Credential, CredentialStatus, Membership, Org, Provider, Sealed,
                Secret, Session, SnapshotRecord, TaskRecord, User, WorkspaceRecord,
            };
            use evershell_core::model::{CheckpointRecord, ForkOrigin};
            use evershell_core::scope::MemberRole;
            use evershell_core::task::TaskStatus;

            use $crate::api::{
                Fence, IdempotencyBegin, IdempotencyClaim, LoginClaim, LoginCounter, ObservationWrite, TaskUpdate,
                WorkspaceFilter, WorkspaceQuota,
            };

            #[async_trait::async_trait]
            impl $crate::api::Store for $store {
                fn backend(&self) -> $crate::api::Backend {
                    $backend
                }

                async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1").execute(&self.read).await.map_err($crate::errors::db)?;
                    Ok(())
                }

                async fn create_org(&self, org: &Org, audit: &[AuditEvent]) -> Result<()> {
                    ops::orgs::create_org(self, org, audit).await
                }
                async fn get_org(&self, id: OrgId) -> Result<Option<Org>> {
                    ops::orgs::get_org(self, id).await
                }
                async fn get_org_by_slug(&self, slug: &str) -> Result<Option<Org>> {
                    ops::orgs::get_org_by_slug(self, slug).await
                }
                async fn set_org_billing(
                    &self,
                    id: OrgId,
                    status: BillingStatus,
                    trial_ends_at: Option<Timestamp>,
                    audit: &[AuditEvent],
                ) -> Result<Org> {
                    ops::orgs::set_org_billing(self, id, status, trial_ends_at, audit).await
                }

                async fn create_user(&self, user: &User, audit: &[AuditEvent]) -> Result<()> {
                    ops::orgs::create_user(self, user, audit).await
                }
                async fn get_user(&self, id: UserId) -> Result<Option<User>> {
                    ops::orgs::get_user(self, id).await
                }
                async fn get_user_by_email(&self, email: &str) -> Result<Option<User>> {
                    ops::orgs::get_user_by_email(self, email).await
                }

                async fn create_membership(
                    &self,
                    m: &Membership,
                    new_user: Option<&User>,
                    invite_token_hash: Option<&str>,
                    audit: &[AuditEvent],
                ) -> Result<()> {
                    ops::members::create_membership(self, m, new_user, invite_token_hash, audit).await
                }
                async fn get_membership(&self, org: OrgId, user: UserId) -> Result<Option<Membership>> {
                    ops::members::get_membership(self, org, user).await
                }
                async fn list_memberships(&self, org: OrgId) -> Result<Vec<Membership>> {
                    ops::members::list_memberships(self, org).await
                }
                async fn list_user_memberships(&self, user: UserId) -> Result<Vec<(Membership, Org)>> {
                    ops::members::list_user_memberships(self, user).await
                }
                async fn find_invitation(&self, token_hash: &str) -> Result<Option<Membership>> {
                    ops::members::find_invitation(self, token_hash).await
                }
                async fn accept_invitation(
                    &self,
                    org: OrgId,
                    user: UserId,
                    password_hash: Option<&str>,
                    now: Timestamp,
                    audit: &[AuditEvent],
                ) -> Result<Membership> {
                    ops::members::accept_invitation(self, org, user, password_hash, now, audit).await
                }
                async fn update_membership_role(
                    &self,
                    org: OrgId,
                    user: UserId,
                    role: MemberRole,
                    now: Timestamp,
                    audit: &[AuditEvent],
                ) -> Result<Membership> {
                    ops::members::update_membership_role(self, org, user, role, now, audit).await
                }
                async fn delete_membership(
                    &self,
                    org: OrgId,
                    user: UserId,
                    now: Timestamp,
                    audit: &[AuditEvent],
                ) -> Result<()> {
                    ops::members::delete_membership(self, org, user, now, audit).await
                }

                async fn create_api_key(&self, key: &ApiKey, secret_hash: &str, audit: &[AuditEvent]) -> Result<()> {
                    ops::auth::create_api_key(self, key, secret_hash, audit).await
                }
                async fn list_api_keys(&self, org: OrgId) -> Result<Vec<ApiKey>> {
                    ops::auth::list_api_keys(self, org).await
                }
                async fn find_api_key(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
                    ops::auth::find_api_key(self, secret_hash).await
                }
                async fn revoke_api_key(
                    &self,
                    org: OrgId,
                    id: ApiKeyId,
                    now: Timestamp,
                    audit: &[AuditEvent],
                ) -> Result<bool> {
                    ops::auth::revoke_api_key(self, org, id, now, audit).await
                }

                async fn create_session(&self, s: &Session, audit: &[AuditEvent]) -> Result<()> {
                    ops::auth::create_session(self, s, audit).await
                }
                async fn get_session(&self, id: SessionId) -> Result<Option<Session>> {
                    ops::auth::get_session(self, id).await
                }
                async fn revoke_session(&self, id: SessionId, now: Timestamp, audit: &[AuditEvent]) -> Result<()> {
                    ops::auth::revoke_session(self, id, now, audit).await
                }
                async fn server_key(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>> {
                    ops::auth::server_key(self, name, candidate).await
                }

                async fn login_counters(&self, keys: &[String]) -> Result<Vec<LoginCounter>> {
                    ops::throttle::login_counters(self, keys).await
                }
                async fn count_login_attempt(
                    &self,
                    claims: &[LoginClaim],
                    now: Timestamp,
                    stale_before: Timestamp,
                ) -> Result<bool> {
                    ops::throttle::count_login_attempt(self, claims, now, stale_before).await
                }
                async fn settle_login_attempt(
                    &self,
                    clear: &[String],
                    forgive: &[String],
                    audit: &[AuditEvent],
                ) -> Result<()> {
                    ops::throttle::settle_login_attempt(self, clear, forgive, audit).await
                }
                async fn note_login_throttled(
                    &self,
                    key: &str,
                    last_failure_at: Timestamp,
                    audit: &[AuditEvent],
                ) -> Result<bool> {
                    ops::throttle::note_login_throttled(self, key, last_failure_at, audit).await
                }
                async fn reset_password(
                    &self,
                    user: UserId,
                    password_hash: &str,
                    now: Timestamp,
                    audit: &[AuditEvent],
                ) -> Result<u64> {
                    ops::throttle::reset_password(self, user, password_hash, now, audit).await
                }
                async fn create_secret(&self, s: &Secret, material: &Sealed, audit: &[AuditEvent]) -> Result<()> {
                    ops::secrets::create_secret(self, s, material, audit).await
                }
                async fn list_secrets(&self, org: OrgId) -> Result<Vec<Secret>> {
                    ops::secrets::list_secrets(self, org).await
                }
                async fn get_secret(&self, org: OrgId, id: SecretId) -> Result<Option<Secret>> {
                    ops::secrets::get_secret(self, org, id).await
                }
                async fn rotate_secret(
                    &self,
                    org: OrgId,
                    id: SecretId,
                    material: &Sealed,
                    now: Timestamp,
                    audit: &[AuditEvent],
                ) -> Result<Secret> {
                    ops::secrets::rotate_secret(self, org, id, material, now, audit).await
                }
                async fn delete_secret(&self, org: OrgId, id: SecretId, audit: &[AuditEvent]) -> Result<()> {
                    ops::secrets::delete_secret(self, org, id, audit).await
                }
                async fn secret_material(&self, org: OrgId, name: &str) -> Result<Option<(Secret, Sealed)>> {
                    ops::secrets::secret_material(self, org, name).await
                }

                async fn create_credential(
                    &self,
                    c: &Credential,
                    material: &Sealed,
                    audit: &[AuditEvent],
                ) -> Result<()> {
                    ops::credentials::create_credential(self, c, material, audit).await
                }
                async fn list_credentials(&self, org: OrgId) -> Result<Vec<Credential>> {
                    ops::credentials::list_credentials(self, org).await
                }
                async fn get_credential(&self, org: OrgId, id: CredentialId) -> Result<Option<Credential>> {
                    ops::credentials::get_credential(self, org, id).await
                }
                async fn get_org_credential_by_name(&self, org: OrgId, name: &str) -> Result<Option<Credential>> {
                    ops::credentials::get_org_credential_by_name(self, org, name).await
                }
                async fn delete_credential(&self, org: OrgId, id: CredentialId, audit: &[AuditEvent]) -> Result<()> {
                    ops::credentials::delete_credential(self, org, id, audit).await
                }
                async fn credential_material(
                    &self,
                    org: OrgId,
                    name: &str,
                    user: Option<UserId>,
                ) -> Result<Option<(Credential, Sealed)>> {
                    ops::credentials::credential_material(self, org, name, user).await
                }
                async fn record_credential_mint(
                    &self,
                    org: OrgId,
                    id: CredentialId,
                    status: CredentialStatus,
                    minted_at: Option<Timestamp>,
                    mint_status: Option<&str>,
                    now: Timestamp,
                ) -> Result<()> {
                    ops::credentials::record_credential_mint(self, org, id, status, minted_at, mint_status, now).await
                }

                async fn create_provider(&self, p: &Provider, audit: &[AuditEvent]) -> Result<()> {
                    ops::providers::create_provider(self, p, audit).await
                }
                async fn list_providers(&self, org: OrgId, include_archived: bool) -> Result<Vec<Provider>> {
                    ops::providers::list_providers(self, org, include_archived).await
                }
                async fn get_provider(&self, org: OrgId, id: ProviderId) -> Result<Option<Provider>> {
                    ops::providers::get_provider(self, org, id).await
                }
                async fn update_provider(&self, p: &Provider, audit: &[AuditEvent]) -> Result<()> {
                    ops::providers::update_provider(self, p, audit).await
                }
                async fn archive_provider(
                    &self,
                    org: OrgId,
                    id: ProviderId,
                    now: Timestamp,
                    audit: &[AuditEvent],
                    role_audit: &(dyn for<'r> Fn(&'r AgentRole) -> AuditEvent + Send + Sync),
                ) -> Result<u64> {
                    ops::providers::archive_provider(self, org, id, now, audit, role_audit).await
                }
                async fn unarchive_provider(
                    &self,
                    org: OrgId,
                    id: ProviderId,
                    now: Timestamp,
                    audit: &[AuditEvent],
                ) -> Result<()> {
                    ops::providers::unarchive_provider(self, org, id, now, audit).await
                }

                async fn create_role(&self, r: &AgentRole, audit: &[AuditEvent]) -> Result<()> {
                    ops::roles::create_role(self, r, audit).await
                }
                async fn list_roles(&self, org: OrgId, include_archived: bool) -> Result<Vec<AgentRole>> {
                    ops::roles::list_roles(self, org, include_archived).await
                }
                async fn get_role(&self, org: OrgId, id: RoleId) -> Result<Option<AgentRole>> {
                    ops::roles::get_role(self, org, id).await
                }
                async fn get_role_by_name(&self, org: OrgId, name: &str) -> Result<Option<AgentRole>> {
                    ops::roles::get_role_by_name(self, org, name).await
                }
                async fn update_role(&self, r: &AgentRole, audit: &[AuditEvent]) -> Result<()> {
                    ops::roles::update_role(self, r, audit).await
                }
                async fn archive_role(
                    &self,
                    org: OrgId,
                    id: RoleId,
                    now: Timestamp,
                    audit: &[AuditEvent],
                ) -> Result<()> {
                    ops::roles::archive_role(self, org, id, now, audit).await
                }
                async fn unarchive_role(
                    &self,
                    org: OrgId,
                    id: RoleId,
                    now: Timestamp,
                    audit: &[AuditEvent],
                ) -> Result<()> {
                    ops::roles::unarchive_role(self, org, id, now, audit).await
                }

                async fn create_workspace_within(
                    &self,
                    ws: &WorkspaceRecord,
                    quota: &WorkspaceQuota,
                    audit: &[AuditEvent],
                ) -> Result<()> {
                    ops::workspaces::create_workspace(self, ws, quota, audit).await
                }
                async fn get_workspace(&self, org: OrgId, id: WorkspaceId) -> Result<Option<WorkspaceRecord>> {
                    ops::workspaces::get_workspace(self, org, id).await
                }
                async fn get_workspace_by_id(&self, id: WorkspaceId) -> Result<Option<WorkspaceRecord>> {
                    ops::workspaces::get_workspace_by_id(self, id).await
                }
                async fn list_workspaces(&self, org: OrgId, filter: &WorkspaceFilter) -> Result<Vec<WorkspaceRecord>> {
                    ops::workspaces::list_workspaces(self, org, filter).await
                }
                async fn update_intent(
                    &self,
                    ws: &WorkspaceRecord,
                    expected_intent: i64,
                    expected_observed: i64,
                    quota: &WorkspaceQuota,
                    audit: &[AuditEvent],
                ) -> Result<bool> {
                    ops::workspaces::update_intent(self, ws, expected_intent, expected_observed, quota, audit).await
                }
                async fn update_intent_if_inactive(
                    &self,
                    ws: &WorkspaceRecord,
                    expected_intent: i64,
                    expected_observed: i64,
                    since: Timestamp,
                    events: &[EventType],
                    audit: &[AuditEvent],
                ) -> Result<bool> {
                    ops::workspaces::update_intent_if_inactive(
                        self,
                        ws,
                        expected_intent,
                        expected_observed,
                        since,
                        events,
                        audit,
                    )
                    .await
                }
                async fn last_workspace_activity(
                    &self,
                    ws: WorkspaceId,
                    events: &[EventType],
                ) -> Result<Option<Timestamp>> {
                    ops::workspaces::last_workspace_activity(self, ws, events).await
                }
                async fn record_observation(
                    &self,
                    ws: &WorkspaceRecord,
                    expected_generation: i64,
                    fence: &Fence,
                    audit: &[AuditEvent],
                ) -> Result<ObservationWrite> {
                    ops::workspaces::record_observation(self, ws, expected_generation, fence, audit).await
                }
                async fn workspaces_to_reconcile(&self) -> Result<Vec<WorkspaceId>> {
                    ops::workspaces::workspaces_to_reconcile(self).await
                }
                async fn owned_pod_ids(&self) -> Result<Vec<PodId>> {
                    ops::workspaces::owned_pod_ids(self).await
                }
                async fn claim_workspace(
                    &self,
                    id: WorkspaceId,
                    owner: &str,
                    now: Timestamp,
                    until: Timestamp,
                ) -> Result<Option<Fence>> {
                    ops::workspaces::claim_workspace(self, id, owner, now, until).await
                }
                async fn renew_workspace_lease(
                    &self,
                    id: WorkspaceId,
                    fence: &Fence,
                    until: Timestamp,
                ) -> Result<bool> {
                    ops::workspaces::renew_workspace_lease(self, id, fence, until).await
                }
                async fn release_workspace(&self, id: WorkspaceId, fence: &Fence) -> Result<()> {
                    ops::workspaces::release_workspace(self, id, fence).await
                }
                async fn clear_leases(&self) -> Result<()> {
                    ops::workspaces::clear_leases(self).await
                }

                async fn insert_task(&self, task: &TaskRecord, audit: &[AuditEvent]) -> Result<i64> {
                    ops::tasks::insert_task(self, task, audit).await
                }
                async fn get_task(&self, org: OrgId, ws: WorkspaceId, id: TaskId) -> Result<Option<TaskRecord>> {
                    ops::tasks::get_task(self, org, ws, id).await
                }
                async fn list_tasks(&self, org: OrgId, ws: WorkspaceId) -> Result<Vec<TaskRecord>> {
                    ops::tasks::list_tasks(self, org, ws).await
                }
                async fn open_tasks(&self, ws: WorkspaceId) -> Result<Vec<TaskRecord>> {
                    ops::tasks::open_tasks(self, ws).await
                }
                async fn workspaces_with_open_tasks(&self) -> Result<Vec<WorkspaceId>> {
                    ops::tasks::workspaces_with_open_tasks(self).await
                }
                async fn busy_workspaces(&self, org: OrgId) -> Result<Vec<WorkspaceId>> {
                    ops::tasks::busy_workspaces(self, org).await
                }
                async fn count_tasks(&self, ws: WorkspaceId, status: TaskStatus) -> Result<u64> {
                    ops::tasks::count_tasks(self, ws, status).await
                }
                async fn update_task(
                    &self,
                    id: TaskId,
                    expected: TaskStatus,
                    update: &TaskUpdate,
                    audit: &[AuditEvent],
                ) -> Result<bool> {
                    ops::tasks::update_task(self, id, expected, update, audit).await
                }

                async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
                    ops::snapshots::insert_snapshot(self, s).await
                }
                async fn get_snapshots(&self, ids: &[SnapshotId]) -> Result<Vec<SnapshotRecord>> {
                    ops::snapshots::get_snapshots(self, ids).await
                }
                async fn get_snapshot(&self, id: SnapshotId) -> Result<Option<SnapshotRecord>> {
                    ops::snapshots::get_snapshot(self, id).await
                }
                async fn list_snapshots(&self, ws: WorkspaceId) -> Result<Vec<SnapshotRecord>> {
                    ops::snapshots::list_snapshots(self, ws).await
                }
                async fn list_pending_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
                    ops::snapshots::list_pending_snapshots(self).await
                }
                async fn list_superseded_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
                    ops::snapshots::list_superseded_snapshots(self).await
                }
                async fn commit_snapshot(
                    &self,
                    snap: &SnapshotRecord,
                    ws: &WorkspaceRecord,
                    expected_generation: i64,
                    fence: &Fence,
                    audit: &[AuditEvent],
                ) -> Result<ObservationWrite> {
                    ops::snapshots::commit_snapshot(self, snap, ws, expected_generation, fence, audit).await
                }
                async fn delete_snapshot(&self, id: SnapshotId, audit: &[AuditEvent]) -> Result<()> {
                    ops::snapshots::delete_snapshot(self, id, audit).await
                }

                async fn commit_checkpoint(
                    &self,
                    cp: &CheckpointRecord,
                    snap: Option<&SnapshotRecord>,
                    audit: &[AuditEvent],
                ) -> Result<bool> {
                    ops::checkpoints::commit_checkpoint(self, cp, snap, audit).await
                }
                async fn list_checkpoints(&self, ws: WorkspaceId) -> Result<Vec<CheckpointRecord>> {
                    ops::checkpoints::list_checkpoints(self, ws).await
                }
                async fn get_checkpoint(&self, ws: WorkspaceId, task_count: i64) -> Result<Option<CheckpointRecord>> {
                    ops::checkpoints::get_checkpoint(self, ws, task_count).await
                }
                async fn completed_task_count(&self, ws: WorkspaceId) -> Result<i64> {
                    ops::checkpoints::completed_task_count(self, ws).await
                }
                async fn prune_checkpoints(
                    &self,
                    ws: WorkspaceId,
                    below: Option<i64>,
                    audit: &[AuditEvent],
                ) -> Result<Vec<SnapshotRecord>> {
                    ops::checkpoints::prune_checkpoints(self, ws, below, audit).await
                }
                async fn fork_kept_snapshots(&self, ws: WorkspaceId) -> Result<Vec<SnapshotId>> {
                    ops::checkpoints::fork_kept_snapshots(self, ws).await
                }
                async fn get_fork_origins(&self, ids: &[WorkspaceId]) -> Result<Vec<(WorkspaceId, ForkOrigin)>> {
                    ops::checkpoints::get_fork_origins(self, ids).await
                }
                async fn create_fork(
                    &self,
                    ws: &WorkspaceRecord,
                    origin: &ForkOrigin,
                    checkpoint: Option<i64>,
                    quota: &WorkspaceQuota,
                    audit: &[AuditEvent],
                ) -> Result<()> {
                    ops::checkpoints::create_fork(self, ws, origin, checkpoint, quota, audit).await
                }

                async fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
                    ops::audit::append_audit(self, events).await
                }
                async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
                    ops::audit::query_audit(self, q).await
                }
                async fn get_audit_event(&self, org: OrgId, id: uuid::Uuid) -> Result<Option<AuditEvent>> {
                    ops::audit::get_audit_event(self, org, id).await
                }
                fn activity_feed(&self) -> &$crate::feed::ActivityFeed {
                    &self.feed
                }

                async fn set_pod_network(
                    &self,
                    ws: WorkspaceId,
                    pod: PodId,
                    net: Option<&$crate::api::PodNetwork>,
                    fence: &$crate::api::Fence,
                ) -> Result<$crate::api::ObservationWrite> {
                    ops::egress::set_pod_network(self, ws, pod, net, fence).await
                }
                async fn pod_network(&self, ws: WorkspaceId) -> Result<Option<(PodId, $crate::api::PodNetwork)>> {
                    ops::egress::pod_network(self, ws).await
                }
                async fn workspace_by_pod_address(
                    &self,
                    address: &str,
                ) -> Result<Option<(WorkspaceId, PodId, Option<Timestamp>)>> {
                    ops::egress::workspace_by_pod_address(self, address).await
                }
                async fn budget_counters(
                    &self,
                    keys: &[(String, String)],
                ) -> Result<Vec<evershell_core::policy::Counter>> {
                    ops::egress::budget_counters(self, keys).await
                }
                async fn charge_budgets(
                    &self,
                    moves: &[$crate::api::BudgetCounterMove],
                    now: Timestamp,
                ) -> Result<bool> {
                    ops::egress::charge_budgets(self, moves, now).await
                }
                async fn add_budget_bytes(&self, scope: &str, name: &str, bytes: u64, now: Timestamp) -> Result<()> {
                    ops::egress::add_budget_bytes(self, scope, name, bytes, now).await
                }
                async fn set_task_capability(&self, cap: &$crate::api::TaskCapability, now: Timestamp) -> Result<bool> {
                    ops::task_capabilities::set_task_capability(self, cap, now).await
                }
                async fn task_capability(&self, task: TaskId) -> Result<Option<$crate::api::TaskCapability>> {
                    ops::task_capabilities::task_capability(self, task).await
                }
                async fn revoke_task_capability(&self, task: TaskId) -> Result<()> {
                    ops::task_capabilities::revoke_task_capability(self, task).await
                }
                async fn task_capability_of_pod(
                    &self,
                    ws: WorkspaceId,
                    pod: PodId,
                ) -> Result<Option<(TaskId, Timestamp)>> {
                    ops::task_capabilities::task_capability_of_pod(self, ws, pod).await
                }

                async fn idempotency_begin(
                    &self,
                    org: OrgId,
                    key: &str,
                    claim: &IdempotencyClaim<'_>,
                ) -> Result<IdempotencyBegin> {
                    ops::idempotency::idempotency_begin(self, org, key, claim).await
                }
                async fn idempotency_renew(
                    &self,
                    org: OrgId,
                    key: &str,
                    owner: &str,
                    lease_until: Timestamp,
                ) -> Result<bool> {
                    ops::idempotency::idempotency_renew(self, org, key, owner, lease_until).await
                }
                async fn idempotency_complete(
                    &self,
                    org: OrgId,
                    key: &str,
                    owner: &str,
                    status: u16,
                    body: &str,
                ) -> Result<bool> {
                    ops::idempotency::idempotency_complete(self, org, key, owner, status, body).await
                }
                async fn idempotency_abandon(&self, org: OrgId, key: &str, owner: &str) -> Result<()> {
                    ops::idempotency::idempotency_abandon(self, org, key, owner).await
                }
                async fn idempotency_sweep(&self, now: Timestamp, limit: u32) -> Result<u64> {
                    ops::idempotency::idempotency_sweep(self, now, limit).await
                }
            }
        };
    };
}
pub(crate) use impl_store;
