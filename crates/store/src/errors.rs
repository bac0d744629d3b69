//! The one place database errors become domain errors: unique violations by constraint name (PostgreSQL) or by the
//! columns SQLite names, lost connections as `Unavailable`, everything else `Internal`; and which failures a
//! transaction may simply retry (`SQLITE_BUSY`/`SQLITE_LOCKED`, PostgreSQL 40001/40P01).

use evershell_core::{Error, ErrorCode};
use serde_json::json;
use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;

/// What a transaction body fails with: a database error (maybe retryable) or a domain refusal (never retried).
#[derive(Debug)]
pub(crate) enum StoreError {
    Db(sqlx::Error),
    Domain(Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(e)
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        StoreError::Domain(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(e) => db(e),
            StoreError::Domain(e) => e,
        }
    }
}

/// A unique constraint a caller can trip over, and the field it blames.
struct Unique {
    /// PostgreSQL constraint name.
    constraint: &'static str,
    /// What SQLite says after `UNIQUE constraint failed: `.
    sqlite: &'static str,
    field: &'static str,
    message: &'static str,
}

const UNIQUES: &[Unique] = &[
    Unique {
        constraint: "orgs_slug_key",
        sqlite: "orgs.slug",
        field: "slug",
        message: "an organisation with this slug already exists",
    },
    Unique {
        constraint: "users_email_key",
        sqlite: "users.email",
        field: "email",
        message: "a user with this email already exists",
    },
    Unique {
        constraint: "memberships_pkey",
        sqlite: "memberships.org_id, memberships.user_id",
        field: "email",
        message: "this user is already a member of the organisation",
    },
    Unique {
        constraint: "providers_org_name_key",
        sqlite: "providers.org_id, providers.name",
        field: "name",
        message: "a provider with this name already exists",
    },
    Unique {
        constraint: "agent_roles_org_name_key",
        sqlite: "agent_roles.org_id, agent_roles.name",
        field: "name",
        message: "an agent role with this name already exists",
    },
    Unique {
        constraint: "secrets_org_name_key",
        sqlite: "secrets.org_id, secrets.name",
        field: "name",
        message: "a secret with this name already exists",
    },
    Unique {
        constraint: "credentials_org_name_key",
        sqlite: "credentials.org_id, credentials.name",
        field: "name",
        message: "a credential with this name already exists",
    },
    Unique {
        constraint: "credentials_personal_name_key",
        sqlite: "credentials.org_id, credentials.user_id, credentials.name",
        field: "name",
        message: "you already have a personal credential with this name",
    },
];

/// Map a database error to the domain error. Used for every query, in and out of transactions.
pub(crate) fn db(e: sqlx::Error) -> Error {
    if let Some(u) = e.as_database_error().and_then(blamed_unique) {
        return Error::new(ErrorCode::AlreadyExists, u.message)
            .with_details(json!({ "fields": { u.field: "is already taken" } }));
    }
    if is_unavailable(&e) || is_retryable(&e) {
        // A conflict that outlived every retry means the database is saturated: tell the caller to come back.
        return Error::unavailable(e);
    }
    Error::internal(e)
}

fn blamed_unique(e: &(dyn DatabaseError + 'static)) -> Option<&'static Unique> {
    if e.kind() != ErrorKind::UniqueViolation {
        return None;
    }
    match e.constraint() {
        Some(name) => UNIQUES.iter().find(|u| u.constraint == name),
        None => {
            let cols = e.message().strip_prefix("UNIQUE constraint failed: ")?;
            UNIQUES.iter().find(|u| u.sqlite == cols)
        }
    }
}

/// The connection, not the statement, failed.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            if let Some(pg) = d.try_downcast_ref::<PgDatabaseError>() {
                // 08: connection exception; 53300: too many connections; 57P0x: server shutting down.
                let code = pg.code();
                code.starts_with("08") || matches!(code, "53300" | "57P01" | "57P02" | "57P03")
            } else {
                // SQLITE_CANTOPEN
                sqlite_primary_code(d.as_ref()) == Some(14)
            }
        }
        _ => false,
    }
}

/// A transient conflict: the whole transaction can run again.
pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    let Some(d) = e.as_database_error() else { return false };
    if let Some(pg) = d.try_downcast_ref::<PgDatabaseError>() {
        return matches!(pg.code(), "40001" | "40P01");
    }
    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), including their extended codes.
    matches!(sqlite_primary_code(d), Some(5 | 6))
}

fn sqlite_primary_code(d: &(dyn DatabaseError + 'static)) -> Option<i32> {
    d.try_downcast_ref::<SqliteError>()?;
    d.code()?.parse::<i32>().ok().map(|c| c & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable_and_the_rest_internal() {
        for e in
            [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed, sqlx::Error::Io(std::io::ErrorKind::BrokenPipe.into())]
        {
            assert_eq!(db(e).code, ErrorCode::Unavailable);
        }
        assert_eq!(db(sqlx::Error::RowNotFound).code, ErrorCode::Internal);
        assert!(!is_retryable(&sqlx::Error::PoolTimedOut));
    }
}
