//! Connection and request limits through the real server: a client trickling header bytes is cut after the
//! header-read timeout, connections above the cap wait in the backlog without taking a descriptor of the server,
//! and a request whose body never completes is answered `503` once the request timeout passes.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::TestServer;

fn addr(ts: &TestServer) -> String {
    ts.url.trim_start_matches("http://").to_string()
}

/// Read until the server closes the connection; returns what it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_trickling_headers_is_cut_after_the_header_timeout() {
    let ts = TestServer::start_with(|c| c.http.header_read_timeout_ms = 600).await;
    let mut s = TcpStream::connect(addr(&ts)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    // The slowloris: one header line every 100 ms, forever (until the server hangs up).
    let trickle = tokio::spawn(async move {
        for i in 0.. {
            if wr.write_all(format!("X-Slow-{i}: y\r\n").as_bytes()).await.is_err() {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        unreachable!()
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "the connection was still open after 20 s");
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(500), "cut before the timeout: {held:?}");
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "the request was served: {got:?}");
    trickle.abort();
    // A well-behaved client is served as before.
    assert_eq!(ts.call(reqwest::Method::GET, "/healthz", None, None).await.status, 200);
    ts.stop().await;
}

/// Sockets of this process that the kernel shows as accepted (an inode: a descriptor exists) on `port`; connections
/// still waiting in the backlog have inode 0.
fn accepted_sockets(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && f[3] == "01" && f[9] != "0"
        })
        .count()
}

#[tokio::test]
async fn connections_above_the_cap_take_no_descriptor_and_are_served_later() {
    let ts = TestServer::start_with(|c| {
        c.http.max_connections = 4;
        c.http.header_read_timeout_ms = 60_000;
    })
    .await;
    let port: u16 = addr(&ts).rsplit(':').next().unwrap().parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr(&ts)).await.unwrap());
    }
    // Wait until the server has taken all the connections it may.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ts.open_connections() < 4 {
        assert!(Instant::now() < deadline, "the server never took 4 connections");
        tokio::task::yield_now().await;
    }
    assert_eq!(ts.open_connections(), 4);
    let accepted = accepted_sockets(port);
    // Exactly the 4 served ones: the other 36 are in the backlog (no descriptor).
    assert_eq!(accepted, 4, "connections holding a descriptor of the server; the cap is 4");
    // A fresh request waits in the backlog until the idle clients leave, then is answered.
    let health = {
        let url = format!("{}/healthz", ts.url);
        tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) })
    };
    drop(idle);
    let status = tokio::time::timeout(Duration::from_secs(20), health).await.expect("healthz answered").unwrap();
    assert_eq!(status.unwrap(), 200);
    ts.stop().await;
}

#[tokio::test]
async fn a_request_whose_body_never_arrives_times_out_with_the_envelope() {
    let ts = TestServer::start_with(|c| c.http.request_timeout_ms = 500).await;
    let mut s = TcpStream::connect(addr(&ts)).await.unwrap();
    let head = format!(
        "POST /v1/providers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\nConnection: close\r\n\r\n{{\"name\":",
        ts.key
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), read_to_close(&mut s)).await.expect("answered");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"code\":\"unavailable\""), "{text}");
    // Nothing was created.
    assert_eq!(ts.get("/v1/providers").await.ok()["providers"], json!([]));
    ts.stop().await;
}
