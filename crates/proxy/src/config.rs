//! What the proxy is configured with: where the CA lives, how upstreams are verified and where names route.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
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
    /// Peers served, as (network, prefix length); any other connection is closed at once. Empty: every peer.
    pub allowed_peers: Vec<(IpAddr, u8)>,
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
            allowed_peers: Vec::new(),
        }
    }

    /// Whether `peer` may be served.
    pub fn peer_allowed(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.allowed_peers.is_empty() || self.allowed_peers.iter().any(|&(net, len)| in_network(peer, net, len))
    }
}

/// Parse `a.b.c.d/len` (or a bare address) into a network.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a: IpAddr = s.parse().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_inside_the_allowed_networks_only() {
        let mut c = ProxyConfig::new("/nonexistent");
        assert!(c.peer_allowed("8.8.8.8".parse().unwrap()), "empty allows every peer");
        c.allowed_peers = vec![parse_cidr("10.212.0.0/14").unwrap(), parse_cidr("::1").unwrap()];
        for ok in ["10.212.0.2", "10.215.255.254", "::1", "::ffff:10.213.1.1"] {
            assert!(c.peer_allowed(ok.parse().unwrap()), "{ok}");
        }
        for no in ["10.216.0.1", "10.211.255.255", "127.0.0.1", "::2"] {
            assert!(!c.peer_allowed(no.parse().unwrap()), "{no}");
        }
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("nope"), None);
        assert_eq!(parse_cidr("0.0.0.0/0"), Some(("0.0.0.0".parse().unwrap(), 0)));
    }
}
