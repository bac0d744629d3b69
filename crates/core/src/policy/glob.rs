//! Matching of domain globs (`*` = exactly one leading label) and path globs (`*` within one segment, `**` any
//! number of segments) against a normalised request.

use super::model::{DomainGlob, HostPattern, PathGlob, PathSegment};
use super::normalise::Host;

impl DomainGlob {
    /// Whether this glob admits `host` on `port`; `default_port` is the scheme's (443 TLS, 80 plain).
    pub fn matches(&self, host: &Host, port: u16, default_port: u16) -> bool {
        if self.port.unwrap_or(default_port) != port {
            return false;
        }
        match (&self.host, host) {
            (HostPattern::Exact(p), Host::Name(h)) => p == h,
            (HostPattern::OneLabel(suffix), Host::Name(h)) => match h.split_once('.') {
                Some((label, rest)) => !label.is_empty() && rest == suffix,
                None => false,
            },
            (HostPattern::Ip(p), Host::Ip(ip)) => p.to_canonical() == ip.to_canonical(),
            _ => false,
        }
    }

    /// Whether this glob names a raw IP.
    pub fn is_ip(&self) -> bool {
        matches!(self.host, HostPattern::Ip(_))
    }
}

impl PathGlob {
    /// Parse a glob already validated by `crate::caps` (starts with `/`).
    pub fn parse(raw: &str) -> Self {
        let segments = split_segments(raw)
            .map(|s| if s == "**" { PathSegment::AnyDepth } else { PathSegment::Glob(s.to_string()) })
            .collect();
        PathGlob { raw: raw.to_string(), segments }
    }

    /// Whether the normalised `path` (starting with `/`) matches.
    pub fn matches(&self, path: &str) -> bool {
        let segs: Vec<&str> = split_segments(path).collect();
        match_segments(&self.segments, &segs)
    }
}

/// `/a/b/` → `a`, `b`, `` (a trailing slash is an empty last segment); `/` → ``.
fn split_segments(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

fn match_segments(pat: &[PathSegment], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((PathSegment::AnyDepth, rest)) => (0..=segs.len()).any(|k| match_segments(rest, &segs[k..])),
        Some((PathSegment::Glob(g), rest)) => match segs.split_first() {
            Some((s, tail)) => segment_matches(g, s) && match_segments(rest, tail),
            None => false,
        },
    }
}

/// `*` matches any run of characters inside one segment; a lone `*` needs a non-empty segment.
fn segment_matches(glob: &str, seg: &str) -> bool {
    if glob == "*" {
        return !seg.is_empty();
    }
    let pieces: Vec<&str> = glob.split('*').collect();
    if pieces.len() == 1 {
        return glob == seg;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if seg.len() < first.len() + last.len() || !seg.starts_with(first) || !seg.ends_with(last) {
        return false;
    }
    let mut middle = &seg[first.len()..seg.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match middle.find(piece) {
            Some(at) => middle = &middle[at + piece.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn name(h: &str) -> Host {
        Host::Name(h.into())
    }

    fn glob(host: HostPattern, port: Option<u16>) -> DomainGlob {
        DomainGlob { host, port }
    }

    #[test]
    fn domain_globs() {
        let exact = glob(HostPattern::Exact("api.example.com".into()), None);
        let star = glob(HostPattern::OneLabel("example.org".into()), None);
        let cases: &[(&DomainGlob, &str, u16, bool)] = &[
            (&exact, "api.example.com", 443, true),
            (&exact, "api.example.com", 8443, false),
            (&exact, "example.com", 443, false),
            (&exact, "xapi.example.com", 443, false),
            (&exact, "api.example.com.evil.net", 443, false),
            (&star, "a.example.org", 443, true),
            (&star, "example.org", 443, false),
            (&star, "a.b.example.org", 443, false),
            (&star, "aexample.org", 443, false),
            (&star, ".example.org", 443, false),
            (&star, "a.example.org.evil", 443, false),
        ];
        for (g, host, port, want) in cases {
            assert_eq!(g.matches(&name(host), *port, 443), *want, "{g} vs {host}:{port}");
        }
        let with_port = glob(HostPattern::Exact("h.test".into()), Some(8443));
        assert!(with_port.matches(&name("h.test"), 8443, 443));
        assert!(!with_port.matches(&name("h.test"), 443, 443));
        // Without a port a glob means the scheme's default one.
        assert!(exact.matches(&name("api.example.com"), 80, 80));
        assert!(!exact.matches(&name("api.example.com"), 443, 80));
    }

    #[test]
    fn ip_globs_match_only_the_same_address() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let g = glob(HostPattern::Ip(ip), None);
        assert!(g.matches(&Host::Ip(ip), 443, 443));
        assert!(g.matches(&Host::Ip("::ffff:10.0.0.5".parse().unwrap()), 443, 443));
        assert!(!g.matches(&Host::Ip("10.0.0.6".parse().unwrap()), 443, 443));
        assert!(!g.matches(&name("10.0.0.5"), 443, 443));
        let star = glob(HostPattern::OneLabel("0.0.5".into()), None);
        assert!(!star.matches(&Host::Ip(ip), 443, 443), "a name glob never matches an IP");
    }

    #[test]
    fn path_globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("/v1/**", "/v1", true),
            ("/v1/**", "/v1/", true),
            ("/v1/**", "/v1/a/b/c", true),
            ("/v1/**", "/v10", false),
            ("/v1/**", "/v2/v1", false),
            ("/v1/**", "/", false),
            ("/webhook/*", "/webhook/x", true),
            ("/webhook/*", "/webhook", false),
            ("/webhook/*", "/webhook/", false),
            ("/webhook/*", "/webhook/x/y", false),
            ("/*", "/", false),
            ("/*", "/a", true),
            ("/", "/", true),
            ("/", "/a", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("/a/**/z", "/a/z", true),
            ("/a/**/z", "/a/b/c/z", true),
            ("/a/**/z", "/a/b/c/zz", false),
            ("/files/*.json", "/files/a.json", true),
            ("/files/*.json", "/files/.json", true),
            ("/files/*.json", "/files/a.json/x", false),
            ("/files/*.json", "/files/a.jsonx", false),
            ("/r/*-*/x", "/r/a-b/x", true),
            ("/r/*-*/x", "/r/ab/x", false),
            ("/exact", "/exact", true),
            ("/exact", "/exact/", false),
            ("/exact", "/Exact", false),
        ];
        for (g, p, want) in cases {
            assert_eq!(PathGlob::parse(g).matches(p), *want, "{g} vs {p}");
        }
    }
}
