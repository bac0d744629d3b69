//! End-to-end tables over the pure policy: caps.yaml text → merged policy → normalised request → decision →
//! transforms → 403/429 bodies, plus the property tests on normalisation.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::error::FieldErrors;
use crate::model::ProviderKind;

const DOC: &str = r#"
- name: upstream
  type: http
  allow:
    - name: read
      domains: ["api.example.com", "*.example.org"]
      methods: [GET, HEAD]
      paths: ["/v1/**"]
    - name: write
      domains: ["api.example.com"]
      methods: [POST]
      paths: ["/v1/items", "/v1/items/*"]
    - domains: ["plain.example.net"]
      methods: [GET]
      allow_insecure: true
    - domains: ["10.0.0.5", "[fd00::1]:8443"]
      methods: [GET]
  transforms:
    - auth: { credential: example-key }
      applies_to: [read]
    - headers:
        set: { X-Tenant: 'tenant=${secrets["tenant-id"]}', Authorization-Extra: static }
        remove: [X-Debug]
  budgets:
    per_workspace: { requests: 1000, bytes: 50000000 }
    per_task: { requests: 100 }
- name: guarded
  allow:
    - name: cel
      domains: ["guarded.test"]
      methods: [GET]
      predicates: ["request.size < 10"]
"#;

fn policy() -> Policy {
    let mut e = FieldErrors::default();
    let caps = crate::caps::parse(&mut e, "capabilities", Some(DOC));
    assert!(e.is_empty(), "{e:?}");
    let grant = ProviderGrant {
        kind: ProviderKind::Anthropic,
        domain: crate::caps::parse_domain("api.anthropic.com").unwrap(),
        credential_name: Some("anthropic-key".into()),
    };
    Policy::merge(Some(&grant), [caps])
}

fn req(method: &str, url: &str) -> RawRequest {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let tls = scheme == "https";
    let port = match authority.rsplit_once(':') {
        Some((_, p)) if !authority.ends_with(']') => p.parse().unwrap(),
        _ if tls => 443,
        _ => 80,
    };
    let host = authority.rsplit_once(':').filter(|_| !authority.ends_with(']')).map_or(authority, |(h, _)| h);
    RawRequest {
        tls,
        sni: (tls && !host.starts_with('[') && host.parse::<std::net::IpAddr>().is_err()).then(|| host.to_string()),
        authority: authority.into(),
        port,
        method: method.into(),
        target: target.into(),
    }
}

fn outcome(d: &Decision) -> String {
    match d {
        Decision::Allow(a) => format!("allow {}/{}", a.capability, a.rule),
        Decision::Deny(d) => format!(
            "deny {} {}/{}",
            d.reason.as_str(),
            d.capability.as_deref().unwrap_or("-"),
            d.rule.as_deref().unwrap_or("-")
        ),
    }
}

#[test]
fn decision_table() {
    let p = policy();
    let cases: &[(&str, &str, &str)] = &[
        ("GET", "https://api.example.com/v1/models", "allow upstream/read"),
        ("HEAD", "https://API.EXAMPLE.COM./v1", "allow upstream/read"),
        ("GET", "https://a.example.org/v1/x", "allow upstream/read"),
        ("GET", "https://example.org/v1/x", "deny no_rule -/-"),
        ("GET", "https://a.b.example.org/v1/x", "deny no_rule -/-"),
        ("GET", "https://evil.test/v1/x", "deny no_rule -/-"),
        ("GET", "https://api.example.com:8443/v1/x", "deny no_rule -/-"),
        ("DELETE", "https://api.example.com/v1/models", "deny method upstream/read"),
        ("get", "https://api.example.com/v1/models", "deny method upstream/read"),
        ("CONNECT", "https://api.example.com/v1/models", "deny method upstream/read"),
        ("GET", "https://api.example.com/admin", "deny path upstream/read"),
        ("GET", "https://api.example.com/v1/../admin", "deny path upstream/read"),
        ("GET", "https://api.example.com/v1/%2e%2e/admin", "deny path upstream/read"),
        ("GET", "https://api.example.com/v1/%2E%2E%2Fadmin", "deny path upstream/read"),
        ("GET", "https://api.example.com/v1%2f..%2fadmin", "deny path upstream/read"),
        ("GET", "https://api.example.com//v1/../../admin", "deny path upstream/read"),
        ("GET", "https://api.example.com/v1/./../admin/./", "deny path upstream/read"),
        ("GET", "https://api.example.com//v1//models", "allow upstream/read"),
        ("GET", "https://api.example.com/admin/../v1/models", "allow upstream/read"),
        ("POST", "https://api.example.com/v1/items", "allow upstream/write"),
        ("POST", "https://api.example.com/v1/items/7", "allow upstream/write"),
        ("POST", "https://api.example.com/v1/items/7/../../../x", "deny path upstream/write"),
        ("POST", "https://api.example.com/v1/other", "deny path upstream/write"),
        ("GET", "http://api.example.com/v1/models", "deny insecure upstream/read"),
        ("GET", "http://plain.example.net/anything", "allow upstream/allow[2]"),
        ("GET", "https://plain.example.net/anything", "allow upstream/allow[2]"),
        ("GET", "http://plain.example.net:443/anything", "deny no_rule -/-"),
        ("GET", "https://10.0.0.5/x", "allow upstream/allow[3]"),
        ("GET", "https://[fd00::1]:8443/x", "allow upstream/allow[3]"),
        ("GET", "https://[fd00::1]/x", "deny raw_ip -/-"),
        ("GET", "https://10.0.0.6/x", "deny raw_ip -/-"),
        ("GET", "https://127.0.0.1/x", "deny raw_ip -/-"),
        ("GET", "http://169.254.169.254/latest/meta-data", "deny raw_ip -/-"),
        ("GET", "https://[::1]/x", "deny raw_ip -/-"),
        ("GET", "https://2130706433/x", "deny raw_ip -/-"),
        ("GET", "https://0x7f.1/x", "deny raw_ip -/-"),
        ("GET", "https://guarded.test/", "deny unsupported guarded/cel"),
        ("POST", "https://api.anthropic.com/v1/messages", "allow _provider/_provider"),
        ("GET", "http://api.anthropic.com/v1/messages", "deny insecure _provider/_provider"),
        ("GET", "https://api.example.com/v1/a%zz", "deny malformed -/-"),
        ("GET", "https://api.example.com/v1\\..\\admin", "deny malformed -/-"),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (method, url, want) in cases {
        let (_, d) = decide(&p, &req(method, url));
        assert_eq!(outcome(&d), *want, "{method} {url}");
        if let Decision::Deny(d) = d {
            seen.insert(d.reason.as_str());
        }
    }
    // Every reason evaluation can give is exercised here; fronting and auth_unavailable have their own tests.
    for r in DenyReason::ALL {
        if !matches!(r, DenyReason::DomainFronting | DenyReason::AuthUnavailable) {
            assert!(seen.contains(r.as_str()), "no case gives {r:?}");
        }
    }
}

#[test]
fn the_furthest_rule_names_the_denial() {
    // `write` gets past the method check for POST, so a POST to a path neither allows blames `write` on `path`,
    // not `read` on `method`.
    let (_, d) = decide(&policy(), &req("POST", "https://api.example.com/v2"));
    assert_eq!(outcome(&d), "deny path upstream/write");
}

#[test]
fn domain_fronting() {
    let p = policy();
    let mut r = req("GET", "https://api.example.com/v1/x");
    r.sni = Some("evil.test".into());
    assert_eq!(outcome(&decide(&p, &r).1), "deny domain_fronting -/-");
    // The reverse: SNI of the allowed host, Host of a denied one.
    let mut r = req("GET", "https://evil.test/v1/x");
    r.sni = Some("api.example.com".into());
    assert_eq!(outcome(&decide(&p, &r).1), "deny domain_fronting -/-");
    let mut r = req("GET", "https://api.example.com/v1/x");
    r.sni = Some("API.example.com.".into());
    assert_eq!(outcome(&decide(&p, &r).1), "allow upstream/read", "SNI is normalised like the host");
    r.sni = None;
    assert_eq!(outcome(&decide(&p, &r).1), "deny domain_fronting -/-", "TLS to a name without SNI");
    let mut plain = req("GET", "http://plain.example.net/x");
    plain.sni = Some("other.test".into());
    assert_eq!(outcome(&decide(&p, &plain).1), "allow upstream/allow[2]", "SNI means nothing without TLS");
}

#[test]
fn every_deny_reason_and_budget_enum_round_trips() {
    for r in DenyReason::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), serde_json::json!(r.as_str()));
        assert!(!r.describe().is_empty());
    }
    for s in BudgetScope::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
    }
    for l in BudgetLimit::ALL {
        assert_eq!(serde_json::to_value(l).unwrap(), serde_json::json!(l.as_str()));
    }
    for m in Method::ALL {
        assert_eq!(Method::parse(m.as_str()), Some(*m));
        assert_eq!(serde_json::to_value(m).unwrap(), serde_json::json!(m.as_str()));
    }
}

#[derive(Default)]
struct Vault {
    creds: BTreeMap<String, CredentialMaterial>,
    secrets: BTreeMap<String, String>,
}

impl Lookup for Vault {
    fn credential(&self, name: &str) -> Option<CredentialMaterial> {
        self.creds.get(name).cloned()
    }
    fn secret(&self, name: &str) -> Option<String> {
        self.secrets.get(name).cloned()
    }
}

fn vault(example_key: CredentialMaterial) -> Vault {
    let mut v = Vault::default();
    v.creds.insert("example-key".into(), example_key);
    v.creds.insert("anthropic-key".into(), CredentialMaterial::ApiKey { key: "sk-ant".into(), header: None });
    v.secrets.insert("tenant-id".into(), "t-42".into());
    v
}

fn allowed(method: &str, url: &str) -> Allowed {
    match decide(&policy(), &req(method, url)).1 {
        Decision::Allow(a) => a,
        d => panic!("expected allow, got {d:?}"),
    }
}

fn headers(h: &[(&str, &str)]) -> Vec<(String, String)> {
    h.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn transforms_replace_headers_and_follow_applies_to() {
    let a = allowed("GET", "https://api.example.com/v1/models");
    assert_eq!(
        a.budgets.iter().map(BudgetRef::name).collect::<Vec<_>>(),
        ["upstream.per_workspace", "upstream.per_task"]
    );
    let parts = RequestParts {
        headers: headers(&[
            ("authorization", "Bearer agent-made-this-up"),
            ("X-Debug", "1"),
            ("x-debug", "2"),
            ("x-tenant", "forged"),
            ("Accept", "*/*"),
        ]),
        query: None,
    };
    let out =
        apply_transforms(&a, parts, &vault(CredentialMaterial::ApiKey { key: "k1".into(), header: None })).unwrap();
    assert_eq!(
        out.parts.headers,
        headers(&[
            ("Accept", "*/*"),
            ("Authorization", "Bearer k1"),
            ("X-Tenant", "tenant=t-42"),
            ("Authorization-Extra", "static")
        ])
    );
    assert_eq!(out.applied, ["auth:example-key", "headers:-X-Debug,+X-Tenant,+Authorization-Extra"]);
    // `write` is not in the auth transform's applies_to: only the header transform runs.
    let w = allowed("POST", "https://api.example.com/v1/items");
    let out = apply_transforms(
        &w,
        RequestParts::default(),
        &vault(CredentialMaterial::ApiKey { key: "k1".into(), header: None }),
    )
    .unwrap();
    assert_eq!(out.applied.len(), 1);
    assert!(!out.parts.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization")));
    // Rules without a name are never targets of applies_to, but get transforms without one.
    let unnamed = allowed("GET", "http://plain.example.net/x");
    assert_eq!(unnamed.transforms.len(), 1);
}

#[test]
fn credential_wire_formats() {
    let a = allowed("GET", "https://api.example.com/v1/models");
    let stamp = |m: CredentialMaterial, query: Option<&str>| {
        let parts = RequestParts { headers: headers(&[("X-Api-Key", "agent")]), query: query.map(str::to_string) };
        apply_transforms(&a, parts, &vault(m)).unwrap()
    };
    fn h<'a>(o: &'a Applied, name: &str) -> Vec<&'a str> {
        o.parts.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
    let o = stamp(CredentialMaterial::ApiKey { key: "k".into(), header: Some("x-api-key".into()) }, None);
    assert_eq!(h(&o, "x-api-key"), ["k"], "the agent's x-api-key is replaced, not duplicated");
    assert!(h(&o, "authorization").is_empty());
    let o = stamp(CredentialMaterial::BasicAuth { username: "u".into(), password: "p:w".into() }, None);
    assert_eq!(h(&o, "authorization"), ["Basic dTpwOnc="]);
    let o = stamp(CredentialMaterial::Oauth2ClientCredentials { access_token: "tok".into() }, None);
    assert_eq!(h(&o, "authorization"), ["Bearer tok"]);
    let o = stamp(CredentialMaterial::QueryApiKey { key: "s e&cret".into(), param: None }, Some("a=1&key=agent&b=2"));
    assert_eq!(o.parts.query.as_deref(), Some("a=1&b=2&key=s%20e%26cret"), "the agent's key= is replaced");
    assert_eq!(o.redact_params, ["key"]);
    assert_eq!(audit_target("/v1/x", o.parts.query.as_deref(), &o.redact_params), "/v1/x?a=1&b=2&key=REDACTED");
    let o = stamp(CredentialMaterial::QueryApiKey { key: "k".into(), param: Some("api_token".into()) }, None);
    assert_eq!(o.parts.query.as_deref(), Some("api_token=k"));
    assert_eq!(audit_target("/", o.parts.query.as_deref(), &o.redact_params), "/?api_token=REDACTED");
    assert!(!format!("{o:?}").contains("k\""), "Debug never prints values");
    assert!(!format!("{:?}", CredentialMaterial::ApiKey { key: "sekrit".into(), header: None }).contains("sekrit"));
}

#[test]
fn provider_grant_stamps_in_the_provider_kinds_format() {
    let a = allowed("POST", "https://api.anthropic.com/v1/messages");
    assert!(a.budgets.is_empty());
    let parts = RequestParts { headers: headers(&[("x-api-key", "placeholder")]), query: None };
    let out =
        apply_transforms(&a, parts, &vault(CredentialMaterial::ApiKey { key: "k".into(), header: None })).unwrap();
    assert_eq!(out.parts.headers, headers(&[("x-api-key", "sk-ant")]));
    for kind in ProviderKind::ALL.iter().filter(|k| **k != ProviderKind::Anthropic) {
        let a =
            Allowed { transforms: vec![Transform::ProviderAuth { credential: "p".into(), kind: *kind }], ..a.clone() };
        let mut v = Vault::default();
        v.creds.insert("p".into(), CredentialMaterial::Oauth2ClientCredentials { access_token: "at".into() });
        let out = apply_transforms(&a, RequestParts::default(), &v).unwrap();
        assert_eq!(out.parts.headers, headers(&[("Authorization", "Bearer at")]), "{kind:?}");
        v.creds.insert("p".into(), CredentialMaterial::BasicAuth { username: "u".into(), password: "p".into() });
        let d = apply_transforms(&a, RequestParts::default(), &v).unwrap_err();
        assert_eq!(d.reason, DenyReason::AuthUnavailable);
    }
}

#[test]
fn missing_credential_or_secret_denies_never_forwards_bare() {
    let a = allowed("GET", "https://api.example.com/v1/models");
    let mut v = vault(CredentialMaterial::ApiKey { key: "k".into(), header: None });
    v.creds.remove("example-key");
    let d = apply_transforms(&a, RequestParts::default(), &v).unwrap_err();
    assert_eq!(
        (d.reason, d.capability.as_deref(), d.rule.as_deref()),
        (DenyReason::AuthUnavailable, Some("upstream"), Some("read"))
    );
    assert_eq!(d.detail.as_deref(), Some("credential `example-key`"));
    let mut v = vault(CredentialMaterial::ApiKey { key: "k".into(), header: None });
    v.secrets.clear();
    let d = apply_transforms(&a, RequestParts::default(), &v).unwrap_err();
    assert_eq!(d.detail.as_deref(), Some("secret `tenant-id`"));
    // Material that would split a header is refused, not stamped.
    let v = vault(CredentialMaterial::ApiKey { key: "k\r\nX-Evil: 1".into(), header: None });
    let d = apply_transforms(&a, RequestParts::default(), &v).unwrap_err();
    assert_eq!(d.reason, DenyReason::AuthUnavailable);
    let mut v = vault(CredentialMaterial::ApiKey { key: "k".into(), header: None });
    v.secrets.insert("tenant-id".into(), "a\nb".into());
    assert!(apply_transforms(&a, RequestParts::default(), &v).is_err());
    let v = vault(CredentialMaterial::BasicAuth { username: "a:b".into(), password: "p".into() });
    assert!(apply_transforms(&a, RequestParts::default(), &v).is_err());
    let closures = FnLookup(|_: &str| None, |n: &str| (n == "tenant-id").then(|| "t".to_string()));
    assert_eq!(
        apply_transforms(&a, RequestParts::default(), &closures).unwrap_err().detail.as_deref(),
        Some("credential `example-key`")
    );
    let closures =
        FnLookup(|_: &str| Some(CredentialMaterial::ApiKey { key: "k".into(), header: None }), |_: &str| None);
    assert_eq!(
        apply_transforms(&a, RequestParts::default(), &closures).unwrap_err().detail.as_deref(),
        Some("secret `tenant-id`")
    );
    let p = policy();
    let guarded = decide(&p, &req("GET", "https://api.anthropic.com/")).1;
    let Decision::Allow(g) = guarded else { panic!() };
    let d = apply_transforms(&g, RequestParts::default(), &Vault::default()).unwrap_err();
    assert_eq!(d.detail.as_deref(), Some("credential `anthropic-key`"));
}

#[test]
fn decision_audit_names_everything_but_values() {
    let p = policy();
    let (n, d) = decide(&p, &req("GET", "https://api.example.com/v1/%2e%2e/v1/x?token=agent-secret&q=1"));
    let n = n.unwrap();
    let a = match &d {
        Decision::Allow(a) => a.clone(),
        other => panic!("{other:?}"),
    };
    let applied = apply_transforms(
        &a,
        RequestParts::default(),
        &vault(CredentialMaterial::ApiKey { key: "k".into(), header: None }),
    )
    .unwrap();
    let v = serde_json::to_value(decision_audit(&n, &d, Some(&applied))).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "destination": "api.example.com:443", "scheme": "https", "method": "GET",
            "path": "/v1/x?token=REDACTED&q=1", "decision": "allow", "reason": null,
            "capability": "upstream", "rule": "read",
            "transforms": ["auth:example-key", "headers:-X-Debug,+X-Tenant,+Authorization-Extra"],
        })
    );
    let (n, d) = decide(&p, &req("POST", "http://evil.test/x"));
    let v = serde_json::to_value(decision_audit(&n.unwrap(), &d, None)).unwrap();
    assert_eq!(
        (v["decision"].as_str(), v["reason"].as_str(), v["scheme"].as_str()),
        (Some("deny"), Some("no_rule"), Some("http"))
    );
    assert!(!v.to_string().contains("agent-secret"));
}

#[test]
fn audit_view_redacts_credential_params() {
    assert_eq!(audit_target("/p", None, &[]), "/p");
    assert_eq!(
        audit_target("/p", Some("q=1&API_KEY=abc&access%5Ftoken=t&sig=s&x&token"), &[]),
        "/p?q=1&API_KEY=REDACTED&access%5Ftoken=REDACTED&sig=REDACTED&x&token"
    );
    assert_eq!(audit_target("/p", Some("mine=v&q=2"), &["mine".into()]), "/p?mine=REDACTED&q=2");
}

#[test]
fn bodies_name_reason_capability_and_rule_and_never_a_secret() {
    let (_, d) = decide(&policy(), &req("GET", "https://api.example.com/admin"));
    let Decision::Deny(d) = d else { panic!() };
    let (status, body) = denied_body(&d);
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "egress_denied");
    assert_eq!(
        body["error"]["details"],
        serde_json::json!({"reason": "path", "capability": "upstream", "rule": "read"})
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("path"));
    let (_, bare) = denied_body(&Denied::new(DenyReason::NoRule));
    assert_eq!(bare["error"]["details"], serde_json::json!({"reason": "no_rule"}));
    // An auth_unavailable body names the credential, not its value.
    let a = allowed("GET", "https://api.example.com/v1/models");
    let mut v = vault(CredentialMaterial::ApiKey { key: "sk-very-secret".into(), header: None });
    v.secrets.clear();
    v.secrets.insert("other".into(), "sk-very-secret".into());
    let (_, body) = denied_body(&apply_transforms(&a, RequestParts::default(), &v).unwrap_err());
    assert!(!body.to_string().contains("sk-very-secret"));
    assert!(body.to_string().contains("tenant-id"));
    let (status, body) =
        budget_body(&BudgetExceeded { name: "upstream.per_task".into(), limit: BudgetLimit::Requests, ceiling: 100 });
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert_eq!(
        body["error"]["details"],
        serde_json::json!({"budget": "upstream.per_task", "limit": "requests", "ceiling": 100})
    );
}

#[test]
fn stored_provider_and_role_merge() {
    use crate::ids::{OrgId, ProviderId, RoleId};
    let now = crate::Timestamp::now();
    let provider = crate::model::Provider {
        id: ProviderId::new(),
        org_id: OrgId::new(),
        name: "oai".into(),
        kind: ProviderKind::Openai,
        display_name: None,
        domain: "api.openai.com".into(),
        credential_name: Some("openai-key".into()),
        default_model: None,
        capabilities: Some("- name: docs\n  allow: [{domains: [docs.test], methods: [GET]}]\n".into()),
        config: Default::default(),
        created_at: now,
        updated_at: now,
        archived_at: None,
    };
    let role = crate::model::AgentRole {
        id: RoleId::new(),
        org_id: provider.org_id,
        name: "r".into(),
        display_name: None,
        description: None,
        provider_id: provider.id,
        model: None,
        capabilities: Some(DOC.into()),
        environment: Default::default(),
        environment_description: None,
        task_timeout_seconds: None,
        idle_timeout_seconds: None,
        thinking_effort: None,
        max_continuations: None,
        max_context_tokens: None,
        memory_limit_bytes: None,
        pids_limit: None,
        cpu_limit_millis: None,
        pool_policy: Default::default(),
        pool_size: None,
        pool_max_size: None,
        pack_ids: vec![],
        created_at: now,
        updated_at: now,
        archived_at: None,
    };
    let p = Policy::for_role(&provider, &role).unwrap();
    let names: Vec<&str> = p.capabilities.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["_provider", "docs", "upstream", "guarded"]);
    let Decision::Allow(a) = decide(&p, &req("POST", "https://api.openai.com/v1/chat/completions")).1 else { panic!() };
    let mut v = Vault::default();
    v.creds
        .insert("openai-key".into(), CredentialMaterial::ApiKey { key: "sk".into(), header: Some("ignored".into()) });
    let out = apply_transforms(&a, RequestParts::default(), &v).unwrap();
    assert_eq!(out.parts.headers, headers(&[("Authorization", "Bearer sk")]));
    let bad = crate::model::Provider { domain: "*.openai.com".into(), ..provider.clone() };
    assert!(Policy::for_role(&bad, &role).unwrap_err().0.contains_key("provider.domain"));
    let bad_role = crate::model::AgentRole { capabilities: Some("- name: [".into()), ..role };
    assert!(Policy::for_role(&provider, &bad_role).unwrap_err().0.contains_key("role.capabilities"));
}

/// Path pieces that mix ordinary segments with every trick the normaliser must see through.
fn path_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just("%2f".to_string()),
        Just("%2F".to_string()),
        Just("%252e".to_string()),
        Just("%20".to_string()),
        Just("v1".to_string()),
        Just("admin".to_string()),
        "[a-z0-9._~-]{1,4}",
    ]
}

fn trick_path() -> impl Strategy<Value = String> {
    prop::collection::vec(path_piece(), 0..12).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn normalised_paths_hold_no_dot_segments_or_double_slashes(p in trick_path()) {
        let n = normalise_path(&p).unwrap();
        prop_assert!(n.starts_with('/'));
        prop_assert!(!n.contains("//"), "{} -> {}", p, n);
        prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{} -> {}", p, n);
        prop_assert!(!n.to_ascii_lowercase().contains("%2e") && !n.to_ascii_lowercase().contains("%2f"));
        // Normalisation is idempotent: forwarding the result and normalising again changes nothing.
        prop_assert_eq!(normalise_path(&n).unwrap(), n);
    }

    /// Dressing a path up with tricks (`/./`, `//`, `x/..`, escapes of unreserved bytes) never changes the decision:
    /// a path denied plainly is still denied once dressed, and vice versa.
    #[test]
    fn tricks_never_change_the_decision(
        segs in prop::collection::vec(prop_oneof![Just("v1"), Just("admin"), Just("items"), Just("7"), Just("x")], 0..5),
        dress in prop::collection::vec(0u8..6, 0..5),
        method in prop_oneof![Just("GET"), Just("POST")],
    ) {
        let plain = format!("/{}", segs.join("/"));
        let mut dressed = String::new();
        for (i, s) in segs.iter().enumerate() {
            match dress.get(i).copied().unwrap_or(0) {
                1 => dressed.push_str("/."),
                2 => dressed.push('/'),
                3 => dressed.push_str("/junk/.."),
                4 => dressed.push_str("/%2e/"),
                5 => dressed.push_str("/junk%2f%2E%2e"),
                _ => {}
            }
            dressed.push('/');
            for b in s.bytes() {
                if b == b'i' { dressed.push_str("%69") } else { dressed.push(b as char) }
            }
        }
        if dressed.is_empty() { dressed.push('/'); }
        let p = policy();
        let d1 = decide(&p, &req(method, &format!("https://api.example.com{plain}"))).1;
        let d2 = decide(&p, &req(method, &format!("https://api.example.com{dressed}"))).1;
        prop_assert_eq!(outcome(&d1), outcome(&d2), "{} vs {}", plain, dressed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Anything at all: normalisation never panics, and what it accepts holds the invariants.
    #[test]
    fn arbitrary_targets_never_panic(p in "/[ -~]{0,40}|\\PC{0,20}", a in "[ -~]{0,30}") {
        if let Ok(n) = normalise_path(&p) {
            prop_assert!(n.starts_with('/') && !n.contains("//"));
            prop_assert!(!n.split('/').any(|s| s == "." || s == ".."));
        }
        let _ = normalise(&RawRequest { tls: true, sni: Some(a.clone()), authority: a, port: 443, method: "GET".into(), target: p });
    }

    /// `*.example.com` admits exactly the names with one label in front of `example.com`.
    #[test]
    fn one_label_wildcard(labels in prop::collection::vec("[a-z0-9]{1,5}", 0..4)) {
        let g = crate::caps::parse_domain("*.example.com").unwrap();
        let mut host = labels.join(".");
        if !host.is_empty() { host.push('.'); }
        host.push_str("example.com");
        prop_assert_eq!(g.matches(&parse_host(&host).unwrap(), 443, 443), labels.len() == 1, "{}", host);
    }

    /// Arbitrary caps.yaml text never panics the parser.
    #[test]
    fn arbitrary_caps_documents_never_panic(doc in "\\PC{0,200}") {
        let mut e = FieldErrors::default();
        let _ = crate::caps::parse(&mut e, "c", Some(&doc));
    }
}
