//! The SQL, written once for both backends. Each resource module holds an `ops!` macro whose body is ordinary Rust
//! over a handful of names the backend module defines before expanding it (see `sqlite.rs` and `postgres.rs`):
//!
//! - `Db` (the `sqlx::Database`), `Conn` (its connection) and `S` (the store: `read` and `write` pools, and
//!   `begin()` for a write transaction);
//! - `for_update!()` / `for_share!()`: the row-lock suffix of a guarded read — ` FOR NO KEY UPDATE` / ` FOR SHARE` on
//!   PostgreSQL, empty on SQLite, where `BEGIN IMMEDIATE` already serialises every writer.
//!
//! Placeholders are `$1, $2, …` on both. Guarded writes lock parents in one order — org, provider, role — so two
//! transactions do not wait on each other in a cycle (the rare deadlock left is retried by `tx::run`).

pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod checkpoints;
pub(crate) mod credentials;
pub(crate) mod egress;
pub(crate) mod idempotency;
pub(crate) mod members;
pub(crate) mod orgs;
pub(crate) mod providers;
pub(crate) mod roles;
pub(crate) mod secrets;
pub(crate) mod snapshots;
pub(crate) mod task_capabilities;
pub(crate) mod tasks;
pub(crate) mod throttle;
pub(crate) mod workspaces;

/// Expand every resource's queries into the calling (backend) module, one submodule per resource.
macro_rules! expand {
    () => {
        pub(crate) mod audit {
            use super::*;
            $crate::queries::audit::ops!();
        }
        pub(crate) mod auth {
            use super::*;
            $crate::queries::auth::ops!();
        }
        pub(crate) mod checkpoints {
            use super::*;
            $crate::queries::checkpoints::ops!();
        }
        pub(crate) mod credentials {
            use super::*;
            $crate::queries::credentials::ops!();
        }
        pub(crate) mod egress {
            use super::*;
            $crate::queries::egress::ops!();
        }
        pub(crate) mod idempotency {
            use super::*;
            $crate::queries::idempotency::ops!();
        }
        pub(crate) mod members {
            use super::*;
            $crate::queries::members::ops!();
        }
        pub(crate) mod orgs {
            use super::*;
            $crate::queries::orgs::ops!();
        }
        pub(crate) mod providers {
            use super::*;
            $crate::queries::providers::ops!();
        }
        pub(crate) mod roles {
            use super::*;
            $crate::queries::roles::ops!();
        }
        pub(crate) mod secrets {
            use super::*;
            $crate::queries::secrets::ops!();
        }
        pub(crate) mod snapshots {
            use super::*;
            $crate::queries::snapshots::ops!();
        }
        pub(crate) mod task_capabilities {
            use super::*;
            $crate::queries::task_capabilities::ops!();
        }
        pub(crate) mod tasks {
            use super::*;
            $crate::queries::tasks::ops!();
        }
        pub(crate) mod throttle {
            use super::*;
            $crate::queries::throttle::ops!();
        }
        pub(crate) mod workspaces {
            use super::*;
            $crate::queries::workspaces::ops!();
        }
    };
}
pub(crate) use expand;
