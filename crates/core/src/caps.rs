//! caps.yaml parsing and validation: a YAML list of capabilities (`name`, `type`, `allow`, `transforms`, `budgets`)
//! becomes the typed `policy` model, with a precise path for every problem (`capabilities[0].allow[1].methods[0]`).
//! Documents are stored exactly as given; the same walk refuses them on write and reads them for evaluation, so
//! whatever is accepted means exactly what `docs/API.md` § caps.yaml semantics says.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_norway::{Mapping, Value};

use crate::error::FieldErrors;
use crate::names::MAX_CAPS;
use crate::policy::{
    AllowRule, Budgets, Capability, DomainGlob, HeaderTemplate, HostPattern, Limits, Method, PathGlob, Transform,
    TransformRule,
};

/// HTTP methods an allow rule may name.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// Longest credential or secret name a transform may reference.
pub const MAX_REF_NAME: usize = 200;

const CAP_KEYS: &[&str] = &["name", "type", "description", "allow", "transforms", "budgets"];
const RULE_KEYS: &[&str] = &["name", "domains", "methods", "paths", "allow_insecure", "predicates", "body_schema"];
const TRANSFORM_KEYS: &[&str] = &["auth", "headers", "applies_to"];
const AUTH_KEYS: &[&str] = &["credential"];
const HEADERS_KEYS: &[&str] = &["set", "remove"];
const BUDGETS_KEYS: &[&str] = &["per_workspace", "per_task"];
const LIMITS_KEYS: &[&str] = &["requests", "bytes"];

/// Headers a transform may not set or remove: they frame the message or route it, and belong to the proxy.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "expect",
];

/// Validate a caps.yaml document supplied in `field`. Problems are added to `errs` keyed by their path.
pub fn validate(errs: &mut FieldErrors, field: &str, doc: &str) {
    parse(errs, field, Some(doc));
}

/// Parse a caps.yaml document (absent or empty = no capabilities). Problems are added to `errs` keyed by their
/// path; the capabilities returned are meaningful only when `errs` stayed empty.
pub fn parse(errs: &mut FieldErrors, field: &str, doc: Option<&str>) -> Vec<Capability> {
    let Some(doc) = doc else { return Vec::new() };
    if doc.chars().count() > MAX_CAPS {
        errs.add(field, format!("must be at most {MAX_CAPS} characters"));
        return Vec::new();
    }
    if doc.trim().is_empty() {
        return Vec::new(); // an empty document means "no capabilities"
    }
    let value: Value = match serde_norway::from_str(doc) {
        Ok(v) => v,
        Err(e) => {
            let at = e.location().map(|l| format!(" at line {}, column {}", l.line(), l.column())).unwrap_or_default();
            errs.add(field, format!("is not valid YAML{at}: {}", first_line(&e.to_string())));
            return Vec::new();
        }
    };
    let caps = match value {
        Value::Null => return Vec::new(),
        Value::Sequence(items) => items,
        _ => {
            errs.add(field, "must be a YAML list of capabilities");
            return Vec::new();
        }
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, cap) in caps.iter().enumerate() {
        let path = format!("{field}[{i}]");
        let Some(map) = cap.as_mapping() else {
            errs.add(path, "must be a mapping with name, type and allow");
            continue;
        };
        if let Some(c) = parse_capability(errs, &path, map, &mut seen) {
            out.push(c);
        }
    }
    out
}

fn parse_capability(
    errs: &mut FieldErrors,
    path: &str,
    map: &Mapping,
    seen: &mut BTreeSet<String>,
) -> Option<Capability> {
    unknown_keys(errs, path, map, CAP_KEYS);
    let name = match map.get("name") {
        None => {
            errs.add(format!("{path}.name"), "is required");
            None
        }
        Some(Value::String(name)) => {
            if let Some(problem) = capability_name_problem(name) {
                errs.add(format!("{path}.name"), problem);
            } else if !seen.insert(name.clone()) {
                errs.add(format!("{path}.name"), format!("duplicates capability `{name}`"));
            }
            Some(name.clone())
        }
        Some(_) => {
            errs.add(format!("{path}.name"), "must be a string");
            None
        }
    };
    match map.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "http" => {}
        Some(_) => errs.add(format!("{path}.type"), "must be `http`"),
    }
    let description = match map.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => {
            errs.add(format!("{path}.description"), "must be a string");
            None
        }
    };
    let mut allow = Vec::new();
    match map.get("allow") {
        None => errs.add(format!("{path}.allow"), "is required (at least one allow rule)"),
        Some(Value::Sequence(rules)) if rules.is_empty() => {
            errs.add(format!("{path}.allow"), "must hold at least one allow rule")
        }
        Some(Value::Sequence(rules)) => {
            let mut rule_names = BTreeSet::new();
            for (j, rule) in rules.iter().enumerate() {
                let rpath = format!("{path}.allow[{j}]");
                if let Some(r) = parse_rule(errs, &rpath, rule) {
                    if let Some(n) = &r.name
                        && !rule_names.insert(n.clone())
                    {
                        errs.add(format!("{rpath}.name"), format!("duplicates rule `{n}` of this capability"));
                    }
                    allow.push(r);
                }
            }
        }
        Some(_) => errs.add(format!("{path}.allow"), "must be a list of allow rules"),
    }
    let rule_names: Vec<&str> = allow.iter().filter_map(|r| r.name.as_deref()).collect();
    let mut transforms = Vec::new();
    match map.get("transforms") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(ts)) => {
            for (j, t) in ts.iter().enumerate() {
                if let Some(t) = parse_transform(errs, &format!("{path}.transforms[{j}]"), t, &rule_names) {
                    transforms.push(t);
                }
            }
        }
        Some(_) => errs.add(format!("{path}.transforms"), "must be a list of transform rules"),
    }
    let budgets = match map.get("budgets") {
        None | Some(Value::Null) => Budgets::default(),
        Some(Value::Mapping(b)) => parse_budgets(errs, &format!("{path}.budgets"), b),
        Some(_) => {
            errs.add(format!("{path}.budgets"), "must be a mapping with per_workspace and/or per_task");
            Budgets::default()
        }
    };
    Some(Capability { name: name?, description, allow, transforms, budgets })
}

fn parse_rule(errs: &mut FieldErrors, path: &str, rule: &Value) -> Option<AllowRule> {
    let Some(map) = rule.as_mapping() else {
        errs.add(path, "must be a mapping with domains and methods");
        return None;
    };
    unknown_keys(errs, path, map, RULE_KEYS);
    let name = match map.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) => {
            if let Some(problem) = rule_name_problem(n) {
                errs.add(format!("{path}.name"), problem);
            }
            Some(n.clone())
        }
        Some(_) => {
            errs.add(format!("{path}.name"), "must be a string");
            None
        }
    };
    let mut domains = Vec::new();
    match map.get("domains") {
        None => errs.add(format!("{path}.domains"), "is required"),
        Some(Value::Sequence(ds)) if ds.is_empty() => errs.add(format!("{path}.domains"), "must not be empty"),
        Some(Value::Sequence(ds)) => {
            for (k, d) in ds.iter().enumerate() {
                match d.as_str() {
                    Some(d) => match parse_domain(d) {
                        Ok(g) => domains.push(g),
                        Err(problem) => errs.add(format!("{path}.domains[{k}]"), problem),
                    },
                    None => errs.add(format!("{path}.domains[{k}]"), "must be a string"),
                }
            }
        }
        Some(_) => errs.add(format!("{path}.domains"), "must be a list of domain globs"),
    }
    let mut methods = Vec::new();
    match map.get("methods") {
        None => errs.add(format!("{path}.methods"), "is required"),
        Some(Value::Sequence(ms)) if ms.is_empty() => errs.add(format!("{path}.methods"), "must not be empty"),
        Some(Value::Sequence(ms)) => {
            for (k, m) in ms.iter().enumerate() {
                match m.as_str().and_then(Method::parse) {
                    Some(m) => methods.push(m),
                    None => errs.add(format!("{path}.methods[{k}]"), format!("must be one of {}", METHODS.join(", "))),
                }
            }
        }
        Some(_) => errs.add(format!("{path}.methods"), "must be a list of HTTP methods"),
    }
    let mut paths = Vec::new();
    match map.get("paths") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(ps)) => {
            for (k, p) in ps.iter().enumerate() {
                match p.as_str() {
                    Some(p) => match path_glob_problem(p) {
                        None => paths.push(PathGlob::parse(p)),
                        Some(problem) => errs.add(format!("{path}.paths[{k}]"), problem),
                    },
                    None => errs.add(format!("{path}.paths[{k}]"), "must be a string"),
                }
            }
        }
        Some(_) => errs.add(format!("{path}.paths"), "must be a list of path globs"),
    }
    let allow_insecure = match map.get("allow_insecure") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errs.add(format!("{path}.allow_insecure"), "must be true or false");
            false
        }
    };
    let predicates = match map.get("predicates") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(ps)) if ps.iter().all(Value::is_string) => {
            ps.iter().filter_map(|p| p.as_str().map(str::to_string)).collect()
        }
        Some(_) => {
            errs.add(format!("{path}.predicates"), "must be a list of CEL expressions (strings)");
            Vec::new()
        }
    };
    let has_body_schema = match map.get("body_schema") {
        None | Some(Value::Null) => false,
        Some(Value::Mapping(_)) => true,
        Some(_) => {
            errs.add(format!("{path}.body_schema"), "must be a mapping (a JSON schema)");
            false
        }
    };
    Some(AllowRule { name, domains, methods, paths, allow_insecure, predicates, has_body_schema })
}

fn parse_transform(errs: &mut FieldErrors, path: &str, t: &Value, rule_names: &[&str]) -> Option<TransformRule> {
    let Some(map) = t.as_mapping() else {
        errs.add(path, "must be a mapping with `auth` or `headers`");
        return None;
    };
    unknown_keys(errs, path, map, TRANSFORM_KEYS);
    let applies_to = match map.get("applies_to") {
        None | Some(Value::Null) => None,
        Some(Value::Sequence(names)) if names.is_empty() => {
            errs.add(format!("{path}.applies_to"), "must not be empty (leave it out to apply to every rule)");
            None
        }
        Some(Value::Sequence(names)) => {
            let mut out = Vec::new();
            for (k, n) in names.iter().enumerate() {
                match n.as_str() {
                    Some(n) if rule_names.contains(&n) => out.push(n.to_string()),
                    Some(n) => errs.add(
                        format!("{path}.applies_to[{k}]"),
                        format!("names no allow rule of this capability (`{n}`; rules are targeted by their `name`)"),
                    ),
                    None => errs.add(format!("{path}.applies_to[{k}]"), "must be a string"),
                }
            }
            Some(out)
        }
        Some(_) => {
            errs.add(format!("{path}.applies_to"), "must be a list of allow rule names");
            None
        }
    };
    let transform = match (map.get("auth"), map.get("headers")) {
        (Some(_), Some(_)) => {
            errs.add(path, "must hold exactly one of `auth` or `headers` (write two transforms)");
            None
        }
        (None, None) => {
            errs.add(path, "must hold `auth` or `headers`");
            None
        }
        (Some(auth), None) => parse_auth(errs, &format!("{path}.auth"), auth),
        (None, Some(h)) => parse_headers(errs, &format!("{path}.headers"), h),
    };
    Some(TransformRule { transform: transform?, applies_to })
}

fn parse_auth(errs: &mut FieldErrors, path: &str, v: &Value) -> Option<Transform> {
    let Some(map) = v.as_mapping() else {
        errs.add(path, "must be a mapping like `{ credential: NAME }`");
        return None;
    };
    unknown_keys(errs, path, map, AUTH_KEYS);
    match map.get("credential") {
        None => {
            errs.add(format!("{path}.credential"), "is required");
            None
        }
        Some(Value::String(c)) => match ref_name_problem(c) {
            Some(problem) => {
                errs.add(format!("{path}.credential"), problem);
                None
            }
            None => Some(Transform::Auth { credential: c.clone() }),
        },
        Some(_) => {
            errs.add(format!("{path}.credential"), "must be a credential name (a string)");
            None
        }
    }
}

fn parse_headers(errs: &mut FieldErrors, path: &str, v: &Value) -> Option<Transform> {
    let Some(map) = v.as_mapping() else {
        errs.add(path, "must be a mapping with `set` and/or `remove`");
        return None;
    };
    unknown_keys(errs, path, map, HEADERS_KEYS);
    let mut set = Vec::new();
    match map.get("set") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, val) in m {
                let Some(name) = k.as_str() else {
                    errs.add(format!("{path}.set"), "header names must be strings");
                    continue;
                };
                let at = format!("{path}.set.{name}");
                if let Some(problem) = header_name_problem(name) {
                    errs.add(&at, problem);
                    continue;
                }
                if set.iter().any(|(n, _): &(String, HeaderTemplate)| n.eq_ignore_ascii_case(name)) {
                    errs.add(&at, "is set twice (header names are case-insensitive)");
                    continue;
                }
                let Some(val) = val.as_str() else {
                    errs.add(&at, "must be a string (quote numbers)");
                    continue;
                };
                if val.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    errs.add(&at, "must not contain CR, LF or NUL");
                    continue;
                }
                match HeaderTemplate::parse(val) {
                    Ok(t) => set.push((name.to_string(), t)),
                    Err(problem) => errs.add(&at, problem),
                }
            }
        }
        Some(_) => errs.add(format!("{path}.set"), "must be a mapping of header name to value"),
    }
    let mut remove = Vec::new();
    match map.get("remove") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(hs)) => {
            for (k, h) in hs.iter().enumerate() {
                match h.as_str() {
                    Some(h) => match header_name_problem(h) {
                        None => remove.push(h.to_string()),
                        Some(problem) => errs.add(format!("{path}.remove[{k}]"), problem),
                    },
                    None => errs.add(format!("{path}.remove[{k}]"), "must be a header name (a string)"),
                }
            }
        }
        Some(_) => errs.add(format!("{path}.remove"), "must be a list of header names"),
    }
    let written = |k: &str| match map.get(k) {
        Some(Value::Mapping(m)) => !m.is_empty(),
        Some(Value::Sequence(v)) => !v.is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    };
    if !written("set") && !written("remove") {
        errs.add(path, "must set or remove at least one header");
    }
    Some(Transform::Headers { set, remove })
}

fn parse_budgets(errs: &mut FieldErrors, path: &str, map: &Mapping) -> Budgets {
    unknown_keys(errs, path, map, BUDGETS_KEYS);
    let mut scope = |key: &str| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Mapping(m)) => {
            let at = format!("{path}.{key}");
            unknown_keys(errs, &at, m, LIMITS_KEYS);
            let mut limit = |k: &str| match m.get(k) {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
                Some(_) => {
                    errs.add(format!("{at}.{k}"), "must be a non-negative integer");
                    None
                }
            };
            let limits = Limits { requests: limit("requests"), bytes: limit("bytes") };
            if m.get("requests").is_none() && m.get("bytes").is_none() {
                errs.add(&at, "must set `requests` and/or `bytes`");
            }
            Some(limits)
        }
        Some(_) => {
            errs.add(format!("{path}.{key}"), "must be a mapping with `requests` and/or `bytes`");
            None
        }
    };
    let per_workspace = scope("per_workspace");
    let per_task = scope("per_task");
    Budgets { per_workspace, per_task }
}

fn unknown_keys(errs: &mut FieldErrors, path: &str, map: &Mapping, known: &[&str]) {
    for k in map.keys() {
        match k.as_str() {
            Some(k) if known.contains(&k) => {}
            Some(k) => errs.add(format!("{path}.{k}"), format!("unknown field (expected one of {})", known.join(", "))),
            None => errs.add(path, "keys must be strings"),
        }
    }
}

/// `[A-Za-z][A-Za-z0-9_-]{0,63}`; a leading `_` is reserved for the platform.
pub fn capability_name_problem(name: &str) -> Option<String> {
    if name.starts_with('_') {
        return Some("names starting with `_` are reserved for the platform".into());
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (!ok).then(|| "must match [A-Za-z][A-Za-z0-9_-]{0,63}".into())
}

/// Allow rule names follow capability names.
fn rule_name_problem(name: &str) -> Option<String> {
    capability_name_problem(name)
}

/// A credential or secret name a transform references: 1–200 printable characters.
fn ref_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.chars().count() > MAX_REF_NAME {
        Some(format!("must be 1 to {MAX_REF_NAME} characters"))
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters".into())
    } else {
        None
    }
}

/// A name inside `${secrets["…"]}`.
pub fn secret_name_problem(name: &str) -> Option<String> {
    ref_name_problem(name)
}

/// An HTTP field name (RFC 9110 token) a transform may touch.
fn header_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)) {
        return Some("must be an HTTP header name".into());
    }
    if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Some(format!("`{name}` belongs to the proxy and cannot be changed by a transform"));
    }
    None
}

/// A path glob: starts with `/`, no whitespace, `?` or `#`, no `.`/`..` or empty segment inside, `**` only as a
/// whole segment.
fn path_glob_problem(p: &str) -> Option<String> {
    if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("must start with `/` and contain no spaces".into());
    }
    if p.contains('?') || p.contains('#') {
        return Some("matches the path only: no `?` or `#`".into());
    }
    let segs: Vec<&str> = p[1..].split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        if *s == "." || *s == ".." {
            return Some("must not hold `.` or `..` segments (paths are matched after they are resolved)".into());
        }
        if s.is_empty() && i + 1 < segs.len() {
            return Some("must not hold `//` (paths are matched after it is collapsed)".into());
        }
        if s.contains("**") && *s != "**" {
            return Some("`**` must be a whole segment".into());
        }
    }
    None
}

/// A domain glob: a hostname, `*.` + a hostname (`*` = exactly one leading label), an IPv4 address or `[IPv6]`,
/// with an optional `:port`. Lower-cased, trailing dot dropped.
pub fn domain_problem(d: &str) -> Option<String> {
    parse_domain(d).err()
}

/// Parse a domain glob (see `domain_problem`).
pub fn parse_domain(d: &str) -> Result<DomainGlob, String> {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("has an unclosed `[`")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("has junk after `]`")?),
        };
        let ip: std::net::Ipv6Addr = inside.parse().map_err(|_| "is not an IPv6 address inside `[…]`")?;
        (HostPattern::Ip(IpAddr::V6(ip)), port)
    } else {
        let (h, port) = match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        };
        (parse_host_pattern(h)?, port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or("has an invalid port")?)
        }
        Some(_) => return Err("has an invalid port".into()),
    };
    Ok(DomainGlob { host, port })
}

fn parse_host_pattern(h: &str) -> Result<HostPattern, String> {
    let h = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
    if h.is_empty() || h.len() > 253 {
        return Err("must be a hostname or a glob like *.example.com".into());
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(HostPattern::Ip(ip));
    }
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, h.clone()),
    };
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.contains('*') {
            return Err("`*` may only be the whole first label (`*.example.com`: exactly one label)".into());
        }
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("label `{label}` is not a valid hostname label or glob"));
        }
    }
    let last = labels.last().copied().unwrap_or_default();
    if last.chars().all(|c| c.is_ascii_digit()) || last.starts_with("0x") {
        return Err("looks like an IP address but is not one (write it as a dotted IPv4 or [IPv6] address)".into());
    }
    if wild && labels.len() < 2 {
        return Err("`*.` must be followed by at least two labels (`*.example.com`)".into());
    }
    Ok(if wild { HostPattern::OneLabel(name) } else { HostPattern::Exact(name) })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(doc: &str) -> FieldErrors {
        let mut e = FieldErrors::default();
        validate(&mut e, "capabilities", doc);
        e
    }

    #[test]
    fn accepts_a_realistic_document() {
        let doc = r#"
- name: github-api
  type: http
  allow:
    - name: read
      domains: ["api.github.com", "*.githubusercontent.com"]
      methods: [GET, HEAD]
      paths: ["/repos/**"]
  transforms:
    - auth: { credential: github }
      applies_to: [read]
- name: anthropic
  allow:
    - domains: [api.anthropic.com]
      methods: [POST]
"#;
        assert!(check(doc).is_empty(), "{:?}", check(doc));
        assert!(check("").is_empty());
        assert!(check("[]").is_empty());
    }

    #[test]
    fn names_the_offending_field() {
        let e = check("- name: x\n  allow:\n    - domains: [a.com]\n      methods: [GET, FETCH]\n");
        assert_eq!(e.0.keys().collect::<Vec<_>>(), vec!["capabilities[0].allow[0].methods[1]"]);
        let e = check("- name: _internal\n  allow: []\n");
        assert!(e.0.contains_key("capabilities[0].name"));
        assert!(e.0.contains_key("capabilities[0].allow"));
        let e = check("- name: a\n  allow:\n    - domains: [a.com]\n      methods: [GET]\n      paths: [nope]\n");
        assert!(e.0.contains_key("capabilities[0].allow[0].paths[0]"));
        let e = check("- name: a\n  colour: red\n  allow:\n    - domains: [a.com]\n      methods: [GET]\n");
        assert!(e.0.contains_key("capabilities[0].colour"));
    }

    #[test]
    fn rejects_bad_yaml_and_wrong_shapes() {
        assert!(check("- name: [unclosed").0["capabilities"].contains("not valid YAML"));
        assert!(check("name: x").0["capabilities"].contains("list"));
        let e = check(
            "- name: a\n  allow: [{domains: [a.com], methods: [GET]}]\n- name: a\n  allow: [{domains: [b.com], methods: [GET]}]\n",
        );
        assert!(e.0["capabilities[1].name"].contains("duplicates"));
    }

    /// Every field given meaning is checked, and the error names it.
    #[test]
    fn transforms_budgets_and_globs_name_the_field() {
        let base = "- name: a\n  allow:\n    - name: read\n      domains: [a.com]\n      methods: [GET]\n";
        let cases: &[(&str, &str)] = &[
            ("  transforms:\n    - auth: github\n", "capabilities[0].transforms[0].auth"),
            ("  transforms:\n    - auth: {}\n", "capabilities[0].transforms[0].auth.credential"),
            ("  transforms:\n    - auth: {credential: 7}\n", "capabilities[0].transforms[0].auth.credential"),
            ("  transforms:\n    - auth: {credential: k, header: x}\n", "capabilities[0].transforms[0].auth.header"),
            (
                "  transforms:\n    - auth: {credential: k}\n      applies_to: [write]\n",
                "capabilities[0].transforms[0].applies_to[0]",
            ),
            (
                "  transforms:\n    - auth: {credential: k}\n      applies_to: []\n",
                "capabilities[0].transforms[0].applies_to",
            ),
            (
                "  transforms:\n    - auth: {credential: k}\n      applies_to: read\n",
                "capabilities[0].transforms[0].applies_to",
            ),
            (
                "  transforms:\n    - auth: {credential: k}\n      headers: {remove: [x]}\n",
                "capabilities[0].transforms[0]",
            ),
            ("  transforms:\n    - {}\n", "capabilities[0].transforms[0]"),
            ("  transforms:\n    - path: {strip: /v1}\n", "capabilities[0].transforms[0].path"),
            ("  transforms:\n    - headers: {}\n", "capabilities[0].transforms[0].headers"),
            ("  transforms:\n    - headers: {set: {X-A: 1}}\n", "capabilities[0].transforms[0].headers.set.X-A"),
            (
                "  transforms:\n    - headers: {set: {Host: evil.com}}\n",
                "capabilities[0].transforms[0].headers.set.Host",
            ),
            (
                "  transforms:\n    - headers: {set: {\"Bad Name\": x}}\n",
                "capabilities[0].transforms[0].headers.set.Bad Name",
            ),
            (
                "  transforms:\n    - headers: {set: {X-A: \"a\\r\\nb\"}}\n",
                "capabilities[0].transforms[0].headers.set.X-A",
            ),
            (
                "  transforms:\n    - headers: {set: {X-A: '${env.HOME}'}}\n",
                "capabilities[0].transforms[0].headers.set.X-A",
            ),
            (
                "  transforms:\n    - headers: {set: {X-A: '${secrets[\"x\"'}}\n",
                "capabilities[0].transforms[0].headers.set.X-A",
            ),
            (
                "  transforms:\n    - headers: {set: {X-A: '${secrets[\"\"]}'}}\n",
                "capabilities[0].transforms[0].headers.set.X-A",
            ),
            (
                "  transforms:\n    - headers: {set: {X-A: a, x-a: b}}\n",
                "capabilities[0].transforms[0].headers.set.x-a",
            ),
            (
                "  transforms:\n    - headers: {remove: [Content-Length]}\n",
                "capabilities[0].transforms[0].headers.remove[0]",
            ),
            ("  transforms:\n    - headers: {remove: X-A}\n", "capabilities[0].transforms[0].headers.remove"),
            (
                "  transforms:\n    - headers: {set: {X-A: a}, add: {X-B: b}}\n",
                "capabilities[0].transforms[0].headers.add",
            ),
            ("  budgets: []\n", "capabilities[0].budgets"),
            ("  budgets: {per_month: {requests: 1}}\n", "capabilities[0].budgets.per_month"),
            ("  budgets: {per_workspace: {requests: -1}}\n", "capabilities[0].budgets.per_workspace.requests"),
            ("  budgets: {per_workspace: {bytes: 1.5}}\n", "capabilities[0].budgets.per_workspace.bytes"),
            ("  budgets: {per_workspace: {bytes: \"10MB\"}}\n", "capabilities[0].budgets.per_workspace.bytes"),
            ("  budgets: {per_task: {}}\n", "capabilities[0].budgets.per_task"),
            ("  budgets: {per_task: {requests: 1, tokens: 5}}\n", "capabilities[0].budgets.per_task.tokens"),
            ("  budgets: {per_task: 5}\n", "capabilities[0].budgets.per_task"),
        ];
        for (tail, field) in cases {
            let e = check(&format!("{base}{tail}"));
            assert!(e.0.contains_key(*field), "{tail}: wanted {field}, got {:?}", e.0);
        }
        let ok = format!(
            "{base}  transforms:\n    - auth: {{credential: k}}\n      applies_to: [read]\n    - headers:\n        set: {{X-T: 'a ${{secrets[\"t\"]}} b'}}\n        remove: [X-Debug]\n  budgets:\n    per_workspace: {{requests: 1000, bytes: 50000000}}\n    per_task: {{requests: 0}}\n"
        );
        assert!(check(&ok).is_empty(), "{:?}", check(&ok));
        let dup = "- name: a\n  allow:\n    - {name: r, domains: [a.com], methods: [GET]}\n    - {name: r, domains: [b.com], methods: [GET]}\n";
        assert!(check(dup).0.contains_key("capabilities[0].allow[1].name"));
        let rule_cases: &[(&str, &str)] = &[
            ("domains: ['**.a.com']", "domains[0]"),
            ("domains: ['api-*.a.com']", "domains[0]"),
            ("domains: ['a.*.com']", "domains[0]"),
            ("domains: ['*.com']", "domains[0]"),
            ("domains: ['2130706433']", "domains[0]"),
            ("domains: ['a.0x7f']", "domains[0]"),
            ("domains: ['a.com:0']", "domains[0]"),
            ("domains: ['[::1']", "domains[0]"),
            ("paths: ['/a/../b']", "paths[0]"),
            ("paths: ['/a//b']", "paths[0]"),
            ("paths: ['/a**']", "paths[0]"),
            ("paths: ['/a?b=1']", "paths[0]"),
            ("allow_insecure: yes please", "allow_insecure"),
            ("name: 7", "name"),
            ("name: _x", "name"),
        ];
        for (extra, field) in rule_cases {
            let doc = format!("- name: a\n  allow:\n    - domains: [a.com]\n      methods: [GET]\n      {extra}\n");
            let doc = if extra.starts_with("domains") { doc.replacen("domains: [a.com]\n      ", "", 1) } else { doc };
            let e = check(&doc);
            let want = format!("capabilities[0].allow[0].{field}");
            assert!(e.0.contains_key(&want), "{extra}: wanted {want}, got {:?}", e.0);
        }
    }

    #[test]
    fn parses_the_typed_model() {
        let mut e = FieldErrors::default();
        let caps = parse(
            &mut e,
            "c",
            Some(
                "- name: a\n  allow:\n    - domains: ['*.Example.COM.', '10.0.0.1', '[fd00::1]:8443', 'h.test:8080']\n      methods: [GET, POST]\n      paths: ['/v1/**']\n      allow_insecure: true\n",
            ),
        );
        assert!(e.is_empty(), "{e:?}");
        let r = &caps[0].allow[0];
        let shown: Vec<String> = r.domains.iter().map(|d| d.to_string()).collect();
        assert_eq!(shown, ["*.example.com", "10.0.0.1", "[fd00::1]:8443", "h.test:8080"]);
        assert_eq!(r.methods, [Method::Get, Method::Post]);
        assert_eq!(r.paths[0].raw, "/v1/**");
        assert!(r.allow_insecure);
        assert_eq!(parse(&mut e, "c", None), vec![]);
        assert_eq!(parse(&mut e, "c", Some("  \n")), vec![]);
        assert!(e.is_empty());
    }

    #[test]
    fn domains() {
        assert_eq!(domain_problem("api.github.com"), None);
        assert_eq!(domain_problem("*.example.com"), None);
        assert_eq!(domain_problem("example.com:8443"), None);
        assert_eq!(domain_problem("example.com."), None);
        assert!(domain_problem("exa mple.com").is_some());
        assert!(domain_problem("").is_some());
        assert!(domain_problem("a..b").is_some());
        assert!(domain_problem("a.com:http").is_some());
    }
}
