//! The egress proxy's wiring: `[proxy]` → `ProxyConfig`, and the proxy itself (a `PolicyGate` over the store's
//! `Directory`) started in-process by `evershell serve` or on its own by `evershell proxy`; the same code either way.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use evershell_app::egress::StoreDirectory;
use evershell_app::sealing::MasterKey;
use evershell_proxy::{PolicyGate, PolicyGateConfig, ProxyConfig, ProxyServer, parse_cidr};
use evershell_store::Store;

use crate::config::Config;

/// `[proxy]` as the proxy crate takes it.
pub fn proxy_config(cfg: &Config) -> anyhow::Result<ProxyConfig> {
    let p = &cfg.proxy;
    let mut out = ProxyConfig::new(p.ca_dir.clone().unwrap_or_else(|| cfg.data_dir.join("egress-ca")));
    for (host, addr) in &p.upstream_hosts {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid configuration: proxy.upstream_hosts.{host} must be `ip:port`"))?;
        out.upstream_hosts.insert(host.trim_end_matches('.').to_ascii_lowercase(), addr);
    }
    if let Some(f) = &p.upstream_ca_file {
        out.upstream_ca_file = Some(f.clone());
    }
    for (i, c) in p.allowed_peers.iter().enumerate() {
        let net = parse_cidr(c)
            .ok_or_else(|| anyhow::anyhow!("invalid configuration: proxy.allowed_peers[{i}] is not a CIDR"))?;
        out.allowed_peers.push(net);
    }
    Ok(out)
}

/// A running egress proxy.
pub struct EgressProxy {
    server: ProxyServer,
    gate: Arc<PolicyGate<StoreDirectory>>,
}

impl EgressProxy {
    /// Bind `[proxy] listen_address` : `runtime.proxy_port` and serve.
    pub async fn start(cfg: &Config, store: Arc<dyn Store>, key: MasterKey) -> anyhow::Result<Self> {
        let pcfg = proxy_config(cfg)?;
        let dir = Arc::new(StoreDirectory::new(store, key));
        let gate = Arc::new(PolicyGate::new(dir, &pcfg, PolicyGateConfig::default())?);
        let addr: SocketAddr = format!("{}:{}", cfg.proxy.listen_address, cfg.runtime.proxy_port)
            .parse()
            .or_else(|_| format!("[{}]:{}", cfg.proxy.listen_address, cfg.runtime.proxy_port).parse())
            .context("proxy.listen_address must be an IP address")?;
        let server = ProxyServer::bind(addr, pcfg, gate.clone())
            .await
            .with_context(|| format!("starting the egress proxy on {addr}"))?;
        Ok(Self { server, gate })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stop accepting, then write every audit row still queued.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        self.gate.shutdown().await;
    }
}

/// `evershell proxy`: open the store and the master key, serve until SIGINT/SIGTERM, flush the audit rows.
pub async fn run_standalone(cfg: Config) -> anyhow::Result<()> {
    if cfg.database_url.is_none() {
        crate::datadir::prepare(&cfg.data_dir, None)?;
    }
    let store = evershell_store::connect(&cfg.database_url()).await.context("opening the store")?;
    let (key, _) = MasterKey::load_or_create(cfg.master_key_file.as_deref(), &cfg.data_dir)?;
    key.verify_against(store.as_ref()).await?;
    let proxy = EgressProxy::start(&cfg, store, key).await?;
    println!("evershell egress proxy listening on {}", proxy.local_addr());
    crate::server::signal().await;
    tracing::info!("egress proxy shutting down");
    proxy.shutdown().await;
    Ok(())
}
