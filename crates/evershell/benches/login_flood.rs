//! A guess flood against one account must neither reach argon2 more than a handful of times nor slow anyone else:
//! 32 keep-alive connections send `POST /v1/auth/login` with wrong passwords for one account for BENCH_SECONDS
//! (default 10), while one client measures authenticated `GET /v1/agent-roles/{id}` (API key) back to back and
//! another account signs in once a second. The same read is measured without the flood first, on the same server,
//! so the latencies are side by side. A second server with the throttle opened wide (thresholds of 10^9) shows what
//! the bounded argon2 pool alone does under the same flood. (Refused attempts are held for `login.refusal_delay_ms`
//! before their 429, so a closed-loop flood sends about one request per second per connection.)
//!
//!   cargo bench -p evershell --bench login_flood            (BENCH_SECONDS, BENCH_FLOOD_CONNECTIONS)
//! Targets: a handful of verifications reach argon2; p99 of the read under the flood < 20 ms; the other account
//! signs in throughout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

const OTHER: &str = "other@example.com";
const OTHER_PASSWORD: &str = "other-account-password";

/// Back-to-back reads for `secs`: latencies in ms.
async fn probe(http: &reqwest::Client, url: &str, key: &str, secs: u64) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut lat = vec![];
    while Instant::now() < deadline {
        let t = Instant::now();
        let res = http.get(url).bearer_auth(key).send().await.unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        let _ = res.bytes().await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1).min(v.len() - 1)]
}

/// `evershell_password_hashes_total` summed over `op`, from `/metrics`.
async fn hashes(http: &reqwest::Client, s: &common::Server) -> f64 {
    let text = http.get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("evershell_password_hashes_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Median answer time of a login with an unknown email vs a wrong password (20 each, alternating): the two must
/// cost the same (a dummy argon2 verification), or timing would tell which accounts exist.
async fn enumeration(http: &reqwest::Client, s: &common::Server) -> (f64, f64) {
    let login = format!("{}/v1/auth/login", s.url);
    let (mut unknown, mut wrong) = (vec![], vec![]);
    for i in 0..40 {
        let email = if i % 2 == 0 { "nobody@example.com" } else { "bench@example.com" };
        let t = Instant::now();
        let res = http.post(&login).json(&json!({ "email": email, "password": "not-the-password" })).send().await;
        assert_eq!(res.unwrap().status().as_u16(), 401);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if i % 2 == 0 { unknown.push(ms) } else { wrong.push(ms) }
    }
    (common::median(&mut unknown), common::median(&mut wrong))
}

struct Run {
    idle: Vec<f64>,
    flooded: Vec<f64>,
    attempts: u64,
    refused: u64,
    argon2: f64,
    other_ok: u64,
    other_tries: u64,
    other_worst_ms: f64,
}

async fn run(label: &str, extra_env: &[(&str, &str)], secs: u64, conns: u64) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let server = common::start(tmp.path(), extra_env);
    let out = std::process::Command::new(common::bin())
        .args(["admin", "--data-dir"])
        .arg(&server.data)
        .args(["user", "add", "--org", "bench", "--email", OTHER, "--role", "member", "--password", OTHER_PASSWORD])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let role = common::role(&http, &server, "bench").await;
    let url = format!("{}/v1/agent-roles/{role}", server.url);
    probe(&http, &url, &server.key, 1).await; // warm-up
    let idle = probe(&http, &url, &server.key, secs).await;
    let enumeration = if label == "open" { Some(enumeration(&http, &server).await) } else { None };

    let before = hashes(&http, &server).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (attempts, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let login = format!("{}/v1/auth/login", server.url);
    let mut flood = vec![];
    for _ in 0..conns {
        // One client per connection, so the flood really holds `conns` connections.
        let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
        let (stop, attempts, refused, login) = (stop.clone(), attempts.clone(), refused.clone(), login.clone());
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let body = json!({ "email": "bench@example.com", "password": "not-the-password" });
                let res = http.post(&login).json(&body).send().await.unwrap();
                let status = res.status().as_u16();
                let _ = res.bytes().await;
                assert!(status == 401 || status == 429, "flood answer {status}");
                attempts.fetch_add(1, Ordering::Relaxed);
                refused.fetch_add(u64::from(status == 429), Ordering::Relaxed);
            }
        }));
    }
    // The other account signs in once a second while the flood runs.
    let other = {
        let (http, login, stop) = (http.clone(), login.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut tries, mut worst) = (0u64, 0u64, 0f64);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let t = Instant::now();
                let res = http.post(&login).json(&json!({ "email": OTHER, "password": OTHER_PASSWORD })).send().await;
                let good = res.map(|r| r.status().is_success()).unwrap_or(false);
                worst = worst.max(t.elapsed().as_secs_f64() * 1000.0);
                tries += 1;
                ok += u64::from(good);
            }
            (ok, tries, worst)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // let the flood start
    let flooded = probe(&http, &url, &server.key, secs).await;
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let (other_ok, other_tries, other_worst_ms) = other.await.unwrap();
    let argon2 = hashes(&http, &server).await - before;
    let run = Run {
        idle,
        flooded,
        attempts: attempts.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        argon2,
        other_ok,
        other_tries,
        other_worst_ms,
    };
    if let Some((unknown, wrong)) = enumeration {
        println!(
            "  (no flood) login answer time, median of 20 alternating: unknown email {unknown:.1} ms, wrong password \
             {wrong:.1} ms, ratio {:.2}",
            unknown / wrong
        );
    }
    run
}

fn report(label: &str, r: &mut Run) {
    let (ip50, ip99) = (pct(&mut r.idle, 0.50), pct(&mut r.idle, 0.99));
    let (fp50, fp99) = (pct(&mut r.flooded, 0.50), pct(&mut r.flooded, 0.99));
    println!("{label}");
    println!(
        "  flood: {} login attempts ({} answered 429), {} reached argon2 (counting the other account's sign-ins)",
        r.attempts, r.refused, r.argon2
    );
    println!(
        "  GET /v1/agent-roles/{{id}} without flood  p50 {ip50:>6.2} ms  p99 {ip99:>6.2} ms  ({} requests)",
        r.idle.len()
    );
    println!(
        "  GET /v1/agent-roles/{{id}} during flood    p50 {fp50:>6.2} ms  p99 {fp99:>6.2} ms  ({} requests)  p99 ratio {:.2}",
        r.flooded.len(),
        fp99 / ip99
    );
    println!(
        "  other account signed in {}/{} times during the flood (slowest {:.0} ms)",
        r.other_ok, r.other_tries, r.other_worst_ms
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env("BENCH_SECONDS", 10);
    let conns = env("BENCH_FLOOD_CONNECTIONS", 32);
    println!("login_flood: {conns} flooding connections for {secs} s per phase, SQLite, release build");
    let mut throttled = run("throttled", &[], secs, conns).await;
    report("default config (throttle on, argon2 pool = cores):", &mut throttled);
    let wide = [
        ("EVERSHELL_LOGIN__ACCOUNT_FREE_FAILURES", "1000000000"),
        ("EVERSHELL_LOGIN__ACCOUNT_LOCK_AFTER", "1000000001"),
        ("EVERSHELL_LOGIN__ADDRESS_FREE_FAILURES", "1000000000"),
        ("EVERSHELL_LOGIN__ADDRESS_LOCK_AFTER", "1000000001"),
    ];
    let mut open = run("open", &wide, secs, conns).await;
    report("throttle opened wide (every guess reaches argon2; only the bounded pool protects others):", &mut open);
}
