//! The narrow question the proxy asks for every request (`Gate::decide`) and what it reports when an exchange ends
//! (`Gate::record`): the proxy itself decides nothing about policy.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

/// A per-process connection number, for logs and audit correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// What the first bytes of a connection said it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    Tls,
    PlainHttp,
    /// Neither TLS nor an HTTP request line: closed at once.
    Unrecognised,
}

/// The identity of one accepted connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: ConnId,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Where the client meant to connect before a redirect (`SO_ORIGINAL_DST`), when the kernel knows.
    pub original_dst: Option<SocketAddr>,
    /// The TLS server name the client sent (lower-case), for TLS connections.
    pub sni: Option<String>,
    pub kind: ConnKind,
}

/// The scheme the request would leave with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// The request head the gate decides on. `host` is lower-case without port; `path` is as received (the gate
/// normalises before matching).
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    pub headers: HeaderMap,
}

/// The gate's answer for one request.
#[derive(Debug, Clone)]
pub enum Verdict {
    Forward(Forward),
    Deny(Denial),
}

/// Forward the request, after these edits.
#[derive(Debug, Clone, Default)]
pub struct Forward {
    /// Headers set on the upstream request, replacing any the client sent under that name.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed from the upstream request.
    pub remove_headers: Vec<HeaderName>,
    /// Query parameters set (replacing any of that name).
    pub set_query: Vec<(String, String)>,
    /// Plain `http://` upstreams are refused unless this is true.
    pub allow_insecure: bool,
    /// Forward this path instead of the one received (the gate's normalised path: what was matched is what leaves).
    pub path: Option<String>,
    /// Forward this query instead of the one received (`set_query` is then not applied).
    pub query: Option<String>,
}

/// Refuse the request with this status and JSON body.
#[derive(Debug, Clone)]
pub struct Denial {
    pub status: StatusCode,
    pub reason: String,
    pub body: serde_json::Value,
}

impl Denial {
    /// The standard `egress_denied` envelope: `{"error":{"code":"egress_denied","message","details":{…}}}`.
    pub fn egress_denied(
        status: StatusCode,
        reason: &str,
        message: &str,
        capability: Option<&str>,
        rule: Option<&str>,
    ) -> Self {
        let mut details = serde_json::json!({ "reason": reason });
        if let Some(c) = capability {
            details["capability"] = c.into();
        }
        if let Some(r) = rule {
            details["rule"] = r.into();
        }
        Denial {
            status,
            reason: reason.to_string(),
            body: serde_json::json!({"error": {"code": "egress_denied", "message": message, "details": details}}),
        }
    }
}

/// What the proxy refused on its own, before or after asking the gate (protocol rules, not policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// The first bytes were neither TLS nor HTTP.
    NotHttp,
    /// A TLS ClientHello without a server name.
    NoSni,
    /// The TLS handshake with the client failed.
    TlsHandshake,
    /// No `Host` / authority on the request.
    MissingHost,
    /// `Host` differs from the TLS server name.
    DomainFronting,
    /// `Content-Length` together with `Transfer-Encoding`, or conflicting lengths.
    Smuggling,
    /// `CONNECT` (the proxy is transparent, not a forward proxy).
    ConnectMethod,
    /// Plain HTTP upstream without `allow_insecure`.
    InsecureUpstream,
    /// The upstream name resolved only to loopback, private, link-local or otherwise internal addresses.
    InternalAddress,
}

impl ProxyRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyRefusal::NotHttp => "not_http",
            ProxyRefusal::NoSni => "no_sni",
            ProxyRefusal::TlsHandshake => "tls_handshake",
            ProxyRefusal::MissingHost => "missing_host",
            ProxyRefusal::DomainFronting => "domain_fronting",
            ProxyRefusal::Smuggling => "request_smuggling",
            ProxyRefusal::ConnectMethod => "connect_not_supported",
            ProxyRefusal::InsecureUpstream => "insecure_upstream",
            ProxyRefusal::InternalAddress => "internal_address",
        }
    }
}

/// How an exchange was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forwarded,
    DeniedByGate {
        reason: String,
    },
    RefusedByProxy(ProxyRefusal),
    /// Allowed, but the upstream could not be reached or failed mid-exchange.
    UpstreamFailed,
}

/// The request line of a recorded exchange (no query: its values may carry credentials).
#[derive(Debug, Clone)]
pub struct RequestSummary {
    pub method: Method,
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Reported once per exchange when it ends (the response body fully sent, or the connection gone).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub request: Option<RequestSummary>,
    pub decision: Decision,
    pub status: Option<StatusCode>,
    /// Request body bytes sent upstream (for an upgrade: bytes client → upstream after the 101).
    pub bytes_up: u64,
    /// Response body bytes sent to the client (for an upgrade: bytes upstream → client after the 101).
    pub bytes_down: u64,
    /// Time from the request head to the response head.
    pub latency: Duration,
    /// Time from the request head to the end of the exchange.
    pub duration: Duration,
    pub upgraded: bool,
    pub error: Option<String>,
}

/// The policy seam: the control plane implements it; the proxy calls it.
#[async_trait::async_trait]
pub trait Gate: Send + Sync + 'static {
    /// Called once per request with the connection's identity and the request head.
    async fn decide(&self, conn: &ConnInfo, head: &RequestHead) -> Verdict;
    /// Called when the exchange ends, and for connections refused before any request.
    async fn record(&self, conn: &ConnInfo, outcome: Outcome);
}
