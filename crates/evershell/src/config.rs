//! Server configuration: a typed struct filled from defaults, then a TOML file (`--config`), then `EVERSHELL_*`
//! environment variables (nested keys with `__`, e.g. `EVERSHELL_LIMITS__MAX_UPLOAD_BYTES`), then command-line flags.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the API listens on.
    pub listen: String,
    /// Where the SQLite file, snapshots and pods live.
    pub data_dir: PathBuf,
    /// `postgres://…` for PostgreSQL; default: the SQLite file `<data_dir>/evershell.db`.
    pub database_url: Option<String>,
    /// `text` or `json` logs.
    pub log_format: String,
    /// The key that seals secrets and credentials at rest (64 hex characters, mode 0600); default
    /// `<data_dir>/master.key`, generated on first start. Back it up with the database.
    pub master_key_file: Option<PathBuf>,
    pub runtime: RuntimeConfig,
    pub snapshots: SnapshotConfig,
    pub limits: LimitsConfig,
    pub sessions: SessionConfig,
    pub reconciler: ReconcilerSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `local` (bubblewrap sandboxes).
    pub kind: String,
    /// The binary run as `evershell agent` inside pods; default: this executable.
    pub agent_binary: Option<PathBuf>,
    /// The bubblewrap binary; default: `bwrap` on PATH.
    pub bwrap: Option<PathBuf>,
    /// Where pod directories live; default `<data_dir>/pods`.
    pub pods_dir: Option<PathBuf>,
    /// Sandboxes kept set up ahead of need (agent held), so creating or resuming a workspace skips the sandbox's
    /// set-up; 0 turns it off.
    pub spare_pods: usize,
    /// When the server runs as root, each pod runs as its own host uid from `pod_uid_base + 1 ..= pod_uid_base +
    /// pod_uid_count`; `pod_uid_base` is the group allowed to search the pods directory. Ids must be unused on the host.
    pub pod_uid_base: u32,
    pub pod_uid_count: u32,
    /// Cap of each pod's `sandbox.log` (one rotated file of the same size is kept).
    pub sandbox_log_bytes: u64,
    /// Most content a workspace may hold (apparent bytes of its files): a stop over it fails with the files kept,
    /// a restore over it is refused. 0: no cap.
    pub max_workspace_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Local directory for snapshots; default `<data_dir>/snapshots`.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_upload_bytes: u64,
    pub max_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    pub ttl_seconds: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcilerSettings {
    pub interval_ms: u64,
    pub concurrency: usize,
    pub pod_start_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7400".into(),
            data_dir: PathBuf::from("./.evershell"),
            database_url: None,
            log_format: "text".into(),
            master_key_file: None,
            runtime: RuntimeConfig::default(),
            snapshots: SnapshotConfig::default(),
            limits: LimitsConfig::default(),
            sessions: SessionConfig::default(),
            reconciler: ReconcilerSettings::default(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            kind: "local".into(),
            agent_binary: None,
            bwrap: None,
            pods_dir: None,
            spare_pods: 1,
            pod_uid_base: evershell_runtime::local::DEFAULT_POD_UID_BASE,
            pod_uid_count: evershell_runtime::local::DEFAULT_POD_UID_COUNT,
            sandbox_log_bytes: evershell_runtime::local::DEFAULT_SANDBOX_LOG_BYTES,
            max_workspace_bytes: 50 << 30,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = evershell_api::Limits::default();
        Self { max_body_bytes: l.max_body_bytes, max_upload_bytes: l.max_upload_bytes, max_wait_ms: l.max_wait_ms }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { ttl_seconds: 12 * 3600 }
    }
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        let r = evershell_app::ReconcilerConfig::default();
        Self {
            interval_ms: r.interval.as_millis() as u64,
            concurrency: r.concurrency,
            pod_start_timeout_ms: r.pod_start_timeout.as_millis() as u64,
        }
    }
}

/// Top-level keys, for picking `EVERSHELL_*` variables that configure the server.
const SECTIONS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "log_format",
    "master_key_file",
    "runtime",
    "snapshots",
    "limits",
    "sessions",
    "reconciler",
];

/// Flags that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
}

impl Config {
    /// defaults → `file` → `EVERSHELL_*` env → `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            anyhow::ensure!(f.exists(), "config file {} does not exist", f.display());
            fig = fig.merge(Toml::file(f));
        }
        // Only keys of this struct: EVERSHELL_URL / EVERSHELL_API_KEY belong to the client.
        fig = fig.merge(
            Env::prefixed("EVERSHELL_")
                .filter(|k| {
                    let k = k.as_str().to_ascii_lowercase();
                    SECTIONS.iter().any(|s| k == *s || k.starts_with(&format!("{s}__")))
                })
                .split("__"),
        );
        let mut c: Config = fig.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if let Some(v) = &overrides.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &overrides.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &overrides.database_url {
            c.database_url = Some(v.clone());
        }
        Ok(c)
    }

    /// The store URL: the configured one, or the SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("evershell.db").display()))
    }

    pub fn is_sqlite(&self) -> bool {
        !self.database_url().starts_with("postgres")
    }
}
