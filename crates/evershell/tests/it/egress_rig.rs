//! The shared set-up of the tests through a real networked pod and the real gate (`egress_e2e`, `egress_attacks`):
//! a local HTTPS upstream with its own test CA (given to the proxy as `proxy.upstream_ca_file`, never to the pod)
//! that answers `/v1/redirect?to=URL` with a `302` to `URL`, `/v1/ok` with `ok`, other `/v1/…` paths with `{path, headers}` as JSON,
//! and anything else as a static file of `www`; `evershell serve` as root with `runtime.network = true`, the
//! upstream's names mapped by `[proxy] upstream_hosts`; an org credential `up-key` (header `x-api-key`); a role
//! `net` with the given caps; an idle workspace of it. Commands run in the pod through `POST
//! /v1/workspaces/{id}/sandbox/exec`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::TestServer;

/// The credential's value, split in two so no command line run in the pod carries the whole value.
pub const KEY_A: &str = "sk-e2e-";
pub const KEY_B: &str = "c0ffee-5eed-91d2";

/// Root, and the tools the pod tests run.
pub fn can_run() -> bool {
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

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A TLS upstream on 127.0.0.1 (see the module doc).
fn upstream(root: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> (std::process::Child, u16) {
    let script = r#"
import http.server, json, ssl, sys, os, urllib.parse
os.chdir(sys.argv[1])
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/v1/redirect":
            self.send_response(302)
            self.send_header("location", urllib.parse.parse_qs(url.query)["to"][0])
            self.send_header("content-length", "0")
            self.end_headers()
        elif url.path == "/v1/ok":
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        elif self.path.startswith("/v1/"):
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

/// A running server with one idle networked workspace.
pub struct EgressRig {
    pub ts: TestServer,
    pub ws: String,
    /// The org credential's value (`KEY_A` + `KEY_B`).
    pub key: String,
    /// The upstream's static files.
    pub www: PathBuf,
    /// Scratch space of the test (removed at the end).
    pub tmp: PathBuf,
    // Field order: the upstream is killed before the temp dir goes.
    _upstream: Cleanup,
    _tmp: tempfile::TempDir,
}

impl EgressRig {
    /// The set-up of the module doc, the upstream answering for `names` (its certificate covers them), the role's
    /// caps `caps`. `None` (and a note) when this host cannot run networked pods.
    pub async fn start(caps: &str, names: &[&str]) -> Option<Self> {
        if !can_run() {
            eprintln!("skipped: needs root, nft, ip, git, curl and python3");
            return None;
        }
        let key = format!("{KEY_A}{KEY_B}");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tmp = tempfile::tempdir().unwrap();
        let www = tmp.path().join("www");
        std::fs::create_dir_all(&www).unwrap();

        // The upstream's CA and certificate: the proxy trusts the CA, the pod never sees it.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = rcgen::CertificateParams::new(names.clone()).unwrap().signed_by(&leaf_key, &issuer).unwrap();
        let (ca_file, cert_file, key_file) =
            (tmp.path().join("upstream-ca.pem"), tmp.path().join("leaf.pem"), tmp.path().join("leaf.key"));
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        std::fs::write(&cert_file, leaf.pem()).unwrap();
        std::fs::write(&key_file, leaf_key.serialize_pem()).unwrap();
        let (child, port) = upstream(&www, &cert_file, &key_file);
        let upstream = Cleanup(child);

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
        let p =
            ts.post("/v1/providers", json!({"name": "prov", "kind": "anthropic", "domain": "api.anthropic.com"})).await;
        let pid = p.ok()["id"].as_str().unwrap().to_string();
        ts.post("/v1/agent-roles", json!({"name": "net", "provider_id": pid, "capabilities": caps})).await.ok();
        let api_key = ts.key.clone();
        let ws = ts.idle_workspace("net", &api_key).await;
        Some(Self { ts, ws, key, www, tmp: tmp.path().to_path_buf(), _upstream: upstream, _tmp: tmp })
    }

    /// Run `script` with bash in the workspace's pod: the exec answer (`exit_code`, `stdout`, `stderr`,
    /// `duration_ms`, …).
    pub async fn sh(&self, script: &str) -> Value {
        let r = self
            .ts
            .post(
                &format!("/v1/workspaces/{}/sandbox/exec", self.ws),
                json!({"argv": ["/bin/bash", "-c", script], "timeout_ms": 60_000}),
            )
            .await;
        r.ok().clone()
    }

    /// Rows at `path` once at least `n` match `pred` (the audit writer flushes every 100 ms): the matching ones.
    pub async fn rows_where(&self, path: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.ts.get(path).await;
            let rows: Vec<Value> =
                r.ok()["events"].as_array().cloned().unwrap_or_default().into_iter().filter(&pred).collect();
            if rows.len() >= n {
                return rows;
            }
            assert!(tokio::time::Instant::now() < deadline, "only {} matching rows at {path}: {}", rows.len(), r.json);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rows at `path` once there are at least `n`.
    pub async fn rows(&self, path: &str, n: usize) -> Vec<Value> {
        self.rows_where(path, n, |_| true).await
    }

    /// The workspace's `egress_request` deny row with this destination and reason (waited for).
    pub async fn deny_row(&self, destination: &str, reason: &str) -> Value {
        let path = format!("/v1/workspaces/{}/audit?filter=event_type=egress_request&limit=1000", self.ws);
        let rows = self
            .rows_where(&path, 1, |r| {
                r["decision"] == "deny" && r["destination"] == destination && r["reason"] == reason
            })
            .await;
        let row = rows[0].clone();
        assert_eq!((&row["actor"], &row["category"]), (&json!("policy-engine"), &json!("activity")), "{row}");
        row
    }

    pub async fn stop(self) {
        self.ts.stop().await;
    }
}
