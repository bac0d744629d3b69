//! The egress path end to end through a real networked pod with the real gate: `evershell serve` (root, `runtime.
//! network = true`) runs the policy gate and the DNS responder in-process; a workspace whose role's caps allow
//! `api.example.test` runs commands through `POST /v1/workspaces/{id}/sandbox/exec`. The name is mapped by
//! `[proxy] upstream_hosts` to a local HTTPS upstream (its own test CA, given as `proxy.upstream_ca_file`) that
//! echoes the headers it received. curl, Python's urllib and `git clone` reach it with the org's credential injected
//! although the pod never holds it; a denied host gets the 403 `egress_denied` JSON, a `%2e%2e` path trick is
//! denied, DNS answers the allowed name and gives NXDOMAIN (audited) for a denied one, and the rows are in
//! `GET /v1/audit` and the workspace's audit. Skipped without root, `ip`, `nft`, curl, git and python3.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::TestServer;

/// Split in two so no command line run in the pod carries the whole value.
const KEY_A: &str = "sk-e2e-";
const KEY_B: &str = "c0ffee-5eed-91d2";

const CAPS: &str = r#"
- name: api
  allow:
    - name: read
      domains: ["api.example.test"]
      methods: [GET]
      paths: ["/v1/**", "/repo.git/**"]
  transforms:
    - auth: { credential: up-key }
"#;

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && ["nft", "ip", "git", "curl", "python3"]
        .iter()
        .all(|t| Command::new(t).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
}

/// Kills the upstream when the test ends (the harness removes the server's host rules).
struct Cleanup(std::process::Child);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A TLS upstream on 127.0.0.1: `/v1/…` answers `{path, headers}` as JSON; anything else is a static file of `root`.
fn upstream(root: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> (std::process::Child, u16) {
    let script = r#"
import http.server, json, ssl, sys, os
os.chdir(sys.argv[1])
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path.startswith("/v1/"):
            body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()
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
    (child, port)
}

async fn sh(ts: &TestServer, ws: &str, script: &str) -> Value {
    let r = ts
        .post(
            &format!("/v1/workspaces/{ws}/sandbox/exec"),
            json!({"argv": ["/bin/bash", "-c", script], "timeout_ms": 60_000}),
        )
        .await;
    r.ok().clone()
}

/// Rows matching `path` once there are at least `n` (the audit writer flushes every 100 ms).
async fn rows(ts: &TestServer, path: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = ts.get(path).await;
        let rows = r.ok()["events"].as_array().cloned().unwrap_or_default();
        if rows.len() >= n {
            return rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} rows at {path}: {}", rows.len(), r.json);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_networked_pod_goes_through_the_real_gate_with_its_credential_injected_and_dns_policed() {
    if !can_run() {
        eprintln!("skipped: needs root, nft, ip, git, curl and python3");
        return;
    }
    let key = format!("{KEY_A}{KEY_B}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    // A bare repository served as dumb HTTP.
    let src = tmp.path().join("src");
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args))
    };
    git(&["init", "-q", src.to_str().unwrap()]);
    std::fs::write(src.join("README"), "cloned through the policy gate\n").unwrap();
    git(&["-C", src.to_str().unwrap(), "add", "README"]);
    git(&["-C", src.to_str().unwrap(), "commit", "-q", "-m", "first"]);
    let bare = www.join("repo.git");
    git(&["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    git(&["-C", bare.to_str().unwrap(), "update-server-info"]);

    // The upstream's CA and certificate: the proxy trusts the CA, the pod never sees it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["api.example.test".to_string(), "denied.example.test".to_string()];
    let leaf = rcgen::CertificateParams::new(names.clone()).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let (ca_file, cert_file, key_file) =
        (tmp.path().join("upstream-ca.pem"), tmp.path().join("leaf.pem"), tmp.path().join("leaf.key"));
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, leaf_key.serialize_pem()).unwrap();
    let (child, port) = upstream(&www, &cert_file, &key_file);
    let _cleanup = Cleanup(child);

    let ts = TestServer::start_with(|cfg| {
        cfg.runtime.network = true;
        cfg.runtime.spare_pods = 0;
        cfg.proxy.upstream_ca_file = Some(ca_file.clone());
        for n in &names {
            cfg.proxy.upstream_hosts.insert(n.clone(), format!("127.0.0.1:{port}"));
        }
    })
    .await;

    let owner = ts.login(&ts.owner_email.clone()).await;
    ts.call(
        Method::POST,
        "/v1/credentials",
        Some(&owner),
        Some(json!({"name": "up-key", "provider": "acme", "kind": "api_key", "api_key": key,
                    "provider_config": {"header": "x-api-key"}})),
    )
    .await
    .ok();
    let p = ts.post("/v1/providers", json!({"name": "prov", "kind": "anthropic", "domain": "api.anthropic.com"})).await;
    let pid = p.ok()["id"].as_str().unwrap().to_string();
    ts.post("/v1/agent-roles", json!({"name": "net", "provider_id": pid, "capabilities": CAPS})).await.ok();
    let api_key = ts.key.clone();
    let ws = ts.idle_workspace("net", &api_key).await;

    // The allowed host: the upstream sees the org's credential in place of the agent's own header.
    let r = sh(&ts, &ws, "curl -sS -H 'x-api-key: agent-guess' https://api.example.test/v1/x").await;
    assert_eq!(r["exit_code"], 0, "{r}");
    let echoed: Value = serde_json::from_str(r["stdout"].as_str().unwrap()).unwrap_or_else(|_| panic!("{r}"));
    assert_eq!(echoed["path"], "/v1/x");
    assert_eq!(echoed["headers"]["x-api-key"], key.as_str(), "{echoed}");
    let r = sh(
        &ts,
        &ws,
        "python3 -c \"import urllib.request, json; print(json.load(urllib.request.urlopen('https://api.example.test/v1/py'))['path'])\"",
    )
    .await;
    assert_eq!((r["exit_code"].as_i64(), r["stdout"].as_str()), (Some(0), Some("/v1/py\n")), "{r}");
    let r = sh(&ts, &ws, "git clone -q https://api.example.test/repo.git /tmp/r && cat /tmp/r/README").await;
    assert_eq!(
        (r["exit_code"].as_i64(), r["stdout"].as_str()),
        (Some(0), Some("cloned through the policy gate\n")),
        "{r}"
    );

    // The pod never held the key: not in any process's environment, nor in its files.
    let probe = format!(
        "k={KEY_A}; k=\"${{k}}{KEY_B}\"; grep -ls \"$k\" /proc/[0-9]*/environ; \
         grep -rls \"$k\" /workspace /tmp /home /etc /run /root 2>/dev/null; echo probed"
    );
    let r = sh(&ts, &ws, &probe).await;
    assert_eq!(r["stdout"], "probed\n", "the credential is readable inside the pod: {r}");

    // A denied host (its name given by hand: DNS would not answer it): the proxy's 403 JSON.
    let r = sh(
        &ts,
        &ws,
        "curl -s -w '\\n%{http_code}' --resolve denied.example.test:443:192.0.2.1 https://denied.example.test/v1/x",
    )
    .await;
    let out = r["stdout"].as_str().unwrap();
    let (body, code) = out.rsplit_once('\n').unwrap();
    assert_eq!(code, "403", "{r}");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{r}"));
    assert_eq!(body["error"]["code"], "egress_denied", "{body}");
    assert!(!out.contains(KEY_B));
    // A path trick on the allowed host: normalised to /admin, which no rule allows.
    let r = sh(&ts, &ws, "curl -s --path-as-is -w '\\n%{http_code}' 'https://api.example.test/v1/%2e%2e/admin'").await;
    let out = r["stdout"].as_str().unwrap();
    assert!(out.ends_with("\n403") && out.contains("egress_denied"), "{r}");
    assert!(!out.contains(KEY_B));

    // DNS: the allowed name answers, a denied one is NXDOMAIN.
    let r = sh(&ts, &ws, "getent ahostsv4 api.example.test").await;
    assert_eq!(r["exit_code"], 0, "{r}");
    assert!(r["stdout"].as_str().unwrap().contains("192.0.2.1"), "{r}");
    let exfil = "c2VjcmV0.denied.example.test";
    let r = sh(&ts, &ws, &format!("getent ahostsv4 {exfil}")).await;
    assert_ne!(r["exit_code"], 0, "{r}");

    // Outside the pods, the same responder resolves nothing, not even the allowed name.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns_at = std::net::SocketAddr::from(([127, 0, 0, 1], ts.dns_addr().port()));
    sock.send_to(&evershell_proxy::dns::query(7, "api.example.test", 1), dns_at).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf)).await.expect("no DNS answer").unwrap();
    assert_eq!(evershell_proxy::dns::parse_response(&buf[..n]), Some((7, 3, vec![])));

    // The rows, in the org's audit and the workspace's.
    let dns = rows(&ts, "/v1/audit?filter=event_type=egress_dns_denied&limit=100", 1).await;
    let d = dns.iter().find(|r| r["destination"] == exfil.to_ascii_lowercase()).unwrap_or_else(|| panic!("{dns:?}"));
    assert_eq!(
        (&d["actor"], &d["category"], &d["decision"]),
        (&json!("policy-engine"), &json!("activity"), &json!("deny"))
    );
    assert_eq!((&d["reason"], &d["workspace_id"]), (&json!("host_not_allowed"), &json!(ws.as_str())));
    let ws_dns = rows(&ts, &format!("/v1/workspaces/{ws}/audit?filter=event_type=egress_dns_denied"), 1).await;
    assert!(ws_dns.iter().any(|r| r["destination"] == exfil.to_ascii_lowercase()));
    let reqs = rows(&ts, "/v1/audit?filter=event_type=egress_request&limit=100", 5).await;
    let allowed: Vec<&str> = reqs
        .iter()
        .filter(|r| r["decision"] == "allow" && r["details"]["transforms"] == json!(["auth:up-key"]))
        .filter_map(|r| r["path"].as_str())
        .collect();
    for p in ["/v1/x", "/v1/py", "/repo.git/info/refs"] {
        assert!(allowed.iter().any(|a| a.starts_with(p)), "no allow row for {p}: {allowed:?}");
    }
    let denied = |host: &str, path: &str| {
        reqs.iter().any(|r| {
            r["decision"] == "deny"
                && r["destination"] == format!("{host}:443")
                && r["path"] == path
                && r["workspace_id"] == ws.as_str()
        })
    };
    assert!(denied("denied.example.test", "/v1/x"), "{reqs:?}");
    assert!(denied("api.example.test", "/admin"), "{reqs:?}");
    let ws_reqs = rows(&ts, &format!("/v1/workspaces/{ws}/audit?filter=event_type=egress_request&limit=100"), 5).await;
    assert_eq!(ws_reqs.len(), reqs.len());
    let all = ts.get("/v1/audit?limit=1000").await;
    assert!(!String::from_utf8_lossy(&all.bytes).contains(&key), "the credential reached the audit log");
    ts.stop().await;
}
