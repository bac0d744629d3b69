//! `Caller`: who is calling (a person through a session, or an API key), in which org, with which scopes — and the
//! ownership rule of `:own` scopes.

use evershell_core::audit::{AuditEvent, EventType, SYSTEM_USER};
use evershell_core::ids::{ApiKeyId, OrgId, SessionId, UserId};
use evershell_core::scope::{MemberRole, PermissionSet, Reach, Scope, ScopeSet};
use evershell_core::{Error, ErrorCode, Result};

/// The authenticated principal.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// A person signed in with a session.
    User { user_id: UserId, email: String, role: MemberRole, session_id: SessionId },
    /// An API key (no user identity: audit rows say `system`).
    ApiKey { key_id: ApiKeyId, label: String, permission_set: PermissionSet },
}

/// An authenticated request's identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub org_id: OrgId,
    pub principal: Principal,
    pub scopes: ScopeSet,
    /// The request id, copied into audit rows.
    pub request_id: Option<String>,
}

impl Caller {
    /// The user behind the call; `None` for API keys.
    pub fn user_id(&self) -> Option<UserId> {
        match &self.principal {
            Principal::User { user_id, .. } => Some(*user_id),
            Principal::ApiKey { .. } => None,
        }
    }

    /// The audit `user_id`: the user's id, or `system` for API keys.
    pub fn audit_user(&self) -> String {
        self.user_id().map(|u| u.to_string()).unwrap_or_else(|| SYSTEM_USER.to_string())
    }

    /// The member role, for session callers.
    pub fn member_role(&self) -> Option<MemberRole> {
        match &self.principal {
            Principal::User { role, .. } => Some(*role),
            Principal::ApiKey { .. } => None,
        }
    }

    /// A new audit event attributed to this caller.
    pub fn audit(&self, event_type: EventType) -> AuditEvent {
        AuditEvent::new(self.org_id, self.audit_user(), event_type).request(self.request_id.as_deref())
    }

    /// The caller's reach in the family of the unscoped `scope`, or 403 when it holds neither form. Routes already
    /// check their scopes before the handler runs; this is for narrowing.
    pub fn reach(&self, scope: Scope) -> Result<Reach> {
        self.scopes.reach(scope).ok_or_else(|| Error::permission_denied(format!("caller lacks the {scope} scope")))
    }

    /// Require an unscoped scope (e.g. bulk actions that cross users).
    pub fn require(&self, scope: Scope) -> Result<()> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(Error::permission_denied(format!("caller lacks the {scope} scope")))
        }
    }

    /// The `:own` rule for acting on an object created by `owner`: an `Org` reach passes; an `Own` reach passes only
    /// for the creator. `code` is the 403 to answer otherwise (`permission_denied` for writes,
    /// `workspace_not_visible` for workspace reads).
    pub fn check_owner(&self, scope: Scope, owner: Option<UserId>, code: ErrorCode) -> Result<()> {
        match self.reach(scope)? {
            Reach::Org => Ok(()),
            Reach::Own if owner.is_some() && owner == self.user_id() => Ok(()),
            Reach::Own => Err(Error::new(
                code,
                match code {
                    ErrorCode::WorkspaceNotVisible => "the workspace belongs to another member",
                    _ => "the object belongs to another member and the caller holds only the :own scope",
                },
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: UserId) -> Caller {
        Caller {
            org_id: OrgId::new(),
            principal: Principal::User {
                user_id: user,
                email: "m@example.com".into(),
                role: MemberRole::Member,
                session_id: SessionId::new(),
            },
            scopes: MemberRole::Member.scopes(),
            request_id: None,
        }
    }

    #[test]
    fn own_scope_passes_only_for_the_creator() {
        let me = UserId::new();
        let c = member(me);
        assert!(c.check_owner(Scope::WorkspaceRead, Some(me), ErrorCode::WorkspaceNotVisible).is_ok());
        let e = c.check_owner(Scope::WorkspaceRead, Some(UserId::new()), ErrorCode::WorkspaceNotVisible).unwrap_err();
        assert_eq!(e.code, ErrorCode::WorkspaceNotVisible);
        let e = c.check_owner(Scope::WorkspaceWrite, None, ErrorCode::PermissionDenied).unwrap_err();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert_eq!(
            c.check_owner(Scope::CapsWrite, Some(me), ErrorCode::PermissionDenied).unwrap_err().code,
            ErrorCode::PermissionDenied
        );
    }

    #[test]
    fn keys_audit_as_system() {
        let c = Caller {
            org_id: OrgId::new(),
            principal: Principal::ApiKey {
                key_id: ApiKeyId::new(),
                label: "ci".into(),
                permission_set: PermissionSet::FullAccess,
            },
            scopes: PermissionSet::FullAccess.scopes(),
            request_id: Some("r1".into()),
        };
        let e = c.audit(EventType::ProviderCreated);
        assert_eq!(e.user_id, "system");
        assert_eq!(e.request_id.as_deref(), Some("r1"));
    }
}
