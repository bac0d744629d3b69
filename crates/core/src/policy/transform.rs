//! Applying an allowed request's transforms, a pure function: credential material and secret values come from a
//! caller-supplied `Lookup`; headers the transforms set replace what the agent sent (case-insensitively, never
//! duplicated); a missing credential or secret denies `auth_unavailable` instead of forwarding bare. Also the audit
//! view of a request target, with query values that carry credentials redacted.

use std::fmt;

use base64::Engine as _;

use super::evaluate::{Allowed, Denied, DenyReason};
use super::model::{HeaderTemplate, TemplatePart, Transform};
use crate::model::ProviderKind;

/// Credential material in the form the proxy stamps it (minting is the caller's: an OAuth2 token arrives minted).
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialMaterial {
    /// `Authorization: Bearer <key>`, or `<header>: <key>` when the credential names a header.
    ApiKey { key: String, header: Option<String> },
    /// `Authorization: Basic base64(username:password)`.
    BasicAuth { username: String, password: String },
    /// Query parameter `param` (default `key`) = key.
    QueryApiKey { key: String, param: Option<String> },
    /// `Authorization: Bearer <access_token>`, the token minted by the caller's broker.
    Oauth2ClientCredentials { access_token: String },
}

impl CredentialMaterial {
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialMaterial::ApiKey { .. } => "api_key",
            CredentialMaterial::BasicAuth { .. } => "basic_auth",
            CredentialMaterial::QueryApiKey { .. } => "query_api_key",
            CredentialMaterial::Oauth2ClientCredentials { .. } => "oauth2_client_credentials",
        }
    }
}

/// Never prints material.
impl fmt::Debug for CredentialMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialMaterial::{}(<redacted>)", self.kind())
    }
}

/// Where transforms get credential material and secret values, by name. `None` = missing or unusable.
pub trait Lookup {
    fn credential(&self, name: &str) -> Option<CredentialMaterial>;
    fn secret(&self, name: &str) -> Option<String>;
}

/// A `Lookup` from two closures, for callers that keep credentials and secrets in maps or caches.
pub struct FnLookup<C, S>(pub C, pub S);

impl<C, S> Lookup for FnLookup<C, S>
where
    C: Fn(&str) -> Option<CredentialMaterial>,
    S: Fn(&str) -> Option<String>,
{
    fn credential(&self, name: &str) -> Option<CredentialMaterial> {
        (self.0)(name)
    }
    fn secret(&self, name: &str) -> Option<String> {
        (self.1)(name)
    }
}

/// The parts of a request transforms may change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestParts {
    /// In order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The raw query (after `?`), if any.
    pub query: Option<String>,
}

/// The transformed request, plus what the audit row records.
#[derive(Clone, PartialEq, Eq)]
pub struct Applied {
    pub parts: RequestParts,
    /// `Transform::audit_name` of each transform applied, in order (names only, never values).
    pub applied: Vec<String>,
    /// Query parameters whose values carry credentials; `audit_target` redacts them.
    pub redact_params: Vec<String>,
}

/// Never prints header values (they may hold credentials now).
impl fmt::Debug for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.parts.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Applied")
            .field("headers", &names)
            .field("applied", &self.applied)
            .field("redact_params", &self.redact_params)
            .finish()
    }
}

/// Apply `allowed`'s transforms in order to `parts`.
pub fn apply_transforms(allowed: &Allowed, parts: RequestParts, lookup: &dyn Lookup) -> Result<Applied, Denied> {
    let deny = |detail: String| Denied {
        reason: DenyReason::AuthUnavailable,
        capability: Some(allowed.capability.clone()),
        rule: Some(allowed.rule.clone()),
        detail: Some(detail),
    };
    let mut out = Applied { parts, applied: Vec::new(), redact_params: Vec::new() };
    for t in &allowed.transforms {
        match t {
            Transform::Auth { credential } => {
                let m = lookup.credential(credential).ok_or_else(|| deny(format!("credential `{credential}`")))?;
                stamp(&mut out, &m).map_err(|why| deny(format!("credential `{credential}` {why}")))?;
            }
            Transform::ProviderAuth { credential, kind } => {
                let m = lookup.credential(credential).ok_or_else(|| deny(format!("credential `{credential}`")))?;
                let token = match &m {
                    CredentialMaterial::ApiKey { key, .. } => key,
                    CredentialMaterial::Oauth2ClientCredentials { access_token } => access_token,
                    other => {
                        return Err(deny(format!(
                            "credential `{credential}` is {}, which a {} provider cannot carry",
                            other.kind(),
                            kind.as_str()
                        )));
                    }
                };
                let (name, value) = match kind {
                    ProviderKind::Anthropic => ("x-api-key", token.clone()),
                    _ => ("Authorization", format!("Bearer {token}")),
                };
                set_header(&mut out.parts, name, value)
                    .map_err(|why| deny(format!("credential `{credential}` {why}")))?;
            }
            Transform::Headers { set, remove } => {
                for h in remove {
                    out.parts.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(h));
                }
                for (name, template) in set {
                    let value = render(template, lookup).map_err(deny)?;
                    set_header(&mut out.parts, name, value).map_err(|why| deny(format!("header `{name}` {why}")))?;
                }
            }
        }
        out.applied.push(t.audit_name());
    }
    Ok(out)
}

fn stamp(out: &mut Applied, m: &CredentialMaterial) -> Result<(), String> {
    match m {
        CredentialMaterial::ApiKey { key, header: Some(h) } => set_header(&mut out.parts, h, key.clone()),
        CredentialMaterial::ApiKey { key, header: None } => {
            set_header(&mut out.parts, "Authorization", format!("Bearer {key}"))
        }
        CredentialMaterial::Oauth2ClientCredentials { access_token } => {
            set_header(&mut out.parts, "Authorization", format!("Bearer {access_token}"))
        }
        CredentialMaterial::BasicAuth { username, password } => {
            if username.contains(':') {
                return Err("has a `:` in its username, which Basic auth cannot carry".into());
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            set_header(&mut out.parts, "Authorization", format!("Basic {b64}"))
        }
        CredentialMaterial::QueryApiKey { key, param } => {
            let param = param.as_deref().unwrap_or("key");
            if param.is_empty() {
                return Err("names an empty query parameter".into());
            }
            let mut pairs: Vec<&str> = match &out.parts.query {
                Some(q) => q.split('&').filter(|p| !p.is_empty() && param_name(p) != param).collect(),
                None => Vec::new(),
            };
            let stamped = format!("{}={}", encode_component(param), encode_component(key));
            pairs.push(&stamped);
            out.parts.query = Some(pairs.join("&"));
            out.redact_params.push(param.to_string());
            Ok(())
        }
    }
}

/// Replace every `name` header (case-insensitively) by one `name: value`.
fn set_header(parts: &mut RequestParts, name: &str, value: String) -> Result<(), String> {
    if !valid_header_value(&value) {
        return Err("would make a header value with control characters".into());
    }
    parts.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    parts.headers.push((name.to_string(), value));
    Ok(())
}

fn render(t: &HeaderTemplate, lookup: &dyn Lookup) -> Result<String, String> {
    let mut s = String::new();
    for p in &t.parts {
        match p {
            TemplatePart::Literal(l) => s.push_str(l),
            TemplatePart::Secret(name) => s.push_str(&lookup.secret(name).ok_or_else(|| format!("secret `{name}`"))?),
        }
    }
    Ok(s)
}

/// Visible ASCII, space and tab, and obs-text; no CR, LF or NUL (RFC 9110 §5.5).
fn valid_header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// Query parameter names whose values carry credentials in common APIs; always redacted in the audit view.
pub const CREDENTIAL_PARAMS: &[&str] = &[
    "key",
    "api_key",
    "apikey",
    "api-key",
    "access_token",
    "token",
    "auth",
    "password",
    "secret",
    "client_secret",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-goog-signature",
    "code",
];

/// The audit view of a target: the path, and the query with the values of `redact` parameters and of
/// `CREDENTIAL_PARAMS` replaced by `REDACTED` (names compared case-insensitively, after percent-decoding).
pub fn audit_target(path: &str, query: Option<&str>, redact: &[String]) -> String {
    let Some(q) = query else { return path.to_string() };
    let redacted: Vec<String> = q
        .split('&')
        .map(|pair| {
            let name = param_name(pair);
            let secret = redact.iter().any(|r| r.eq_ignore_ascii_case(&name))
                || CREDENTIAL_PARAMS.iter().any(|r| r.eq_ignore_ascii_case(&name));
            match pair.split_once('=') {
                Some((raw_name, _)) if secret => format!("{raw_name}=REDACTED"),
                _ => pair.to_string(),
            }
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

/// The percent-decoded name of `name=value` (`+` is a space).
fn param_name(pair: &str) -> String {
    let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |x: u8| (x as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encode everything but unreserved characters.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
