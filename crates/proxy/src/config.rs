//! What the proxy is configured with: where the CA lives, how upstreams are verified and where names route.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Environment variable naming an extra PEM file of CAs trusted for upstreams.
pub const UPSTREAM_CA_FILE_ENV: &str = "EVERSHELL_UPSTREAM_CA_FILE";

/// Proxy configuration (the control plane fills it from `[proxy]`).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Directory holding `ca.pem` and `ca.key` (created on first start).
    pub ca_dir: PathBuf,
    /// Host name (lower-case) → fixed `ip:port`; such names skip DNS and the internal-address refusal.
    pub upstream_hosts: HashMap<String, SocketAddr>,
    /// Extra PEM CAs trusted for upstreams, besides the system roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Whether the system roots are trusted for upstreams.
    pub system_roots: bool,
    /// Leaf certificates kept (least recently minted evicted first).
    pub leaf_cache: usize,
    /// How long a new connection may take to send its first bytes.
    pub first_bytes_timeout: Duration,
    /// Idle upstream connections are closed after this.
    pub pool_idle_timeout: Duration,
}

impl ProxyConfig {
    /// Defaults, with `upstream_ca_file` from `EVERSHELL_UPSTREAM_CA_FILE` when set.
    pub fn new(ca_dir: impl Into<PathBuf>) -> Self {
        Self {
            ca_dir: ca_dir.into(),
            upstream_hosts: HashMap::new(),
            upstream_ca_file: std::env::var_os(UPSTREAM_CA_FILE_ENV).map(PathBuf::from),
            system_roots: true,
            leaf_cache: 1024,
            first_bytes_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
        }
    }
}
