//! Typed, prefixed, time-ordered identifiers (`ws_01J…`, `org_01J…`): one Rust type per kind so ids cannot be mixed up.
//!
//! The wire form is `<prefix><ULID>`; parsing checks the prefix and the ULID, so an id of the wrong kind is simply
//! "not found" at the API edge rather than a type confusion deeper down.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

/// The id did not have the expected prefix or was not a valid ULID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {kind} id (expected `{prefix}` followed by a ULID)")]
pub struct IdParseError {
    pub kind: &'static str,
    pub prefix: &'static str,
}

macro_rules! typed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Ulid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            pub const KIND: &'static str = $kind;

            /// A new id, ordered after every id made earlier in this process.
            pub fn new() -> Self {
                Self(crate::ids::next_ulid())
            }

            pub fn from_ulid(u: Ulid) -> Self {
                Self(u)
            }

            pub fn ulid(&self) -> Ulid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = IdParseError { kind: $kind, prefix: $prefix };
                let rest = s.strip_prefix($prefix).ok_or(err.clone())?;
                if rest.len() != 26 {
                    return Err(err);
                }
                Ulid::from_string(rest).map(Self).map_err(|_| err)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some(concat!("A ", $kind, " id: `", $prefix, "` followed by a ULID.")))
                    .pattern(Some(concat!("^", $prefix, "[0-7][0-9A-HJKMNP-TV-Z]{25}$")))
                    .examples([concat!($prefix, "01JD8X3Q5M2N4P6R8T0V2W4Y6Z")])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

typed_id!(
    /// An organisation (tenant).
    OrgId, "org_", "org"
);
typed_id!(
    /// A user (a person who can sign in).
    UserId, "usr_", "user"
);
typed_id!(
    /// A workspace: one sandbox pod and its `/workspace` filesystem.
    WorkspaceId, "ws_", "workspace"
);
typed_id!(
    /// A task run in a workspace.
    TaskId, "task_", "task"
);
typed_id!(
    /// An agent role.
    RoleId, "role_", "agent role"
);
typed_id!(
    /// An LLM provider.
    ProviderId, "prov_", "provider"
);
typed_id!(
    /// A credential.
    CredentialId, "cred_", "credential"
);
typed_id!(
    /// A secret.
    SecretId, "sec_", "secret"
);
typed_id!(
    /// An API key (the id, not the secret value).
    ApiKeyId, "api_key_", "API key"
);
typed_id!(
    /// A workspace snapshot.
    SnapshotId, "snap_", "snapshot"
);
typed_id!(
    /// A content pack.
    PackId, "pack_", "pack"
);
typed_id!(
    /// A sign-in session (the `jti` of a session JWT).
    SessionId, "sess_", "session"
);
typed_id!(
    /// A sandbox pod: one incarnation of a workspace's runtime.
    PodId, "pod_", "pod"
);

/// A process-wide monotonic ULID source, so ids made in one process sort in creation order even within a millisecond.
pub(crate) fn next_ulid() -> Ulid {
    use std::sync::Mutex;
    static GEN: Mutex<Option<ulid::Generator>> = Mutex::new(None);
    let mut g = GEN.lock().unwrap_or_else(|p| p.into_inner());
    let g = g.get_or_insert_with(ulid::Generator::new);
    // The generator only fails when 80 random bits overflow within one millisecond; fall back to a fresh ULID.
    g.generate().unwrap_or_else(|_| Ulid::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_prefix() {
        let id = WorkspaceId::new();
        let s = id.to_string();
        assert!(s.starts_with("ws_"));
        assert_eq!(s.parse::<WorkspaceId>().unwrap(), id);
        assert!(s.parse::<RoleId>().is_err());
        assert!("ws_notaulid".parse::<WorkspaceId>().is_err());
        assert!("".parse::<WorkspaceId>().is_err());
        let key = ApiKeyId::new().to_string();
        assert!(key.starts_with("api_key_"));
        assert!(key.parse::<ApiKeyId>().is_ok());
    }

    #[test]
    fn ids_are_time_ordered_within_a_process() {
        let a = TaskId::new();
        let b = TaskId::new();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn ids_are_canonical_crockford_ulids() {
        // What the published pattern (`^ws_[0-7][0-9A-HJKMNP-TV-Z]{25}$`) promises of every id the server writes.
        for _ in 0..1000 {
            let s = WorkspaceId::new().to_string();
            let u = s.strip_prefix("ws_").unwrap();
            assert_eq!(u.len(), 26);
            assert!(('0'..='7').contains(&u.chars().next().unwrap()), "{s}");
            assert!(u.chars().all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c))), "{s}");
        }
    }

    #[test]
    fn serde_uses_the_prefixed_string() {
        let id = OrgId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        let back: OrgId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<OrgId>("\"usr_01JD8X3Q5M2N4P6R8T0V2W4Y6Z\"").is_err());
    }
}
