//! The PostgreSQL backend: one pool (READ COMMITTED); guarded writes take row locks on the parent rows they check
//! (`FOR NO KEY UPDATE` to change, `FOR SHARE` to build on), so an archive and a create under it, or two demotions of
//! an org's Owners, cannot interleave. Serialisation failures and deadlocks are retried by `tx::run`.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::api::Backend;

/// Largest pool size.
const MAX_CONNECTIONS: u32 = 10;

/// A store on a PostgreSQL database.
pub struct PgStore {
    pub(crate) read: PgPool,
    pub(crate) write: PgPool,
    pub(crate) feed: crate::feed::ActivityFeed,
}

impl PgStore {
    /// Connect to `url` (`postgres://…`) and apply pending migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .context("connecting to PostgreSQL")?;
        crate::migrations::migrator(crate::migrations::POSTGRES)
            .run(&pool)
            .await
            .context("migrating the PostgreSQL database")?;
        Ok(Self { read: pool.clone(), write: pool, feed: Default::default() })
    }

    pub(crate) async fn begin(&self) -> sqlx::Result<crate::feed::Tx<sqlx::Postgres>> {
        Ok(crate::feed::Tx::new(self.write.begin().await?, &self.feed))
    }
}

mod ops {
    type Db = sqlx::Postgres;
    type Conn = sqlx::PgConnection;
    type S = super::PgStore;

    macro_rules! for_update {
        () => {
            " FOR NO KEY UPDATE"
        };
    }
    macro_rules! for_share {
        () => {
            " FOR SHARE"
        };
    }

    crate::queries::expand!();
}

crate::store_impl::impl_store!(PgStore, Backend::Postgres);
