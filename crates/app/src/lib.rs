//! evershell-app: the application layer between the HTTP handlers and the store/runtime. It authenticates callers,
//! applies authorisation beyond route scopes (`:own` ownership, Owner-only rules, billing), validates input, decides
//! lifecycle calls with the pure state machine, writes intent and audit rows, and runs the reconciler that drives
//! pods. Handlers call `App`; `App` calls the store and (through the reconciler) the runtime — never the reverse.

pub mod admin;
pub mod audit_log;
pub mod authn;
pub mod billing;
pub mod caller;
pub mod credentials;
pub mod files;
pub mod identity;
pub mod input;
pub mod key_cache;
pub mod org_secrets;
pub mod providers;
pub mod reconciler;
pub mod roles;
pub mod sealing;
pub mod secrets;
pub mod workspaces;

use std::sync::Arc;

use evershell_runtime::PodRuntime;
use evershell_snapshot::SnapshotStore;
use evershell_store::Store;

pub use caller::{Caller, Principal};
pub use reconciler::{Reconciler, ReconcilerConfig};

/// Tunables of the application layer.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Lifetime of a session JWT.
    pub session_ttl_ms: i64,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl_ms: i64,
    pub reconciler: ReconcilerConfig,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self { session_ttl_ms: 12 * 3600 * 1000, idempotency_ttl_ms: 24 * 3600 * 1000, reconciler: Default::default() }
    }
}

/// The application: everything a request handler needs.
pub struct App {
    pub store: Arc<dyn Store>,
    pub runtime: Arc<dyn PodRuntime>,
    pub snapshots: SnapshotStore,
    pub reconciler: Reconciler,
    pub config: AppConfig,
    session_key: authn::SessionKey,
    key_cache: key_cache::KeyCache,
    /// Seals secret and credential material; set with `with_master_key` (a server without it refuses those calls).
    master_key: Option<sealing::MasterKey>,
}

impl App {
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn PodRuntime>,
        snapshots: SnapshotStore,
        config: AppConfig,
    ) -> Self {
        let reconciler = Reconciler::new(store.clone(), runtime.clone(), snapshots.clone(), config.reconciler.clone());
        // Only a single server can know every revocation as it happens (see `key_cache`).
        let key_cache = key_cache::KeyCache::new(config.reconciler.single_server);
        Self {
            store,
            runtime,
            snapshots,
            reconciler,
            config,
            session_key: Default::default(),
            key_cache,
            master_key: None,
        }
    }

    /// The key that seals secrets and credentials at rest (see `sealing`).
    pub fn with_master_key(mut self, key: sealing::MasterKey) -> Self {
        self.master_key = Some(key);
        self
    }
}
