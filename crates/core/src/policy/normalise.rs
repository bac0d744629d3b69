//! Request normalisation, a pure function: what the proxy saw on the wire (SNI, `Host`/`:authority`, destination
//! port, method, request-target) becomes the one form policy matches on and the proxy forwards.
//!
//! Host: lower-cased, trailing dot dropped, port split off (IDNA is the caller's: a non-ASCII host is refused).
//! Path: percent-escapes of unreserved characters and of `/` (`%2f`) are decoded, other escapes kept (hex
//! upper-cased), `//` collapsed, `.`/`..` resolved and never above the root; the query is kept aside untouched.
//! The proxy forwards exactly the normalised path, so what was matched is what the upstream sees.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// What the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// True when the connection was TLS (and terminated by the proxy).
    pub tls: bool,
    /// The TLS server name, when `tls`.
    pub sni: Option<String>,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2), possibly with a port.
    pub authority: String,
    /// The original destination port of the connection.
    pub port: u16,
    pub method: String,
    /// The request-target in origin form: `/path?query`.
    pub target: String,
}

/// A destination host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Host {
    /// A DNS name, lower-case, no trailing dot.
    Name(String),
    /// A raw IP literal.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The request as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalisedRequest {
    pub tls: bool,
    /// The normalised SNI (`None` without TLS or when the client sent none).
    pub sni: Option<Host>,
    pub host: Host,
    pub port: u16,
    /// As sent: methods are case-sensitive.
    pub method: String,
    /// Starts with `/`; no `//`, no `.` or `..` segment.
    pub path: String,
    /// Everything after the first `?`, untouched.
    pub query: Option<String>,
}

impl NormalisedRequest {
    /// The scheme's default port: 443 with TLS, 80 without.
    pub fn default_port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }

    /// The origin-form target the proxy forwards: normalised path plus the query as received.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Why a request could not be normalised (it is then denied as `malformed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Normalise what the proxy saw.
pub fn normalise(raw: &RawRequest) -> Result<NormalisedRequest, Malformed> {
    let (host, port) = parse_authority(&raw.authority)?;
    if let Some(p) = port
        && p != raw.port
    {
        return Err(Malformed(format!("the authority names port {p} but the connection goes to port {}", raw.port)));
    }
    let sni = match (&raw.sni, raw.tls) {
        (Some(s), true) => Some(parse_host(s)?),
        _ => None,
    };
    if raw.method.is_empty() || !raw.method.bytes().all(is_tchar) {
        return Err(Malformed("the method is not an HTTP token".into()));
    }
    let (path, query) = match raw.target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (raw.target.as_str(), None),
    };
    Ok(NormalisedRequest {
        tls: raw.tls,
        sni,
        host,
        port: raw.port,
        method: raw.method.clone(),
        path: normalise_path(path)?,
        query,
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn parse_authority(a: &str) -> Result<(Host, Option<u16>), Malformed> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(|| Malformed("an unclosed `[` in the host".into()))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| Malformed("junk after `]` in the host".into()))?),
        };
        let ip: std::net::Ipv6Addr = inside.parse().map_err(|_| Malformed("not an IPv6 address in `[…]`".into()))?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (parse_host(h)?, Some(p)),
            None => (parse_host(a)?, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| Malformed("the port is out of range".into()))?)
        }
        Some(_) => return Err(Malformed("the port is not a number".into())),
    };
    Ok((host, port))
}

/// A host without port: lower-cased, trailing dot dropped, IP literals recognised.
pub fn parse_host(h: &str) -> Result<Host, Malformed> {
    if let Some(inside) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inside
            .parse::<std::net::Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| Malformed("not an IPv6 address in `[…]`".into()));
    }
    let h = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
    if h.is_empty() || h.len() > 253 {
        return Err(Malformed("the host is empty or too long".into()));
    }
    if !h.is_ascii() {
        return Err(Malformed("the host is not ASCII (IDNA names arrive in their xn-- form)".into()));
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    for label in h.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(Malformed(format!("`{label}` is not a hostname label")));
        }
    }
    Ok(Host::Name(h))
}

impl Host {
    /// A name a resolver could read as an IPv4 address (`2130706433`, `0x7f.1`, `127.1`): no top-level domain is
    /// numeric, so a name whose last label is a number is an IP in disguise.
    pub fn is_ip_like(&self) -> bool {
        match self {
            Host::Ip(_) => true,
            Host::Name(n) => {
                let last = n.rsplit('.').next().unwrap_or(n);
                last.bytes().all(|b| b.is_ascii_digit())
                    || last.strip_prefix("0x").is_some_and(|x| x.bytes().all(|b| b.is_ascii_hexdigit()))
            }
        }
    }
}

/// Normalise a path (without its query).
pub fn normalise_path(path: &str) -> Result<String, Malformed> {
    if !path.starts_with('/') {
        return Err(Malformed("the request-target is not in origin form (`/path`)".into()));
    }
    let decoded = decode_path(path)?;
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/') {
        trailing_slash = false;
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(decoded.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || trailing_slash {
        s.push('/');
    }
    Ok(s)
}

/// Decode `%XX` of unreserved characters and of `/`; keep every other escape (upper-case hex). Bytes a URI may not
/// hold raw (controls, space, `\`, `#`, non-ASCII, …) are refused.
fn decode_path(path: &str) -> Result<String, Malformed> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = |x: u8| (x as char).to_digit(16);
            let (Some(h), Some(l)) = (b.get(i + 1).and_then(|x| hex(*x)), b.get(i + 2).and_then(|x| hex(*x))) else {
                return Err(Malformed("a `%` not followed by two hex digits in the path".into()));
            };
            let v = (h * 16 + l) as u8;
            if is_unreserved(v) || v == b'/' {
                out.push(v as char);
            } else {
                out.push('%');
                out.push_str(&format!("{v:02X}"));
            }
            i += 3;
            continue;
        }
        if !(is_unreserved(c) || is_sub_delim(c) || matches!(c, b'/' | b':' | b'@')) {
            return Err(Malformed(format!("the path holds a byte a URI may not carry raw (0x{c:02x})")));
        }
        out.push(c as char);
        i += 1;
    }
    Ok(out)
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(c: u8) -> bool {
    matches!(c, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tricks_table() {
        let cases: &[(&str, &str)] = &[
            ("/", "/"),
            ("/v1/models", "/v1/models"),
            ("/v1/models/", "/v1/models/"),
            ("//v1//models", "/v1/models"),
            ("/v1/./models", "/v1/models"),
            ("/v1/../admin", "/admin"),
            ("/v1/models/..", "/v1/"),
            ("/v1/models/.", "/v1/models/"),
            ("/..", "/"),
            ("/../../../etc/passwd", "/etc/passwd"),
            ("/v1/%2e%2e/admin", "/admin"),
            ("/v1/%2E%2E/admin", "/admin"),
            ("/v1/%2e./admin", "/admin"),
            ("/v1/.%2e/admin", "/admin"),
            ("/v1/%2e/admin", "/v1/admin"),
            ("/v1%2f..%2fadmin", "/admin"),
            ("/v1%2F%2E%2E%2Fadmin", "/admin"),
            ("/v1/%2f%2fadmin", "/v1/admin"),
            ("/v1/a/b/../../../../x", "/x"),
            ("/v1/...", "/v1/..."),
            ("/v1/..a", "/v1/..a"),
            ("/v1/%41%62c", "/v1/Abc"),
            ("/v1/%7euser", "/v1/~user"),
            ("/v1/a%20b", "/v1/a%20b"),
            ("/v1/a%3fb", "/v1/a%3Fb"),
            ("/v1/%252e%252e/admin", "/v1/%252e%252e/admin"),
            ("/v1/%5c..%5cadmin", "/v1/%5C..%5Cadmin"),
            ("/a:b@c;d=e", "/a:b@c;d=e"),
        ];
        for (input, want) in cases {
            assert_eq!(normalise_path(input).as_deref(), Ok(*want), "{input}");
        }
    }

    #[test]
    fn malformed_paths() {
        for bad in ["v1/x", "", "*", "http://a/b", "/a%zz", "/a%2", "/a%", "/a b", "/a\\..\\b", "/a#frag", "/é", "/a\0"]
        {
            assert!(normalise_path(bad).is_err(), "{bad:?}");
        }
    }

    fn raw(authority: &str, target: &str) -> RawRequest {
        RawRequest {
            tls: true,
            sni: Some(authority.split(':').next().unwrap().into()),
            authority: authority.into(),
            port: 443,
            method: "GET".into(),
            target: target.into(),
        }
    }

    #[test]
    fn hosts_and_ports() {
        let n = normalise(&raw("API.Example.COM.", "/x?a=1&b=%2e%2e")).unwrap();
        assert_eq!(n.host, Host::Name("api.example.com".into()));
        assert_eq!(n.sni, Some(Host::Name("api.example.com".into())));
        assert_eq!(n.query.as_deref(), Some("a=1&b=%2e%2e"), "the query is kept aside untouched");
        assert_eq!(n.target(), "/x?a=1&b=%2e%2e");
        assert_eq!(normalise(&raw("a.test:443", "/")).unwrap().port, 443);
        assert!(normalise(&raw("a.test:8443", "/")).is_err(), "authority port must be the connection's");
        assert!(normalise(&raw("a.test:x", "/")).is_err());
        assert!(normalise(&raw("a.test:99999", "/")).is_err());
        assert!(normalise(&raw("", "/")).is_err());
        assert!(normalise(&raw("a..test", "/")).is_err());
        assert!(normalise(&raw("-a.test", "/")).is_err());
        assert!(normalise(&raw("bücher.test", "/")).is_err());
        let v6 = normalise(&RawRequest { sni: None, ..raw("[::1]:443", "/") }).unwrap();
        assert_eq!(v6.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(v6.host.to_string(), "[::1]");
        assert!(normalise(&raw("[::1", "/")).is_err());
        assert!(normalise(&raw("[nope]", "/")).is_err());
        let v4 = normalise(&RawRequest { sni: None, ..raw("127.0.0.1", "/") }).unwrap();
        assert_eq!(v4.host, Host::Ip("127.0.0.1".parse().unwrap()));
        let plain = normalise(&RawRequest { tls: false, port: 80, ..raw("a.test", "/") }).unwrap();
        assert_eq!(plain.sni, None, "SNI only counts with TLS");
        assert_eq!(plain.default_port(), 80);
        assert!(normalise(&RawRequest { method: "GE T".into(), ..raw("a.test", "/") }).is_err());
        assert!(normalise(&RawRequest { method: "".into(), ..raw("a.test", "/") }).is_err());
    }

    #[test]
    fn ip_like_names() {
        for h in ["2130706433", "0x7f.1", "127.1", "10.0.0.1", "a.b.0x7f", "1.2.3.4.5"] {
            assert!(parse_host(h).unwrap().is_ip_like(), "{h}");
        }
        for h in ["example.com", "a1.b2", "0x7g.com", "x0.test"] {
            assert!(!parse_host(h).unwrap().is_ip_like(), "{h}");
        }
    }
}
