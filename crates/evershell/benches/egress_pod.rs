//! The egress proxy as a pod sees it: a real networked pod (LocalRuntime, its own network namespace, outbound TCP
//! redirected by the runtime's nft rules) going through a real `evershell_proxy` server (allow-list gate, in a child
//! process so its RSS is its own) to a local HTTPS upstream on the host, against the SAME client program run on the
//! host straight to the upstream, in the same run, alternated round by round. The client is this binary: it is
//! copied into the pod's `/workspace` and run there through the agent's exec route, and run on the host as a child
//! process. Figures: added latency per small request on a warm connection (median, p99), req/s over 16
//! connections, 1 MB and 100 MB download throughput and the ratio to direct, the delay from the upstream sending an
//! SSE event to the client reading it, and the proxy's peak RSS (VmHWM, reset just before) during a 1 GiB download.
//! Targets (issue 11): median added latency < 1 ms, throughput ≥ 0.7× direct, first SSE byte within 5 ms of the
//! upstream sending it, proxy RSS < 64 MiB. Needs root, `ip`, `nft` and bubblewrap; skipped otherwise.
//!
//!   cargo bench -p evershell --bench egress_pod        (BENCH_ROUNDS, BENCH_REQUESTS, BENCH_SECONDS)

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use evershell_core::exec::ExecRequest;
use evershell_core::ids::{OrgId, PodId, WorkspaceId};
use evershell_core::lifecycle::PodObservation;
use evershell_runtime::{LocalRuntime, LocalRuntimeConfig, PodRuntime, PodSpec};
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

type B = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
const HOST: &str = "bench.test";
/// Any address outside the pod: the runtime's rules redirect every outbound TCP connection to the proxy.
const POD_TARGET: &str = "192.0.2.1:443";
const CLIENT_IN_POD: &str = "/workspace/egress-bench-client";
const MB: u64 = 1_000_000;

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__client") => return runtime().block_on(client(&args[2..])),
        Some("__proxy") => return runtime().block_on(proxy_child()),
        _ => {}
    }
    if !can_run() {
        println!("egress_pod bench skipped: needs root and ip/nft (and bubblewrap)");
        return;
    }
    runtime().block_on(parent());
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tool = |t: &str, arg: &str| {
        Command::new(t).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    root && tool("ip", "-V") && tool("nft", "--version") && tool("bwrap", "--version")
}

// ---------------------------------------------------------------------------------------------------------------
// The client: one measurement, its samples printed on one line. Run in the pod and on the host alike.

/// CLOCK_MONOTONIC in nanoseconds: the pod shares the host's clock (bubblewrap makes no time namespace), so the
/// upstream's send time and the client's read time compare directly.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Target {
    fn new(addr: &str, ca_file: &str) -> Self {
        let pem = std::fs::read(ca_file).unwrap_or_else(|e| panic!("{ca_file}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self { addr: addr.parse().unwrap(), tls: Arc::new(cfg) }
    }

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

fn get(path: &str) -> Request<B> {
    Request::get(path)
        .header("host", HOST)
        .body(Full::new(Bytes::new()).map_err(|e: Infallible| match e {}).boxed())
        .unwrap()
}

async fn fetch(c: &mut SendRequest<B>, path: &str) -> u64 {
    c.ready().await.unwrap();
    let resp = c.send_request(get(path)).await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let mut n = 0;
    let mut s = resp.into_body().into_data_stream();
    while let Some(chunk) = s.next().await {
        n += chunk.unwrap().len() as u64;
    }
    n
}

/// `__client <kind> <addr> <ca-file> <a> [b]`:
/// `latency N` (ms per small request, warm connection), `rps CONNS SECS` (one req/s figure), `bytes SIZE REPS`
/// (MB/s per download, warm connection), `sse REPS` (ms from the upstream sending the event to reading its first
/// byte).
async fn client(args: &[String]) {
    let (kind, t) = (args[0].as_str(), Target::new(&args[1], &args[2]));
    let num = |i: usize| -> u64 { args[i].parse().unwrap() };
    let samples: Vec<f64> = match kind {
        "latency" => {
            let mut c = t.connect().await;
            for _ in 0..50 {
                fetch(&mut c, "/small").await;
            }
            let mut out = Vec::new();
            for _ in 0..num(3) {
                let s = Instant::now();
                fetch(&mut c, "/small").await;
                out.push(s.elapsed().as_secs_f64() * 1e3);
            }
            out
        }
        "rps" => {
            let (conns, secs) = (num(3), num(4));
            let done = Arc::new(AtomicU64::new(0));
            let mut senders = vec![];
            for _ in 0..conns {
                let mut c = t.connect().await;
                fetch(&mut c, "/small").await;
                senders.push(c);
            }
            let started = Instant::now();
            let deadline = started + Duration::from_secs(secs);
            let tasks: Vec<_> = senders
                .into_iter()
                .map(|mut c| {
                    let done = done.clone();
                    tokio::spawn(async move {
                        while Instant::now() < deadline {
                            fetch(&mut c, "/small").await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            vec![done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()]
        }
        "bytes" => {
            let (n, reps) = (num(3), num(4));
            let mut c = t.connect().await;
            fetch(&mut c, &format!("/bytes?n={}", n.min(MB))).await;
            let mut out = Vec::new();
            for _ in 0..reps {
                let s = Instant::now();
                assert_eq!(fetch(&mut c, &format!("/bytes?n={n}")).await, n);
                out.push(n as f64 / 1e6 / s.elapsed().as_secs_f64());
            }
            out
        }
        "sse" => {
            let mut c = t.connect().await;
            fetch(&mut c, "/small").await;
            let mut out = Vec::new();
            for _ in 0..num(3) {
                c.ready().await.unwrap();
                let resp = c.send_request(get("/sse")).await.unwrap();
                let mut body = resp.into_body();
                let first = loop {
                    let f = body.frame().await.unwrap().unwrap();
                    if let Ok(d) = f.into_data() {
                        break d;
                    }
                };
                let read_at = mono_ns();
                let sent_at: u64 = std::str::from_utf8(&first)
                    .ok()
                    .and_then(|s| s.strip_prefix("data: "))
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("not a timestamped event: {first:?}"));
                out.push(read_at.saturating_sub(sent_at) as f64 / 1e6);
                while body.frame().await.is_some() {}
            }
            out
        }
        other => panic!("unknown client measurement {other}"),
    };
    let line: Vec<String> = samples.iter().map(|s| format!("{s:.4}")).collect();
    println!("{}", line.join(" "));
    println!("cpu {:.4}", self_cpu());
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

// ---------------------------------------------------------------------------------------------------------------
// The proxy process: the proxy and the DNS responder on all addresses (pods reach them through their veth).

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

/// Env: `EGRESS_BENCH_CA_DIR`, `EGRESS_BENCH_UPSTREAM` (ip:port of bench.test), `EGRESS_BENCH_UPSTREAM_CA`.
/// Prints `<proxy port> <dns port>`, then runs until killed.
async fn proxy_child() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} unset"));
    let mut config = evershell_proxy::ProxyConfig::new(var("EGRESS_BENCH_CA_DIR"));
    config.system_roots = false;
    config.upstream_ca_file = Some(PathBuf::from(var("EGRESS_BENCH_UPSTREAM_CA")));
    config.upstream_hosts = HashMap::from([(HOST.to_string(), var("EGRESS_BENCH_UPSTREAM").parse().unwrap())]);
    let dns_config = evershell_proxy::DnsConfig::for_proxy(&config);
    let gate = Arc::new(NoRecordGate(evershell_proxy::AllowList::new([HOST])));
    let proxy = evershell_proxy::ProxyServer::bind("0.0.0.0:0".parse().unwrap(), config, gate).await.unwrap();
    let dns_policy = Arc::new(evershell_proxy::DnsAllowList::new([HOST]));
    let dns = evershell_proxy::DnsServer::bind("0.0.0.0:0".parse().unwrap(), dns_config, dns_policy).await.unwrap();
    println!("{} {}", proxy.local_addr().port(), dns.local_addr().port());
    std::future::pending::<()>().await;
}

// ---------------------------------------------------------------------------------------------------------------
// The parent: upstream, proxy child, pod, and the alternated runs.

/// Kills a child process when dropped.
struct ChildGuard(std::process::Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills the pods and deletes the runtime's host table when dropped (also on a panic).
struct Teardown {
    rt: LocalRuntime,
    ports: evershell_runtime::local::NetworkPorts,
}
impl Drop for Teardown {
    fn drop(&mut self) {
        evershell_runtime::local::kill_all_sandboxes(self.rt.pods_dir());
        let t = evershell_runtime::local::network_table(self.ports);
        let _ = Command::new("nft").args(["delete", "table", "inet", &t]).status();
    }
}

struct Sides<'a> {
    rt: &'a LocalRuntime,
    pod: PodId,
    upstream: SocketAddr,
    upstream_ca: &'a Path,
    proxy_pid: u32,
}

/// CPU seconds each party spent on a set of runs.
#[derive(Default, Clone, Copy)]
struct Cpu {
    client: f64,
    upstream: f64,
    proxy: f64,
}

impl Cpu {
    fn add(&mut self, o: Cpu) {
        self.client += o.client;
        self.upstream += o.upstream;
        self.proxy += o.proxy;
    }
    fn total(&self) -> f64 {
        self.client + self.upstream + self.proxy
    }
}

/// The client's samples line and its `cpu` line.
fn parse(out: &str, what: &str) -> (Vec<f64>, f64) {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let samples = lines.next().unwrap_or_else(|| panic!("{what}: no output: {out:?}"));
    let cpu = lines.next().and_then(|l| l.strip_prefix("cpu ")).and_then(|v| v.parse().ok());
    let samples = samples.split_whitespace().map(|v| v.parse().unwrap_or_else(|_| panic!("{what}: {out:?}")));
    (samples.collect(), cpu.unwrap_or_else(|| panic!("{what}: no cpu line: {out:?}")))
}

impl Sides<'_> {
    /// The client in the pod, through the proxy.
    async fn pod(&self, kind: &str, params: &[u64]) -> (Vec<f64>, Cpu) {
        let mut argv = vec![CLIENT_IN_POD.to_string(), "__client".into(), kind.into(), POD_TARGET.into()];
        argv.push(evershell_runtime::local::POD_PLATFORM_CA.into());
        argv.extend(params.iter().map(u64::to_string));
        let req = ExecRequest { argv, stdin: None, env: BTreeMap::new(), timeout_ms: Some(300_000) };
        let (up0, px0) = (self_cpu(), proc_cpu(self.proxy_pid));
        let r = self.rt.agent(self.pod).exec(&req).await.unwrap();
        let (upstream, proxy) = (self_cpu() - up0, proc_cpu(self.proxy_pid) - px0);
        assert_eq!(r.exit_code, Some(0), "pod client {kind}: {r:?}");
        let (samples, client) = parse(&r.stdout, kind);
        (samples, Cpu { client, upstream, proxy })
    }

    /// The same client on the host, straight to the upstream.
    async fn host(&self, kind: &str, params: &[u64]) -> (Vec<f64>, Cpu) {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["__client", kind, &self.upstream.to_string()]).arg(self.upstream_ca);
        cmd.args(params.iter().map(u64::to_string));
        let up0 = self_cpu();
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
        let upstream = self_cpu() - up0;
        assert!(out.status.success(), "host client {kind}: {}", String::from_utf8_lossy(&out.stderr));
        let (samples, client) = parse(&String::from_utf8_lossy(&out.stdout), kind);
        (samples, Cpu { client, upstream, proxy: 0.0 })
    }

    /// `rounds` alternated runs (pod first, then host): all samples of each side.
    async fn both(&self, rounds: u64, kind: &str, params: &[u64]) -> (Vec<f64>, Vec<f64>) {
        let (p, d, _, _) = self.both_cpu(rounds, kind, params).await;
        (p, d)
    }

    /// `both`, with the CPU each side's parties spent.
    async fn both_cpu(&self, rounds: u64, kind: &str, params: &[u64]) -> (Vec<f64>, Vec<f64>, Cpu, Cpu) {
        let (mut pod, mut host, mut pod_cpu, mut host_cpu) = (vec![], vec![], Cpu::default(), Cpu::default());
        for _ in 0..rounds {
            let (s, c) = self.pod(kind, params).await;
            pod.extend(s);
            pod_cpu.add(c);
            let (s, c) = self.host(kind, params).await;
            host.extend(s);
            host_cpu.add(c);
        }
        (pod, host, pod_cpu, host_cpu)
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ")
}

async fn parent() {
    let rounds = env("BENCH_ROUNDS", 3);
    let requests = env("BENCH_REQUESTS", 2000);
    let secs = env("BENCH_SECONDS", 3);
    let tmp = tempfile::tempdir().unwrap();

    // The upstream: HTTPS with a test CA, in this process, on loopback.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "bench upstream CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![HOST.to_string()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let upstream_ca = tmp.path().join("upstream-ca.pem");
    std::fs::write(&upstream_ca, ca_cert.pem()).unwrap();
    let upstream =
        serve(vec![leaf.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()))).await;

    // The proxy, as a child process.
    let ca_dir = tmp.path().join("egress-ca");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("__proxy")
        .env("EGRESS_BENCH_CA_DIR", &ca_dir)
        .env("EGRESS_BENCH_UPSTREAM", upstream.to_string())
        .env("EGRESS_BENCH_UPSTREAM_CA", &upstream_ca)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proxy_pid = child.id();
    let _proxy = ChildGuard(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    let mut ports = line.split_whitespace().map(|p| p.parse::<u16>().unwrap());
    let ports = evershell_runtime::local::NetworkPorts {
        proxy: ports.next().expect("proxy port"),
        dns: ports.next().expect("dns port"),
    };

    // The pod, networked, trusting the platform CA.
    let snapshots = evershell_snapshot::SnapshotStore::local(&tmp.path().join("snapshots")).unwrap();
    let mut cfg =
        LocalRuntimeConfig::new(tmp.path().join("pods"), PathBuf::from(env!("CARGO_BIN_EXE_evershell")), snapshots);
    cfg.network = Some(ports);
    cfg.egress_ca_file = Some(ca_dir.join("ca.pem"));
    let t = Teardown { rt: LocalRuntime::new(cfg).unwrap(), ports };
    let rt = &t.rt;
    assert!(rt.networked(), "the runtime did not get pod networking");
    let spec = PodSpec {
        pod_id: PodId::new(),
        org_id: OrgId::new(),
        workspace_id: WorkspaceId::new(),
        limits: Default::default(),
    };
    rt.prepare(&spec, None).await.unwrap();
    rt.start(&spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.observe(spec.pod_id).await.unwrap() != PodObservation::Running {
        assert!(Instant::now() < deadline, "the pod did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // This binary is the client inside the pod too: copied into its workspace (removed with the pod).
    let in_ws = rt.pods_dir().join(spec.pod_id.to_string()).join("workspace").join("egress-bench-client");
    std::fs::copy(std::env::current_exe().unwrap(), &in_ws).unwrap();
    std::fs::set_permissions(&in_ws, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let sides = Sides { rt, pod: spec.pod_id, upstream, upstream_ca: &upstream_ca, proxy_pid };
    println!(
        "egress pod bench: pod {} → proxy :{} (pid {proxy_pid}) → upstream {upstream}; host client → upstream; {rounds} rounds alternated; load {}",
        spec.pod_id,
        ports.proxy,
        load()
    );

    // Added latency per small request on a warm connection.
    let (mut p, mut d) = sides.both(rounds, "latency", &[requests]).await;
    let (pm, dm, p99, d99) = (pct(&mut p, 0.5), pct(&mut d, 0.5), pct(&mut p, 0.99), pct(&mut d, 0.99));
    println!(
        "small request, warm connection: direct median {dm:.3} ms p99 {d99:.3} ms; pod via proxy median {pm:.3} ms p99 {p99:.3} ms"
    );
    println!("  added latency: median {:.3} ms (target < 1 ms), p99 {:.3} ms (target < 1 ms)", pm - dm, p99 - d99);

    // Requests per second over 16 connections.
    let (mut p, mut d) = sides.both(rounds, "rps", &[16, secs]).await;
    let (pr, dr) = (pct(&mut p, 0.5), pct(&mut d, 0.5));
    println!("16 connections: direct {dr:.0} req/s, pod via proxy {pr:.0} req/s, ratio {:.2}", pr / dr);

    // Throughput.
    for (label, n, reps) in [("1 MB", MB, 20), ("100 MB", 100 * MB, 2)] {
        let (mut p, mut d, pc, dc) = sides.both_cpu(rounds, "bytes", &[n, reps]).await;
        let (pt, dt) = (pct(&mut p, 0.5), pct(&mut d, 0.5));
        println!(
            "{label} download: direct {dt:.0} MB/s, pod via proxy {pt:.0} MB/s, ratio {:.2} (target ≥ 0.70)",
            pt / dt
        );
        // Each run moves `reps` downloads plus one warm-up of up to 1 MB.
        let gb = rounds as f64 * (reps * n + n.min(MB)) as f64 / 1e9;
        println!(
            "  CPU s per GB: direct: client {:.2} + upstream {:.2} = {:.2}; pod: client {:.2} + proxy {:.2} + upstream {:.2} = {:.2}; CPU-bound ceiling {:.2}",
            dc.client / gb,
            dc.upstream / gb,
            dc.total() / gb,
            pc.client / gb,
            pc.proxy / gb,
            pc.upstream / gb,
            pc.total() / gb,
            dc.total() / pc.total()
        );
    }

    // From the upstream sending an SSE event to the client reading its first byte.
    let (mut p, mut d) = sides.both(rounds, "sse", &[50]).await;
    println!(
        "first SSE event after the upstream sent it: direct median {:.3} ms, pod via proxy median {:.3} ms p99 {:.3} ms (target < 5 ms)",
        pct(&mut d, 0.5),
        pct(&mut p, 0.5),
        pct(&mut p, 0.99)
    );

    // The proxy's peak RSS during a 1 GiB download from the pod: VmHWM reset first (clear_refs 5).
    let before = status_kib(proxy_pid, "VmRSS:");
    std::fs::write(format!("/proc/{proxy_pid}/clear_refs"), "5").unwrap();
    let gib = 1u64 << 30;
    let mbps = sides.pod("bytes", &[gib, 1]).await.0[0];
    println!(
        "1 GiB from the pod through the proxy at {mbps:.0} MB/s: proxy RSS {:.1} MiB before, VmHWM {:.1} MiB during (target < 64 MiB)",
        before as f64 / 1024.0,
        status_kib(proxy_pid, "VmHWM:") as f64 / 1024.0
    );
    println!("load at the end {}", load());

    rt.remove(spec.pod_id).await.unwrap();
    rt.shutdown().await;
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
            let Ok((tcp, _)) = listener.accept().await else { continue };
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
    type E = Box<dyn std::error::Error + Send + Sync>;
    let full = |b: &'static [u8]| Full::new(Bytes::from_static(b)).map_err(|e: Infallible| match e {}).boxed();
    Ok(match req.uri().path() {
        "/small" => Response::new(full(b"{\"ok\":true}")),
        "/sse" => {
            // The head first; the event a moment later, stamped with the time it is handed to the connection.
            let (tx, rx) = futures::channel::mpsc::channel::<Bytes>(2);
            tokio::spawn(async move {
                let mut tx = tx;
                tokio::time::sleep(Duration::from_millis(2)).await;
                let _ = futures::SinkExt::send(&mut tx, Bytes::from(format!("data: {}\n\n", mono_ns()))).await;
                let _ = futures::SinkExt::send(&mut tx, Bytes::from_static(b"data: [DONE]\n\n")).await;
            });
            let events = rx.map(|b| Ok::<_, E>(Frame::data(b)));
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
                Ok::<_, E>(Frame::data(Bytes::from_static(&CHUNK[..len])))
            }));
            Response::builder().header("content-length", n).body(BodyExt::boxed(StreamBody::new(stream))).unwrap()
        }
        _ => Response::builder().status(404).body(full(b"")).unwrap(),
    })
}
