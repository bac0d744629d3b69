//! The pods' DNS responder (UDP and TCP on one port): it answers `A` only for names a `DnsPolicy` lets the querying
//! pod reach, resolving them itself (a name in `upstream_hosts` gets a fixed stand-in address: all of a pod's TCP goes
//! to the proxy whatever the address, and the proxy routes by name), answers `AAAA` and other types of an allowed
//! name with no records, and `NXDOMAIN` for every other name, reported to the policy, never forwarded anywhere.
//! Malformed messages are dropped. Bounded: message size, name length, queries in flight, TCP connections, their
//! queries and their time. The codec is a minimal hand-written one (one question, no compression in queries).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::ProxyConfig;

/// Largest query accepted (UDP datagram or TCP message); a real query with one question is far smaller.
pub const MAX_QUERY_BYTES: usize = 512;
const MAX_NAME_BYTES: usize = 253;
const MAX_ANSWERS: usize = 8;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_NOERROR: u8 = 0;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

/// What the policy says about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    Allow,
    Deny { reason: String },
}

/// Over which transport a query came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsTransport {
    Udp,
    Tcp,
}

/// A query that got `NXDOMAIN` because of the policy (or because its name is no host name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDenial {
    pub peer: IpAddr,
    /// Lower-case; bytes that are no host-name characters are escaped (`\xNN`).
    pub name: String,
    pub qtype: u16,
    pub transport: DnsTransport,
    pub reason: String,
}

/// Which names a pod may resolve, asked for every query; `denied` hears of each refusal (the audit writer).
#[async_trait::async_trait]
pub trait DnsPolicy: Send + Sync + 'static {
    async fn allows(&self, peer: IpAddr, name: &str) -> DnsAnswer;
    async fn denied(&self, denial: DnsDenial);
}

/// How the responder behaves.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Names answered with `mapped_answer` without a lookup (the proxy's `upstream_hosts`).
    pub upstream_hosts: HashSet<String>,
    /// The address given for a mapped name.
    pub mapped_answer: Ipv4Addr,
    /// TTL of the answers.
    pub ttl: u32,
    /// How long resolving an allowed name may take (then `SERVFAIL`).
    pub resolve_timeout: Duration,
    /// Queries answered at once (UDP and TCP together); more are dropped.
    pub max_in_flight: usize,
    /// TCP connections served at once; more are closed at once.
    pub max_tcp_connections: usize,
    /// A TCP connection is closed after this much idleness, and after `tcp_lifetime` whatever it does.
    pub tcp_idle: Duration,
    pub tcp_lifetime: Duration,
    /// Queries answered on one TCP connection.
    pub tcp_queries: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            upstream_hosts: HashSet::new(),
            // TEST-NET-1: never on a real network; the pod's connection is redirected to the proxy anyway.
            mapped_answer: Ipv4Addr::new(192, 0, 2, 1),
            ttl: 30,
            resolve_timeout: Duration::from_secs(5),
            max_in_flight: 256,
            max_tcp_connections: 64,
            tcp_idle: Duration::from_secs(5),
            tcp_lifetime: Duration::from_secs(30),
            tcp_queries: 32,
        }
    }
}

impl DnsConfig {
    /// Defaults, with the proxy's `upstream_hosts`.
    pub fn for_proxy(proxy: &ProxyConfig) -> Self {
        Self {
            upstream_hosts: proxy.upstream_hosts.keys().map(|h| h.to_ascii_lowercase()).collect(),
            ..Self::default()
        }
    }
}

struct Shared {
    config: DnsConfig,
    policy: Arc<dyn DnsPolicy>,
    in_flight: Arc<Semaphore>,
    tcp_conns: Arc<Semaphore>,
    lookups: AtomicU64,
}

/// A running responder.
pub struct DnsServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Bind UDP and TCP on `addr` (port 0: one free port for both) and start answering.
    pub async fn bind(addr: SocketAddr, config: DnsConfig, policy: Arc<dyn DnsPolicy>) -> anyhow::Result<Self> {
        let (udp, tcp) = bind_both(addr).await?;
        let local_addr = udp.local_addr()?;
        let shared = Arc::new(Shared {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            tcp_conns: Arc::new(Semaphore::new(config.max_tcp_connections)),
            config,
            policy,
            lookups: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(udp_loop(Arc::new(udp), shared.clone(), stopped.clone())),
            tokio::spawn(tcp_loop(tcp, shared.clone(), stopped)),
        ];
        tracing::info!(addr = %local_addr, "DNS responder listening");
        Ok(Self { local_addr, shared, stop, tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many names were resolved with the host's resolver so far (only ever allowed ones).
    pub fn lookups(&self) -> u64 {
        self.shared.lookups.load(Ordering::SeqCst)
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn bind_both(addr: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    if addr.port() != 0 {
        return Ok((UdpSocket::bind(addr).await?, TcpListener::bind(addr).await?));
    }
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!("no port free for both UDP and TCP: {}", last.map(|e| e.to_string()).unwrap_or_default()))
}

async fn udp_loop(sock: Arc<UdpSocket>, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, peer) = tokio::select! {
            _ = stopped.changed() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS recv failed");
                    continue;
                }
            },
        };
        if n > MAX_QUERY_BYTES {
            continue;
        }
        let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else { continue };
        let (msg, sock, shared) = (buf[..n].to_vec(), sock.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(&shared, peer.ip(), DnsTransport::Udp, &msg).await {
                let _ = sock.send_to(&reply, peer).await;
            }
            drop(permit);
        });
    }
}

async fn tcp_loop(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the limit: closed at once.
        let Ok(permit) = shared.tcp_conns.clone().try_acquire_owned() else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let lifetime = shared.config.tcp_lifetime;
            let _ = tokio::time::timeout(lifetime, serve_tcp(stream, peer.ip(), &shared)).await;
            drop(permit);
        });
    }
}

async fn serve_tcp(mut stream: TcpStream, peer: IpAddr, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    for _ in 0..shared.config.tcp_queries {
        let mut len = [0u8; 2];
        match tokio::time::timeout(shared.config.tcp_idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let len = u16::from_be_bytes(len) as usize;
        if len > MAX_QUERY_BYTES {
            return;
        }
        let mut msg = vec![0u8; len];
        match tokio::time::timeout(shared.config.tcp_idle, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Ok(_permit) = shared.in_flight.try_acquire() else { return };
        // A malformed message ends the connection (there is nothing to answer it with).
        let Some(reply) = answer(shared, peer, DnsTransport::Tcp, &msg).await else { return };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// One parsed query: its id and flags, the question's bytes (echoed), name, type and class.
#[derive(Debug)]
struct Query<'a> {
    id: u16,
    rd: bool,
    question: &'a [u8],
    /// `Err`: the raw name is no host name (escaped for the report).
    name: Result<String, String>,
    qtype: u16,
    qclass: u16,
}

/// Parse a query; `None` for anything that is not a well-formed standard query with one question.
fn parse(msg: &[u8]) -> Option<Query<'_>> {
    if msg.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let (f1, _f2) = (msg[2], msg[3]);
    let qr = f1 & 0x80 != 0;
    let opcode = (f1 >> 3) & 0x0f;
    let count = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    // A response, another opcode, or anything but one question (plus at most an EDNS record) is dropped.
    if qr || opcode != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut i = 12;
    let mut raw_labels: Vec<&[u8]> = Vec::new();
    let mut total = 0usize;
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        // Compression pointers (and the reserved label types) have no place in a query's question.
        if len > 63 {
            return None;
        }
        let label = msg.get(i..i + len)?;
        i += len;
        total += len + 1;
        if total > MAX_NAME_BYTES + 1 {
            return None;
        }
        raw_labels.push(label);
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(i + 2)?, *msg.get(i + 3)?]);
    let end = i + 4;
    let question = &msg[12..end];
    let host_label = |l: &[u8]| l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    let name = if !raw_labels.is_empty() && raw_labels.iter().all(|l| host_label(l)) {
        let parts: Vec<String> = raw_labels.iter().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect();
        Ok(parts.join("."))
    } else {
        let parts: Vec<String> = raw_labels.iter().map(|l| l.escape_ascii().to_string().to_ascii_lowercase()).collect();
        Err(parts.join("."))
    };
    Some(Query { id, rd: f1 & 0x01 != 0, question, name, qtype, qclass })
}

/// A response to `q` with `rcode` and `A` records for `addrs`.
fn reply(q: &Query<'_>, rcode: u8, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + q.question.len() + addrs.len() * 16);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, AA, RD as asked; RA; the rcode.
    out.push(0x80 | 0x04 | u8::from(q.rd));
    out.push(0x80 | (rcode & 0x0f));
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(q.question);
    for a in addrs {
        // The name: a pointer to the question's (offset 12).
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    out
}

/// The answer to one message, or `None` when it is dropped.
async fn answer(shared: &Shared, peer: IpAddr, transport: DnsTransport, msg: &[u8]) -> Option<Vec<u8>> {
    let q = parse(msg)?;
    let ttl = shared.config.ttl;
    if q.qclass != CLASS_IN {
        return Some(reply(&q, RCODE_REFUSED, &[], ttl));
    }
    let deny = |name: String, reason: String| DnsDenial { peer, name, qtype: q.qtype, transport, reason };
    let name = match &q.name {
        Ok(n) => n.clone(),
        Err(raw) => {
            shared.policy.denied(deny(raw.clone(), "not a host name".into())).await;
            return Some(reply(&q, RCODE_NXDOMAIN, &[], ttl));
        }
    };
    match shared.policy.allows(peer, &name).await {
        DnsAnswer::Deny { reason } => {
            tracing::debug!(%peer, name = %name, %reason, "DNS query denied");
            shared.policy.denied(deny(name, reason)).await;
            Some(reply(&q, RCODE_NXDOMAIN, &[], ttl))
        }
        DnsAnswer::Allow if q.qtype != TYPE_A => {
            // IPv6 is blocked in pods and nothing else is served: no records (but the name exists).
            let rcode = if q.qtype == TYPE_AAAA || q.qtype < 256 { RCODE_NOERROR } else { RCODE_NOTIMP };
            Some(reply(&q, rcode, &[], ttl))
        }
        DnsAnswer::Allow => {
            if shared.config.upstream_hosts.contains(&name) {
                return Some(reply(&q, RCODE_NOERROR, &[shared.config.mapped_answer], ttl));
            }
            shared.lookups.fetch_add(1, Ordering::SeqCst);
            let found =
                tokio::time::timeout(shared.config.resolve_timeout, tokio::net::lookup_host((name.as_str(), 0))).await;
            match found {
                Ok(Ok(addrs)) => {
                    let mut v4: Vec<Ipv4Addr> = addrs
                        .filter_map(|a| match a.ip() {
                            // The proxy refuses internal destinations anyway: they are not handed out.
                            IpAddr::V4(ip) if !crate::upstream::is_internal(IpAddr::V4(ip)) => Some(ip),
                            _ => None,
                        })
                        .collect();
                    v4.dedup();
                    v4.truncate(MAX_ANSWERS);
                    Some(reply(&q, RCODE_NOERROR, &v4, ttl))
                }
                // Allowed but unknown to the world: NXDOMAIN, as a resolver would say (not a denial).
                Ok(Err(_)) => Some(reply(&q, RCODE_NXDOMAIN, &[], ttl)),
                // SERVFAIL.
                Err(_) => Some(reply(&q, 2, &[], ttl)),
            }
        }
    }
}

/// A `DnsPolicy` for tests: exact names allowed for every peer, every denial kept.
#[derive(Default)]
pub struct DnsAllowList {
    names: HashSet<String>,
    denials: Mutex<Vec<DnsDenial>>,
    changed: Notify,
}

impl DnsAllowList {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self { names: names.into_iter().map(|h| h.into().to_ascii_lowercase()).collect(), ..Default::default() }
    }

    pub fn denials(&self) -> Vec<DnsDenial> {
        self.denials.lock().expect("denials").clone()
    }

    /// Waits until at least `n` denials are recorded and returns them.
    pub async fn wait_for_denials(&self, n: usize) -> Vec<DnsDenial> {
        loop {
            let notified = self.changed.notified();
            {
                let all = self.denials.lock().expect("denials");
                if all.len() >= n {
                    return all.clone();
                }
            }
            notified.await;
        }
    }
}

#[async_trait::async_trait]
impl DnsPolicy for DnsAllowList {
    async fn allows(&self, _peer: IpAddr, name: &str) -> DnsAnswer {
        if self.names.contains(name) { DnsAnswer::Allow } else { DnsAnswer::Deny { reason: "host_not_allowed".into() } }
    }

    async fn denied(&self, denial: DnsDenial) {
        self.denials.lock().expect("denials").push(denial);
        self.changed.notify_waiters();
    }
}

/// A query message for `name` and `qtype` (tests, probes).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// What a response says: id, rcode and the `A` addresses (tests, probes). `None` when it is no response.
pub fn parse_response(msg: &[u8]) -> Option<(u16, u8, Vec<Ipv4Addr>)> {
    if msg.len() < 12 || msg[2] & 0x80 == 0 {
        return None;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let rcode = msg[3] & 0x0f;
    let an = u16::from_be_bytes([msg[6], msg[7]]) as usize;
    let mut i = 12;
    // Skip the question.
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        i += len;
    }
    i += 4;
    let mut addrs = Vec::new();
    let mut seen: HashMap<usize, ()> = HashMap::new();
    for _ in 0..an {
        if seen.insert(i, ()).is_some() {
            return None;
        }
        // Name: a pointer (2 bytes) or labels.
        if *msg.get(i)? & 0xc0 == 0xc0 {
            i += 2;
        } else {
            loop {
                let len = *msg.get(i)? as usize;
                i += 1;
                if len == 0 {
                    break;
                }
                i += len;
            }
        }
        let t = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
        let rdlen = u16::from_be_bytes([*msg.get(i + 8)?, *msg.get(i + 9)?]) as usize;
        let rdata = msg.get(i + 10..i + 10 + rdlen)?;
        if t == TYPE_A && rdlen == 4 {
            addrs.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        i += 10 + rdlen;
    }
    Some((id, rcode, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_are_dropped() {
        let q = query(7, "Api.Example.COM", TYPE_A);
        let p = parse(&q).unwrap();
        assert_eq!((p.id, p.name.clone(), p.qtype, p.qclass), (7, Ok("api.example.com".into()), TYPE_A, CLASS_IN));
        assert!(parse(&q[..11]).is_none(), "short header");
        assert!(parse(&q[..q.len() - 1]).is_none(), "truncated question");
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert!(parse(&resp).is_none(), "a response");
        let mut two = q.clone();
        two[5] = 2;
        assert!(parse(&two).is_none(), "two questions");
        let mut ptr = q.clone();
        ptr[12] = 0xc0;
        assert!(parse(&ptr).is_none(), "compression pointer in the question");
        let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
        assert!(parse(&query(1, &long, TYPE_A)).is_none(), "name over 253 bytes");
        let mut odd = query(1, "a.b", TYPE_A);
        odd[13] = b'.';
        assert_eq!(parse(&odd).unwrap().name, Err("..b".to_string()), "a dot inside a label");
        odd[13] = 1;
        assert_eq!(parse(&odd).unwrap().name, Err("\\x01.b".to_string()), "a control byte");
    }

    #[test]
    fn replies_round_trip() {
        let q = query(9, "x.test", TYPE_A);
        let p = parse(&q).unwrap();
        let r = reply(&p, RCODE_NOERROR, &[Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)], 30);
        assert_eq!(parse_response(&r), Some((9, 0, vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)])));
        assert_eq!(parse_response(&reply(&p, RCODE_NXDOMAIN, &[], 30)), Some((9, 3, vec![])));
    }
}
