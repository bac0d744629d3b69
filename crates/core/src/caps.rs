//! caps.yaml validation: a YAML list of capabilities (`name`, `type`, `allow`, `transforms`, `budgets`), checked on
//! write with a precise path for every problem (`capabilities[0].allow[1].methods[0]`). Documents are stored exactly
//! as given; this module only decides whether they are acceptable.

use serde_norway::Value;

use crate::error::FieldErrors;
use crate::names::MAX_CAPS;

/// HTTP methods an allow rule may name.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

const CAP_KEYS: &[&str] = &["name", "type", "description", "allow", "transforms", "budgets"];
const RULE_KEYS: &[&str] = &["name", "domains", "methods", "paths", "allow_insecure", "predicates", "body_schema"];

/// Validate a caps.yaml document supplied in `field`. Problems are added to `errs` keyed by their path.
pub fn validate(errs: &mut FieldErrors, field: &str, doc: &str) {
    if doc.chars().count() > MAX_CAPS {
        errs.add(field, format!("must be at most {MAX_CAPS} characters"));
        return;
    }
    if doc.trim().is_empty() {
        return; // an empty document means "no capabilities"
    }
    let value: Value = match serde_norway::from_str(doc) {
        Ok(v) => v,
        Err(e) => {
            let at = e.location().map(|l| format!(" at line {}, column {}", l.line(), l.column())).unwrap_or_default();
            errs.add(field, format!("is not valid YAML{at}: {}", first_line(&e.to_string())));
            return;
        }
    };
    let caps = match value {
        Value::Null => return,
        Value::Sequence(items) => items,
        _ => {
            errs.add(field, "must be a YAML list of capabilities");
            return;
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, cap) in caps.iter().enumerate() {
        let path = format!("{field}[{i}]");
        let Some(map) = cap.as_mapping() else {
            errs.add(path, "must be a mapping with name, type and allow");
            continue;
        };
        unknown_keys(errs, &path, map, CAP_KEYS);
        match map.get("name") {
            None => errs.add(format!("{path}.name"), "is required"),
            Some(Value::String(name)) => {
                if let Some(problem) = capability_name_problem(name) {
                    errs.add(format!("{path}.name"), problem);
                } else if !seen.insert(name.clone()) {
                    errs.add(format!("{path}.name"), format!("duplicates capability `{name}`"));
                }
            }
            Some(_) => errs.add(format!("{path}.name"), "must be a string"),
        }
        match map.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == "http" => {}
            Some(_) => errs.add(format!("{path}.type"), "must be `http`"),
        }
        if let Some(d) = map.get("description")
            && !d.is_string()
        {
            errs.add(format!("{path}.description"), "must be a string");
        }
        match map.get("allow") {
            None => errs.add(format!("{path}.allow"), "is required (at least one allow rule)"),
            Some(Value::Sequence(rules)) if rules.is_empty() => {
                errs.add(format!("{path}.allow"), "must hold at least one allow rule")
            }
            Some(Value::Sequence(rules)) => {
                for (j, rule) in rules.iter().enumerate() {
                    validate_rule(errs, &format!("{path}.allow[{j}]"), rule);
                }
            }
            Some(_) => errs.add(format!("{path}.allow"), "must be a list of allow rules"),
        }
        match map.get("transforms") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(ts)) => {
                for (j, t) in ts.iter().enumerate() {
                    if !t.is_mapping() {
                        errs.add(format!("{path}.transforms[{j}]"), "must be a mapping");
                    }
                }
            }
            Some(_) => errs.add(format!("{path}.transforms"), "must be a list of transform rules"),
        }
        match map.get("budgets") {
            None | Some(Value::Null) | Some(Value::Mapping(_)) => {}
            Some(_) => errs.add(format!("{path}.budgets"), "must be a mapping"),
        }
    }
}

fn validate_rule(errs: &mut FieldErrors, path: &str, rule: &Value) {
    let Some(map) = rule.as_mapping() else {
        errs.add(path, "must be a mapping with domains and methods");
        return;
    };
    unknown_keys(errs, path, map, RULE_KEYS);
    if let Some(n) = map.get("name")
        && !n.is_string()
    {
        errs.add(format!("{path}.name"), "must be a string");
    }
    match map.get("domains") {
        None => errs.add(format!("{path}.domains"), "is required"),
        Some(Value::Sequence(ds)) if ds.is_empty() => errs.add(format!("{path}.domains"), "must not be empty"),
        Some(Value::Sequence(ds)) => {
            for (k, d) in ds.iter().enumerate() {
                match d.as_str() {
                    Some(d) => {
                        if let Some(problem) = domain_problem(d) {
                            errs.add(format!("{path}.domains[{k}]"), problem);
                        }
                    }
                    None => errs.add(format!("{path}.domains[{k}]"), "must be a string"),
                }
            }
        }
        Some(_) => errs.add(format!("{path}.domains"), "must be a list of domain globs"),
    }
    match map.get("methods") {
        None => errs.add(format!("{path}.methods"), "is required"),
        Some(Value::Sequence(ms)) if ms.is_empty() => errs.add(format!("{path}.methods"), "must not be empty"),
        Some(Value::Sequence(ms)) => {
            for (k, m) in ms.iter().enumerate() {
                match m.as_str() {
                    Some(m) if METHODS.contains(&m) => {}
                    _ => errs.add(format!("{path}.methods[{k}]"), format!("must be one of {}", METHODS.join(", "))),
                }
            }
        }
        Some(_) => errs.add(format!("{path}.methods"), "must be a list of HTTP methods"),
    }
    match map.get("paths") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(ps)) => {
            for (k, p) in ps.iter().enumerate() {
                match p.as_str() {
                    Some(p) if p.starts_with('/') && !p.chars().any(char::is_whitespace) => {}
                    Some(_) => errs.add(format!("{path}.paths[{k}]"), "must start with `/` and contain no spaces"),
                    None => errs.add(format!("{path}.paths[{k}]"), "must be a string"),
                }
            }
        }
        Some(_) => errs.add(format!("{path}.paths"), "must be a list of path globs"),
    }
    if let Some(v) = map.get("allow_insecure")
        && !v.is_bool()
    {
        errs.add(format!("{path}.allow_insecure"), "must be true or false");
    }
    match map.get("predicates") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(ps)) if ps.iter().all(Value::is_string) => {}
        Some(_) => errs.add(format!("{path}.predicates"), "must be a list of CEL expressions (strings)"),
    }
    match map.get("body_schema") {
        None | Some(Value::Null) | Some(Value::Mapping(_)) => {}
        Some(_) => errs.add(format!("{path}.body_schema"), "must be a mapping (a JSON schema)"),
    }
}

fn unknown_keys(errs: &mut FieldErrors, path: &str, map: &serde_norway::Mapping, known: &[&str]) {
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

/// A domain glob: labels of letters, digits and `-`, optional `*` labels, an optional `:port`.
pub fn domain_problem(d: &str) -> Option<String> {
    let d = d.trim_end_matches('.');
    let host = match d.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) && port.len() <= 5 => h,
        Some(_) => return Some("has an invalid port".into()),
        None => d,
    };
    if host.is_empty() || host.len() > 253 {
        return Some("must be a hostname or a glob like *.example.com".into());
    }
    for label in host.split('.') {
        let ok = label == "*"
            || label == "**"
            || (!label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
                && !label.starts_with('-')
                && !label.ends_with('-'));
        if !ok {
            return Some(format!("label `{label}` is not a valid hostname label or glob"));
        }
    }
    None
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
    - auth: github
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
