//! HTTP/1.1 forwarding: edits, records, streaming both ways, SSE as it arrives, 100-continue, compressed bodies,
//! redirects passed through.

use std::time::Duration;

use evershell_proxy::{AllowList, Decision};
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

fn gate() -> AllowList {
    AllowList::new(["api.test", "h2.test"]).insecure("plain.test").with_header("api.test", "x-gate-stamp", "from-gate")
}

#[tokio::test]
async fn https_request_is_forwarded_with_the_gates_edits_and_recorded() {
    let env = start(gate()).await;
    let mut c = env.h1("api.test").await;
    let req = Request::post("/echo?q=1")
        .header("host", "api.test")
        .header("x-gate-stamp", "from-agent")
        .body(full("hello upstream"))
        .unwrap();
    let (parts, body) = body_bytes(c.send_request(req).await.unwrap()).await;
    assert_eq!(parts.status, 200);
    assert_eq!(&body[..], b"hello upstream");
    assert_eq!(parts.headers["x-echo-stamp"], "from-gate", "the gate's header replaces the agent's");
    assert_eq!(parts.headers["x-echo-query"], "q=1");
    let (conn, outcome) = env.gate.wait_for_outcomes(1).await.remove(0);
    assert_eq!(conn.sni.as_deref(), Some("api.test"));
    assert_eq!(outcome.decision, Decision::Forwarded);
    assert_eq!(outcome.status.map(|s| s.as_u16()), Some(200));
    assert_eq!((outcome.bytes_up, outcome.bytes_down), (14, 14));
    let req = outcome.request.unwrap();
    assert_eq!((req.host.as_str(), req.path.as_str(), req.port), ("api.test", "/echo", 443));
}

#[tokio::test]
async fn sse_events_reach_the_client_as_they_are_sent() {
    let env = start(gate()).await;
    let mut c = env.h1("api.test").await;
    let resp = c.send_request(get("api.test", "/sse")).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let deadline = Duration::from_secs(10);
    // The upstream holds the second event until the test releases it, after the first arrived.
    let first = tokio::time::timeout(deadline, body.frame()).await.expect("first event held back").unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    env.sse_release.notify_one();
    let second = tokio::time::timeout(deadline, body.frame()).await.expect("second event").unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), "data: two\n\n");
}

#[tokio::test]
async fn large_bodies_stream_both_ways_intact() {
    let env = start(gate()).await;
    let mut c = env.h1("api.test").await;
    let n = 48 * 1024 * 1024u64;
    let resp = c.send_request(get("api.test", &format!("/bytes?n={n}"))).await.unwrap();
    assert_eq!(resp.headers()["content-length"], n.to_string().as_str());
    assert_eq!(drain_pattern(resp.into_body()).await, (n, true));

    // Upload: a streamed chunked body of 16 MiB, echoed back.
    let up = 16 * 1024 * 1024u64;
    let chunks = futures::stream::iter((0..up / 65536).map(|i| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(bytes::Bytes::from(pattern(
            i * 65536,
            65536,
        ))))
    }));
    let req = Request::post("/echo")
        .header("host", "api.test")
        .body(http_body_util::StreamBody::new(chunks).boxed())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(drain_pattern(resp.into_body()).await, (up, true));
    let outcomes = env.gate.wait_for_outcomes(2).await;
    assert_eq!(outcomes[0].1.bytes_down, n);
    assert_eq!((outcomes[1].1.bytes_up, outcomes[1].1.bytes_down), (up, up));
}

#[tokio::test]
async fn expect_100_continue_is_answered_and_the_body_passes_byte_exact() {
    let env = start(gate()).await;
    let mut tls = env.tls("api.test", &[b"http/1.1"]).await;
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let head = format!(
        "PUT /echo HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let interim = read_head(&mut tls).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    tls.write_all(&body).await.unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains(&format!("content-length: {}", body.len())), "{head}");
    let mut echoed = vec![0u8; body.len()];
    tls.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, body);
}

#[tokio::test]
async fn compressed_bodies_and_redirects_pass_untouched() {
    let env = start(gate()).await;
    let mut c = env.h1("api.test").await;
    let (parts, body) = body_bytes(c.send_request(get("api.test", "/gzip")).await.unwrap()).await;
    assert_eq!(parts.headers["content-encoding"], "gzip");
    assert_eq!(parts.headers["content-length"], GZIP_BYTES.len().to_string().as_str());
    assert_eq!(&body[..], GZIP_BYTES);
    let (parts, _) = body_bytes(c.send_request(get("api.test", "/redirect")).await.unwrap()).await;
    assert_eq!(parts.status, 302, "redirects are the client's to follow");
    assert_eq!(parts.headers["location"], "https://elsewhere.test/landing");
}

#[tokio::test]
async fn plain_http_is_forwarded_only_where_the_verdict_allows_insecure() {
    let env = start(gate()).await;
    let tcp = tokio::net::TcpStream::connect(env.proxy.local_addr()).await.unwrap();
    let mut c = handshake_h1(tcp).await;
    let (parts, body) = body_bytes(c.send_request(get("plain.test", "/gzip")).await.unwrap()).await;
    assert_eq!(parts.status, 200);
    assert_eq!(&body[..], GZIP_BYTES);
    let (status, json) = json(c.send_request(get("api.test", "/gzip")).await.unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(json["error"]["code"], "egress_denied");
    assert_eq!(json["error"]["details"]["reason"], "insecure_upstream");
}

#[tokio::test]
async fn upstream_connections_are_pooled_across_client_connections() {
    let env = start(gate()).await;
    for i in 0..3 {
        let mut c = env.h1("api.test").await;
        let (parts, _) = body_bytes(c.send_request(get("api.test", "/echo")).await.unwrap()).await;
        assert_eq!(parts.status, 200, "request {i}");
    }
    // Each response was read to its end before the next request, so the one upstream connection was idle each time.
    assert_eq!(env.h1_accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
}
