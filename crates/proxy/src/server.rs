//! `ProxyServer`: the accept loop of our own. Each connection is classified by its first bytes: TLS → SNI → a
//! leaf from the platform CA → terminated → HTTP/1.1 or h2 (h2 only when the upstream carries it); plain HTTP →
//! HTTP/1.1; anything else → closed at once and recorded. Reads are greedy and TLS writes go out in large batches
//! (`batched_io`, `TLS_WRITE_BUFFER`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

use crate::batched_io::Greedy;
use crate::ca::PlatformCa;
use crate::config::ProxyConfig;
use crate::gate::{ConnId, ConnInfo, ConnKind, Decision, Gate, Outcome, ProxyRefusal};
use crate::handler::{self, Shared};
use crate::orig_dst::original_dst;
use crate::raw_head::{RawTail, Tapped};
use crate::sniff::{Prefixed, classify};
use crate::unknown_peers::{UnknownKind, UnknownPeers};
use crate::upstream::{Upstreams, tls_provider};

/// Most encrypted bytes queued per client connection before the socket must take them.
const TLS_WRITE_BUFFER: usize = 256 * 1024;

/// A running proxy.
pub struct ProxyServer {
    local_addr: SocketAddr,
    ca: Arc<PlatformCa>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ProxyServer {
    /// Loads or creates the CA, builds the upstream pools, binds `addr` and starts accepting.
    pub async fn bind(addr: SocketAddr, config: ProxyConfig, gate: Arc<dyn Gate>) -> anyhow::Result<Self> {
        let ca = Arc::new(PlatformCa::load_or_create(&config.ca_dir, config.leaf_cache)?);
        let upstreams = Upstreams::new(&config)?;
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared { gate, ca: ca.clone(), upstreams, config, next_conn: AtomicU64::new(1) });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared, stopped));
        tracing::info!(addr = %local_addr, "egress proxy listening");
        Ok(Self { local_addr, ca, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn ca(&self) -> &Arc<PlatformCa> {
        &self.ca
    }

    /// Stops accepting (connections in flight finish on their own).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if !shared.config.peer_allowed(peer.ip()) {
                        UnknownPeers::global().note(peer.ip(), UnknownKind::OutsidePeers, "");
                        drop(tcp);
                        continue;
                    }
                    let shared = shared.clone();
                    tokio::spawn(async move { serve_connection(shared, tcp, peer).await });
                }
                Err(e) => {
                    // Out of descriptors and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

fn refuse(shared: &Shared, conn: ConnInfo, refusal: ProxyRefusal, error: Option<String>) {
    tracing::info!(conn = conn.id.0, peer = %conn.peer, reason = refusal.as_str(), "connection refused");
    let gate = shared.gate.clone();
    tokio::spawn(async move {
        let outcome = Outcome {
            request: None,
            decision: Decision::RefusedByProxy(refusal),
            status: None,
            bytes_up: 0,
            bytes_down: 0,
            latency: Duration::ZERO,
            duration: Duration::ZERO,
            upgraded: false,
            error,
        };
        gate.record(&conn, outcome).await;
    });
}

async fn serve_connection(shared: Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().unwrap_or(peer);
    let original_dst = original_dst(&tcp, local.is_ipv6()).ok().flatten();
    let id = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    let mut conn = ConnInfo { id, peer, local, original_dst, sni: None, kind: ConnKind::Unrecognised };
    let first = match tokio::time::timeout(shared.config.first_bytes_timeout, classify(&mut tcp)).await {
        Ok(Ok(Some(first))) => first,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return tracing::debug!(conn = id.0, error = %e, "read failed before the first bytes"),
        Err(_) => return refuse(&shared, conn, ProxyRefusal::NotHttp, Some("no bytes before the deadline".into())),
    };
    let (kind, prefix) = first;
    conn.kind = kind;
    let stream = Prefixed::new(prefix, tcp);
    match kind {
        ConnKind::Unrecognised => refuse(&shared, conn, ProxyRefusal::NotHttp, None),
        ConnKind::PlainHttp => serve_h1(shared, Arc::new(conn), stream).await,
        ConnKind::Tls => serve_tls(shared, conn, stream).await,
    }
}

async fn serve_tls(shared: Arc<Shared>, mut conn: ConnInfo, stream: Prefixed<TcpStream>) {
    let deadline = shared.config.first_bytes_timeout;
    let start = match tokio::time::timeout(deadline, LazyConfigAcceptor::new(Acceptor::default(), stream)).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return refuse(&shared, conn, ProxyRefusal::TlsHandshake, Some(e.to_string())),
        Err(_) => return refuse(&shared, conn, ProxyRefusal::TlsHandshake, Some("ClientHello timed out".into())),
    };
    let hello = start.client_hello();
    let Some(sni) = hello.server_name().map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
        return refuse(&shared, conn, ProxyRefusal::NoSni, None);
    };
    let client_offers_h2 = hello.alpn().is_some_and(|mut a| a.any(|p| p == b"h2"));
    conn.sni = Some(sni.clone());
    let leaf = match shared.ca.leaf(&sni) {
        Ok(leaf) => leaf,
        Err(e) => return refuse(&shared, conn, ProxyRefusal::TlsHandshake, Some(e.to_string())),
    };
    let offer_h2 = client_offers_h2 && shared.upstreams.carries_h2(&sni);
    let config = server_config(leaf, offer_h2);
    let tls = match tokio::time::timeout(deadline, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refuse(&shared, conn, ProxyRefusal::TlsHandshake, Some(e.to_string())),
        Err(_) => return refuse(&shared, conn, ProxyRefusal::TlsHandshake, Some("handshake timed out".into())),
    };
    // Room for a few records per write to the client (rustls' default, 64 KiB, splits big chunks in many writes).
    let mut tls = tls;
    tls.get_mut().1.set_buffer_limit(Some(TLS_WRITE_BUFFER));
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    tracing::debug!(conn = conn.id.0, sni, h2, "TLS terminated");
    let conn = Arc::new(conn);
    if h2 {
        let svc = {
            let (shared, conn) = (shared.clone(), conn.clone());
            service_fn(move |req| handler::handle(shared.clone(), conn.clone(), None, req))
        };
        let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(Greedy::new(TokioIo::new(tls)), svc)
            .await;
        if let Err(e) = served {
            tracing::debug!(conn = conn.id.0, error = %e, "h2 connection ended with an error");
        }
    } else {
        serve_h1(shared, conn, tls).await;
    }
}

async fn serve_h1<S>(shared: Arc<Shared>, conn: Arc<ConnInfo>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tail = RawTail::default();
    let io = Greedy::new(TokioIo::new(Tapped::new(stream, tail.clone())));
    let svc = {
        let conn = conn.clone();
        service_fn(move |req| handler::handle(shared.clone(), conn.clone(), Some(tail.clone()), req))
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, svc)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(conn = conn.id.0, error = %e, "HTTP/1 connection ended with an error");
    }
}

#[derive(Debug)]
struct OneLeaf(Arc<CertifiedKey>);

impl ResolvesServerCert for OneLeaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn server_config(leaf: Arc<CertifiedKey>, h2: bool) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(tls_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneLeaf(leaf)));
    // Our preference (AES-128-GCM first), not the client's: it is this leg's CPU that is scarce.
    cfg.ignore_client_order = true;
    cfg.alpn_protocols = if h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Arc::new(cfg)
}
