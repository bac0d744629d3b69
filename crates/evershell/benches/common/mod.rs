//! Shared bench plumbing: the release `evershell` binary started as its own process on a fresh data directory,
//! bootstrapped through `evershell admin`, plus a small JSON client and statistics.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The bootstrapped owner's (`bench@example.com` in org `bench`) password.
pub const PASSWORD: &str = "bench-password-0123";

pub struct Server {
    pub child: Child,
    pub url: String,
    pub key: String,
    pub data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        evershell_runtime::local::kill_all_sandboxes(&self.data.join("pods"));
        if std::env::var_os("BENCH_LOG").is_some() {
            let keep = std::env::temp_dir().join("evershell-bench-serve.log");
            if std::fs::copy(self.data.join("serve.log"), &keep).is_ok() {
                eprintln!("server log kept at {}", keep.display());
            }
        }
    }
}

/// The server binary: `BENCH_EVERSHELL_BIN` when set (to compare a build kept aside in the same session), else this
/// package's own.
pub fn bin() -> String {
    std::env::var("BENCH_EVERSHELL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_evershell").to_string())
}

/// Start `evershell serve` on a fresh data dir under `root` (bootstrapping org `bench`). Its log (level from
/// `BENCH_LOG`, default `warn`) goes to `<root>/data/serve.log`, copied to the temp dir at the end when `BENCH_LOG`
/// is set.
pub fn start(root: &Path, extra_env: &[(&str, &str)]) -> Server {
    start_with_config(root, extra_env, None)
}

/// [`start`], with `config` (TOML) written to `<root>/evershell.toml` and passed as `--config`.
pub fn start_with_config(root: &Path, extra_env: &[(&str, &str)], config: Option<&str>) -> Server {
    let data = root.join("data");
    // Private, as `serve` requires (the admin CLI creates it 0700).
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(&data).unwrap();
    let out = Command::new(bin())
        .args(["admin", "--data-dir"])
        .arg(&data)
        .args(["bootstrap", "--org", "bench", "--email", "bench@example.com", "--password", PASSWORD, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["api_key"]["value"].as_str().unwrap().to_string();
    let log = data.join("serve.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&data);
    if let Some(toml) = config {
        let f = root.join("evershell.toml");
        std::fs::write(&f, toml).unwrap();
        cmd.arg("--config").arg(f);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd
        .env("EVERSHELL_LOG", std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    // Owned at once, so a failed start still kills the process.
    let mut server = Server { child, url: String::new(), key, data };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with("evershell listening on ")) {
            server.url = l.trim_start_matches("evershell listening on ").to_string();
            return server;
        }
        assert!(Instant::now() < deadline, "server did not start: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn call(
    http: &reqwest::Client,
    s: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut r = http.request(method, format!("{}{path}", s.url)).bearer_auth(&s.key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let res = r.send().await.unwrap();
    let status = res.status();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// A provider and a role named `role`; returns the role id.
pub async fn role(http: &reqwest::Client, s: &Server, role: &str) -> String {
    let p = call(
        http,
        s,
        reqwest::Method::POST,
        "/v1/providers",
        Some(serde_json::json!({
        "name": format!("{role}-p"), "kind": "anthropic", "domain": "api.anthropic.com"})),
    )
    .await;
    let r = call(
        http,
        s,
        reqwest::Method::POST,
        "/v1/agent-roles",
        Some(serde_json::json!({
        "name": role, "provider_id": p["id"]})),
    )
    .await;
    r["id"].as_str().unwrap().to_string()
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn p95(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * 0.95).ceil() as usize).saturating_sub(1).min(v.len() - 1)]
}

/// Peak and current resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmHWM:") / 1024.0, kb("VmRSS:") / 1024.0)
}
