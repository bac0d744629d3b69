//! evershell-store: the `Store` trait (one method per query) and its two implementations, SQLite (WAL, one file) and
//! PostgreSQL, each with its own migration ladder applied at start-up.
//!
//! The SQL is written once (`queries`, expanded per backend by a macro); database errors become domain errors in one
//! place (`errors`); every write goes through one retrying, timed transaction helper (`tx`).

mod api;
mod errors;
mod feed;
mod migrations;
mod postgres;
mod queries;
mod rows;
mod sqlite;
mod store_impl;
mod tx;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::sync::Arc;

pub use api::{
    Backend, BudgetCounterMove, Fence, IdempotencyBegin, IdempotencyClaim, LoginClaim, LoginCounter, ObservationWrite,
    PodNetwork, Store, TaskCapability, TaskUpdate, WorkspaceFilter, WorkspaceQuota,
};
pub use feed::{ActivityFeed, FEED_CAPACITY, FeedEvent};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Open the store at `url`: `postgres://…` / `postgresql://…` is PostgreSQL; `sqlite://…` or a plain file path is
/// SQLite (the file is created if missing). Pending migrations are applied before this returns.
pub async fn connect(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    }
}
