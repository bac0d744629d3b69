//! The upstream leg: pooled hyper clients over TLS verified against the system roots plus an extra CA file, dialled
//! through `upstream_hosts` or DNS (internal addresses and the host's own refused), `TCP_NODELAY` set, read in large
//! chunks and handed to hyper greedily (`batched_io`); and what each host negotiated.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Uri;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;

use crate::batched_io::{GreedyConnector, ReadAhead};
use crate::body::Counted;
use crate::config::ProxyConfig;

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0} resolves only to internal addresses or the host's own")]
    Internal(String),
    #[error("{host}: {source}")]
    Io { host: String, source: io::Error },
    #[error("request URI has no host")]
    NoHost,
}

/// Dials upstream TCP connections for the hyper client.
#[derive(Clone)]
pub struct Dialer {
    hosts: Arc<HashMap<String, SocketAddr>>,
}

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<ReadAhead>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let hosts = self.hosts.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(DialError::NoHost)?.trim_matches(['[', ']']).to_ascii_lowercase();
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
            let io_err = |source| DialError::Io { host: host.clone(), source };
            let candidates: Vec<SocketAddr> = match hosts.get(&host) {
                Some(fixed) => vec![*fixed],
                None => {
                    let all: Vec<SocketAddr> =
                        tokio::net::lookup_host((host.as_str(), port)).await.map_err(io_err)?.collect();
                    let own = crate::own_addresses::host_addresses();
                    let public: Vec<SocketAddr> =
                        all.into_iter().filter(|a| !is_internal(a.ip()) && !own.contains(&a.ip())).collect();
                    if public.is_empty() {
                        return Err(DialError::Internal(host));
                    }
                    public
                }
            };
            let mut last = None;
            for addr in candidates {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        s.set_nodelay(true).map_err(io_err)?;
                        return Ok(TokioIo::new(ReadAhead::new(s)));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(io_err(last.unwrap_or_else(|| io::Error::other("no address"))))
        })
    }
}

/// Loopback, private, link-local (the metadata address), CGNAT, multicast, unspecified, ULA, documentation.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

pub type UpstreamClient = Client<GreedyConnector<HttpsConnector<Dialer>>, Counted<Incoming>>;

/// The two pools: one negotiating h2 or HTTP/1.1, one HTTP/1.1 only (for upgrades).
pub struct Upstreams {
    pub any: UpstreamClient,
    pub h1: UpstreamClient,
    h2_hosts: Mutex<HashMap<String, bool>>,
}

const PROTOCOL_MEMORY: usize = 4096;

impl Upstreams {
    pub fn new(cfg: &ProxyConfig) -> anyhow::Result<Self> {
        let tls = client_tls(cfg)?;
        let dialer = Dialer { hosts: Arc::new(cfg.upstream_hosts.clone()) };
        let any = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(dialer.clone());
        let h1 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(dialer);
        let client = |c| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(cfg.pool_idle_timeout)
                .timer(hyper_util::rt::TokioTimer::new())
                .build(GreedyConnector(c))
        };
        Ok(Self { any: client(any), h1: client(h1), h2_hosts: Mutex::new(HashMap::new()) })
    }

    /// A client with the same upstream rules (roots, `upstream_hosts`, internal addresses refused), for the proxy's
    /// own requests (the credential broker's token endpoints).
    pub fn own_client<B>(cfg: &ProxyConfig) -> anyhow::Result<Client<HttpsConnector<Dialer>, B>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
    {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_tls(cfg)?)
            .https_only()
            .enable_http1()
            .wrap_connector(Dialer { hosts: Arc::new(cfg.upstream_hosts.clone()) });
        Ok(Client::builder(TokioExecutor::new()).timer(hyper_util::rt::TokioTimer::new()).build(connector))
    }

    /// Remember whether `host`'s upstream answered over h2.
    pub fn learn(&self, host: &str, h2: bool) {
        let mut m = self.h2_hosts.lock().expect("protocols");
        if m.len() >= PROTOCOL_MEMORY && !m.contains_key(host) {
            m.clear();
        }
        m.insert(host.to_string(), h2);
    }

    /// Whether `host`'s upstream is known to carry h2 (unknown: no, so the first connection is HTTP/1.1).
    pub fn carries_h2(&self, host: &str) -> bool {
        self.h2_hosts.lock().expect("protocols").get(host).copied().unwrap_or(false)
    }
}

/// The TLS provider of both legs: ring, with the AES-128-GCM suites first (TLS 1.3's mandatory suite, and about a
/// third less AES work per byte than AES-256-GCM: the proxy encrypts and decrypts every byte twice). Built once.
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::ring::default_provider();
            // A stable sort: the rest keep ring's order.
            p.cipher_suites.sort_by_key(|s| {
                !matches!(
                    s.suite(),
                    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                )
            });
            Arc::new(p)
        })
        .clone()
}

/// Upstream TLS: the system roots (when configured) plus the extra CA file.
fn client_tls(cfg: &ProxyConfig) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if cfg.system_roots {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "system root certificates: partly unreadable");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system roots loaded");
    }
    if let Some(path) = &cfg.upstream_ca_file {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))? {
            let cert = cert.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            anyhow::bail!("{}: no certificate in the upstream CA file", path.display());
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(tls_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.215.14", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn aes_128_gcm_is_offered_first_and_nothing_is_dropped() {
        let p = tls_provider();
        let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256, "{suites:?}");
        assert_eq!(suites.len(), rustls::crypto::ring::default_provider().cipher_suites.len());
        let first_tls12 = p.cipher_suites.iter().find(|s| s.tls13().is_none()).map(|s| s.suite());
        assert!(
            matches!(
                first_tls12,
                Some(
                    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                )
            ),
            "{suites:?}"
        );
    }
}
