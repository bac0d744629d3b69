//! The egress proxy against a direct connection to the same local HTTPS upstream, same client, same run: added
//! latency per small request on a warm connection (median, p99), req/s over 16 connections, 1 MB and 100 MB
//! throughput, time to the first SSE event, and the proxy's RSS during a 1 GiB download. The proxy runs in a child
//! process (this binary re-executed) so its RSS is its own. Targets: median added latency < 1 ms, throughput ≥ 0.7×
//! direct, first SSE event within 5 ms, RSS < 64 MiB.
//!
//!   cargo bench -p evershell-proxy --bench proxy        (BENCH_REQUESTS, BENCH_SECONDS, BENCH_ROUNDS,
//!   BENCH_ONLY=latency,rps,throughput,sse,rss to run some parts only)

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};

type B = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
const HOST: &str = "bench.test";

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::var_os("PROXY_BENCH_CHILD").is_some() {
        return child();
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(parent());
}

/// The proxy process: `PROXY_BENCH_CA_DIR`, `PROXY_BENCH_UPSTREAM` (ip:port of bench.test), `PROXY_BENCH_UPSTREAM_CA`.
fn child() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut config = evershell_proxy::ProxyConfig::new(std::env::var("PROXY_BENCH_CA_DIR").unwrap());
        config.system_roots = false;
        config.upstream_ca_file = Some(PathBuf::from(std::env::var("PROXY_BENCH_UPSTREAM_CA").unwrap()));
        config.upstream_hosts =
            HashMap::from([(HOST.to_string(), std::env::var("PROXY_BENCH_UPSTREAM").unwrap().parse().unwrap())]);
        let gate = Arc::new(NoRecordGate(evershell_proxy::AllowList::new([HOST])));
        let proxy = evershell_proxy::ProxyServer::bind("127.0.0.1:0".parse().unwrap(), config, gate).await.unwrap();
        println!("{}", proxy.local_addr());
        // Runs until the parent kills it.
        std::future::pending::<()>().await;
    });
}

/// The allow-list's decisions without keeping every outcome in memory (a real gate batches them to the store).
struct NoRecordGate(evershell_proxy::AllowList);

#[async_trait::async_trait]
impl evershell_proxy::Gate for NoRecordGate {
    async fn decide(
        &self,
        conn: &evershell_proxy::ConnInfo,
        head: &evershell_proxy::RequestHead,
    ) -> evershell_proxy::Verdict {
        self.0.decide(conn, head).await
    }
    async fn record(&self, _conn: &evershell_proxy::ConnInfo, outcome: evershell_proxy::Outcome) {
        std::hint::black_box(outcome);
    }
}

struct ChildGuard(Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Target {
    async fn connect(&self) -> SendRequest<B> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        sender
    }
}

fn client_config(root: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn get(path: &str) -> Request<B> {
    Request::get(path)
        .header("host", HOST)
        .body(Full::new(Bytes::new()).map_err(|e: Infallible| match e {}).boxed())
        .unwrap()
}

async fn fetch(c: &mut SendRequest<B>, path: &str) -> u64 {
    c.ready().await.unwrap();
    let resp = c.send_request(get(path)).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut n = 0;
    let mut s = resp.into_body().into_data_stream();
    while let Some(chunk) = s.next().await {
        n += chunk.unwrap().len() as u64;
    }
    n
}

/// Whether `part` is to run (`BENCH_ONLY` unset: every part).
fn runs(part: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|p| p.trim() == part))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn small_latencies(t: &Target, n: u64) -> Vec<f64> {
    let mut c = t.connect().await;
    for _ in 0..50 {
        fetch(&mut c, "/small").await;
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let s = Instant::now();
        fetch(&mut c, "/small").await;
        out.push(s.elapsed().as_secs_f64() * 1e3);
    }
    out
}

async fn rps(t: &Target, conns: usize, secs: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = vec![];
    for _ in 0..conns {
        let (t, done) = (t.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = t.connect().await;
            while Instant::now() < deadline {
                fetch(&mut c, "/small").await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// MB/s for one download of `n` bytes on a warm connection.
async fn throughput(c: &mut SendRequest<B>, n: u64) -> f64 {
    let s = Instant::now();
    assert_eq!(fetch(c, &format!("/bytes?n={n}")).await, n);
    n as f64 / 1e6 / s.elapsed().as_secs_f64()
}

/// Milliseconds from sending the request to the first SSE event's bytes.
async fn first_sse(c: &mut SendRequest<B>) -> f64 {
    c.ready().await.unwrap();
    let s = Instant::now();
    let resp = c.send_request(get("/sse")).await.unwrap();
    let mut body = resp.into_body();
    let first = loop {
        let f = body.frame().await.unwrap().unwrap();
        if let Ok(d) = f.into_data() {
            break d;
        }
    };
    let ms = s.elapsed().as_secs_f64() * 1e3;
    assert!(first.starts_with(b"data:"));
    while body.frame().await.is_some() {}
    ms
}

/// CPU seconds (user + system) this process has used.
fn self_cpu() -> f64 {
    // SAFETY: rusage is plain integers; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to write to.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// CPU seconds (user + system) process `pid` has used.
fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // Fields 14 and 15 of stat (utime, stime), counted from the state field after the command name.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / hz
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn parent() {
    let requests = env("BENCH_REQUESTS", 2000);
    let secs = env("BENCH_SECONDS", 3);
    let rounds = env("BENCH_ROUNDS", 3);
    let tmp = tempfile::tempdir().unwrap();

    // The upstream: HTTPS with a test CA, in this process.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "bench upstream CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![HOST.to_string()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let ca_file = tmp.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let upstream =
        serve(vec![leaf.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()))).await;

    // The proxy, as a child process.
    let ca_dir = tmp.path().join("ca");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("PROXY_BENCH_CHILD", "1")
        .env("PROXY_BENCH_CA_DIR", &ca_dir)
        .env("PROXY_BENCH_UPSTREAM", upstream.to_string())
        .env("PROXY_BENCH_UPSTREAM_CA", &ca_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let _guard = ChildGuard(child);
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::process::ChildStdout::from_std(stdout).unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let proxy_addr: SocketAddr = line.trim().parse().unwrap();
    let platform_ca = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();
    let platform_der = {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(platform_ca.as_bytes()).unwrap()
    };
    let upstream_der = ca_cert.der().clone();
    let direct = Target { addr: upstream, tls: client_config(upstream_der) };
    let proxied = Target { addr: proxy_addr, tls: client_config(platform_der) };
    println!("egress proxy bench: upstream {upstream}, proxy {proxy_addr} (pid {pid}), {rounds} rounds");

    // Latency per small request on a warm connection.
    if runs("latency") {
        let (mut d_lat, mut p_lat) = (vec![], vec![]);
        for _ in 0..rounds {
            d_lat.extend(small_latencies(&direct, requests).await);
            p_lat.extend(small_latencies(&proxied, requests).await);
        }
        let (dm, pm) = (median(&mut d_lat), median(&mut p_lat));
        let (d99, p99) = (pct(&mut d_lat, 0.99), pct(&mut p_lat, 0.99));
        println!(
            "small request, warm connection: direct median {dm:.3} ms p99 {d99:.3} ms; proxy median {pm:.3} ms p99 {p99:.3} ms"
        );
        println!("  added latency: median {:.3} ms (target < 1 ms), p99 {:.3} ms", pm - dm, p99 - d99);
    }

    // Requests per second over 16 connections.
    if runs("rps") {
        rps(&direct, 16, 1).await;
        rps(&proxied, 16, 1).await;
        let (mut d_rps, mut p_rps) = (vec![], vec![]);
        for _ in 0..rounds {
            d_rps.push(rps(&direct, 16, secs).await);
            p_rps.push(rps(&proxied, 16, secs).await);
        }
        let (dr, pr) = (median(&mut d_rps), median(&mut p_rps));
        println!("16 connections: direct {dr:.0} req/s, proxy {pr:.0} req/s, ratio {:.2}", pr / dr);
    }

    // Throughput.
    for (label, n, reps) in [("1 MB", 1_000_000u64, 20 * rounds), ("100 MB", 100_000_000u64, rounds)] {
        if !runs("throughput") {
            break;
        }
        let mut dc = direct.connect().await;
        let mut pc = proxied.connect().await;
        let (mut dt, mut pt) = (vec![], vec![]);
        // CPU seconds: this process (client + upstream) on each side, the proxy process on the proxied side.
        let (mut d_cpu, mut p_cpu, mut proxy_cpu) = (0.0, 0.0, 0.0);
        for _ in 0..reps {
            let c0 = self_cpu();
            dt.push(throughput(&mut dc, n).await);
            let (c1, x1) = (self_cpu(), proc_cpu(pid));
            pt.push(throughput(&mut pc, n).await);
            d_cpu += c1 - c0;
            p_cpu += self_cpu() - c1;
            proxy_cpu += proc_cpu(pid) - x1;
        }
        let (dmb, pmb) = (median(&mut dt), median(&mut pt));
        println!("{label} download: direct {dmb:.0} MB/s, proxy {pmb:.0} MB/s, ratio {:.2} (target ≥ 0.70)", pmb / dmb);
        let gb = (reps * n) as f64 / 1e9;
        println!(
            "  CPU s per GB: direct (client + upstream) {:.2}; proxied: client + upstream {:.2} + proxy {:.2} = {:.2}; CPU-bound ceiling {:.2}",
            d_cpu / gb,
            p_cpu / gb,
            proxy_cpu / gb,
            (p_cpu + proxy_cpu) / gb,
            d_cpu / (p_cpu + proxy_cpu)
        );
    }

    // Time to the first SSE event.
    let mut pc = proxied.connect().await;
    if runs("sse") {
        let mut dc = direct.connect().await;
        let (mut ds, mut ps) = (vec![], vec![]);
        for _ in 0..(100 * rounds) {
            ds.push(first_sse(&mut dc).await);
            ps.push(first_sse(&mut pc).await);
        }
        println!(
            "first SSE event: direct median {:.3} ms, proxy median {:.3} ms (target < 5 ms)",
            median(&mut ds),
            median(&mut ps)
        );
    }
    if !runs("rss") {
        return;
    }

    // Proxy RSS during a 1 GiB download.
    let before = rss_kib(pid, "VmRSS:");
    let sampling = Arc::new(AtomicU64::new(1));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) == 1 {
                peak.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let gib = 1u64 << 30;
    let s = Instant::now();
    assert_eq!(fetch(&mut pc, &format!("/bytes?n={gib}")).await, gib);
    let secs_gib = s.elapsed().as_secs_f64();
    sampling.store(0, Ordering::Relaxed);
    sampler.await.unwrap();
    println!(
        "1 GiB through the proxy in {secs_gib:.1} s: proxy RSS {:.1} MiB before, peak {:.1} MiB sampled, VmHWM {:.1} MiB (target < 64 MiB)",
        before as f64 / 1024.0,
        peak.load(Ordering::Relaxed) as f64 / 1024.0,
        rss_kib(pid, "VmHWM:") as f64 / 1024.0
    );
}

async fn serve(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> SocketAddr {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service_fn(route))
                    .await;
            });
        }
    });
    addr
}

static CHUNK: [u8; 256 * 1024] = [0x5a; 256 * 1024];

async fn route(req: Request<Incoming>) -> Result<Response<B>, Infallible> {
    let full = |b: &'static [u8]| Full::new(Bytes::from_static(b)).map_err(|e: Infallible| match e {}).boxed();
    Ok(match req.uri().path() {
        "/small" => Response::new(full(b"{\"ok\":true}")),
        "/sse" => {
            let events = futures::stream::iter([
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(
                    b"data: {\"delta\":\"hi\"}\n\n",
                ))),
                Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))),
            ]);
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(events)))
                .unwrap()
        }
        "/bytes" => {
            let n: u64 = req.uri().query().and_then(|q| q.strip_prefix("n=")).and_then(|n| n.parse().ok()).unwrap_or(0);
            let c = CHUNK.len() as u64;
            let stream = futures::stream::iter((0..n.div_ceil(c)).map(move |i| {
                let len = c.min(n - i * c) as usize;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(&CHUNK[..len])))
            }));
            Response::builder().header("content-length", n).body(BodyExt::boxed(StreamBody::new(stream))).unwrap()
        }
        _ => Response::builder().status(404).body(full(b"")).unwrap(),
    })
}
