//! The DNS responder over real UDP and TCP sockets: allowed names answered, everything else `NXDOMAIN`, reported,
//! and never looked up; malformed messages dropped; TCP framing and its bounds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use evershell_proxy::dns::{MAX_QUERY_BYTES, parse_response, query};
use evershell_proxy::{DnsAllowList, DnsConfig, DnsServer, DnsTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const A: u16 = 1;
const AAAA: u16 = 28;
const TXT: u16 = 16;

async fn responder(config: DnsConfig) -> (DnsServer, Arc<DnsAllowList>) {
    let policy = Arc::new(DnsAllowList::new(["api.test", "localhost"]));
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), config, policy.clone()).await.unwrap();
    (server, policy)
}

fn mapped() -> DnsConfig {
    DnsConfig { upstream_hosts: ["api.test".to_string()].into(), ..DnsConfig::default() }
}

async fn udp_ask(server: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(msg, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf)).await.expect("no answer").unwrap();
    Some(buf[..n].to_vec())
}

#[tokio::test]
async fn allowed_names_are_answered_and_others_are_nxdomain_reported_and_never_looked_up() {
    let (server, policy) = responder(mapped()).await;
    let addr = server.local_addr();
    // An allowed, mapped name: the stand-in address, no lookup.
    let r = udp_ask(addr, &query(1, "API.test", A)).await.unwrap();
    assert_eq!(parse_response(&r), Some((1, 0, vec![Ipv4Addr::new(192, 0, 2, 1)])));
    // AAAA and other types of an allowed name: no records.
    assert_eq!(parse_response(&udp_ask(addr, &query(2, "api.test", AAAA)).await.unwrap()), Some((2, 0, vec![])));
    assert_eq!(parse_response(&udp_ask(addr, &query(3, "api.test", TXT)).await.unwrap()), Some((3, 0, vec![])));
    assert_eq!(server.lookups(), 0);
    // A random label under a denied name (the exfiltration shape): NXDOMAIN, reported, never resolved.
    let secret = "c2VjcmV0LWRhdGE.x7f3k2.evil.example";
    let r = udp_ask(addr, &query(4, secret, A)).await.unwrap();
    assert_eq!(parse_response(&r), Some((4, 3, vec![])));
    let r = udp_ask(addr, &query(5, secret, TXT)).await.unwrap();
    assert_eq!(parse_response(&r), Some((5, 3, vec![])));
    let denials = policy.wait_for_denials(2).await;
    assert_eq!(denials[0].name, secret.to_ascii_lowercase());
    assert_eq!(denials[0].peer, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(
        (denials[0].qtype, denials[0].transport, denials[0].reason.as_str()),
        (A, DnsTransport::Udp, "host_not_allowed")
    );
    assert_eq!(denials[1].qtype, TXT);
    assert_eq!(server.lookups(), 0, "a denied name reached the host's resolver");
    // An allowed name that is not mapped is resolved by the responder itself; internal addresses are not handed out.
    let r = udp_ask(addr, &query(6, "localhost", A)).await.unwrap();
    assert_eq!(parse_response(&r), Some((6, 0, vec![])));
    assert_eq!(server.lookups(), 1);
    // A name with bytes no host name has: NXDOMAIN and reported, escaped.
    let mut odd = query(7, "a.evil", A);
    odd[13] = 0x01;
    assert_eq!(parse_response(&udp_ask(addr, &odd).await.unwrap()), Some((7, 3, vec![])));
    let d = policy.wait_for_denials(3).await;
    assert_eq!((d[2].name.as_str(), d[2].reason.as_str()), ("\\x01.evil", "not a host name"));
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_messages_are_dropped_and_the_responder_keeps_answering() {
    let (server, policy) = responder(mapped()).await;
    let addr = server.local_addr();
    let good = query(9, "api.test", A);
    let mut response = good.clone();
    response[2] |= 0x80;
    let mut pointer = good.clone();
    pointer[12] = 0xc0;
    let mut two = good.clone();
    two[5] = 2;
    let mut big = good.clone();
    big.resize(MAX_QUERY_BYTES + 1, 0);
    // From one socket: every malformed message, then two good queries; the only answers are the good ones'.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for bad in [&b""[..], &b"\x00\x01"[..], &good[..good.len() - 2], &response, &pointer, &two, &big, &[0xff; 64][..]] {
        sock.send_to(bad, addr).await.unwrap();
    }
    sock.send_to(&good, addr).await.unwrap();
    sock.send_to(&query(10, "api.test", A), addr).await.unwrap();
    let mut ids = Vec::new();
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        let n = sock.recv(&mut buf).await.unwrap();
        let (id, rcode, addrs) = parse_response(&buf[..n]).expect("a response");
        assert_eq!((rcode, addrs), (0, vec![Ipv4Addr::new(192, 0, 2, 1)]));
        ids.push(id);
    }
    ids.sort();
    assert_eq!(ids, [9, 10], "a malformed message was answered");
    assert!(policy.denials().is_empty());
    server.shutdown().await;
}

async fn tcp_ask(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    stream.write_all(&out).await.unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

/// Reads until the peer closes (`Ok(0)`), within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(within, stream.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test]
async fn tcp_is_framed_and_bounded() {
    let config = DnsConfig { tcp_idle: Duration::from_millis(300), tcp_queries: 3, max_tcp_connections: 2, ..mapped() };
    let (server, policy) = responder(config).await;
    let addr = server.local_addr();
    // Several queries on one connection, one of them written byte by byte.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let r = tcp_ask(&mut s, &query(1, "api.test", A)).await;
    assert_eq!(parse_response(&r), Some((1, 0, vec![Ipv4Addr::new(192, 0, 2, 1)])));
    let q = query(2, "denied.example", A);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    for b in framed {
        s.write_all(&[b]).await.unwrap();
    }
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(parse_response(&buf), Some((2, 3, vec![])));
    let d = policy.wait_for_denials(1).await;
    assert_eq!((d[0].name.as_str(), d[0].transport), ("denied.example", DnsTransport::Tcp));
    // The third query is the connection's last.
    tcp_ask(&mut s, &query(3, "api.test", A)).await;
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "more queries than allowed on one connection");

    // An oversized length prefix closes the connection without an answer.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&((MAX_QUERY_BYTES + 1) as u16).to_be_bytes()).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    // A malformed message too.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 4, 1, 2, 3, 4]).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    // An idle connection is closed after the idle time; one that sends half a message as well.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&[0, 40, 1]).await.unwrap();
    // Both slots are taken: a third connection is closed at once.
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_millis(250)).await, "over the connection limit");
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "idle connection kept");
    assert!(closed_within(&mut half, Duration::from_secs(5)).await, "half a message kept the connection");
    // Slots are free again.
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(parse_response(&tcp_ask(&mut s, &query(4, "api.test", A)).await).unwrap().1, 0);
    assert_eq!(server.lookups(), 0);
    server.shutdown().await;
}
