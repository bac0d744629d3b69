//! Scopes (`<resource>:<verb>[:own]`), the member roles and API-key templates that carry them, and `Reach`: whether a
//! caller may act on the whole org or only on objects it created.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! scopes {
    ($($(#[$m:meta])* $v:ident = $s:literal),* $(,)?) => {
        /// A permission scope. Closed: every route's requirement is expressed in these.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Scope {
            $($(#[$m])* #[serde(rename = $s)] $v,)*
        }

        // Written by hand: the derive cannot read a `rename` that arrives through a macro, and would publish the
        // variant names instead of the wire strings.
        impl utoipa::PartialSchema for Scope {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::names::schema::string_enum(
                    "A permission scope (`<resource>:<verb>[:own]`). Closed: every route's requirement is expressed in these.",
                    [$($s),*],
                )
            }
        }

        impl utoipa::ToSchema for Scope {}

        impl Scope {
            pub const ALL: &[Scope] = &[$(Scope::$v),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Scope::$v => $s,)* }
            }
        }

        impl FromStr for Scope {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($s => Ok(Scope::$v),)* other => Err(format!("unknown scope `{other}`")) }
            }
        }
    };
}

scopes! {
    /// Every configuration change: providers, agent roles, content packs.
    CapsWrite = "caps:write",
    AuthWrite = "auth:write",
    AuthWriteOwn = "auth:write:own",
    SecretsWrite = "secrets:write",
    WorkspaceRead = "workspace:read",
    WorkspaceReadOwn = "workspace:read:own",
    WorkspaceWrite = "workspace:write",
    WorkspaceWriteOwn = "workspace:write:own",
    TasksWrite = "tasks:write",
    TasksWriteOwn = "tasks:write:own",
    AuditRead = "audit:read",
    AuditReadOwn = "audit:read:own",
    MembersRead = "members:read",
    MembersReadOwn = "members:read:own",
    MembersWrite = "members:write",
    ApikeysWrite = "apikeys:write",
    BillingWrite = "billing:write",
}

impl Scope {
    /// The `:own` twin of an unscoped scope, if the family has one.
    pub fn own_variant(self) -> Option<Scope> {
        use Scope::*;
        Some(match self {
            AuthWrite => AuthWriteOwn,
            WorkspaceRead => WorkspaceReadOwn,
            WorkspaceWrite => WorkspaceWriteOwn,
            TasksWrite => TasksWriteOwn,
            AuditRead => AuditReadOwn,
            MembersRead => MembersReadOwn,
            _ => return None,
        })
    }

    pub fn is_own(self) -> bool {
        self.as_str().ends_with(":own")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a caller reaches within one scope family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The unscoped scope: every object in the org.
    Org,
    /// Only the `:own` scope: objects whose `created_by_user_id` is the caller.
    Own,
}

/// The scopes a caller holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self(scopes.into_iter().collect())
    }

    pub fn contains(&self, s: Scope) -> bool {
        self.0.contains(&s)
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    /// The caller's reach in the family of the unscoped `scope`: `Org` if it holds `scope`, `Own` if it holds only the
    /// `:own` twin, `None` if neither.
    pub fn reach(&self, scope: Scope) -> Option<Reach> {
        if self.contains(scope) {
            Some(Reach::Org)
        } else if scope.own_variant().is_some_and(|o| self.contains(o)) {
            Some(Reach::Own)
        } else {
            None
        }
    }

    /// Whether the set satisfies a route requirement: any one alternative whose scopes are all held. An empty list of
    /// alternatives means "no scope needed".
    pub fn satisfies(&self, alternatives: &[Vec<Scope>]) -> bool {
        alternatives.is_empty() || alternatives.iter().any(|all| all.iter().all(|s| self.contains(*s)))
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|s| s.as_str().to_string()).collect()
    }
}

/// A member's role in an organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Owner,
    Operator,
    Member,
}

impl MemberRole {
    pub const ALL: &[MemberRole] = &[MemberRole::Owner, MemberRole::Operator, MemberRole::Member];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Owner => "owner",
            MemberRole::Operator => "operator",
            MemberRole::Member => "member",
        }
    }

    /// The default scope set of the role (reference concepts §3.3).
    pub fn scopes(self) -> ScopeSet {
        use Scope::*;
        let owner = [
            CapsWrite,
            AuthWrite,
            SecretsWrite,
            WorkspaceRead,
            WorkspaceWrite,
            TasksWriteOwn,
            AuditRead,
            MembersRead,
            MembersWrite,
            ApikeysWrite,
            BillingWrite,
        ];
        match self {
            MemberRole::Owner => ScopeSet::new(owner),
            MemberRole::Operator => {
                ScopeSet::new(owner.into_iter().filter(|s| !matches!(s, MembersWrite | BillingWrite)))
            }
            MemberRole::Member => ScopeSet::new([
                WorkspaceReadOwn,
                WorkspaceWriteOwn,
                TasksWriteOwn,
                AuditReadOwn,
                MembersRead,
                AuthWriteOwn,
            ]),
        }
    }
}

impl FromStr for MemberRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Self::Owner),
            "operator" => Ok(Self::Operator),
            "member" => Ok(Self::Member),
            other => Err(format!("unknown role `{other}` (expected owner, operator or member)")),
        }
    }
}

/// An API key's permission template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PermissionSet {
    FullAccess,
    SubmitObserve,
    ReadOnly,
}

impl PermissionSet {
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionSet::FullAccess => "full_access",
            PermissionSet::SubmitObserve => "submit_observe",
            PermissionSet::ReadOnly => "read_only",
        }
    }

    /// The template's scopes (reference concepts §3.4). Keys never hold `members:write`, `billing:write` or
    /// `apikeys:write`, and hold the unscoped `tasks:write` because they have no user to narrow `:own` against.
    pub fn scopes(self) -> ScopeSet {
        use Scope::*;
        match self {
            PermissionSet::FullAccess => {
                ScopeSet::new([CapsWrite, WorkspaceRead, WorkspaceWrite, TasksWrite, AuditRead])
            }
            PermissionSet::SubmitObserve => ScopeSet::new([WorkspaceRead, WorkspaceWrite, TasksWrite, AuditRead]),
            PermissionSet::ReadOnly => ScopeSet::new([WorkspaceRead, AuditRead]),
        }
    }
}

impl FromStr for PermissionSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full_access" => Ok(Self::FullAccess),
            "submit_observe" => Ok(Self::SubmitObserve),
            "read_only" => Ok(Self::ReadOnly),
            other => {
                Err(format!("unknown permission set `{other}` (expected full_access, submit_observe or read_only)"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_strings_round_trip() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
    }

    #[test]
    fn no_role_holds_unscoped_tasks_write() {
        for r in MemberRole::ALL {
            assert!(!r.scopes().contains(Scope::TasksWrite), "{r:?}");
        }
    }

    #[test]
    fn operator_is_owner_minus_people_and_billing() {
        let owner = MemberRole::Owner.scopes();
        let op = MemberRole::Operator.scopes();
        let diff: Vec<_> = owner.iter().filter(|s| !op.contains(*s)).collect();
        assert_eq!(diff, vec![Scope::MembersWrite, Scope::BillingWrite]);
    }

    #[test]
    fn keys_never_hold_people_billing_or_key_scopes() {
        for p in [PermissionSet::FullAccess, PermissionSet::SubmitObserve, PermissionSet::ReadOnly] {
            let s = p.scopes();
            for forbidden in [Scope::MembersWrite, Scope::BillingWrite, Scope::ApikeysWrite] {
                assert!(!s.contains(forbidden));
            }
            assert!(s.iter().all(|x| !x.is_own()));
        }
    }

    #[test]
    fn reach_prefers_org_over_own() {
        let member = MemberRole::Member.scopes();
        assert_eq!(member.reach(Scope::WorkspaceRead), Some(Reach::Own));
        assert_eq!(member.reach(Scope::CapsWrite), None);
        assert_eq!(MemberRole::Owner.scopes().reach(Scope::WorkspaceRead), Some(Reach::Org));
        assert_eq!(MemberRole::Owner.scopes().reach(Scope::TasksWrite), Some(Reach::Own));
    }

    #[test]
    fn satisfies_is_or_of_ands() {
        let s = ScopeSet::new([Scope::WorkspaceWriteOwn, Scope::TasksWriteOwn]);
        use Scope::*;
        let req = vec![vec![WorkspaceWrite, TasksWrite], vec![WorkspaceWriteOwn, TasksWriteOwn]];
        assert!(s.satisfies(&req));
        assert!(!s.satisfies(&[vec![WorkspaceWrite]]));
        assert!(s.satisfies(&[]));
    }
}
