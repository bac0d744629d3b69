//! People: the sign-in request types, logout, `/me/session`, API keys, memberships and invitations (the password
//! routes themselves are in `signin`).

use evershell_core::audit::EventType;
use evershell_core::ids::{ApiKeyId, OrgId, UserId};
use evershell_core::model::{ApiKey, BillingStatus, Membership, MembershipStatus, User};
use evershell_core::names::{self, MAX_LABEL};
use evershell_core::scope::{MemberRole, PermissionSet, Reach, Scope};
use evershell_core::{Error, ErrorCode, FieldErrors, Result, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::App;
use crate::caller::{Caller, Principal};
use crate::secrets;

/// `POST /v1/auth/login`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// The org to sign in to (slug or id). Optional when the user belongs to exactly one org.
    pub org: Option<String>,
}

/// A new session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionToken {
    /// The session JWT: send it as `Authorization: Bearer …`.
    pub token: String,
    pub expires_at: Timestamp,
    pub user_id: UserId,
    pub org_id: OrgId,
}

/// `POST /v1/auth/accept-invite`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInviteRequest {
    /// The one-time token returned when the invitation was made.
    pub invite_token: String,
    /// The password to set (at least 8 characters). For a user who already has one, it must match it.
    #[schema(schema_with = names::schema::password)]
    pub password: String,
}

/// One org the caller belongs to, as `/me/session` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MeMembership {
    pub org_id: OrgId,
    pub org_slug: String,
    /// `null` for API-key callers (a key has no member role).
    pub role: Option<MemberRole>,
    pub status: MembershipStatus,
    pub billing_status: BillingStatus,
    pub trial_ends_at: Option<Timestamp>,
    /// `null` while the invitation is pending.
    pub accepted_at: Option<Timestamp>,
}

/// `GET /v1/me/session`: the resolved caller.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MeSession {
    /// The user's id, or `system` for API keys.
    pub user_id: String,
    pub org_id: OrgId,
    /// Session callers only.
    pub email: Option<String>,
    /// Session callers only.
    pub role: Option<MemberRole>,
    /// The scopes gating uses.
    #[schema(value_type = Vec<Scope>)]
    pub permissions: Vec<String>,
    pub memberships: Vec<MeMembership>,
    /// API-key callers only.
    pub api_key_label: Option<String>,
    /// API-key callers only (informational).
    pub api_key_permission_set: Option<PermissionSet>,
}

/// `POST /v1/api-keys`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    #[schema(schema_with = names::schema::label)]
    pub label: String,
    pub permission_set: PermissionSet,
}

/// A newly created API key, with its value (shown exactly once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The full secret. It cannot be read back.
    pub value: String,
}

/// `POST /v1/orgs/{id}/memberships`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    #[schema(schema_with = names::schema::email)]
    pub email: String,
    pub role: MemberRole,
}

/// A new invitation: the pending membership and the one-time token the invitee accepts it with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Invitation {
    #[serde(flatten)]
    pub membership: Membership,
    /// Pass to `POST /v1/auth/accept-invite`. Shown once.
    pub invite_token: String,
}

/// `PATCH /v1/orgs/{id}/memberships/{user_id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMembershipRequest {
    pub role: MemberRole,
}

impl App {
    pub async fn logout(&self, caller: &Caller) -> Result<()> {
        match &caller.principal {
            Principal::User { session_id, .. } => {
                let audit = caller.audit(EventType::LoggedOut).target("session", session_id);
                self.store.revoke_session(*session_id, Timestamp::now(), &[audit]).await
            }
            Principal::ApiKey { .. } => {
                Err(Error::invalid_field("authorization", "logout ends a session; revoke an API key instead"))
            }
        }
    }

    pub async fn me_session(&self, caller: &Caller) -> Result<MeSession> {
        let memberships = match caller.user_id() {
            Some(user) => self
                .store
                .list_user_memberships(user)
                .await?
                .into_iter()
                .map(|(m, o)| MeMembership {
                    org_id: o.id,
                    org_slug: o.slug,
                    role: Some(m.role),
                    status: m.status,
                    billing_status: o.billing_status,
                    trial_ends_at: o.trial_ends_at,
                    accepted_at: m.accepted_at,
                })
                .collect(),
            None => {
                let org = self.store.get_org(caller.org_id).await?.ok_or_else(Error::unauthenticated)?;
                vec![MeMembership {
                    org_id: org.id,
                    org_slug: org.slug,
                    role: None,
                    status: MembershipStatus::Active,
                    billing_status: org.billing_status,
                    trial_ends_at: org.trial_ends_at,
                    accepted_at: None,
                }]
            }
        };
        let (email, role, label, set) = match &caller.principal {
            Principal::User { email, role, .. } => (Some(email.clone()), Some(*role), None, None),
            Principal::ApiKey { label, permission_set, .. } => (None, None, Some(label.clone()), Some(*permission_set)),
        };
        Ok(MeSession {
            user_id: caller.audit_user(),
            org_id: caller.org_id,
            email,
            role,
            permissions: caller.scopes.to_strings(),
            memberships,
            api_key_label: label,
            api_key_permission_set: set,
        })
    }

    pub async fn create_api_key(&self, caller: &Caller, req: CreateApiKeyRequest) -> Result<CreatedApiKey> {
        let mut errs = FieldErrors::default();
        names::check_text(&mut errs, "label", &req.label, MAX_LABEL);
        errs.into_result()?;
        self.ensure_billing(caller).await?;
        let (key, value, hash) = new_key(caller.org_id, req.label.trim(), req.permission_set, caller.user_id());
        let audit = caller
            .audit(EventType::ApiKeyCreated)
            .target("api_key", key.id)
            .details(serde_json::json!({ "label": key.label, "permission_set": key.permission_set }));
        self.store.create_api_key(&key, &hash, &[audit]).await?;
        Ok(CreatedApiKey { key, value })
    }

    pub async fn list_api_keys(&self, caller: &Caller) -> Result<Vec<ApiKey>> {
        self.store.list_api_keys(caller.org_id).await
    }

    /// Revoke a key; it is refused with 401 from the very next request. Works in any billing posture.
    pub async fn revoke_api_key(&self, caller: &Caller, id: &str) -> Result<()> {
        let not_found = || Error::new(ErrorCode::ApiKeyNotFound, "no such API key in this organisation");
        let id: ApiKeyId = id.parse().map_err(|_| not_found())?;
        let audit = caller.audit(EventType::ApiKeyRevoked).target("api_key", id);
        if self.store.revoke_api_key(caller.org_id, id, Timestamp::now(), &[audit]).await? {
            self.key_cache.evict(id);
            Ok(())
        } else {
            Err(not_found())
        }
    }

    /// Memberships of the caller's org (`members:read`), or only the caller's own row (`members:read:own`).
    /// Another org's id is 403, as the hosted service documents, even for an Owner of that org.
    pub async fn list_memberships(&self, caller: &Caller, org: &str) -> Result<Vec<Membership>> {
        same_org(caller, org)?;
        let all = self.store.list_memberships(caller.org_id).await?;
        Ok(match caller.reach(Scope::MembersRead)? {
            Reach::Org => all,
            Reach::Own => all.into_iter().filter(|m| Some(m.user_id) == caller.user_id()).collect(),
        })
    }

    /// Invite someone: a pending membership plus a one-time token. Inviting an Owner needs the caller to be an Owner.
    pub async fn invite(&self, caller: &Caller, org: &str, req: InviteRequest) -> Result<Invitation> {
        same_org(caller, org)?;
        let mut errs = FieldErrors::default();
        names::check_email(&mut errs, "email", req.email.trim());
        errs.into_result()?;
        if req.role == MemberRole::Owner && caller.member_role() != Some(MemberRole::Owner) {
            return Err(Error::permission_denied("only an Owner can invite an Owner"));
        }
        self.ensure_billing(caller).await?;
        let email = names::normalize_email(&req.email);
        let now = Timestamp::now();
        let existing = self.store.get_user_by_email(&email).await?;
        let new_user = match &existing {
            Some(_) => None,
            None => Some(User { id: UserId::new(), email: email.clone(), password_hash: None, created_at: now }),
        };
        let user_id = existing.as_ref().or(new_user.as_ref()).map(|u| u.id).unwrap_or_default();
        let membership = Membership {
            org_id: caller.org_id,
            user_id,
            email,
            role: req.role,
            status: MembershipStatus::Pending,
            accepted_at: None,
            invited_by_user_id: caller.user_id(),
            created_at: now,
            updated_at: now,
        };
        let (token, hash) = secrets::new_invite_token();
        let audit = caller
            .audit(EventType::MembershipInvited)
            .target("membership", user_id)
            .details(serde_json::json!({ "email": membership.email, "role": membership.role }));
        self.store.create_membership(&membership, new_user.as_ref(), Some(&hash), &[audit]).await?;
        Ok(Invitation { membership, invite_token: token })
    }

    /// Change a member's role: Owners only; never the last Owner; never a pending invitation.
    pub async fn patch_membership(
        &self,
        caller: &Caller,
        org: &str,
        user: &str,
        req: PatchMembershipRequest,
    ) -> Result<Membership> {
        same_org(caller, org)?;
        let current = self.membership(caller, user).await?;
        if caller.member_role() != Some(MemberRole::Owner) {
            return Err(Error::permission_denied("only an Owner can change a member's role"));
        }
        self.ensure_billing(caller).await?;
        if current.status == MembershipStatus::Pending {
            return Err(Error::conflict(
                ErrorCode::PendingInvitation,
                "a pending invitation cannot be re-roled; revoke it and invite again",
            ));
        }
        let audit = caller
            .audit(EventType::MembershipRoleChanged)
            .target("membership", current.user_id)
            .details(serde_json::json!({ "from": current.role, "to": req.role }));
        self.store.update_membership_role(caller.org_id, current.user_id, req.role, Timestamp::now(), &[audit]).await
    }

    /// Remove a member or revoke an invitation. Removing an Owner needs an Owner; never the last Owner.
    pub async fn delete_membership(&self, caller: &Caller, org: &str, user: &str) -> Result<()> {
        same_org(caller, org)?;
        let current = self.membership(caller, user).await?;
        if current.role == MemberRole::Owner && caller.member_role() != Some(MemberRole::Owner) {
            return Err(Error::permission_denied("only an Owner can remove an Owner"));
        }
        let audit = caller
            .audit(EventType::MembershipRemoved)
            .target("membership", current.user_id)
            .details(serde_json::json!({ "email": current.email, "role": current.role, "status": current.status }));
        self.store.delete_membership(caller.org_id, current.user_id, Timestamp::now(), &[audit]).await
    }

    async fn membership(&self, caller: &Caller, user: &str) -> Result<Membership> {
        let not_found = || Error::new(ErrorCode::MembershipNotFound, "no such membership in this organisation");
        let user: UserId = user.parse().map_err(|_| not_found())?;
        self.store.get_membership(caller.org_id, user).await?.ok_or_else(not_found)
    }
}

/// The org in a membership path must be the caller's own; anything else is 403 (the documented cross-org answer).
fn same_org(caller: &Caller, org: &str) -> Result<()> {
    if org == caller.org_id.to_string() {
        Ok(())
    } else {
        Err(Error::permission_denied("cross-organisation access is not allowed"))
    }
}

/// A new API key record: `(key, value, sha256)`.
pub fn new_key(org: OrgId, label: &str, set: PermissionSet, created_by: Option<UserId>) -> (ApiKey, String, String) {
    let (value, hash, masked) = secrets::new_api_key();
    let key = ApiKey {
        id: ApiKeyId::new(),
        org_id: org,
        label: label.to_string(),
        prefix: masked,
        permission_set: set,
        permissions: set.scopes().iter().collect(),
        created_by_user_id: created_by,
        created_at: Timestamp::now(),
    };
    (key, value, hash)
}
