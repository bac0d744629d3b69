//! Secret material: argon2 password hashes, API-key values (`sk_live_…`, stored as sha256), invite tokens, and
//! session JWTs (HS256 with a server key kept in the store so every replica and the admin CLI agree).

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Argon2, PasswordHash};
use evershell_core::ids::{OrgId, SessionId, UserId};
use evershell_core::{Error, Result, Timestamp};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every API-key value.
pub const API_KEY_PREFIX: &str = "sk_live_";

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn random_base62(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| BASE62[rng.random_range(0..BASE62.len())] as char).collect()
}

/// sha256 hex of a high-entropy secret (API keys, invite tokens). These carry ~238 random bits, so a fast hash is
/// safe and keeps per-request verification cheap; passwords use argon2.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new API key: `(value, sha256 of value, masked prefix)`.
pub fn new_api_key() -> (String, String, String) {
    let value = format!("{API_KEY_PREFIX}{}", random_base62(40));
    let hash = hash_secret(&value);
    let masked = format!("{API_KEY_PREFIX}...{}", &value[value.len() - 4..]);
    (value, hash, masked)
}

/// A new one-time invite token and its hash.
pub fn new_invite_token() -> (String, String) {
    let token = format!("inv_{}", random_base62(40));
    let hash = hash_secret(&token);
    (token, hash)
}

/// Random bytes for a new server key.
pub fn random_key_material() -> Vec<u8> {
    let mut k = vec![0u8; 32];
    rand::rng().fill(&mut k[..]);
    k
}

/// An argon2id hash with the default parameters. Blocking: call it through `PasswordPool` on the server.
pub fn hash_password(password: &str) -> Result<String> {
    PasswordHasher::<PasswordHash>::hash_password(&Argon2::default(), password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(anyhow::anyhow!("argon2: {e}")))
}

/// Check a password against a stored hash. With `None` (unknown user, or no password set) a dummy hash made with
/// the same parameters is checked, so the answer takes as long either way. Blocking: call it through
/// `PasswordPool`.
pub fn verify_password(hash: Option<&str>, password: &str) -> bool {
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        hash_password(&random_base62(24)).expect("argon2 hashes a random password with its default parameters")
    });
    match PasswordHash::new(hash.unwrap_or(DUMMY.as_str())) {
        Ok(p) => Argon2::default().verify_password(password.as_bytes(), &p).is_ok() && hash.is_some(),
        Err(_) => false,
    }
}

/// Claims of a session JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    pub sub: String,
    pub org: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

const ISSUER: &str = "evershell";

pub fn mint_session_jwt(key: &[u8], user: UserId, org: OrgId, sid: SessionId, expires_at: Timestamp) -> Result<String> {
    let claims = SessionClaims {
        sub: user.to_string(),
        org: org.to_string(),
        sid: sid.to_string(),
        iat: Timestamp::now().millis() / 1000,
        exp: expires_at.millis() / 1000,
        iss: ISSUER.into(),
    };
    let key = EncodingKey::from_secret(key).map_err(|e| Error::internal(anyhow::anyhow!("jwt key: {e}")))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| Error::internal(anyhow::anyhow!("jwt encode: {e}")))
}

/// Decode and check a session JWT's signature, issuer and expiry. `None` for anything invalid.
pub fn decode_session_jwt(key: &[u8], token: &str) -> Option<(UserId, OrgId, SessionId)> {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&[ISSUER]);
    v.leeway = 0;
    let key = DecodingKey::from_secret(key).ok()?;
    let data = jsonwebtoken::decode::<SessionClaims>(token, &key, &v).ok()?;
    let c = data.claims;
    Some((c.sub.parse().ok()?, c.org.parse().ok()?, c.sid.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_prefixed_masked_and_hashed() {
        let (v, h, m) = new_api_key();
        assert!(v.starts_with("sk_live_") && v.len() == 48);
        assert_eq!(h, hash_secret(&v));
        assert!(m.starts_with("sk_live_...") && m.ends_with(&v[44..]));
        assert_ne!(new_api_key().0, v);
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(verify_password(Some(&h), "correct horse"));
        assert!(!verify_password(Some(&h), "wrong horse"));
        assert!(!verify_password(None, "correct horse"));
    }

    #[test]
    fn jwts_round_trip_and_reject_tampering() {
        let key = random_key_material();
        let (u, o, s) = (UserId::new(), OrgId::new(), SessionId::new());
        let t = mint_session_jwt(&key, u, o, s, Timestamp::now().plus_millis(60_000)).unwrap();
        assert!(t.starts_with("eyJ"));
        assert_eq!(decode_session_jwt(&key, &t), Some((u, o, s)));
        assert_eq!(decode_session_jwt(&random_key_material(), &t), None);
        let expired = mint_session_jwt(&key, u, o, s, Timestamp::now().plus_millis(-5_000)).unwrap();
        assert_eq!(decode_session_jwt(&key, &expired), None);
        assert_eq!(decode_session_jwt(&key, "eyJnope"), None);
    }
}
