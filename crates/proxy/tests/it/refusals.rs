//! What the proxy or the gate refuses: denied hosts, domain fronting, smuggling, non-HTTP bytes, internal
//! addresses, upstreams that fail verification.

use evershell_proxy::{AllowList, ConnKind, Decision, ProxyRefusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

fn gate() -> AllowList {
    AllowList::new(["api.test", "localhost", "wrong.test"]).insecure("plain.test")
}

#[tokio::test]
async fn a_denied_host_gets_the_gates_status_and_json() {
    let env = start(gate()).await;
    let mut c = env.h1("other.test").await;
    let (status, json) = json(c.send_request(get("other.test", "/echo")).await.unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(json["error"]["code"], "egress_denied");
    assert_eq!(json["error"]["details"]["reason"], "host_not_allowed");
    let (_, outcome) = env.gate.wait_for_outcomes(1).await.remove(0);
    assert_eq!(outcome.decision, Decision::DeniedByGate { reason: "host_not_allowed".into() });
}

#[tokio::test]
async fn host_that_differs_from_sni_is_domain_fronting() {
    let env = start(AllowList::new(["api.test", "other.test"])).await;
    let mut c = env.h1("api.test").await;
    let (status, json) = json(c.send_request(get("other.test", "/echo")).await.unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(json["error"]["details"]["reason"], "domain_fronting");
    let (_, outcome) = env.gate.wait_for_outcomes(1).await.remove(0);
    assert_eq!(outcome.decision, Decision::RefusedByProxy(ProxyRefusal::DomainFronting));
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_on_a_raw_socket() {
    let env = start(gate()).await;
    for (name, request) in [
        (
            "CL then TE",
            "POST /echo HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        ),
        (
            "TE then CL",
            "POST /echo HTTP/1.1\r\nHost: plain.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
        ),
        ("two lengths", "POST /echo HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nGG"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(env.proxy.local_addr()).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{name}: {head}");
    }
    // The same request with chunked framing alone goes through.
    let mut tcp = tokio::net::TcpStream::connect(env.proxy.local_addr()).await.unwrap();
    tcp.write_all(b"POST /echo HTTP/1.1\r\nHost: plain.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let smuggling = env.gate.wait_for_outcomes(3).await;
    let refused =
        smuggling.iter().filter(|(_, o)| o.decision == Decision::RefusedByProxy(ProxyRefusal::Smuggling)).count();
    assert_eq!(refused, 2, "the two-lengths case is refused by hyper's parser before any request exists");
}

#[tokio::test]
async fn non_http_bytes_are_closed_at_once_and_recorded() {
    let env = start(gate()).await;
    let mut tcp = tokio::net::TcpStream::connect(env.proxy.local_addr()).await.unwrap();
    tcp.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tcp.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let (conn, outcome) = env.gate.wait_for_outcomes(1).await.remove(0);
    assert_eq!(conn.kind, ConnKind::Unrecognised);
    assert_eq!(outcome.decision, Decision::RefusedByProxy(ProxyRefusal::NotHttp));
}

#[tokio::test]
async fn an_allowed_name_resolving_to_loopback_is_not_dialled() {
    let env = start(gate()).await;
    let mut c = env.h1("localhost").await;
    let (status, json) = json(c.send_request(get("localhost", "/echo")).await.unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(json["error"]["details"]["reason"], "internal_address");
}

#[tokio::test]
async fn an_upstream_whose_certificate_does_not_name_the_host_is_a_bad_gateway() {
    let env = start(gate()).await;
    let mut c = env.h1("wrong.test").await;
    let (status, json) = json(c.send_request(get("wrong.test", "/echo")).await.unwrap()).await;
    assert_eq!(status, 502);
    assert_eq!(json["error"]["code"], "upstream_unavailable");
    let (_, outcome) = env.gate.wait_for_outcomes(1).await.remove(0);
    assert_eq!(outcome.decision, Decision::UpstreamFailed);
    assert!(outcome.error.unwrap_or_default().contains("certificate"), "the cause is kept for the record");
}
