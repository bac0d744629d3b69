//! evershell-app: the application layer between the HTTP handlers and the store/runtime. It authenticates callers,
//! applies authorisation beyond route scopes (`:own` ownership, Owner-only rules, billing), validates input, decides
//! lifecycle calls with the pure state machine, writes intent and audit rows, and runs the reconciler that drives
//! pods. Handlers call `App`; `App` calls the store and (through the reconciler) the runtime — never the reverse.

pub mod activity;
pub mod admin;
pub mod audit_log;
pub mod authn;
pub mod billing;
pub mod caller;
pub mod checkpoint;
pub mod credentials;
pub mod egress;
pub mod files;
pub mod forks;
pub mod idempotency;
pub mod identity;
pub mod input;
pub mod key_cache;
pub mod org_secrets;
pub mod passwords;
pub mod providers;
pub mod reconciler;
pub mod roles;
pub mod sealing;
pub mod secrets;
pub mod signin;
pub mod tasks;
pub mod throttle;
pub mod workspaces;

use std::sync::Arc;

use evershell_runtime::PodRuntime;
use evershell_snapshot::SnapshotStore;
use evershell_store::Store;

pub use caller::{Caller, Principal};
pub use reconciler::{Clock, Reconciler, ReconcilerConfig};

/// Tunables of the application layer.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Lifetime of a session JWT.
    pub session_ttl_ms: i64,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl_ms: i64,
    /// The lease on an in-flight key, renewed while its request runs; a server that dies mid-request leaves a
    /// claim another request may take over once this passes.
    pub idempotency_lease_ms: i64,
    /// How often expired idempotency keys are deleted.
    pub idempotency_sweep_interval_ms: u64,
    pub quotas: Quotas,
    /// Most entries a file listing (live or snapshot) returns; beyond it the listing says `truncated`.
    pub max_list_entries: usize,
    pub reconciler: ReconcilerConfig,
    /// Sign-in throttling.
    pub login: throttle::LoginPolicy,
    /// argon2 computations at once (0: one per core).
    pub password_hash_concurrency: usize,
    /// Timing of the activity SSE streams.
    pub activity: activity::StreamSettings,
    /// Where files uploaded with a task wait for its delivery (`None`: tasks take no files); the server uses
    /// `<data_dir>/task-uploads`.
    pub task_upload_dir: Option<std::path::PathBuf>,
    /// Bounds of the files of one task submission.
    pub task_upload_limits: tasks::uploads::UploadLimits,
    /// Checkpoints after each completed task (retention).
    pub checkpoints: checkpoint::CheckpointConfig,
}

/// Workspace limits (0: unlimited), counted over non-archived workspaces; a create beyond one is
/// `409 quota_exceeded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Workspaces in one org.
    pub workspaces_per_org: u64,
    /// Workspaces of one agent role.
    pub workspaces_per_agent_role: u64,
    /// Workspaces one person may have created, by their member role (API keys are bounded by the org limit).
    pub workspaces_per_user: PerMemberRole,
}

/// One limit per member role (0: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerMemberRole {
    pub owner: u64,
    pub operator: u64,
    pub member: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self { workspaces_per_org: 10_000, workspaces_per_agent_role: 0, workspaces_per_user: Default::default() }
    }
}

impl Default for PerMemberRole {
    fn default() -> Self {
        Self { owner: 0, operator: 0, member: 100 }
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            session_ttl_ms: 12 * 3600 * 1000,
            idempotency_ttl_ms: 24 * 3600 * 1000,
            idempotency_lease_ms: 30_000,
            idempotency_sweep_interval_ms: 600_000,
            quotas: Quotas::default(),
            max_list_entries: evershell_snapshot::MAX_LIST_ENTRIES,
            reconciler: Default::default(),
            login: Default::default(),
            password_hash_concurrency: 0,
            activity: Default::default(),
            task_upload_dir: None,
            task_upload_limits: Default::default(),
            checkpoints: Default::default(),
        }
    }
}

/// The application: everything a request handler needs, as use-case methods. Its parts are private: the API layer
/// goes through these methods (idempotency claims and readiness included) and never names the store.
pub struct App {
    store: Arc<dyn Store>,
    runtime: Arc<dyn PodRuntime>,
    snapshots: SnapshotStore,
    reconciler: Reconciler,
    /// Hands queued tasks to agents and follows them (see `tasks::dispatcher`).
    dispatcher: tasks::Dispatcher,
    /// Files uploaded with tasks, waiting for their delivery (see `tasks::uploads`).
    uploads: tasks::uploads::Staging,
    config: AppConfig,
    /// This server process, as the owner of the idempotency keys it is running requests for.
    instance_id: String,
    session_key: authn::SessionKey,
    key_cache: key_cache::KeyCache,
    /// Where every argon2 computation of the server runs.
    passwords: passwords::PasswordPool,
    refusals: throttle::Refusals,
    /// Seals secret and credential material; set with `with_master_key` (a server without it refuses those calls).
    master_key: Option<sealing::MasterKey>,
}

impl App {
    /// Delete every expired idempotency key (in batches); returns how many.
    pub async fn sweep_idempotency_keys(&self) -> evershell_core::Result<u64> {
        const BATCH: u32 = 1000;
        let now = evershell_core::Timestamp::now();
        let mut total = 0;
        loop {
            let n = self.store.idempotency_sweep(now, BATCH).await?;
            total += n;
            if n < u64::from(BATCH) {
                return Ok(total);
            }
        }
    }

    /// Sweep expired idempotency keys every `idempotency_sweep_interval_ms` until `stop` is cancelled.
    pub async fn sweep_idempotency_keys_periodically(&self, stop: tokio_util::sync::CancellationToken) {
        let mut tick =
            tokio::time::interval(std::time::Duration::from_millis(self.config.idempotency_sweep_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => match self.sweep_idempotency_keys().await {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics::counter!("evershell_idempotency_keys_swept_total").increment(n);
                        tracing::debug!(deleted = n, "expired idempotency keys swept");
                    }
                    Err(e) => tracing::warn!(error = ?e, "sweeping expired idempotency keys failed"),
                },
            }
        }
    }

    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn PodRuntime>,
        snapshots: SnapshotStore,
        config: AppConfig,
    ) -> Self {
        let reconciler = Reconciler::new(store.clone(), runtime.clone(), snapshots.clone(), config.reconciler.clone());
        let uploads = tasks::uploads::Staging::new(config.task_upload_dir.clone(), config.task_upload_limits);
        let checkpoints =
            checkpoint::Checkpointer::new(store.clone(), runtime.clone(), snapshots.clone(), config.checkpoints);
        let dispatcher = tasks::Dispatcher::with_checkpoints(
            store.clone(),
            runtime.clone(),
            tasks::DispatcherConfig { uploads: uploads.clone(), ..Default::default() },
            Some(checkpoints),
        );
        // Only a single server can know every revocation as it happens (see `key_cache`).
        let key_cache = key_cache::KeyCache::new(config.reconciler.single_server);
        let instance_id = uuid::Uuid::now_v7().simple().to_string();
        let passwords = passwords::PasswordPool::new(config.password_hash_concurrency);
        Self {
            store,
            runtime,
            snapshots,
            reconciler,
            dispatcher,
            uploads,
            config,
            instance_id,
            session_key: Default::default(),
            key_cache,
            passwords,
            refusals: Default::default(),
            master_key: None,
        }
    }

    /// The reconciler (the server starts and stops it; `?wait=true` follows its change feed).
    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    /// The task dispatcher (the server starts and stops it).
    pub fn dispatcher(&self) -> &tasks::Dispatcher {
        &self.dispatcher
    }

    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// This server process's id (the owner of its idempotency claims).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The store, for the server's wiring, administration and tests — request handlers go through the use cases.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The pod runtime, for the server's wiring and tests.
    pub fn runtime(&self) -> &Arc<dyn PodRuntime> {
        &self.runtime
    }

    /// The password-hashing pool.
    pub fn passwords(&self) -> &passwords::PasswordPool {
        &self.passwords
    }

    /// The key that seals secrets and credentials at rest (see `sealing`).
    pub fn with_master_key(mut self, key: sealing::MasterKey) -> Self {
        self.master_key = Some(key);
        self
    }
}
