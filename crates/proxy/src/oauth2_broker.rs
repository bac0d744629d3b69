//! The OAuth2 client-credentials broker: mints an access token from a credential's token endpoint (dialled with the
//! upstream rules: `upstream_hosts`, the upstream CA, internal addresses refused), keeps it until shortly before it
//! expires, and tells the `Directory` how each mint went. One mint per credential at a time; a token endpoint that
//! refuses the client (`400`/`401`, `invalid_client` and the like) makes the credential `needs_reauth`. The token is
//! never logged; the endpoint's answer is read bounded and under a deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use evershell_core::ids::OrgId;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;

use crate::config::ProxyConfig;
use crate::directory::{ClientCredentialsGrant, Directory, MintResult};
use crate::upstream::{Dialer, Upstreams};

/// A token is reused until this long before its expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// A token endpoint that says nothing about expiry: keep the token this long.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Largest token response read.
const MAX_RESPONSE: usize = 64 * 1024;
const MINT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Cached {
    version: String,
    token: String,
    fresh_until: Instant,
}

/// Why a token could not be had (`auth_failures.<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintFailure(pub String);

/// Held while a credential is being minted.
type MintLock = Arc<tokio::sync::Mutex<()>>;

pub struct Oauth2Broker {
    client: Client<HttpsConnector<Dialer>, Full<Bytes>>,
    cache: std::sync::Mutex<HashMap<(OrgId, String), Cached>>,
    /// One mint at a time per credential.
    minting: std::sync::Mutex<HashMap<(OrgId, String), MintLock>>,
}

impl Oauth2Broker {
    pub fn new(cfg: &ProxyConfig) -> anyhow::Result<Self> {
        Ok(Self { client: Upstreams::own_client(cfg)?, cache: Default::default(), minting: Default::default() })
    }

    fn cached(&self, key: &(OrgId, String), version: &str) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key).filter(|c| c.version == version && c.fresh_until > Instant::now()).map(|c| c.token.clone())
    }

    /// Forget a credential's token (it was deleted or replaced).
    pub fn forget(&self, org: OrgId, credential_id: &str) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&(org, credential_id.to_string()));
    }

    /// A token for `grant`: the cached one while fresh, else a new mint (recorded through `dir`).
    pub async fn token<D: Directory>(
        &self,
        dir: &D,
        org: OrgId,
        grant: &ClientCredentialsGrant,
    ) -> Result<(String, bool), MintFailure> {
        let key = (org, grant.credential_id.clone());
        if let Some(t) = self.cached(&key, &grant.version) {
            return Ok((t, false));
        }
        let lock = self.minting.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default().clone();
        let _one = lock.lock().await;
        if let Some(t) = self.cached(&key, &grant.version) {
            return Ok((t, false));
        }
        let result = tokio::time::timeout(MINT_TIMEOUT, self.mint(grant))
            .await
            .unwrap_or_else(|_| Err(MintResult::Transient("token endpoint timed out".into())));
        match result {
            Ok((token, lifetime)) => {
                let fresh_until = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN).max(Duration::from_secs(1));
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, Cached { version: grant.version.clone(), token: token.clone(), fresh_until });
                if let Err(e) = dir.record_mint(org, &grant.credential_id, &MintResult::Minted).await {
                    tracing::warn!(credential_id = grant.credential_id, error = ?e, "recording a mint failed");
                }
                tracing::info!(credential_id = grant.credential_id, "oauth2 token minted");
                Ok((token, true))
            }
            Err(outcome) => {
                if let Err(e) = dir.record_mint(org, &grant.credential_id, &outcome).await {
                    tracing::warn!(credential_id = grant.credential_id, error = ?e, "recording a mint failed");
                }
                let (MintResult::Terminal(why) | MintResult::Transient(why)) = &outcome else { unreachable!() };
                tracing::warn!(credential_id = grant.credential_id, reason = why, "oauth2 mint failed");
                Err(MintFailure(match outcome {
                    MintResult::Terminal(_) => "needs_reauth".into(),
                    _ => "mint_failed".into(),
                }))
            }
        }
    }

    async fn mint(&self, grant: &ClientCredentialsGrant) -> Result<(String, Duration), MintResult> {
        let transient = |s: String| MintResult::Transient(s);
        if !grant.token_url.starts_with("https://") {
            return Err(MintResult::Terminal("token_url must be https".into()));
        }
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        if !grant.scopes.is_empty() {
            form.push(("scope", grant.scopes.join(" ")));
        }
        let body: String = form.iter().map(|(k, v)| format!("{k}={}", form_encode(v))).collect::<Vec<_>>().join("&");
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(&grant.client_id),
            form_encode(&grant.client_secret)
        ));
        let req = Request::post(&grant.token_url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, format!("Basic {basic}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| MintResult::Terminal("token_url is not a valid URL".into()))?;
        let resp = self.client.request(req).await.map_err(|e| transient(format!("token endpoint unreachable: {e}")))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|_| transient("token response unreadable or too large".into()))?
            .to_bytes();
        let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        if !status.is_success() {
            let error = json.as_ref().and_then(|j| j.get("error")).and_then(|e| e.as_str()).unwrap_or("");
            let terminal = matches!(status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED)
                || matches!(error, "invalid_client" | "unauthorized_client" | "invalid_grant" | "invalid_scope");
            let code: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            let why = if code.is_empty() { format!("http_{}", status.as_u16()) } else { code };
            return Err(if terminal { MintResult::Terminal(why) } else { MintResult::Transient(why) });
        }
        let json = json.ok_or_else(|| transient("token response is not JSON".into()))?;
        let token = json
            .get("access_token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| (0x21..0x7f).contains(&b)))
            .ok_or_else(|| transient("token response has no usable access_token".into()))?;
        let lifetime = json
            .get("expires_in")
            .and_then(|e| e.as_u64().or_else(|| e.as_str().and_then(|s| s.parse().ok())))
            .map_or(DEFAULT_LIFETIME, |s| Duration::from_secs(s.min(24 * 3600)));
        Ok((token.to_string(), lifetime))
    }
}

/// `application/x-www-form-urlencoded` value encoding.
fn form_encode(s: &str) -> String {
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
