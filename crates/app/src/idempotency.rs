//! `Idempotency-Key` claims as use cases for the API layer: begin (claim a key for this server process, or learn it
//! is a replay, a mismatch or in flight), renew the claim's lease while its request runs, abandon it (a server
//! error: the retry runs again), and complete it with the answer to keep. The claim's owner is this process
//! (`App::instance_id`); TTL and lease come from `AppConfig`.

use evershell_core::ids::OrgId;
use evershell_core::{Result, Timestamp};
pub use evershell_store::IdempotencyBegin;
use evershell_store::IdempotencyClaim;

use crate::App;

impl App {
    /// How long a claim's lease lasts without renewal (renew every third of it).
    pub fn idempotency_lease_ms(&self) -> i64 {
        self.config.idempotency_lease_ms.max(3)
    }

    /// Claim `key` (already scoped to the caller) for a request whose fingerprint is `fingerprint`.
    pub async fn idempotency_begin(&self, org: OrgId, key: &str, fingerprint: &str) -> Result<IdempotencyBegin> {
        let now = Timestamp::now();
        let claim = IdempotencyClaim {
            fingerprint,
            now,
            expires_at: now.plus_millis(self.config.idempotency_ttl_ms),
            owner: &self.instance_id,
            lease_until: now.plus_millis(self.idempotency_lease_ms()),
        };
        self.store.idempotency_begin(org, key, &claim).await
    }

    /// Extend our claim on `key`; `false` when another process took it over.
    pub async fn idempotency_renew(&self, org: OrgId, key: &str) -> Result<bool> {
        let until = Timestamp::now().plus_millis(self.idempotency_lease_ms());
        self.store.idempotency_renew(org, key, &self.instance_id, until).await
    }

    /// Drop our claim on `key` without keeping an answer.
    pub async fn idempotency_abandon(&self, org: OrgId, key: &str) -> Result<()> {
        self.store.idempotency_abandon(org, key, &self.instance_id).await
    }

    /// Keep the answer for `key`; `false` when our claim was taken over before (its answer is the one kept).
    pub async fn idempotency_complete(&self, org: OrgId, key: &str, status: u16, json: &str) -> Result<bool> {
        self.store.idempotency_complete(org, key, &self.instance_id, status, json).await
    }

    /// Readiness: the store answers.
    pub async fn ping_store(&self) -> Result<()> {
        self.store.ping().await
    }
}
