//! Password sign-in — `POST /v1/auth/login` and `POST /v1/auth/accept-invite` — behind the throttle (`throttle`):
//! a refused attempt is answered `429` before any password work; argon2 runs on the bounded pool (`passwords`);
//! a wrong password writes `login_failed` and a refusal `login_throttled` (once per back-off period) in the orgs of
//! the account concerned, never with the password. An unknown email costs the same dummy verification and gets the
//! same answer as a wrong password.

use std::net::IpAddr;

use evershell_core::audit::{AuditEvent, EventType};
use evershell_core::ids::{OrgId, UserId};
use evershell_core::model::{MembershipStatus, User};
use evershell_core::names;
use evershell_core::{Error, FieldErrors, Result, Timestamp};

use crate::App;
use crate::identity::{AcceptInviteRequest, LoginRequest, SessionToken};
use crate::secrets;
use crate::throttle::{self, Throttled};

/// Where a sign-in attempt came from: its route, the client's address (the TCP peer) and the request id.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub route: &'static str,
    pub client: Option<IpAddr>,
    pub request_id: Option<&'a str>,
}

impl Attempt<'_> {
    fn event(&self, org: OrgId, t: EventType, user: &User, extra: serde_json::Value) -> AuditEvent {
        let mut details = serde_json::json!({
            "route": self.route,
            "email": user.email,
            "client_address": self.client.map(|c| c.to_string()),
        });
        if let (Some(d), serde_json::Value::Object(x)) = (details.as_object_mut(), extra) {
            d.extend(x);
        }
        AuditEvent::system(org, t).target("user", user.id).request(self.request_id).details(details)
    }
}

fn outcome(route: &'static str, outcome: &'static str) {
    metrics::counter!("evershell_login_attempts_total", "route" => route, "outcome" => outcome).increment(1);
}

impl App {
    pub async fn login(&self, req: LoginRequest, at: Attempt<'_>) -> Result<SessionToken> {
        let email = names::normalize_email(&req.email);
        let keys = throttle::keys(Some(&email), at.client);
        if let Err(t) = self.begin_attempt(&keys).await? {
            // The account is looked up only when the refusal opens a back-off period (and is audited): a flood of
            // refused attempts costs one read each.
            if t.counter.noted_at.is_none()
                && let Some(u) = self.store.get_user_by_email(&email).await?
            {
                let orgs = self.audit_orgs(&u, req.org.as_deref()).await?;
                self.report_throttled(&t, Some(&u), &orgs, at).await;
            } else {
                self.report_throttled(&t, None, &[], at).await;
            }
            return Err(self.refuse(&t).await);
        }
        let user = self.store.get_user_by_email(&email).await?;
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        let verified = self.passwords.verify(hash, req.password).await?;
        let user = match user {
            Some(u) if verified => u,
            other => {
                // Known or not, a failure does the same store work (one read, one write), so its answer time does
                // not tell which accounts exist.
                self.report_failed(other.as_ref(), req.org.as_deref(), "wrong_password", at).await?;
                return Err(Error::unauthenticated());
            }
        };
        let active: Vec<_> = self
            .store
            .list_user_memberships(user.id)
            .await?
            .into_iter()
            .filter(|(m, _)| m.status == MembershipStatus::Active)
            .collect();
        let org = match &req.org {
            Some(wanted) => {
                active.iter().find(|(_, o)| o.slug == *wanted || o.id.to_string() == *wanted).map(|(_, o)| o.id)
            }
            None => match active.as_slice() {
                [(_, o)] => Some(o.id),
                [] => None,
                _ => {
                    // The password was right (the answer says as much): nothing to hold against the account.
                    self.attempt_succeeded(&keys).await?;
                    return Err(Error::invalid_field(
                        "org",
                        "the user belongs to several organisations; name one (slug or id)",
                    ));
                }
            },
        };
        let Some(org) = org else {
            // A right password for an org the account cannot sign in to counts as a failure: the same 401 as a wrong
            // one, so the counter must not tell them apart either.
            self.report_failed(Some(&user), req.org.as_deref(), "no_active_membership", at).await?;
            return Err(Error::unauthenticated());
        };
        let (token, session) = self.mint_session(&user, org, at.request_id).await?;
        self.attempt_succeeded(&keys).await?;
        outcome(at.route, "succeeded");
        Ok(SessionToken { token, expires_at: session.expires_at, user_id: user.id, org_id: org })
    }

    /// Accept an invitation: set the password (a user without one) or prove the existing one, activate the
    /// membership, and sign in. Throttled like `login`, on the invited account and the client's address (an
    /// unknown token counts against the address).
    pub async fn accept_invite(&self, req: AcceptInviteRequest, at: Attempt<'_>) -> Result<SessionToken> {
        let mut errs = FieldErrors::default();
        names::check_password(&mut errs, "password", &req.password);
        errs.into_result()?;
        let invalid = || Error::invalid_field("invite_token", "is not a valid, pending invitation");
        let m = self.store.find_invitation(&secrets::hash_secret(&req.invite_token)).await?;
        let user = match &m {
            Some(m) => self.store.get_user(m.user_id).await?,
            None => None,
        };
        let keys = throttle::keys(user.as_ref().map(|u| u.email.as_str()), at.client);
        if let Err(t) = self.begin_attempt(&keys).await? {
            let orgs: Vec<OrgId> = m.iter().map(|m| m.org_id).collect();
            self.report_throttled(&t, user.as_ref(), &orgs, at).await;
            return Err(self.refuse(&t).await);
        }
        let (Some(m), Some(user)) = (m, user) else {
            outcome(at.route, "failed");
            return Err(invalid());
        };
        let new_hash = match &user.password_hash {
            Some(existing) => {
                if !self.passwords.verify(Some(existing.clone()), req.password).await? {
                    let org = m.org_id.to_string();
                    self.report_failed(Some(&user), Some(&org), "wrong_password", at).await?;
                    return Err(Error::invalid_field(
                        "password",
                        "this account already has a password: accept with that password, not a new one",
                    ));
                }
                None
            }
            None => Some(self.passwords.hash(req.password).await?),
        };
        let audit = AuditEvent::new(m.org_id, m.user_id.to_string(), EventType::InvitationAccepted)
            .target("membership", m.user_id)
            .request(at.request_id);
        self.store.accept_invitation(m.org_id, m.user_id, new_hash.as_deref(), Timestamp::now(), &[audit]).await?;
        let (token, session) = self.mint_session(&user, m.org_id, at.request_id).await?;
        self.attempt_succeeded(&keys).await?;
        outcome(at.route, "succeeded");
        Ok(SessionToken { token, expires_at: session.expires_at, user_id: user.id, org_id: m.org_id })
    }

    /// The orgs a sign-in event about `user` belongs in: the org named in the request if the user is in it, else
    /// every org where the user is an active member.
    async fn audit_orgs(&self, user: &User, wanted: Option<&str>) -> Result<Vec<OrgId>> {
        let all = self.store.list_user_memberships(user.id).await?;
        if let Some(w) = wanted
            && let Some((_, o)) = all.iter().find(|(_, o)| o.slug == w || o.id.to_string() == w)
        {
            return Ok(vec![o.id]);
        }
        Ok(all.into_iter().filter(|(m, _)| m.status == MembershipStatus::Active).map(|(_, o)| o.id).collect())
    }

    /// Write `login_failed` for a known account (in `audit_orgs`) — for an unknown one the same read and write
    /// happen with nothing found and nothing to write.
    async fn report_failed(
        &self,
        user: Option<&User>,
        wanted: Option<&str>,
        reason: &str,
        at: Attempt<'_>,
    ) -> Result<()> {
        outcome(at.route, "failed");
        let rows: Vec<_> = match user {
            Some(u) => {
                tracing::info!(user_id = %u.id, route = at.route, reason, "sign-in failed");
                let orgs = self.audit_orgs(u, wanted).await?;
                orgs.iter()
                    .map(|o| at.event(*o, EventType::LoginFailed, u, serde_json::json!({ "reason": reason })))
                    .collect()
            }
            None => {
                self.store.list_user_memberships(UserId::new()).await?;
                vec![]
            }
        };
        self.store.settle_login_attempt(&[], &[], &rows).await
    }

    /// Count the refusal, and write `login_throttled` once per back-off period of the refusing key. A failure to
    /// write it is logged, never turned into another answer than the 429.
    async fn report_throttled(&self, t: &Throttled, user: Option<&User>, orgs: &[OrgId], at: Attempt<'_>) {
        outcome(at.route, "throttled");
        let Some(user) = user else { return };
        if t.counter.noted_at.is_some() || orgs.is_empty() {
            return;
        }
        let extra = serde_json::json!({
            "throttled_by": t.kind.as_str(),
            "failures": t.counter.failures,
            "retry_after_seconds": t.retry_after_seconds(),
        });
        let rows: Vec<_> = orgs.iter().map(|o| at.event(*o, EventType::LoginThrottled, user, extra.clone())).collect();
        let noted = self.store.note_login_throttled(&t.counter.key, t.counter.last_failure_at, &rows).await;
        if noted.is_ok() {
            self.refusals().mark_noted(&t.counter.key);
        }
        match noted {
            Ok(true) => tracing::warn!(user_id = %user.id, route = at.route, throttled_by = t.kind.as_str(),
                retry_after_s = t.retry_after_seconds(), "sign-in attempts throttled"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = ?e, "could not record a login_throttled audit row"),
        }
    }
}
