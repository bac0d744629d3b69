//! The billing gate: create-class calls need an `active` org or an unexpired trial (423 `billing_inactive`);
//! reads and wind-down calls never come here.

use evershell_core::{Error, ErrorCode, Result, Timestamp};

use crate::App;
use crate::caller::Caller;

impl App {
    /// Refuse a create-class call when the caller's org may not create. Called after the 404 and ownership checks
    /// and before the 409 state checks (CONTRACT.md §4 order).
    pub async fn ensure_billing(&self, caller: &Caller) -> Result<()> {
        let org = self
            .store
            .get_org(caller.org_id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::OrgNotFound, "the caller's organisation no longer exists"))?;
        let now = Timestamp::now();
        if org.allows_create(now) { Ok(()) } else { Err(Error::billing_inactive(org.posture(now))) }
    }
}
