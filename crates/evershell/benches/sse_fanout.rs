//! SSE fan-out: BENCH_SUBSCRIBERS (default 100) clients on `GET /v1/activity/stream` of one org while real
//! lifecycle calls write activity rows (BENCH_WORKSPACES workspaces, default 4, each stopped and resumed
//! BENCH_CYCLES times, default 10: `snapshot_saved`, `workspace_stopped`, `snapshot_restored`, `workspace_ready`, …).
//! Reported: delivery latency (event timestamp, set where the event happened, to the moment a subscriber reads its
//! frame; both clocks are this machine's) as median, p95 and max over every (subscriber, event) pair; whether every
//! subscriber got every event of the org's history exactly once and in order; the server's RSS before and with the
//! subscribers. Target: every subscriber gets every event within 100 ms.
//!
//!   cargo bench -p evershell --bench sse_fanout

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{call, median, p95, rss_mib};
use evershell_cli::sse::Parser;
use evershell_core::Timestamp;
use reqwest::Method;
use serde_json::{Value, json};

fn env(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

/// What one subscriber saw: `(event id, latency ms, arrival ms since the epoch)` in arrival order.
type Seen = Arc<Mutex<Vec<(String, f64, f64)>>>;

async fn subscribe(http: reqwest::Client, url: String, key: String, seen: Seen, ready: tokio::sync::mpsc::Sender<()>) {
    let mut res = http.get(format!("{url}/v1/activity/stream")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(res.status(), 200);
    ready.send(()).await.unwrap();
    let mut parser = Parser::default();
    while let Ok(Some(chunk)) = res.chunk().await {
        let at = now_ms();
        for f in parser.push(&chunk).unwrap() {
            let Some(data) = f.data else { continue };
            let v: Value = serde_json::from_str(&data).unwrap();
            let ts = Timestamp::parse_rfc3339(v["timestamp"].as_str().unwrap()).unwrap().millis() as f64;
            seen.lock().unwrap().push((v["id"].as_str().unwrap().to_string(), at - ts, at));
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let subscribers = env("BENCH_SUBSCRIBERS", 100);
    let workspaces = env("BENCH_WORKSPACES", 4);
    let cycles = env("BENCH_CYCLES", 10);
    let tmp = tempfile::tempdir().unwrap();
    let server = common::start(tmp.path(), &[]);
    let pid = server.child.id();
    let http = reqwest::Client::builder().pool_max_idle_per_host(subscribers + 16).build().unwrap();
    common::role(&http, &server, "bench").await;
    let mut ids = Vec::new();
    for _ in 0..workspaces {
        let ws = call(
            &http,
            &server,
            Method::POST,
            "/v1/workspaces?wait=true&timeout_ms=60000",
            Some(json!({"role_name": "bench"})),
        )
        .await;
        assert_eq!(ws["status"], "idle", "{ws}");
        ids.push(ws["id"].as_str().unwrap().to_string());
    }
    let (_, rss_before) = rss_mib(pid);
    // Only events after the newest one so far count (the creates' rows came before the subscribers).
    let mut newest: Vec<String> = Vec::new();
    for ws in &ids {
        let page = call(&http, &server, Method::GET, &format!("/v1/workspaces/{ws}/activity?limit=1"), None).await;
        newest.push(page["events"][0]["timestamp"].as_str().unwrap().to_string());
    }
    let since = newest.into_iter().max_by_key(|t| Timestamp::parse_rfc3339(t).unwrap().millis()).unwrap();

    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subscribers);
    let mut seen = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let s: Seen = Arc::default();
        seen.push(s.clone());
        readers.push(tokio::spawn(subscribe(
            http.clone(),
            server.url.clone(),
            server.key.clone(),
            s,
            ready_tx.clone(),
        )));
    }
    for _ in 0..subscribers {
        ready_rx.recv().await.unwrap();
    }
    let (_, rss_subscribed) = rss_mib(pid);

    // Write activity through real lifecycle calls, the workspaces in parallel.
    let started = std::time::Instant::now();
    let mut writers = Vec::new();
    for ws in ids.clone() {
        let (http, url, key) = (http.clone(), server.url.clone(), server.key.clone());
        writers.push(tokio::spawn(async move {
            for _ in 0..cycles {
                for op in ["stop", "resume"] {
                    let r = http
                        .post(format!("{url}/v1/workspaces/{ws}/{op}?wait=true&timeout_ms=60000"))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "{op}: {}", r.status());
                    let _ = r.bytes().await;
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let writing = started.elapsed();
    // The org's activity since `since`, from the history (the truth every subscriber must match).
    let mut want_by_ws: Vec<Vec<String>> = Vec::new();
    for ws in &ids {
        let page = call(
            &http,
            &server,
            Method::GET,
            &format!("/v1/workspaces/{ws}/activity?order=asc&limit=10000&after={since}"),
            None,
        )
        .await;
        want_by_ws
            .push(page["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect());
    }
    let want: Vec<String> = want_by_ws.concat();
    let want_ids: std::collections::HashSet<&String> = want.iter().collect();
    // Wait until every subscriber has them all (or 10 s pass: then the report says who is short).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && seen.iter().any(|s| s.lock().unwrap().iter().filter(|(id, _, _)| want_ids.contains(id)).count() < want.len())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rss_peak, rss_now) = rss_mib(pid);
    for r in &readers {
        r.abort();
    }

    // The fan-out's own share: how long after the first subscriber each one read the event (the end-to-end figure
    // also holds the writer's transaction, which commits after the event's timestamp was taken).
    let mut first_at: HashMap<String, f64> = HashMap::new();
    for s in &seen {
        for (id, _, at) in s.lock().unwrap().iter() {
            let e = first_at.entry(id.clone()).or_insert(*at);
            *e = e.min(*at);
        }
    }
    let mut spread = Vec::new();
    let mut lat = Vec::new();
    let (mut complete, mut duplicates, mut out_of_order) = (0, 0, 0);
    let index: HashMap<&String, (usize, usize)> = want_by_ws
        .iter()
        .enumerate()
        .flat_map(|(w, evs)| evs.iter().enumerate().map(move |(i, id)| (id, (w, i))))
        .collect();
    for s in &seen {
        let s = s.lock().unwrap();
        let mut counts: HashMap<&String, usize> = HashMap::new();
        let mut next = vec![0usize; want_by_ws.len()];
        for (id, l, at) in s.iter() {
            let Some(&(w, i)) = index.get(id) else { continue };
            *counts.entry(id).or_default() += 1;
            lat.push(*l);
            spread.push(at - first_at[id]);
            // Per workspace, each event must be the next one of its history.
            if i != next[w] {
                out_of_order += 1;
            }
            next[w] = i + 1;
        }
        if counts.len() == want.len() {
            complete += 1;
        }
        duplicates += counts.values().filter(|c| **c > 1).count();
    }
    let events = want.len();
    let (med, p, max) = if lat.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (median(&mut lat.clone()), p95(&mut lat.clone()), lat.iter().cloned().fold(f64::MIN, f64::max))
    };
    println!(
        "sse_fanout: {subscribers} subscribers, {events} events in {:.1} s ({:.0} events/s), {} deliveries",
        writing.as_secs_f64(),
        events as f64 / writing.as_secs_f64(),
        lat.len()
    );
    println!(
        "  delivery latency: median {med:.1} ms, p95 {p:.1} ms, max {max:.1} ms (target: every event within 100 ms)"
    );
    println!(
        "  complete: {complete}/{subscribers} subscribers got every event; {duplicates} duplicates; {out_of_order} out of order"
    );
    println!(
        "  server RSS (the `evershell serve` process, /proc/{pid}/status VmRSS, peak VmHWM): {rss_before:.1} MiB before, {rss_subscribed:.1} MiB with the subscribers, {rss_now:.1} MiB after writing (peak {rss_peak:.1} MiB)"
    );
    let within = lat.iter().filter(|l| **l <= 100.0).count();
    println!("  within 100 ms of the event's timestamp: {within}/{} deliveries", lat.len());
    if !spread.is_empty() {
        let smax = spread.iter().cloned().fold(f64::MIN, f64::max);
        let swithin = spread.iter().filter(|l| **l <= 100.0).count();
        println!(
            "  fan-out (each subscriber's read after the first subscriber's read of the same event): median {:.1} ms, p95 {:.1} ms, max {smax:.1} ms; within 100 ms: {swithin}/{}",
            median(&mut spread.clone()),
            p95(&mut spread.clone()),
            spread.len()
        );
    }
    for ws in &ids {
        call(&http, &server, Method::POST, &format!("/v1/workspaces/{ws}/stop?wait=true&timeout_ms=60000"), None).await;
    }
}
