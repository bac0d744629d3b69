//! Test upstreams (TLS with a test CA, HTTP/1.1-only or h2-capable, and plain HTTP), the proxy in front of them,
//! and clients that trust the platform CA.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use evershell_proxy::{AllowList, ProxyConfig, ProxyServer};
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub const GZIP_BYTES: &[u8] =
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcbH\xcd\xc9\xc9\x07\x00\x86\xa6\x106\x05\x00\x00\x00\r\n\x00\xff";

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct Env {
    pub proxy: ProxyServer,
    pub gate: Arc<AllowList>,
    pub platform_roots: Arc<rustls::RootCertStore>,
    pub sse_release: Arc<Notify>,
    /// TCP connections the HTTP/1.1-only upstream (`api.test`) has accepted.
    pub h1_accepts: Arc<AtomicUsize>,
    _tmp: tempfile::TempDir,
}

/// Hosts: `api.test` (HTTP/1.1-only upstream), `h2.test` (h2-capable upstream), `plain.test` (plain HTTP
/// upstream), `wrong.test` (routed to the api upstream, whose certificate does not name it).
pub async fn start(gate: AllowList) -> Env {
    install_provider();
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test upstream CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["api.test".to_string(), "h2.test".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
    let ca_file = tmp.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let chain = vec![leaf.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));

    let sse_release = Arc::new(Notify::new());
    let h1_accepts = Arc::new(AtomicUsize::new(0));
    let h1 = serve_tls(chain.clone(), key.clone_key(), false, sse_release.clone(), h1_accepts.clone()).await;
    let h2 = serve_tls(chain, key, true, sse_release.clone(), Arc::new(AtomicUsize::new(0))).await;
    let plain = serve_plain(sse_release.clone()).await;

    let mut config = ProxyConfig::new(tmp.path().join("ca"));
    config.upstream_ca_file = Some(ca_file);
    config.upstream_hosts = HashMap::from([
        ("api.test".into(), h1),
        ("h2.test".into(), h2),
        ("plain.test".into(), plain),
        ("wrong.test".into(), h1),
    ]);
    let gate = Arc::new(gate);
    let proxy = ProxyServer::bind("127.0.0.1:0".parse().unwrap(), config, gate.clone()).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(proxy.ca().cert_der().clone()).unwrap();
    Env { proxy, gate, platform_roots: Arc::new(roots), sse_release, h1_accepts, _tmp: tmp }
}

impl Env {
    /// A TLS connection to the proxy with this SNI, offering `alpn`.
    pub async fn tls(&self, sni: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.platform_roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(self.proxy.local_addr()).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
            .unwrap()
    }

    /// An HTTP/1.1 client over TLS to the proxy with this SNI.
    pub async fn h1(&self, sni: &str) -> hyper::client::conn::http1::SendRequest<TestBody> {
        let tls = self.tls(sni, &[b"http/1.1"]).await;
        handshake_h1(tls).await
    }
}

pub async fn handshake_h1<S>(io: S) -> hyper::client::conn::http1::SendRequest<TestBody>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e: Infallible| match e {}).boxed()
}

pub fn get(host: &str, path: &str) -> Request<TestBody> {
    Request::builder().uri(path).header("host", host).body(full(Bytes::new())).unwrap()
}

pub async fn body_bytes(resp: Response<Incoming>) -> (http::response::Parts, Bytes) {
    let (parts, body) = resp.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

pub async fn json(resp: Response<Incoming>) -> (StatusCode, serde_json::Value) {
    let (parts, body) = body_bytes(resp).await;
    (parts.status, serde_json::from_slice(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}")))
}

/// Reads a raw HTTP/1.1 response head (up to the blank line).
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| ((offset + i) % 251) as u8).collect()
}

async fn serve_tls(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    h2: bool,
    sse: Arc<Notify>,
    accepts: Arc<AtomicUsize>,
) -> SocketAddr {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = if h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            accepts.fetch_add(1, Ordering::SeqCst);
            let (acceptor, sse) = (acceptor.clone(), sse.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = service_fn(move |req| route(req, sse.clone()));
                if is_h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    addr
}

async fn serve_plain(sse: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let sse = sse.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| route(req, sse.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn header_str(req: &Request<Incoming>, name: &str) -> String {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

async fn route(mut req: Request<Incoming>, sse: Arc<Notify>) -> Result<Response<TestBody>, Infallible> {
    let resp = Response::builder();
    let path = req.uri().path().to_string();
    Ok(match path.as_str() {
        "/echo" => {
            let authority = req.uri().authority().map(|a| a.to_string()).unwrap_or_else(|| header_str(&req, "host"));
            resp.header("x-echo-stamp", header_str(&req, "x-gate-stamp"))
                .header("x-echo-query", req.uri().query().unwrap_or(""))
                .header("x-echo-authority", authority)
                .header("x-echo-version", format!("{:?}", req.version()))
                .header("x-echo-expect", header_str(&req, "expect"))
                .header("x-echo-te", header_str(&req, "te"))
                .body(req.into_body().map_err(Into::into).boxed())
                .unwrap()
        }
        "/sse" => {
            let (tx, rx) =
                futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>();
            tokio::spawn(async move {
                let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))));
                sse.notified().await;
                let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))));
            });
            resp.header("content-type", "text/event-stream").body(BodyExt::boxed(StreamBody::new(rx))).unwrap()
        }
        "/bytes" => {
            let n: u64 = req.uri().query().and_then(|q| q.strip_prefix("n=")).and_then(|n| n.parse().ok()).unwrap_or(0);
            let chunk = 64 * 1024u64;
            let stream = futures::stream::iter((0..n.div_ceil(chunk)).map(move |i| {
                let len = chunk.min(n - i * chunk) as usize;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(pattern(i * chunk, len))))
            }));
            resp.header("content-length", n).body(BodyExt::boxed(StreamBody::new(stream))).unwrap()
        }
        "/gzip" => {
            resp.header("content-encoding", "gzip").header("content-type", "text/plain").body(full(GZIP_BYTES)).unwrap()
        }
        "/redirect" => resp.status(302).header("location", "https://elsewhere.test/landing").body(full("")).unwrap(),
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                // Echo each client text frame back as a server frame prefixed "echo: ".
                while let Some(payload) = read_frame(&mut io).await {
                    let mut reply = b"echo: ".to_vec();
                    reply.extend_from_slice(&payload);
                    if io.write_all(&frame(&reply, None)).await.is_err() {
                        return;
                    }
                }
            });
            resp.status(101).header("connection", "upgrade").header("upgrade", "websocket").body(full("")).unwrap()
        }
        _ => resp.status(404).body(full("")).unwrap(),
    })
}

/// A single-frame WebSocket text message (masked when `mask` is given, as clients must).
pub fn frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![0x81, payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 }];
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one short WebSocket frame and returns its (unmasked) payload.
pub async fn read_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.ok()?;
    let len = (h[1] & 0x7f) as usize;
    let mask = if h[1] & 0x80 != 0 {
        let mut m = [0u8; 4];
        s.read_exact(&mut m).await.ok()?;
        Some(m)
    } else {
        None
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await.ok()?;
    if let Some(m) = mask {
        p.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
    }
    Some(p)
}

/// Drains a streamed body, returning (length, whether it matched `pattern`).
pub async fn drain_pattern(body: Incoming) -> (u64, bool) {
    let mut stream = body.into_data_stream();
    let (mut n, mut ok) = (0u64, true);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        ok &= chunk == pattern(n, chunk.len());
        n += chunk.len() as u64;
    }
    (n, ok)
}
