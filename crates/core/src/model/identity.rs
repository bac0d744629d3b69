//! Organisations and their billing posture, users, memberships, API keys and sign-in sessions.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{ApiKeyId, OrgId, SessionId, UserId};
use crate::scope::{MemberRole, PermissionSet, Scope};
use crate::time::Timestamp;

/// An organisation's billing posture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BillingStatus {
    /// Paid and in good standing.
    Active,
    /// In a trial; create-class calls work until `trial_ends_at`.
    Trial,
    /// Payment overdue: only reads and wind-down calls work.
    PastDue,
    /// Scheduled for decommission: only reads and wind-down calls work.
    Decommissioning,
}

impl BillingStatus {
    pub const ALL: &[BillingStatus] =
        &[BillingStatus::Active, BillingStatus::Trial, BillingStatus::PastDue, BillingStatus::Decommissioning];

    pub fn as_str(self) -> &'static str {
        match self {
            BillingStatus::Active => "active",
            BillingStatus::Trial => "trial",
            BillingStatus::PastDue => "past_due",
            BillingStatus::Decommissioning => "decommissioning",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|b| b.as_str() == s)
    }
}

/// An organisation (tenant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Org {
    pub id: OrgId,
    /// Unique, URL-safe short name.
    pub slug: String,
    pub billing_status: BillingStatus,
    /// End of the trial, for `billing_status = trial`.
    pub trial_ends_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Org {
    /// Whether create-class calls are allowed at `now`: `active`, or a `trial` that has not ended.
    /// A trial without an end date never expires.
    pub fn allows_create(&self, now: Timestamp) -> bool {
        match self.billing_status {
            BillingStatus::Active => true,
            BillingStatus::Trial => self.trial_ends_at.is_none_or(|end| now < end),
            BillingStatus::PastDue | BillingStatus::Decommissioning => false,
        }
    }

    /// The posture as the 423 message names it (`trial_expired` for an ended trial).
    pub fn posture(&self, now: Timestamp) -> &'static str {
        if self.billing_status == BillingStatus::Trial && !self.allows_create(now) {
            "trial_expired"
        } else {
            self.billing_status.as_str()
        }
    }
}

/// A person who can sign in. The password hash never leaves the store layer's callers.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: UserId,
    pub email: String,
    /// argon2 PHC string; `None` until the user sets a password (accepting an invitation).
    pub password_hash: Option<String>,
    pub created_at: Timestamp,
}

/// Whether a membership is in force or still an open invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MembershipStatus {
    /// Invited; becomes `active` when the invitee accepts.
    Pending,
    Active,
}

impl MembershipStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MembershipStatus::Pending => "pending",
            MembershipStatus::Active => "active",
        }
    }
}

/// A user's membership in an organisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Membership {
    pub org_id: OrgId,
    /// The member's user id. Unlike the hosted service (which fills it on acceptance) it is set from the invitation
    /// on, because this server owns the identities.
    pub user_id: UserId,
    pub email: String,
    pub role: MemberRole,
    pub status: MembershipStatus,
    /// `null` while the invitation is pending.
    pub accepted_at: Option<Timestamp>,
    pub invited_by_user_id: Option<UserId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// An API key's metadata (the secret is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub org_id: OrgId,
    pub label: String,
    /// Masked form, safe to show: `sk_live_…wxyz`.
    pub prefix: String,
    pub permission_set: PermissionSet,
    /// The scopes the key carries, fixed when it was issued.
    pub permissions: Vec<Scope>,
    /// Who issued it (`null` for keys made by the admin CLI).
    pub created_by_user_id: Option<UserId>,
    pub created_at: Timestamp,
}

/// A sign-in session: the server-side record behind a session JWT, so logout can revoke it.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub org_id: OrgId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(status: BillingStatus, trial_ends_at: Option<i64>) -> Org {
        Org {
            id: OrgId::new(),
            slug: "acme".into(),
            billing_status: status,
            trial_ends_at: trial_ends_at.map(Timestamp::from_millis),
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn billing_gate_over_every_posture() {
        let now = Timestamp::from_millis(1_000);
        assert!(org(BillingStatus::Active, None).allows_create(now));
        assert!(org(BillingStatus::Trial, None).allows_create(now));
        assert!(org(BillingStatus::Trial, Some(2_000)).allows_create(now));
        assert!(!org(BillingStatus::Trial, Some(1_000)).allows_create(now));
        assert_eq!(org(BillingStatus::Trial, Some(500)).posture(now), "trial_expired");
        assert!(!org(BillingStatus::PastDue, None).allows_create(now));
        assert!(!org(BillingStatus::Decommissioning, None).allows_create(now));
    }
}
