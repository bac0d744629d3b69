//! WebSocket upgrades relayed both ways; h2 offered to the client only when the upstream carries it.

use evershell_proxy::AllowList;
use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;

use crate::harness::*;

#[tokio::test]
async fn websocket_frames_pass_both_ways_after_the_upgrade() {
    let env = start(AllowList::new(["api.test"])).await;
    let mut c = env.h1("api.test").await;
    let req = Request::get("/ws")
        .header("host", "api.test")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(full(""))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    for msg in ["first", "second frame"] {
        io.write_all(&frame(msg.as_bytes(), Some([1, 2, 3, 4]))).await.unwrap();
        assert_eq!(read_frame(&mut io).await.unwrap(), format!("echo: {msg}").into_bytes());
    }
    drop(io);
    let (_, outcome) = env.gate.wait_for_outcomes(1).await.remove(0);
    assert!(outcome.upgraded);
    assert_eq!(outcome.bytes_up, (2 + 4 + 5) + (2 + 4 + 12));
    assert_eq!(outcome.bytes_down, (2 + 11) + (2 + 18));
}

#[tokio::test]
async fn an_h2_client_gets_http1_when_the_upstream_only_speaks_http1() {
    let env = start(AllowList::new(["api.test", "h2.test"])).await;
    for _ in 0..2 {
        let tls = env.tls("api.test", &[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut c = handshake_h1(tls).await;
        let (parts, _) = body_bytes(c.send_request(get("api.test", "/echo")).await.unwrap()).await;
        assert_eq!(parts.headers["x-echo-version"], "HTTP/1.1");
    }
}

#[tokio::test]
async fn h2_is_offered_once_the_upstream_has_negotiated_it() {
    let env = start(AllowList::new(["h2.test"])).await;
    // Unknown upstream: HTTP/1.1 to the client; the upstream leg negotiates h2.
    let tls = env.tls("h2.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut c = handshake_h1(tls).await;
    let (parts, _) = body_bytes(c.send_request(get("h2.test", "/echo")).await.unwrap()).await;
    assert_eq!(parts.headers["x-echo-version"], "HTTP/2.0");
    // Now known to carry h2: offered, and a request over it works end to end.
    let tls = env.tls("h2.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut c, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post("https://h2.test/echo").header("te", "trailers").body(full("over h2")).unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let (parts, body) = body_bytes(resp).await;
    assert_eq!(parts.status, 200);
    assert_eq!(&body[..], b"over h2");
    assert_eq!(parts.headers["x-echo-te"], "trailers", "TE: trailers survives (gRPC needs it)");
}
