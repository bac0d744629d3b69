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
    pub http: HttpConfig,
    pub idempotency: IdempotencyConfig,
    /// Workspace limits (0: unlimited).
    pub quotas: evershell_app::Quotas,
    pub sessions: SessionConfig,
    pub reconciler: ReconcilerSettings,
    pub login: LoginSettings,
    pub proxy: ProxySettings,
    /// Timing of the activity SSE streams (heartbeat, longest stream, store poll).
    pub activity: evershell_app::activity::StreamSettings,
    /// Checkpoints taken after each completed task (`[checkpoints] keep = N`, default 10, 0: none).
    pub checkpoints: evershell_app::checkpoint::CheckpointConfig,
    pub agent: AgentSettings,
}

/// Tuning of the in-pod agent's model calls (`[agent]`), handed to every pod's `evershell agent` as its
/// `EVERSHELL_AGENT_*` environment. Only these settings, each bounded, ever reach a pod's environment (nothing from
/// the API does). Unset: the agent's own defaults (first retry after 1 s, doubling up to 30 s, 5 retries; 300 s for
/// an answer's headers and for silence inside a streamed answer). Tests shorten them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// The wait before a model call's first retry (it doubles per retry, at most 30 s), 1..=60000 ms.
    pub model_retry_base_ms: Option<u64>,
    /// How long a model call waits for its answer's headers, 100..=3600000 ms.
    pub model_response_timeout_ms: Option<u64>,
    /// The longest silence inside a streamed model answer, 100..=3600000 ms.
    pub model_idle_timeout_ms: Option<u64>,
}

impl AgentSettings {
    /// The pods' agent environment for these settings, or why a setting is out of bounds.
    pub fn env(&self) -> anyhow::Result<Vec<(String, String)>> {
        use evershell_agent::task::{
            ENV_MODEL_IDLE_TIMEOUT_MS, ENV_MODEL_RESPONSE_TIMEOUT_MS, ENV_MODEL_RETRY_BASE_MS,
        };
        let mut env = Vec::new();
        for (name, var, value, range) in [
            ("model_retry_base_ms", ENV_MODEL_RETRY_BASE_MS, self.model_retry_base_ms, 1..=60_000),
            (
                "model_response_timeout_ms",
                ENV_MODEL_RESPONSE_TIMEOUT_MS,
                self.model_response_timeout_ms,
                100..=3_600_000,
            ),
            ("model_idle_timeout_ms", ENV_MODEL_IDLE_TIMEOUT_MS, self.model_idle_timeout_ms, 100..=3_600_000),
        ] {
            let Some(v) = value else { continue };
            anyhow::ensure!(
                range.contains(&v),
                "invalid configuration: agent.{name} must be within {}..={} ms, not {v}",
                range.start(),
                range.end()
            );
            env.push((var.to_string(), v.to_string()));
        }
        Ok(env)
    }
}

/// The egress proxy (`[proxy]`): `evershell serve` runs it in-process on `runtime.proxy_port` unless `enabled` is
/// false; `evershell proxy` runs it as its own process over the same store and configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySettings {
    pub enabled: bool,
    /// Address the proxy listens on (the port is `runtime.proxy_port`): pods' redirected connections arrive on the
    /// host side of their veth, so the default is every address.
    pub listen_address: String,
    /// Host name → fixed `ip:port`, for private upstreams and tests: such names skip DNS and the internal-address
    /// refusal, e.g. `upstream_hosts = { "api.example.com" = "10.0.0.5:443" }`.
    pub upstream_hosts: std::collections::BTreeMap<String, String>,
    /// Extra PEM CAs trusted for upstreams, besides the system roots (also `EVERSHELL_UPSTREAM_CA_FILE`).
    pub upstream_ca_file: Option<PathBuf>,
    /// Where the platform CA (`ca.pem`, `ca.key`) lives; default `<data_dir>/egress-ca`.
    pub ca_dir: Option<PathBuf>,
    /// Peers the proxy serves (CIDRs); any other connection is closed at once. Default: the pod network.
    pub allowed_peers: Vec<String>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen_address: "0.0.0.0".into(),
            upstream_hosts: Default::default(),
            upstream_ca_file: None,
            ca_dir: None,
            allowed_peers: vec!["10.212.0.0/14".into()],
        }
    }
}

/// Sign-in throttling and the password-hashing pool (`[login]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginSettings {
    /// Failed attempts on one account before back-off starts.
    pub account_free_failures: i64,
    /// Failed attempts on one account after which it is locked for `lock_seconds`.
    pub account_lock_after: i64,
    /// Failed attempts from one client address (IPv6: one /64) before back-off starts.
    pub address_free_failures: i64,
    pub address_lock_after: i64,
    /// The first back-off; doubled by each further failure up to `backoff_max_ms`.
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub lock_seconds: i64,
    /// A counter without a new failure for this long starts from zero again.
    pub reset_after_seconds: i64,
    /// A refused attempt's 429 is sent after this long (at most the attempt's whole wait).
    pub refusal_delay_ms: i64,
    /// argon2 computations at once; 0 = one per core.
    pub hash_concurrency: usize,
}

impl Default for LoginSettings {
    fn default() -> Self {
        let p = evershell_app::throttle::LoginPolicy::default();
        Self {
            account_free_failures: p.account.free_failures,
            account_lock_after: p.account.lock_after,
            address_free_failures: p.address.free_failures,
            address_lock_after: p.address.lock_after,
            backoff_base_ms: p.backoff_base_ms,
            backoff_max_ms: p.backoff_max_ms,
            lock_seconds: p.lock_ms / 1000,
            reset_after_seconds: p.reset_after_ms / 1000,
            refusal_delay_ms: p.refusal_delay_ms,
            hash_concurrency: 0,
        }
    }
}

impl LoginSettings {
    pub fn policy(&self) -> evershell_app::throttle::LoginPolicy {
        use evershell_app::throttle::{LoginPolicy, Tier};
        LoginPolicy {
            account: Tier { free_failures: self.account_free_failures, lock_after: self.account_lock_after },
            address: Tier { free_failures: self.address_free_failures, lock_after: self.address_lock_after },
            backoff_base_ms: self.backoff_base_ms,
            backoff_max_ms: self.backoff_max_ms,
            lock_ms: self.lock_seconds.saturating_mul(1000),
            reset_after_ms: self.reset_after_seconds.saturating_mul(1000),
            refusal_delay_ms: self.refusal_delay_ms,
        }
    }
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
    /// Give each pod a network namespace of its own (veth to the host) whose outbound TCP goes to the egress proxy
    /// port and DNS to the DNS port on the host. On by default; it takes effect when the server runs as root with
    /// `ip`/`nft` present, otherwise the server says why at start-up and pods have loopback only.
    pub network: bool,
    pub proxy_port: u16,
    pub dns_port: u16,
    /// The egress proxy's platform CA certificate, which every pod trusts (bound over the distro bundle paths
    /// with the host's bundle, and named by `SSL_CERT_FILE` and friends); default `<data_dir>/egress-ca/ca.pem`,
    /// the `ca.pem` the proxy creates in its CA directory (`Config::egress_ca_dir`). Its key is never given to pods.
    pub egress_ca_file: Option<PathBuf>,
    /// Every pod's resource limits (`runtime.limits.*`); a role may override the memory, process and CPU ones.
    pub limits: PodLimitsConfig,
}

/// `runtime.limits`: what each pod may use. 0 turns a limit off. Memory, processes and CPU are the pod's cgroup
/// (v1 or v2, whichever the host has; without one, a warning at start-up and no limits); the disk limit is the size
/// of the pod's own `/workspace` file system (a loop-mounted sparse ext4 image; needs root and `mkfs.ext4`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodLimitsConfig {
    /// Most memory, bytes (no swap on top); over it the OOM killer ends the pod's largest process.
    pub memory_bytes: u64,
    /// Most processes and threads at once.
    pub pids: u64,
    /// CPU quota in thousandths of a CPU (1000 = one core).
    pub cpu_millis: u64,
    /// Size of each pod's `/workspace`; writes beyond it fail with ENOSPC in the pod.
    pub disk_bytes: u64,
}

impl Default for PodLimitsConfig {
    fn default() -> Self {
        Self { memory_bytes: 4 << 30, pids: 2048, cpu_millis: 2000, disk_bytes: 20 << 30 }
    }
}

impl PodLimitsConfig {
    /// The cgroup limits (0 = off).
    pub fn pod_limits(&self) -> evershell_runtime::PodLimits {
        let on = |v: u64| Some(v).filter(|&v| v > 0);
        evershell_runtime::PodLimits {
            memory_bytes: on(self.memory_bytes),
            pids: on(self.pids),
            cpu_millis: on(self.cpu_millis),
        }
    }
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
    /// Most entries a file listing returns.
    pub max_list_entries: usize,
    /// Most files one task submission (multipart `file` parts) may carry.
    pub max_task_files: usize,
    /// Largest file of a task submission (bytes).
    pub max_task_file_bytes: u64,
    /// Most bytes of all the files of one task submission.
    pub max_task_upload_bytes: u64,
}

/// Connection and request limits of the HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A connection's request headers must arrive within this; a slower client is disconnected.
    pub header_read_timeout_ms: u64,
    /// A request must be answered (its response head sent) within this; `?wait=true` gets `limits.max_wait_ms` more,
    /// file uploads get `upload_timeout_ms` instead.
    pub request_timeout_ms: u64,
    /// `PUT …/sandbox/files/{path}`: the whole upload must arrive within this.
    pub upload_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Mark the session cookie `Secure` always (set it when TLS terminates in front of the server without
    /// `X-Forwarded-Proto`); it is `Secure` anyway on requests with `X-Forwarded-Proto: https`.
    pub secure_cookies: bool,
}

/// `Idempotency-Key` bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long a key is remembered (and its answer replayed).
    pub ttl_ms: u64,
    /// Lease on an in-flight key, renewed while its request runs; a dead server's claim is taken over after it.
    pub lease_ms: u64,
    /// How often expired keys are deleted.
    pub sweep_interval_ms: u64,
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
            http: HttpConfig::default(),
            idempotency: IdempotencyConfig::default(),
            quotas: Default::default(),
            sessions: SessionConfig::default(),
            reconciler: ReconcilerSettings::default(),
            login: LoginSettings::default(),
            proxy: ProxySettings::default(),
            activity: Default::default(),
            checkpoints: Default::default(),
            agent: AgentSettings::default(),
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
            network: true,
            proxy_port: evershell_runtime::local::DEFAULT_PROXY_PORT,
            dns_port: evershell_runtime::local::DEFAULT_DNS_PORT,
            egress_ca_file: None,
            limits: PodLimitsConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = evershell_api::Limits::default();
        let u = evershell_app::tasks::uploads::UploadLimits::default();
        Self {
            max_body_bytes: l.max_body_bytes,
            max_upload_bytes: l.max_upload_bytes,
            max_wait_ms: l.max_wait_ms,
            max_list_entries: evershell_snapshot::MAX_LIST_ENTRIES,
            max_task_files: u.max_files,
            max_task_file_bytes: u.max_file_bytes,
            max_task_upload_bytes: u.max_total_bytes,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            upload_timeout_ms: 3_600_000,
            max_connections: 1024,
            secure_cookies: false,
        }
    }
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        let a = evershell_app::AppConfig::default();
        Self {
            ttl_ms: a.idempotency_ttl_ms as u64,
            lease_ms: a.idempotency_lease_ms as u64,
            sweep_interval_ms: a.idempotency_sweep_interval_ms,
        }
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
/// The top-level keys of [`Config`], read from the struct itself so a new section is never forgotten: only these
/// `EVERSHELL_*` variables are configuration (`EVERSHELL_URL` / `EVERSHELL_API_KEY` belong to the client).
fn sections() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Flags that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
}

impl Config {
    /// The egress proxy's CA directory (`ca.pem`, `ca.key`): `<data_dir>/egress-ca`, or the directory of
    /// `runtime.egress_ca_file` when that is set.
    pub fn egress_ca_dir(&self) -> PathBuf {
        match &self.runtime.egress_ca_file {
            Some(f) => f.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
            None => self.data_dir.join("egress-ca"),
        }
    }

    /// The platform CA certificate pods trust (`runtime.egress_ca_file`, default `<egress_ca_dir>/ca.pem`).
    pub fn egress_ca_file(&self) -> PathBuf {
        self.runtime.egress_ca_file.clone().unwrap_or_else(|| self.egress_ca_dir().join("ca.pem"))
    }

    /// defaults → `file` → `EVERSHELL_*` env → `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            anyhow::ensure!(f.exists(), "config file {} does not exist", f.display());
            fig = fig.merge(Toml::file(f));
        }
        let sections = sections();
        fig = fig.merge(
            Env::prefixed("EVERSHELL_")
                .filter(move |k| {
                    let k = k.as_str().to_ascii_lowercase();
                    sections.iter().any(|s| k == *s || k.starts_with(&format!("{s}__")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_of_the_struct_is_read_from_the_environment() {
        let s = sections();
        for k in ["listen", "runtime", "idempotency", "quotas", "proxy", "activity", "database_url"] {
            assert!(s.iter().any(|x| x == k), "{k} missing from {s:?}");
        }
        assert!(!s.iter().any(|x| x == "url" || x == "api_key"), "{s:?}");
    }

    #[test]
    fn quotas_and_idempotency_come_from_the_environment() {
        // figment's Jail isolates the environment of this closure from other tests.
        figment::Jail::expect_with(|jail| {
            jail.set_env("EVERSHELL_QUOTAS__WORKSPACES_PER_ORG", "7");
            jail.set_env("EVERSHELL_IDEMPOTENCY__TTL_MS", "1234");
            jail.set_env("EVERSHELL_URL", "http://client-only");
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.quotas.workspaces_per_org, 7);
            assert_eq!(c.idempotency.ttl_ms, 1234);
            Ok(())
        });
    }

    #[test]
    fn agent_settings_become_the_pods_agent_environment_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("evershell.toml");
        std::fs::write(&f, "[agent]\nmodel_retry_base_ms = 10\nmodel_idle_timeout_ms = 5000\n").unwrap();
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(
            c.agent.env().unwrap(),
            [
                ("EVERSHELL_AGENT_MODEL_RETRY_BASE_MS".to_string(), "10".to_string()),
                ("EVERSHELL_AGENT_MODEL_IDLE_TIMEOUT_MS".to_string(), "5000".to_string()),
            ]
        );
        assert!(Config::default().agent.env().unwrap().is_empty(), "nothing by default");
        for bad in [
            AgentSettings { model_retry_base_ms: Some(0), ..Default::default() },
            AgentSettings { model_retry_base_ms: Some(60_001), ..Default::default() },
            AgentSettings { model_response_timeout_ms: Some(99), ..Default::default() },
            AgentSettings { model_idle_timeout_ms: Some(3_600_001), ..Default::default() },
        ] {
            let e = bad.env().unwrap_err().to_string();
            assert!(e.contains("agent.model_"), "{e}");
        }
        // Only the named settings: anything else under [agent] is refused.
        std::fs::write(&f, "[agent]\nenv = { LD_PRELOAD = \"x\" }\n").unwrap();
        assert!(Config::load(Some(&f), &Overrides::default()).is_err());
        // Every agent variable the runtime lets into a pod is one of these settings.
        let all = AgentSettings {
            model_retry_base_ms: Some(1),
            model_response_timeout_ms: Some(100),
            model_idle_timeout_ms: Some(100),
        };
        let vars = all.env().unwrap();
        evershell_runtime::local::check_agent_env(&vars).unwrap();
        assert_eq!(vars.len(), evershell_runtime::local::AGENT_ENV_NAMES.len());
    }
}
