//! The `Store` trait: every query the control plane makes, one method each. Implementations hold no business rules
//! beyond the guarded writes that must be atomic (generation checks, last-Owner, archive guards); every method that
//! changes something takes the audit rows to write in the same transaction, so a change and its audit row land
//! together or not at all.

use async_trait::async_trait;
use evershell_core::Result;
use evershell_core::Timestamp;
use evershell_core::audit::{AuditEvent, AuditQuery, EventType};
use evershell_core::ids::{
    ApiKeyId, CredentialId, OrgId, PodId, ProviderId, RoleId, SecretId, SessionId, SnapshotId, TaskId, UserId,
    WorkspaceId,
};
use evershell_core::lifecycle::WorkspaceStatus;
use evershell_core::model::{
    AgentRole, ApiKey, BillingStatus, Credential, CredentialStatus, Membership, Org, Provider, Sealed, Secret, Session,
    SnapshotRecord, TaskRecord, User, WorkspaceRecord,
};
use evershell_core::model::{CheckpointRecord, ForkOrigin};
use evershell_core::scope::MemberRole;
use evershell_core::task::{TaskReason, TaskStatus};

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Filters of `GET /v1/workspaces`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkspaceFilter {
    pub role_id: Option<RoleId>,
    pub status: Option<WorkspaceStatus>,
    pub include_archived: bool,
    /// Only workspaces created by this user (`workspace:read:own`).
    pub created_by: Option<UserId>,
    /// A page: only ids below this one (the list is newest first)…
    pub before: Option<WorkspaceId>,
    /// …and at most this many.
    pub limit: Option<u32>,
}

/// A reconciler's hold on one workspace's lease: the fencing token every observation write presents. The epoch is
/// bumped whenever a different holder takes the lease, so a holder that lost it (its lease lapsed and another took
/// over) can no longer write, even if it does not know yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub epoch: i64,
}

/// The outcome of an observation write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservationWrite {
    Written,
    /// The observation moved since it was read (re-read and plan again).
    Stale,
    /// The fence no longer holds the lease: the writer must stop at once.
    Fenced,
}

/// Limits a new workspace must stay within (`None`: unlimited). Counted over the org's non-archived workspaces, in
/// the creating transaction, so concurrent creates cannot overshoot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkspaceQuota {
    /// Workspaces in the org.
    pub per_org: Option<u64>,
    /// Workspaces of the new workspace's agent role.
    pub per_role: Option<u64>,
    /// Workspaces created by the new workspace's creator (only when it has one).
    pub per_user: Option<u64>,
}

/// A task's move to a new status: the timestamps given are set only where still empty, `result` only when given.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskUpdate {
    pub status: TaskStatus,
    pub reason: Option<TaskReason>,
    pub delivered_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub result: Option<String>,
}

/// The result of starting an idempotent request.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyBegin {
    /// First use of the key: process the request, then `idempotency_complete` (or `idempotency_abandon`).
    New,
    /// The key was used with the same fingerprint: replay this response.
    Replay { status: u16, body: String },
    /// The key was used with a different request.
    Mismatch,
    /// The first request with this key is still being processed.
    InFlight,
}

/// A claim on an `Idempotency-Key`: the request it fingerprints, when the key expires, and which server process runs
/// the request until when (it renews the lease while the request runs; a lapsed lease means the owner died).
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyClaim<'a> {
    pub fingerprint: &'a str,
    pub now: Timestamp,
    pub expires_at: Timestamp,
    pub owner: &'a str,
    pub lease_until: Timestamp,
}

/// A stored sign-in throttle counter (the policy that reads it lives in the app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginCounter {
    pub key: String,
    /// Attempts that reached the password check without signing in.
    pub failures: i64,
    pub last_failure_at: Timestamp,
    /// The `last_failure_at` a `login_throttled` audit row was written for, if any.
    pub noted_at: Option<Timestamp>,
}

/// One counter to move in `count_login_attempt`: from `seen` (as read; `None` = no row) to `failures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginClaim {
    pub key: String,
    pub seen: Option<LoginCounter>,
    pub failures: i64,
}

/// A running pod's network observation: the address its connections come from and its capability token (held by
/// the control plane and the egress proxy only) with its expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub address: String,
    pub capability: String,
    pub capability_expires_at: Timestamp,
}

/// Never prints the token.
impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork")
            .field("address", &self.address)
            .field("capability_expires_at", &self.capability_expires_at)
            .finish_non_exhaustive()
    }
}

/// A running task's egress capability token, bound to the workspace's pod: while it is live the proxy resolves that
/// pod's connections to the task. Held by the control plane and the proxy only.
#[derive(Clone, PartialEq, Eq)]
pub struct TaskCapability {
    pub task_id: TaskId,
    pub workspace_id: WorkspaceId,
    pub pod_id: PodId,
    pub capability: String,
    pub expires_at: Timestamp,
}

/// Never prints the token.
impl std::fmt::Debug for TaskCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCapability")
            .field("task_id", &self.task_id)
            .field("workspace_id", &self.workspace_id)
            .field("pod_id", &self.pod_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// One compare-and-set move of a budget counter (`charge_budgets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetCounterMove {
    pub scope: String,
    pub name: String,
    /// As read; a missing counter reads as zero.
    pub seen: evershell_core::policy::Counter,
    pub new: evershell_core::policy::Counter,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// A round trip to the database (`GET /healthz`).
    async fn ping(&self) -> Result<()>;

    // ---- organisations -------------------------------------------------------------------------------------------
    /// `AlreadyExists` (field `slug`) when the slug is taken.
    async fn create_org(&self, org: &Org, audit: &[AuditEvent]) -> Result<()>;
    async fn get_org(&self, id: OrgId) -> Result<Option<Org>>;
    async fn get_org_by_slug(&self, slug: &str) -> Result<Option<Org>>;
    /// `OrgNotFound` when absent. Returns the updated org.
    async fn set_org_billing(
        &self,
        id: OrgId,
        status: BillingStatus,
        trial_ends_at: Option<Timestamp>,
        audit: &[AuditEvent],
    ) -> Result<Org>;

    // ---- users -----------------------------------------------------------------------------------------------------
    /// `AlreadyExists` (field `email`) when the email is taken.
    async fn create_user(&self, user: &User, audit: &[AuditEvent]) -> Result<()>;
    async fn get_user(&self, id: UserId) -> Result<Option<User>>;
    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>>;

    // ---- memberships -----------------------------------------------------------------------------------------------
    /// Insert a membership, creating `new_user` first in the same transaction when given. `invite_token_hash` is set
    /// for pending invitations. `AlreadyExists` (field `email`) when the user is already a member of the org.
    async fn create_membership(
        &self,
        m: &Membership,
        new_user: Option<&User>,
        invite_token_hash: Option<&str>,
        audit: &[AuditEvent],
    ) -> Result<()>;
    async fn get_membership(&self, org: OrgId, user: UserId) -> Result<Option<Membership>>;
    /// Every membership of the org, oldest first.
    async fn list_memberships(&self, org: OrgId) -> Result<Vec<Membership>>;
    /// Every membership of the user with its org, oldest first.
    async fn list_user_memberships(&self, user: UserId) -> Result<Vec<(Membership, Org)>>;
    /// The pending membership whose invite token hashes to `token_hash`.
    async fn find_invitation(&self, token_hash: &str) -> Result<Option<Membership>>;
    /// Activate a pending membership (clearing its token) and, when given, set the user's password hash.
    /// `MembershipNotFound` when it is not pending any more.
    async fn accept_invitation(
        &self,
        org: OrgId,
        user: UserId,
        password_hash: Option<&str>,
        now: Timestamp,
        audit: &[AuditEvent],
    ) -> Result<Membership>;
    /// Change an active member's role. `LastOwner` when it would leave the org without an active Owner;
    /// `MembershipNotFound` when absent.
    async fn update_membership_role(
        &self,
        org: OrgId,
        user: UserId,
        role: MemberRole,
        now: Timestamp,
        audit: &[AuditEvent],
    ) -> Result<Membership>;
    /// Remove a membership or revoke an invitation. `LastOwner` when it would leave the org without an active Owner;
    /// `MembershipNotFound` when absent. Also revokes the user's sessions in that org.
    async fn delete_membership(&self, org: OrgId, user: UserId, now: Timestamp, audit: &[AuditEvent]) -> Result<()>;

    // ---- API keys --------------------------------------------------------------------------------------------------
    async fn create_api_key(&self, key: &ApiKey, secret_hash: &str, audit: &[AuditEvent]) -> Result<()>;
    /// The org's keys that are not revoked, oldest first.
    async fn list_api_keys(&self, org: OrgId) -> Result<Vec<ApiKey>>;
    /// The non-revoked key whose secret hashes to `secret_hash`.
    async fn find_api_key(&self, secret_hash: &str) -> Result<Option<ApiKey>>;
    /// Revoke a key. `false` when no such live key exists in the org.
    async fn revoke_api_key(&self, org: OrgId, id: ApiKeyId, now: Timestamp, audit: &[AuditEvent]) -> Result<bool>;

    // ---- sessions and server keys ----------------------------------------------------------------------------------
    async fn create_session(&self, s: &Session, audit: &[AuditEvent]) -> Result<()>;
    async fn get_session(&self, id: SessionId) -> Result<Option<Session>>;
    async fn revoke_session(&self, id: SessionId, now: Timestamp, audit: &[AuditEvent]) -> Result<()>;
    /// The named server key, created from `candidate` if it does not exist yet (first writer wins; every caller gets
    /// the stored value).
    async fn server_key(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>>;

    // ---- sign-in throttle and password resets -----------------------------------------------------------------
    /// The counters stored under `keys`, in their order; absent keys are left out.
    async fn login_counters(&self, keys: &[String]) -> Result<Vec<LoginCounter>>;
    /// Count one sign-in attempt: set each claimed counter to its `failures` with `last_failure_at = now` (and no
    /// `noted_at`), all or nothing, and only if each still reads as it was `seen` (compare-and-set). `false`, with
    /// nothing written, when another attempt moved one first. Also deletes counters last moved before
    /// `stale_before`.
    async fn count_login_attempt(&self, claims: &[LoginClaim], now: Timestamp, stale_before: Timestamp)
    -> Result<bool>;
    /// After an attempt: delete the `clear` counters, take one failure off each `forgive` counter, and write
    /// `audit` — always as one write transaction, even with nothing to change, so a failure costs the same store
    /// work whether or not its account exists.
    async fn settle_login_attempt(&self, clear: &[String], forgive: &[String], audit: &[AuditEvent]) -> Result<()>;
    /// Mark the back-off period that began at `last_failure_at` as reported and write `audit`, unless it already was
    /// (or the counter moved on). `true` when this call wrote the rows.
    async fn note_login_throttled(&self, key: &str, last_failure_at: Timestamp, audit: &[AuditEvent]) -> Result<bool>;
    /// Replace a user's password hash and revoke every live session of theirs, in every org. Returns how many
    /// sessions were revoked.
    async fn reset_password(
        &self,
        user: UserId,
        password_hash: &str,
        now: Timestamp,
        audit: &[AuditEvent],
    ) -> Result<u64>;
    // ---- secrets ---------------------------------------------------------------------------------------------------
    /// `AlreadyExists` (field `name`) when the name is taken in the org.
    async fn create_secret(&self, s: &Secret, material: &Sealed, audit: &[AuditEvent]) -> Result<()>;
    /// The org's secrets by name (metadata only).
    async fn list_secrets(&self, org: OrgId) -> Result<Vec<Secret>>;
    async fn get_secret(&self, org: OrgId, id: SecretId) -> Result<Option<Secret>>;
    /// Replace the sealed value. `SecretNotFound` when absent. Returns the updated record.
    async fn rotate_secret(
        &self,
        org: OrgId,
        id: SecretId,
        material: &Sealed,
        now: Timestamp,
        audit: &[AuditEvent],
    ) -> Result<Secret>;
    /// `SecretNotFound` when absent.
    async fn delete_secret(&self, org: OrgId, id: SecretId, audit: &[AuditEvent]) -> Result<()>;
    /// The secret named `name` with its sealed value (for the decrypting side only).
    async fn secret_material(&self, org: OrgId, name: &str) -> Result<Option<(Secret, Sealed)>>;

    // ---- credentials -----------------------------------------------------------------------------------------------
    /// `AlreadyExists` (field `name`) when the org already has a credential of that name (or, for a personal one, the
    /// user already has a personal one of that name).
    async fn create_credential(&self, c: &Credential, material: &Sealed, audit: &[AuditEvent]) -> Result<()>;
    /// Every credential of the org (personal ones included), by name; the caller narrows.
    async fn list_credentials(&self, org: OrgId) -> Result<Vec<Credential>>;
    async fn get_credential(&self, org: OrgId, id: CredentialId) -> Result<Option<Credential>>;
    /// The org-scoped (not personal) credential named `name`.
    async fn get_org_credential_by_name(&self, org: OrgId, name: &str) -> Result<Option<Credential>>;
    /// Delete the record and its material. `CredentialNotFound` when absent.
    async fn delete_credential(&self, org: OrgId, id: CredentialId, audit: &[AuditEvent]) -> Result<()>;
    /// What the broker uses for `name` on behalf of `user`: the user's personal credential of that name when there
    /// is one, else the org's; with its sealed material.
    async fn credential_material(
        &self,
        org: OrgId,
        name: &str,
        user: Option<UserId>,
    ) -> Result<Option<(Credential, Sealed)>>;
    /// The broker's bookkeeping after a mint attempt: the status, `last_minted_at` (kept when `minted_at` is `None`)
    /// and `last_minted_status`. `CredentialNotFound` when absent.
    async fn record_credential_mint(
        &self,
        org: OrgId,
        id: CredentialId,
        status: CredentialStatus,
        minted_at: Option<Timestamp>,
        mint_status: Option<&str>,
        now: Timestamp,
    ) -> Result<()>;

    // ---- providers -------------------------------------------------------------------------------------------------
    /// `AlreadyExists` (field `name`) when the name is taken in the org.
    async fn create_provider(&self, p: &Provider, audit: &[AuditEvent]) -> Result<()>;
    async fn list_providers(&self, org: OrgId, include_archived: bool) -> Result<Vec<Provider>>;
    async fn get_provider(&self, org: OrgId, id: ProviderId) -> Result<Option<Provider>>;
    /// Write every mutable field of `p`. `ProviderNotFound` when absent.
    async fn update_provider(&self, p: &Provider, audit: &[AuditEvent]) -> Result<()>;
    /// Archive the provider and every non-archived role that references it, writing `audit` plus one
    /// `agent_role_archived` row per cascaded role (built by `role_audit`). `WorkspacesActive` when a dependent role
    /// has active workspaces (`provisioning`, `idle`, `busy`, `stopping`). Returns the cascaded role count.
    async fn archive_provider(
        &self,
        org: OrgId,
        id: ProviderId,
        now: Timestamp,
        audit: &[AuditEvent],
        role_audit: &(dyn for<'r> Fn(&'r AgentRole) -> AuditEvent + Send + Sync),
    ) -> Result<u64>;
    async fn unarchive_provider(&self, org: OrgId, id: ProviderId, now: Timestamp, audit: &[AuditEvent]) -> Result<()>;

    // ---- agent roles -----------------------------------------------------------------------------------------------
    /// `AlreadyExists` (field `name`); `ProviderArchived` when the provider is archived (checked in the transaction).
    async fn create_role(&self, r: &AgentRole, audit: &[AuditEvent]) -> Result<()>;
    async fn list_roles(&self, org: OrgId, include_archived: bool) -> Result<Vec<AgentRole>>;
    async fn get_role(&self, org: OrgId, id: RoleId) -> Result<Option<AgentRole>>;
    async fn get_role_by_name(&self, org: OrgId, name: &str) -> Result<Option<AgentRole>>;
    /// Write every mutable field of `r`. `RoleNotFound` when absent.
    async fn update_role(&self, r: &AgentRole, audit: &[AuditEvent]) -> Result<()>;
    /// `WorkspacesActive` when the role has active workspaces.
    async fn archive_role(&self, org: OrgId, id: RoleId, now: Timestamp, audit: &[AuditEvent]) -> Result<()>;
    /// `ProviderArchived` when its provider is archived.
    async fn unarchive_role(&self, org: OrgId, id: RoleId, now: Timestamp, audit: &[AuditEvent]) -> Result<()>;

    // ---- workspaces ------------------------------------------------------------------------------------------------
    /// `RoleArchived` / `ProviderArchived` when a parent is archived (checked in the transaction, so an archive and
    /// a create cannot interleave).
    async fn create_workspace(&self, ws: &WorkspaceRecord, audit: &[AuditEvent]) -> Result<()> {
        self.create_workspace_within(ws, &WorkspaceQuota::default(), audit).await
    }
    /// Create a workspace unless it would exceed `quota` (`409 quota_exceeded` naming the quota).
    async fn create_workspace_within(
        &self,
        ws: &WorkspaceRecord,
        quota: &WorkspaceQuota,
        audit: &[AuditEvent],
    ) -> Result<()>;
    async fn get_workspace(&self, org: OrgId, id: WorkspaceId) -> Result<Option<WorkspaceRecord>>;
    /// For the reconciler, which works across orgs.
    async fn get_workspace_by_id(&self, id: WorkspaceId) -> Result<Option<WorkspaceRecord>>;
    /// Newest first.
    async fn list_workspaces(&self, org: OrgId, filter: &WorkspaceFilter) -> Result<Vec<WorkspaceRecord>>;
    /// The API's write: the intent half of `ws` (`desired`, the request, `environment`, `archived_at`), only if the
    /// intent is still at `expected_intent` *and* the observation is still the one the call decided from
    /// (`expected_observed`; nothing of it is written). Bumps the intent generation. `false` when either moved (a
    /// normal outcome: re-read and decide again). Refused with `409 quota_exceeded` when `ws` would exceed `quota`
    /// (for an unarchive: the stored row is still archived, so it is not counted yet).
    async fn update_intent(
        &self,
        ws: &WorkspaceRecord,
        expected_intent: i64,
        expected_observed: i64,
        quota: &WorkspaceQuota,
        audit: &[AuditEvent],
    ) -> Result<bool>;
    /// The idle timeout's write (the reconciler's only intent write): `ws`'s intent as `update_intent` writes it,
    /// only if, under the workspace's row lock (which `insert_task` takes too), the workspace has no task that has
    /// not ended and no activity after `since` (see `last_workspace_activity`). `false` otherwise, or when a
    /// generation moved. A submission racing it either lands first (no stop) or sees the stop pending (409).
    async fn update_intent_if_inactive(
        &self,
        ws: &WorkspaceRecord,
        expected_intent: i64,
        expected_observed: i64,
        since: Timestamp,
        events: &[EventType],
        audit: &[AuditEvent],
    ) -> Result<bool>;
    /// When the workspace was last active: the latest task submission or task end, or audit row about it of one of
    /// `events`. `None` when there is none.
    async fn last_workspace_activity(&self, ws: WorkspaceId, events: &[EventType]) -> Result<Option<Timestamp>>;
    /// The reconciler's write: the observation half of `ws`, only if the observation is still at
    /// `expected_generation` and `fence` still holds the workspace's lease. Bumps the observation generation.
    async fn record_observation(
        &self,
        ws: &WorkspaceRecord,
        expected_generation: i64,
        fence: &Fence,
        audit: &[AuditEvent],
    ) -> Result<ObservationWrite>;
    /// Workspaces the reconciler must look at: transitional ones and every one that owns a pod.
    async fn workspaces_to_reconcile(&self) -> Result<Vec<WorkspaceId>>;
    /// Every pod id some workspace owns.
    async fn owned_pod_ids(&self) -> Result<Vec<PodId>>;
    /// Take the reconcile lease on a workspace until `until`: its fence, or `None` when another owner holds a live
    /// lease. A new holder gets a new epoch; `owner` taking again a lease it still holds keeps the epoch.
    async fn claim_workspace(
        &self,
        id: WorkspaceId,
        owner: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Option<Fence>>;
    /// Extend a held lease until `until`. `false` when `fence` no longer holds it (someone else took it over).
    async fn renew_workspace_lease(&self, id: WorkspaceId, fence: &Fence, until: Timestamp) -> Result<bool>;
    /// Give the lease up (if `fence` still holds it).
    async fn release_workspace(&self, id: WorkspaceId, fence: &Fence) -> Result<()>;
    /// Drop every lease (single-server start-up: no other replica can hold one).
    async fn clear_leases(&self) -> Result<()>;

    // ---- snapshots -------------------------------------------------------------------------------------------------
    async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()>;
    async fn get_snapshot(&self, id: SnapshotId) -> Result<Option<SnapshotRecord>>;
    /// The snapshots with these ids (those that exist), in one query.
    async fn get_snapshots(&self, ids: &[SnapshotId]) -> Result<Vec<SnapshotRecord>>;
    /// A workspace's snapshots, oldest first.
    async fn list_snapshots(&self, ws: WorkspaceId) -> Result<Vec<SnapshotRecord>>;
    /// Snapshots still `pending` (their writer may have died), across all workspaces.
    async fn list_pending_snapshots(&self) -> Result<Vec<SnapshotRecord>>;
    /// Verified snapshots no workspace points at any more (a newer one replaced them), across all workspaces: what a
    /// stop deletes after the fact, left over if the server died before it did.
    async fn list_superseded_snapshots(&self) -> Result<Vec<SnapshotRecord>>;
    /// In one transaction: store the verified snapshot `snap` and record the observation of `ws` (which points at it)
    /// as `record_observation` does. Nothing is written unless that is `Written`.
    async fn commit_snapshot(
        &self,
        snap: &SnapshotRecord,
        ws: &WorkspaceRecord,
        expected_generation: i64,
        fence: &Fence,
        audit: &[AuditEvent],
    ) -> Result<ObservationWrite>;
    async fn delete_snapshot(&self, id: SnapshotId, audit: &[AuditEvent]) -> Result<()>;

    // ---- checkpoints and forks -------------------------------------------------------------------------------------
    /// Record checkpoint `cp`; with `snap` (inserted `pending` before its capture) that snapshot becomes `verified`
    /// with `snap`'s figures in the same transaction. `false`, nothing written, when the pending row is gone (a stop
    /// discarded it) or the workspace already has a checkpoint at that count.
    async fn commit_checkpoint(
        &self,
        cp: &CheckpointRecord,
        snap: Option<&SnapshotRecord>,
        audit: &[AuditEvent],
    ) -> Result<bool>;
    /// A workspace's checkpoints, lowest count first.
    async fn list_checkpoints(&self, ws: WorkspaceId) -> Result<Vec<CheckpointRecord>>;
    async fn get_checkpoint(&self, ws: WorkspaceId, task_count: i64) -> Result<Option<CheckpointRecord>>;
    /// How many of the workspace's tasks ended `completed`.
    async fn completed_task_count(&self, ws: WorkspaceId) -> Result<i64>;
    /// Delete the workspace's checkpoints below count `below` (all with `None`); returns the snapshots they held
    /// that nothing needs any more (the caller deletes their objects, then their rows).
    async fn prune_checkpoints(
        &self,
        ws: WorkspaceId,
        below: Option<i64>,
        audit: &[AuditEvent],
    ) -> Result<Vec<SnapshotRecord>>;
    /// Snapshots of `ws` that a checkpoint holds or a fork starts from (a stop does not delete them).
    async fn fork_kept_snapshots(&self, ws: WorkspaceId) -> Result<Vec<SnapshotId>>;
    /// The fork origins of those of `ids` that are forks.
    async fn get_fork_origins(&self, ids: &[WorkspaceId]) -> Result<Vec<(WorkspaceId, ForkOrigin)>>;
    /// Create the fork `ws` with its origin, as `create_workspace_within` does; with `checkpoint` (the parent's
    /// checkpoint count the origin's snapshot comes from) that checkpoint must still hold it, else
    /// `snapshot_missing`.
    async fn create_fork(
        &self,
        ws: &WorkspaceRecord,
        origin: &ForkOrigin,
        checkpoint: Option<i64>,
        quota: &WorkspaceQuota,
        audit: &[AuditEvent],
    ) -> Result<()>;

    // ---- audit -----------------------------------------------------------------------------------------------------
    async fn append_audit(&self, events: &[AuditEvent]) -> Result<()>;
    /// One page of events, at most `q.limit`.
    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>>;
    /// One event of `org` by id.
    async fn get_audit_event(&self, org: OrgId, id: uuid::Uuid) -> Result<Option<AuditEvent>>;
    /// Every `category = activity` row this store commits, published after its transaction commits (see `feed`).
    fn activity_feed(&self) -> &crate::feed::ActivityFeed;

    // ---- egress ----------------------------------------------------------------------------------------------------
    /// Record (or, with `None`, clear) the network observation of the workspace's pod `pod`: a narrow update of
    /// those columns only, beside the generation-guarded row, presenting the reconciler's lease `fence` as
    /// `record_observation` does. `Stale` when the workspace no longer owns `pod`; `Fenced` (nothing written) when
    /// `fence` no longer holds the lease.
    async fn set_pod_network(
        &self,
        ws: WorkspaceId,
        pod: PodId,
        net: Option<&PodNetwork>,
        fence: &Fence,
    ) -> Result<ObservationWrite>;
    /// The recorded network observation of the workspace's pod.
    async fn pod_network(&self, ws: WorkspaceId) -> Result<Option<(PodId, PodNetwork)>>;
    /// The non-archived workspace whose pod was last recorded at `address`: its id, the pod, and when the pod's
    /// capability token expires (`None`: it holds none).
    async fn workspace_by_pod_address(&self, address: &str) -> Result<Option<(WorkspaceId, PodId, Option<Timestamp>)>>;
    /// The budget counters under `(scope, name)` keys, in order (zero when absent).
    async fn budget_counters(&self, keys: &[(String, String)]) -> Result<Vec<evershell_core::policy::Counter>>;
    /// Apply every move, all or nothing, only if each counter still reads as its `seen` (compare-and-set). `false`,
    /// with nothing written, when another writer moved one first.
    async fn charge_budgets(&self, moves: &[BudgetCounterMove], now: Timestamp) -> Result<bool>;
    /// Add `bytes` to a counter (creating it), never refused: response bytes counted after the fact.
    async fn add_budget_bytes(&self, scope: &str, name: &str, bytes: u64, now: Timestamp) -> Result<()>;
    /// Grant (or renew) a task's capability token, only while the task is open; the workspace's tokens of other
    /// tasks are dropped. `false` (nothing written) when the task has ended or is not the workspace's.
    async fn set_task_capability(&self, cap: &TaskCapability, now: Timestamp) -> Result<bool>;
    /// The task's capability token, if it holds one.
    async fn task_capability(&self, task: TaskId) -> Result<Option<TaskCapability>>;
    /// Delete the task's token (it ended): from now on its pod's requests carry no task.
    async fn revoke_task_capability(&self, task: TaskId) -> Result<()>;
    /// The open task whose token is bound to the workspace's pod `pod`, and when the token expires.
    async fn task_capability_of_pod(&self, ws: WorkspaceId, pod: PodId) -> Result<Option<(TaskId, Timestamp)>>;

    // ---- idempotency -----------------------------------------------------------------------------------------------
    /// Start a request under `key`. An expired key counts as new, and so does an in-flight one whose owner's lease
    /// lapsed (the process running it died).
    async fn idempotency_begin(&self, org: OrgId, key: &str, claim: &IdempotencyClaim<'_>) -> Result<IdempotencyBegin>;
    /// Extend `owner`'s lease on its in-flight key; `false` when the claim is no longer `owner`'s.
    async fn idempotency_renew(&self, org: OrgId, key: &str, owner: &str, lease_until: Timestamp) -> Result<bool>;
    /// Keep the answer for replay; `false` (nothing written) when the claim is no longer `owner`'s.
    async fn idempotency_complete(&self, org: OrgId, key: &str, owner: &str, status: u16, body: &str) -> Result<bool>;
    /// Forget `owner`'s in-flight key whose request failed with a server error, so a retry runs again.
    async fn idempotency_abandon(&self, org: OrgId, key: &str, owner: &str) -> Result<()>;
    /// Delete up to `limit` keys that expired by `now`; returns how many.
    async fn idempotency_sweep(&self, now: Timestamp, limit: u32) -> Result<u64>;

    // ---- tasks
    /// Queue `task` on its workspace (its `queue_seq` is assigned here, behind every earlier task; returned). Under the
    /// workspace's row lock: 404 `workspace_not_found`; 409 `workspace_archived`, `workspace_stopped` (stopped,
    /// stopping, or a stop pending) or `workspace_failed`.
    async fn insert_task(&self, task: &TaskRecord, audit: &[AuditEvent]) -> Result<i64>;
    async fn get_task(&self, org: OrgId, ws: WorkspaceId, id: TaskId) -> Result<Option<TaskRecord>>;
    /// A workspace's tasks, newest first.
    async fn list_tasks(&self, org: OrgId, ws: WorkspaceId) -> Result<Vec<TaskRecord>>;
    /// A workspace's tasks that have not ended, in queue order (the first runs or runs next).
    async fn open_tasks(&self, ws: WorkspaceId) -> Result<Vec<TaskRecord>>;
    /// Every workspace with a task that has not ended.
    async fn workspaces_with_open_tasks(&self) -> Result<Vec<WorkspaceId>>;
    /// The org's workspaces with a delivered, running or compacting task (they read `busy`).
    async fn busy_workspaces(&self, org: OrgId) -> Result<Vec<WorkspaceId>>;
    /// How many of a workspace's tasks are in `status`.
    async fn count_tasks(&self, ws: WorkspaceId, status: TaskStatus) -> Result<u64>;
    /// Move a task from `expected` (`… WHERE id = ? AND status = ?`) with its audit rows; `false` when it was no
    /// longer in `expected` (another writer moved it first).
    async fn update_task(
        &self,
        id: TaskId,
        expected: TaskStatus,
        update: &TaskUpdate,
        audit: &[AuditEvent],
    ) -> Result<bool>;
}
