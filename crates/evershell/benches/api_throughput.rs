//! Authenticated read throughput against the health check, on one server: `GET /v1/agent-roles/{id}` with an API
//! key (authentication + scope check + a store read) vs `GET /healthz` (a store round trip). Target: the
//! authenticated read keeps at least half of the health check's throughput (API keys are looked up by sha256, never
//! argon2 per request).
//!
//!   cargo bench -p evershell --bench api_throughput            (BENCH_SECONDS, BENCH_CONCURRENCY, BENCH_ROUNDS)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

async fn drive(http: &reqwest::Client, url: String, key: Option<String>, secs: u64, conc: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = vec![];
    for _ in 0..conc {
        let (http, url, key, done) = (http.clone(), url.clone(), key.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut r = http.get(&url);
                if let Some(k) = &key {
                    r = r.bearer_auth(k);
                }
                let res = r.send().await.unwrap();
                assert!(res.status().is_success(), "{}", res.status());
                let _ = res.bytes().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env("BENCH_SECONDS", 3);
    let conc = env("BENCH_CONCURRENCY", 16);
    let rounds = env("BENCH_ROUNDS", 5);
    let tmp = tempfile::tempdir().unwrap();
    let server = common::start(tmp.path(), &[]);
    let http = reqwest::Client::builder().pool_max_idle_per_host(conc as usize).build().unwrap();
    let role = common::role(&http, &server, "bench").await;
    let role_url = format!("{}/v1/agent-roles/{role}", server.url);
    let health_url = format!("{}/healthz", server.url);
    // Warm up both paths.
    drive(&http, health_url.clone(), None, 1, conc).await;
    drive(&http, role_url.clone(), Some(server.key.clone()), 1, conc).await;
    let (mut health, mut authed) = (vec![], vec![]);
    for _ in 0..rounds {
        health.push(drive(&http, health_url.clone(), None, secs, conc).await);
        authed.push(drive(&http, role_url.clone(), Some(server.key.clone()), secs, conc).await);
    }
    let (h, a) = (common::median(&mut health), common::median(&mut authed));
    println!(
        "api_throughput: {rounds} alternating rounds of {secs}s, {conc} concurrent keep-alive clients, SQLite, release build"
    );
    println!("  GET /healthz                          median {h:>9.0} req/s   (rounds: {health:.0?})");
    println!("  GET /v1/agent-roles/{{id}} (API key)   median {a:>9.0} req/s   (rounds: {authed:.0?})");
    println!("  ratio authenticated/health = {:.2}  (target >= 0.50)", a / h);
}
