//! One request: framing and fronting checks, the gate's verdict, the edits, the upstream exchange with bodies
//! streamed both ways, WebSocket (HTTP/1.1 upgrade) relays, and the record handed back to the gate.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::body::{ClientBody, Counted, Exchange, ReadCounter, own};
use crate::ca::PlatformCa;
use crate::config::ProxyConfig;
use crate::gate::{
    ConnInfo, ConnKind, Decision, Denial, Gate, ProxyRefusal, RequestHead, RequestSummary, Scheme, Verdict,
};
use crate::raw_head::RawTail;
use crate::upstream::{DialError, Upstreams};

/// State shared by every connection of one proxy.
pub struct Shared {
    pub gate: Arc<dyn Gate>,
    pub ca: Arc<PlatformCa>,
    pub upstreams: Upstreams,
    pub config: ProxyConfig,
    pub next_conn: AtomicU64,
}

const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    tail: Option<RawTail>,
    req: Request<Incoming>,
) -> Result<Response<ClientBody>, Infallible> {
    Ok(exchange(&shared, &conn, tail, req).await)
}

struct Ctx<'a> {
    shared: &'a Shared,
    conn: &'a Arc<ConnInfo>,
    started: Instant,
    summary: Option<RequestSummary>,
}

impl Ctx<'_> {
    fn exchange(&self, decision: Decision, status: Option<StatusCode>) -> Exchange {
        Exchange {
            gate: self.shared.gate.clone(),
            conn: self.conn.clone(),
            request: self.summary.clone(),
            decision,
            status,
            up: Arc::new(AtomicU64::new(0)),
            down: Arc::new(AtomicU64::new(0)),
            started: self.started,
            latency: self.started.elapsed(),
            upgraded: false,
            error: None,
        }
    }

    /// A response of the proxy's own, recorded at once.
    fn answer(&self, decision: Decision, denial: Denial, close: bool) -> Response<ClientBody> {
        let mut x = self.exchange(decision, Some(denial.status));
        x.error = None;
        drop(x);
        json_response(denial.status, &denial.body, close)
    }

    fn refuse(&self, refusal: ProxyRefusal, status: StatusCode, message: &str) -> Response<ClientBody> {
        tracing::info!(conn = self.conn.id.0, reason = refusal.as_str(), "request refused by the proxy");
        let close = refusal == ProxyRefusal::Smuggling;
        let denial = Denial::egress_denied(status, refusal.as_str(), message, None, None);
        self.answer(Decision::RefusedByProxy(refusal), denial, close)
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value, close: bool) -> Response<ClientBody> {
    let mut resp = Response::new(own(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if close {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// `host[:port]` → (lower-case host, port).
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let a: http::uri::Authority = authority.parse().ok()?;
    let host = a.host().trim_matches(['[', ']']).trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some((host, a.port_u16().unwrap_or(default_port)))
}

async fn exchange(
    shared: &Shared,
    conn: &Arc<ConnInfo>,
    tail: Option<RawTail>,
    mut req: Request<Incoming>,
) -> Response<ClientBody> {
    let mut ctx = Ctx { shared, conn, started: Instant::now(), summary: None };
    let scheme = if conn.kind == ConnKind::Tls { Scheme::Https } else { Scheme::Http };
    let default_port = if scheme == Scheme::Https { 443 } else { 80 };

    // Framing: hyper drops a Content-Length that comes with Transfer-Encoding; the raw head tells.
    if req.headers().contains_key(header::TRANSFER_ENCODING)
        && let Some(tail) = &tail
    {
        let line = format!("{} {} HTTP/1.1\r\n", req.method(), req.uri());
        if tail.head_has_content_length(&line) {
            return ctx.refuse(
                ProxyRefusal::Smuggling,
                StatusCode::BAD_REQUEST,
                "Content-Length with Transfer-Encoding",
            );
        }
    }

    // Where the request is going: the authority (h2, absolute-form) or Host.
    let host_header = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
    let authority = match (req.uri().authority().map(|a| a.as_str().to_owned()), host_header) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(&h) => {
            return ctx.refuse(ProxyRefusal::DomainFronting, StatusCode::FORBIDDEN, "authority and Host differ");
        }
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => return ctx.refuse(ProxyRefusal::MissingHost, StatusCode::BAD_REQUEST, "no Host header"),
    };
    let Some((host, port)) = split_authority(&authority, default_port) else {
        return ctx.refuse(ProxyRefusal::MissingHost, StatusCode::BAD_REQUEST, "unparseable Host header");
    };
    let path = req.uri().path().to_string();
    ctx.summary =
        Some(RequestSummary { method: req.method().clone(), scheme, host: host.clone(), port, path: path.clone() });
    if let Some(sni) = &conn.sni
        && *sni != host
    {
        return ctx.refuse(
            ProxyRefusal::DomainFronting,
            StatusCode::FORBIDDEN,
            "Host differs from the TLS server name",
        );
    }
    if req.method() == Method::CONNECT {
        return ctx.refuse(ProxyRefusal::ConnectMethod, StatusCode::FORBIDDEN, "CONNECT is not supported");
    }

    let head = RequestHead {
        method: req.method().clone(),
        scheme,
        host: host.clone(),
        port,
        path: path.clone(),
        query: req.uri().query().map(str::to_owned),
        version: req.version(),
        headers: req.headers().clone(),
    };
    let forward = match shared.gate.decide(conn, &head).await {
        Verdict::Deny(denial) => {
            tracing::info!(conn = conn.id.0, host, reason = denial.reason, "request denied by the gate");
            return ctx.answer(Decision::DeniedByGate { reason: denial.reason.clone() }, denial, false);
        }
        Verdict::Forward(f) => f,
    };
    if scheme == Scheme::Http && !forward.allow_insecure {
        return ctx.refuse(
            ProxyRefusal::InsecureUpstream,
            StatusCode::FORBIDDEN,
            "plain HTTP is not allowed to this host",
        );
    }

    // The upstream request.
    let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    let upgrade_headers =
        upgrade.then(|| [header::CONNECTION, header::UPGRADE].map(|n| (n.clone(), parts.headers.get(&n).cloned())));
    // `TE: trailers` is end-to-end in practice (gRPC requires it); any other TE value is hop-by-hop.
    let te_trailers = parts.headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(&mut parts.headers);
    if te_trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::EXPECT);
    for name in &forward.remove_headers {
        parts.headers.remove(name);
    }
    for (name, value) in &forward.set_headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    if let Some(pairs) = upgrade_headers {
        for (name, value) in pairs {
            if let Some(v) = value {
                parts.headers.insert(name, v);
            }
        }
    }
    let query = match &forward.query {
        Some(q) => Some(q.clone()),
        None => edit_query(head.query.as_deref(), &forward.set_query),
    };
    let path = forward.path.as_deref().unwrap_or(&path);
    let target = format!(
        "{}://{}{}{}",
        scheme.as_str(),
        authority_of(&host, port, default_port),
        path,
        query.map(|q| format!("?{q}")).unwrap_or_default()
    );
    parts.uri = match target.parse::<Uri>() {
        Ok(u) => u,
        Err(_) => return ctx.refuse(ProxyRefusal::MissingHost, StatusCode::BAD_REQUEST, "unparseable request target"),
    };
    parts.version = Version::HTTP_11;
    let up = Arc::new(AtomicU64::new(0));
    let upstream_req = Request::from_parts(parts, Counted::new(body, up.clone()));
    let client = if upgrade { &shared.upstreams.h1 } else { &shared.upstreams.any };

    let mut resp = match client.request(upstream_req).await {
        Ok(resp) => resp,
        Err(e) => {
            let internal = source_chain(&e)
                .find_map(|s| s.downcast_ref::<DialError>())
                .is_some_and(|d| matches!(d, DialError::Internal(_)));
            if internal {
                return ctx.refuse(
                    ProxyRefusal::InternalAddress,
                    StatusCode::FORBIDDEN,
                    "the upstream resolves to an internal address",
                );
            }
            let detail = source_chain(&e).map(|s| s.to_string()).collect::<Vec<_>>().join(": ");
            tracing::warn!(conn = conn.id.0, host, error = %detail, "upstream request failed");
            let mut x = ctx.exchange(Decision::UpstreamFailed, Some(StatusCode::BAD_GATEWAY));
            x.up = up;
            x.error = Some(detail);
            drop(x);
            let body = serde_json::json!({"error": {"code": "upstream_unavailable", "message": format!("{host} could not be reached")}});
            return json_response(StatusCode::BAD_GATEWAY, &body, false);
        }
    };
    if !upgrade {
        shared.upstreams.learn(&host, resp.version() == Version::HTTP_2);
    }
    let status = resp.status();
    let mut x = ctx.exchange(Decision::Forwarded, Some(status));
    x.up = up;

    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        x.upgraded = true;
        let conn_id = conn.id.0;
        tokio::spawn(async move {
            let mut x = x;
            match (client_upgrade.await, upstream_upgrade.await) {
                (Ok(c), Ok(u)) => {
                    let mut c = ReadCounter::new(hyper_util::rt::TokioIo::new(c), x.up.clone());
                    let mut u = ReadCounter::new(hyper_util::rt::TokioIo::new(u), x.down.clone());
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        // Bytes relayed so far are counted all the same.
                        x.error = Some(e.to_string());
                    }
                }
                (c, u) => {
                    let e = c.err().or(u.err()).map(|e| e.to_string());
                    tracing::debug!(conn = conn_id, error = ?e, "upgrade failed");
                    x.error = e;
                    x.decision = Decision::UpstreamFailed;
                }
            }
        });
        let (mut parts, _) = resp.into_parts();
        parts.version = client_version;
        return Response::from_parts(parts, own(bytes::Bytes::new()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = client_version;
    let down = x.down.clone();
    Response::from_parts(parts, Either::Left(Counted::ending(body, down, x)))
}

fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn authority_of(host: &str, port: u16, default_port: u16) -> String {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    if port == default_port { host } else { format!("{host}:{port}") }
}

/// The query with `set` pairs replacing any parameter of the same name (values percent-encoded as given).
fn edit_query(query: Option<&str>, set: &[(String, String)]) -> Option<String> {
    if set.is_empty() {
        return query.map(str::to_owned);
    }
    let mut parts: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("");
            !set.iter().any(|(k, _)| k == name)
        })
        .map(str::to_owned)
        .collect();
    for (k, v) in set {
        parts.push(format!("{}={}", encode(k), encode(v)));
    }
    Some(parts.join("&"))
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_edits_replace_by_name() {
        assert_eq!(
            edit_query(Some("a=1&key=agent"), &[("key".into(), "s e/c".into())]).as_deref(),
            Some("a=1&key=s%20e%2Fc")
        );
        assert_eq!(edit_query(None, &[]), None);
        assert_eq!(edit_query(Some("x"), &[]).as_deref(), Some("x"));
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn authorities() {
        assert_eq!(split_authority("API.Example.com:8443", 443), Some(("api.example.com".into(), 8443)));
        assert_eq!(split_authority("a.test", 80), Some(("a.test".into(), 80)));
        assert_eq!(authority_of("a.test", 443, 443), "a.test");
        assert_eq!(authority_of("a.test", 8443, 443), "a.test:8443");
    }
}
