//! Authentication: turning a bearer credential (API key or session JWT) into a `Caller`, and minting sessions.
//! Every failure is the same `401 unauthenticated`, whatever the reason.

use evershell_core::ids::{OrgId, SessionId};
use evershell_core::model::{MembershipStatus, Session, User};
use evershell_core::{Error, Result, Timestamp};
use tokio::sync::OnceCell;

use crate::App;
use crate::caller::{Caller, Principal};
use crate::secrets::{self, API_KEY_PREFIX};

/// Name of the server key that signs session JWTs.
pub const SESSION_KEY_NAME: &str = "session_jwt_hs256";

/// The session-signing key, loaded (or created) once from the store.
#[derive(Default)]
pub struct SessionKey(OnceCell<Vec<u8>>);

impl SessionKey {
    pub async fn get(&self, store: &dyn evershell_store::Store) -> Result<&[u8]> {
        self.0
            .get_or_try_init(|| async { store.server_key(SESSION_KEY_NAME, &secrets::random_key_material()).await })
            .await
            .map(Vec::as_slice)
    }
}

impl App {
    /// Resolve a bearer credential. API keys are looked up by their sha256 (no argon2 per request); session JWTs are
    /// checked for signature and expiry, then against their server-side session (so logout revokes them) and the
    /// membership (so removal and role changes apply at once).
    pub async fn authenticate(&self, token: &str, request_id: Option<String>) -> Result<Caller> {
        if token.starts_with(API_KEY_PREFIX) {
            let hash = secrets::hash_secret(token);
            let key = match self.key_cache.get(&hash) {
                (Some(k), _) => k,
                (None, epoch) => {
                    let k = self.store.find_api_key(&hash).await?.ok_or_else(Error::unauthenticated)?;
                    self.key_cache.insert(&hash, &k, epoch);
                    k
                }
            };
            return Ok(Caller {
                org_id: key.org_id,
                scopes: evershell_core::scope::ScopeSet::new(key.permissions.iter().copied()),
                principal: Principal::ApiKey { key_id: key.id, label: key.label, permission_set: key.permission_set },
                request_id,
            });
        }
        if token.starts_with("eyJ") {
            let key = self.session_key.get(self.store.as_ref()).await?;
            let (user_id, org_id, sid) = secrets::decode_session_jwt(key, token).ok_or_else(Error::unauthenticated)?;
            let session = self.store.get_session(sid).await?.ok_or_else(Error::unauthenticated)?;
            let now = Timestamp::now();
            if session.revoked_at.is_some()
                || session.expires_at <= now
                || session.user_id != user_id
                || session.org_id != org_id
            {
                return Err(Error::unauthenticated());
            }
            let m = self.store.get_membership(org_id, user_id).await?.ok_or_else(Error::unauthenticated)?;
            if m.status != MembershipStatus::Active {
                return Err(Error::unauthenticated());
            }
            return Ok(Caller {
                org_id,
                scopes: m.role.scopes(),
                principal: Principal::User { user_id, email: m.email, role: m.role, session_id: sid },
                request_id,
            });
        }
        Err(Error::unauthenticated())
    }

    /// Create a session for `user` in `org` and its JWT.
    pub async fn mint_session(&self, user: &User, org: OrgId, request_id: Option<&str>) -> Result<(String, Session)> {
        mint_session(self.store.as_ref(), &self.session_key, self.config.session_ttl_ms, user, org, request_id).await
    }
}

/// Create a session row (with its audit row) and sign its JWT. Shared by login, accept-invite and `admin session`.
pub async fn mint_session(
    store: &dyn evershell_store::Store,
    key: &SessionKey,
    ttl_ms: i64,
    user: &User,
    org: OrgId,
    request_id: Option<&str>,
) -> Result<(String, Session)> {
    let now = Timestamp::now();
    let session = Session {
        id: SessionId::new(),
        user_id: user.id,
        org_id: org,
        created_at: now,
        expires_at: now.plus_millis(ttl_ms),
        revoked_at: None,
    };
    let audit = evershell_core::audit::AuditEvent::new(
        org,
        user.id.to_string(),
        evershell_core::audit::EventType::LoginSucceeded,
    )
    .target("session", session.id)
    .request(request_id);
    store.create_session(&session, &[audit]).await?;
    let token = secrets::mint_session_jwt(key.get(store).await?, user.id, org, session.id, session.expires_at)?;
    Ok((token, session))
}
