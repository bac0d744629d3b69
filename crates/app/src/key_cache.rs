//! `KeyCache`: verified API keys kept in memory so an authenticated request costs no extra store read — only when
//! this server is the only one that can revoke a key (single-server SQLite mode). Revocation through the API evicts
//! the key before it answers, and a revocation epoch stops a lookup that raced with it from putting the revoked key
//! back, so a revoked key still gets 401 on the very next request. With PostgreSQL (several replicas) the cache is
//! off: another replica's revocation must be seen at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use evershell_core::ids::ApiKeyId;
use evershell_core::model::ApiKey;

/// How long a cached key is trusted before it is read again.
const TTL: Duration = Duration::from_secs(60);
/// Most keys kept; past this the cache is cleared (keys are few; this only bounds memory under abuse).
const MAX: usize = 10_000;

#[derive(Default)]
struct Inner {
    epoch: u64,
    keys: HashMap<String, (ApiKey, Instant)>,
}

#[derive(Default)]
pub struct KeyCache {
    enabled: bool,
    inner: Mutex<Inner>,
}

impl KeyCache {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, inner: Mutex::default() }
    }

    /// The cached key for a secret hash, if fresh; and the epoch to pass to `insert` after a store lookup.
    pub fn get(&self, hash: &str) -> (Option<ApiKey>, u64) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let hit = self.enabled.then(|| g.keys.get(hash)).flatten().filter(|(_, at)| at.elapsed() < TTL);
        (hit.map(|(k, _)| k.clone()), g.epoch)
    }

    /// Remember a key read from the store, unless a revocation happened since the lookup began (`epoch`).
    pub fn insert(&self, hash: &str, key: &ApiKey, epoch: u64) {
        if !self.enabled {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.epoch != epoch {
            return;
        }
        if g.keys.len() >= MAX {
            g.keys.clear();
        }
        g.keys.insert(hash.to_string(), (key.clone(), Instant::now()));
    }

    /// Forget a revoked key (call after the revocation is committed, before answering).
    pub fn evict(&self, id: ApiKeyId) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.epoch += 1;
        g.keys.retain(|_, (k, _)| k.id != id);
    }
}

#[cfg(test)]
mod tests {
    use evershell_core::Timestamp;
    use evershell_core::ids::OrgId;
    use evershell_core::scope::PermissionSet;

    use super::*;

    fn key() -> ApiKey {
        ApiKey {
            id: ApiKeyId::new(),
            org_id: OrgId::new(),
            label: "k".into(),
            prefix: "sk_live_...abcd".into(),
            permission_set: PermissionSet::ReadOnly,
            permissions: vec![],
            created_by_user_id: None,
            created_at: Timestamp::now(),
        }
    }

    #[test]
    fn hits_after_insert_and_misses_after_evict() {
        let c = KeyCache::new(true);
        let k = key();
        let (miss, epoch) = c.get("h");
        assert!(miss.is_none());
        c.insert("h", &k, epoch);
        assert_eq!(c.get("h").0, Some(k.clone()));
        c.evict(k.id);
        assert!(c.get("h").0.is_none());
    }

    #[test]
    fn a_lookup_that_raced_a_revocation_is_not_cached() {
        let c = KeyCache::new(true);
        let k = key();
        let (_, epoch) = c.get("h"); // lookup starts, reads the key from the store...
        c.evict(k.id); // ...the key is revoked meanwhile...
        c.insert("h", &k, epoch); // ...and the stale answer must not be kept.
        assert!(c.get("h").0.is_none());
    }

    #[test]
    fn disabled_never_caches() {
        let c = KeyCache::new(false);
        let k = key();
        c.insert("h", &k, 0);
        assert!(c.get("h").0.is_none());
    }
}
